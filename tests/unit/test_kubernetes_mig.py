"""MIG on the kubernetes column: the device plugin's mixed strategy, end to end without a cluster.

A MIG device's native id is its profile's resource (``nvidia.com/mig-3g.40gb``); a pod asks for one
unit and the plugin picks which. The grant is learnt from the container's
``allocatedResourcesStatus`` (what the API double reports, as a kubelet with ResourceHealthStatus
does). A MIG-enabled GPU cannot be had whole (``mig.parent`` out of scope).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest

from gpuconform.drivers import kube_cluster
from gpuconform.drivers.base import AdapterContext, Deadline, InfrastructureError, RequestRejected
from gpuconform.drivers.inventory import Inventory
from gpuconform.drivers.kube_pods import CONTAINER, build_pod_manifest, granted_from_status
from gpuconform.drivers.kube_truth import mig_inventory_from_probes
from gpuconform.drivers.kubernetes import DEVICE_IDS_UNSUPPORTED, SCHEME_K8S_RESOURCE, KubernetesAdapter
from gpuconform.drivers.leases import GpuLeases
from gpuconform.drivers.request import GpuRequest
from gpuconform.fixtures.sim.kubedouble.model import Cluster
from gpuconform.fixtures.sim.kubedouble.runner import ContainerSpec, PodmanRunner
from gpuconform.fixtures.sim.simgpu.profiles import get_profile

KIND = "sim.gpuconform.dev/k"
PROFILE = get_profile("mig")
INVENTORY = Inventory("t", PROFILE.records(KIND), True, "sim:mig", KIND, migs=PROFILE.mig_records(KIND))


def _adapter(tmp_path: Path, inventory: Inventory = INVENTORY) -> KubernetesAdapter:
    ctx = AdapterContext(inventory=inventory, leases=GpuLeases(tmp_path / "leases"), run_id="unit-1")
    return KubernetesAdapter(ctx)


def test_profile_mig_each_supported_mig_parent_out_of_scope_device_ids_rejected(tmp_path: Path) -> None:
    profile = _adapter(tmp_path).profile
    assert profile.expect("mig.each") == "supported"
    assert profile.expect("mig.parent") == "unsupported"
    assert profile.expect("device.each") == "reject"


def test_id_inventory_names_each_mig_device_by_its_profiles_resource_and_no_gpu(tmp_path: Path) -> None:
    a = _adapter(tmp_path)
    named = a.id_inventory()
    assert {m.uuid: m.ids(SCHEME_K8S_RESOURCE) for m in named.migs} == {
        m.uuid: (f"nvidia.com/mig-{m.profile}",) for m in INVENTORY.migs
    }
    assert all(a.native_ids(g) == [] for g in INVENTORY.gpus)  # device.* stays a refusal


def test_a_mig_resource_request_passes_through_unleased_and_ungranted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = _adapter(tmp_path)
    monkeypatch.setattr(a, "core", lambda: object())
    monkeypatch.setattr(kube_cluster, "mig_nodes", lambda core: {"n": {"nvidia.com/mig-3g.40gb": 2}})
    sel = a.select(GpuRequest.of_ids(["nvidia.com/mig-3g.40gb"]), Deadline(1))
    assert (sel.ids, sel.granted, sel.lease.gpus) == (("nvidia.com/mig-3g.40gb",), None, ())
    with pytest.raises(RequestRejected, match="no node advertises nvidia.com/mig-7g.80gb"):
        a.select(GpuRequest.of_ids(["nvidia.com/mig-7g.80gb"]), Deadline(1))
    with pytest.raises(RequestRejected) as info:  # a GPU id is still refused, even beside a MIG one
        a.select(GpuRequest.of_ids(["nvidia.com/mig-3g.40gb", "0"], count=2), Deadline(1))
    assert info.value.message.startswith(DEVICE_IDS_UNSUPPORTED)


def test_the_manifest_asks_one_unit_of_the_mig_resource_and_no_gpu() -> None:
    pod = build_pod_manifest("p", "ns", image="i", gpus=0, labels={}, units={"nvidia.com/mig-1g.10gb": 1})
    assert pod["spec"]["containers"][0]["resources"] == {"limits": {"nvidia.com/mig-1g.10gb": "1"}}
    plain = build_pod_manifest("p", "ns", image="i", gpus=2, labels={})
    assert plain["spec"]["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": "2"}}


def _status(allocated: Any, name: str = CONTAINER) -> dict[str, Any]:
    status: dict[str, Any] = {"name": name}
    if allocated is not None:
        status["allocatedResourcesStatus"] = allocated
    return {"status": {"containerStatuses": [status]}}


def test_the_grant_is_read_from_allocated_resources_status() -> None:
    assert granted_from_status(_status(None)) is None  # a kubelet without ResourceHealthStatus
    assert granted_from_status({"status": {}}) is None
    assert granted_from_status(_status([])) == frozenset()
    allocated = [
        {"name": "nvidia.com/mig-3g.40gb", "resources": [{"resourceID": "MIG-a", "health": "Healthy"}]},
        {"name": "nvidia.com/gpu", "resources": [{"resourceID": "GPU-b::2", "health": "Healthy"}]},
        {"name": "example.com/fpga", "resources": [{"resourceID": "fpga-0", "health": "Healthy"}]},
    ]
    assert granted_from_status(_status(allocated)) == frozenset({"MIG-a", "GPU-b"})
    assert granted_from_status(_status(allocated, name="sidecar")) is None


class FakeRunner:
    double_id = "t"

    async def run(self, spec: ContainerSpec) -> str:
        return "id"

    async def remove(self, name: str) -> None:
        return None


def test_the_double_reports_what_its_plugin_handed_each_pod() -> None:
    async def scenario() -> list[dict[str, Any]]:
        cluster = Cluster(INVENTORY, cast(PodmanRunner, FakeRunner()), "node")
        cluster.create_namespace({"metadata": {"name": "ns"}})
        limits = {"nvidia.com/mig-3g.40gb": "1", "nvidia.com/gpu": "1"}
        container = {"name": CONTAINER, "image": "busybox", "resources": {"limits": limits}}
        cluster.create_pod("ns", {"metadata": {"name": "a"}, "spec": {"containers": [container]}})
        pod = cluster.get_pod("ns", "a")
        assert pod.start is not None
        await pod.start
        return list(pod.obj["status"]["containerStatuses"])

    (status,) = asyncio.run(scenario())
    first_three = next(m for m in INVENTORY.migs if m.profile == "3g.40gb")
    assert granted_from_status({"status": {"containerStatuses": [status]}}) == frozenset(
        {first_three.uuid, INVENTORY.gpus[0].uuid}
    )


LISTING = """GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-11111111-2222-3333-4444-555555555555)
  MIG 3g.40gb     Device  0: (UUID: MIG-aaaaaaaa-2222-3333-4444-555555555555)
  MIG 1g.10gb     Device  1: (UUID: MIG-bbbbbbbb-2222-3333-4444-555555555555)
