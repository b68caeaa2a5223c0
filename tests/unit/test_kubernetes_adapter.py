"""The kubernetes adapter's behaviour before any cluster is involved."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import yaml

from gpuconform.drivers.base import AdapterContext, Deadline, RequestRejected
from gpuconform.drivers.inventory import Inventory
from gpuconform.drivers.kubernetes import DEVICE_IDS_UNSUPPORTED, KubernetesAdapter
from gpuconform.drivers.leases import GpuLeases
from gpuconform.drivers.registry import load_adapter_class
from gpuconform.drivers.request import GpuRequest


def adapter(tmp_path: Path, **options: str) -> KubernetesAdapter:
    inventory = Inventory(host="h", gpus=(), simulated=True, source="test")
    ctx = AdapterContext(
        inventory=inventory, leases=GpuLeases(tmp_path / "leases"), run_id="unit-1", options=options
    )
    return KubernetesAdapter(ctx)


def test_registry_loads_the_adapter_by_name() -> None:
    assert load_adapter_class("kubernetes") is KubernetesAdapter


def test_profile_declares_device_ids_must_reject_and_exclusive_counts() -> None:
    profile = adapter(Path("/nonexistent")).profile
    assert profile.expect("device.unsupported") == "reject"
    assert profile.expect("device.each") == "reject"
    assert profile.expect("count.2") == "supported"
    assert (profile.exclusive, profile.oversubscribe) == (True, "reject")


def test_device_ids_are_rejected_before_any_client_or_request_exists(tmp_path: Path) -> None:
    # A kubeconfig that does not exist: had the adapter touched the client, it would raise
    # DriverUnavailable instead of the clean rejection.
    a = adapter(tmp_path, **{"kubernetes.kubeconfig": str(tmp_path / "missing-kubeconfig")})
    with pytest.raises(RequestRejected) as info:
        a.provision(GpuRequest.of_ids(["0"]), image="busybox", labels={}, deadline=Deadline(5))
    assert info.value.message == f"{DEVICE_IDS_UNSUPPORTED} (got '0')"


def test_available_without_a_kubeconfig_says_so(tmp_path: Path) -> None:
    avail = adapter(tmp_path, **{"kubernetes.kubeconfig": str(tmp_path / "missing")}).available()
    assert not avail.ok
    assert "no usable Kubernetes configuration" in avail.reason


def test_available_with_an_unreachable_api_is_false_within_seconds(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    start = time.monotonic()
    avail = adapter(tmp_path, **{"kubernetes.kubeconfig": str(kubeconfig)}).available()
    assert not avail.ok
    assert "not reachable" in avail.reason
    assert time.monotonic() - start < 5


def test_namespace_is_per_run_unless_given(tmp_path: Path) -> None:
    assert adapter(tmp_path).namespace == "gpuconform-unit-1"
    assert adapter(tmp_path).owns_namespace
    given = adapter(tmp_path, **{"kubernetes.namespace": "ci"})
    assert (given.namespace, given.owns_namespace) == ("ci", False)