"""
QUERY = (
    "0, GPU-11111111-2222-3333-4444-555555555555, NVIDIA A100-SXM4-80GB, 00000000:19:00.0, 81920, "
    "580.105.08, 1\n"
)


def test_the_mig_probe_builds_mig_devices_under_their_parents() -> None:
    found = mig_inventory_from_probes({"node-a": (QUERY, LISTING)}, simulated=False, first_index=2)
    (parent,) = found.gpus
    assert (parent.index, parent.minor, parent.uuid) == (2, 1, "GPU-11111111-2222-3333-4444-555555555555")
    assert [(m.profile, m.device, m.parent_uuid, m.parent_index) for m in found.migs] == [
        ("3g.40gb", 0, parent.uuid, 2),
        ("1g.10gb", 1, parent.uuid, 2),
    ]


WHOLE = (
    "0, GPU-99999999-2222-3333-4444-555555555555, NVIDIA A100-SXM4-80GB, 00000000:18:00.0, 81920, "
    "580.105.08, 0\n"
)


def test_on_a_real_cluster_the_mig_cases_see_the_mig_units_the_nodes_advertise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = Inventory(host="runner", gpus=(), simulated=False, source="test")
    a = _adapter(tmp_path, runner)
    probes: list[tuple[str, dict[str, int]]] = []

    def probe(
        node: str, units: dict[str, int], argvs: list[list[str]], image: str, deadline: Deadline
    ) -> list[str]:
        probes.append((node, dict(units)))
        return [WHOLE] if "nvidia.com/gpu" in units else [QUERY, LISTING]

    monkeypatch.setattr(a, "core", lambda: object())
    monkeypatch.setattr(a, "_probe", probe)
    monkeypatch.setattr(kube_cluster, "gpu_nodes", lambda core: {"node-a": 1})
    units = {"nvidia.com/mig-3g.40gb": 1, "nvidia.com/mig-1g.10gb": 1}
    monkeypatch.setattr(kube_cluster, "mig_nodes", lambda core: {"node-a": units})
    truth = a.ground_truth(image="i", deadline=Deadline(5))
    assert truth is not None and [g.uuid for g in truth.gpus] == ["GPU-99999999-2222-3333-4444-555555555555"]
    assert probes == [("node-a", {"nvidia.com/gpu": 1}), ("node-a", units)]
    named = a.id_inventory()
    assert [(m.profile, m.parent_index, m.ids(SCHEME_K8S_RESOURCE)) for m in named.migs] == [
        ("3g.40gb", 1, ("nvidia.com/mig-3g.40gb",)),
        ("1g.10gb", 1, ("nvidia.com/mig-1g.10gb",)),
    ]


def test_a_failed_mig_probe_leaves_no_half_truth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = _adapter(tmp_path, Inventory(host="runner", gpus=(), simulated=False, source="test"))
    calls = []

    def probe(
        node: str, units: dict[str, int], argvs: list[list[str]], image: str, deadline: Deadline
    ) -> list[str]:
        calls.append(units)
        if "nvidia.com/gpu" in units:
            return [WHOLE]
        raise InfrastructureError("nvidia-smi -L in the probe pod on node-a failed")

    monkeypatch.setattr(a, "core", lambda: object())
    monkeypatch.setattr(a, "_probe", probe)
    monkeypatch.setattr(kube_cluster, "gpu_nodes", lambda core: {"node-a": 1})
    monkeypatch.setattr(kube_cluster, "mig_nodes", lambda core: {"node-a": {"nvidia.com/mig-1g.10gb": 1}})
    for _ in range(2):  # each cell asks again and gets the error again, never a truth without MIG
        with pytest.raises(InfrastructureError, match="probe pod on node-a"):
            a.ground_truth(image="i", deadline=Deadline(5))
    assert len(calls) == 4
