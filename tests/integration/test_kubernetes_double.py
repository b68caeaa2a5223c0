"""The kubernetes adapter end to end: the real client, over HTTP, against the API double.

The double (fixtures/sim/kubedouble) schedules pods onto a simulated host's GPUs like the scheduler
and device plugin would, and runs each one for real as a Podman container with the CDI devices
the device plugin would have allocated, so what a pod sees is what the simulated host's CDI spec
injects. Everything created here (containers, simulated host, CDI spec) is removed at the end.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuconform.drivers.base import (
    LABEL_CASE,
    LABEL_RUN,
    AdapterContext,
    Deadline,
    InfrastructureError,
    RequestRejected,
)
from gpuconform.drivers.kubernetes import DEVICE_IDS_UNSUPPORTED, KubernetesAdapter
from gpuconform.drivers.leases import GpuLeases
from gpuconform.drivers.request import GpuRequest
from gpuconform.fixtures.sim.kubedouble import KubeDouble
from gpuconform.fixtures.sim.simgpu.host import SimHost

pytestmark = pytest.mark.integration
COUNT_OVER_BOUND_S = 5.0  # what this test holds count.over to against the double
SMI_UUIDS = ["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"]


def _sim(*faults: str) -> SimHost:
    return SimHost.up("h100x4", faults=faults, instance=f"k{secrets.token_hex(4)}", owner_pid=os.getpid())


@pytest.fixture(scope="module")
def sim(image: str) -> Iterator[SimHost]:
    host = _sim()
    try:
        yield host
    finally:
        host.down()


@pytest.fixture(scope="module")
def double(sim: SimHost) -> Iterator[KubeDouble]:
    kube = KubeDouble.from_sim_host(sim)
    kube.start()
    try:
        yield kube
    finally:
        kube.stop()
        assert kube.containers() == []


def make_adapter(kube: KubeDouble, host: SimHost, image: str, tmp: Path, **options: str) -> KubernetesAdapter:
    ctx = AdapterContext(
        inventory=host.inventory,
        leases=GpuLeases(tmp / "leases"),
        run_id=f"it-{secrets.token_hex(3)}",
        options={
            "kubernetes.kubeconfig": str(kube.write_kubeconfig(tmp / "kubeconfig")),
            "image.busybox": image,
            **options,
        },
    )
    return KubernetesAdapter(ctx)


@pytest.fixture
def adapter(double: KubeDouble, sim: SimHost, image: str, tmp_path: Path) -> Iterator[KubernetesAdapter]:
    a = make_adapter(double, sim, image, tmp_path)
    assert a.available().ok
    yield a
    a.gc(a.ctx.run_id)
    assert double.pod_names() == []
    assert double.containers() == []


def uuids(result_stdout: str) -> list[str]:
    return [line.strip() for line in result_stdout.splitlines() if line.strip()]


def test_available_reports_the_server_the_device_plugin_and_gpu_capacity(adapter: KubernetesAdapter) -> None:
    avail = adapter.available()
    assert avail.ok, avail.reason
    assert avail.versions["kubernetes"].endswith("+kubedouble")
    assert avail.versions["device_list_strategy"] == "cdi-cri"
    assert avail.versions["nvidia.com/gpu"] == "kubedouble-node=4"
    assert adapter.gpu_nodes() == {"kubedouble-node": 4}


def test_default_pod_sees_exactly_the_one_gpu_the_device_plugin_allocated(
    adapter: KubernetesAdapter, double: KubeDouble, sim: SimHost, image: str
) -> None:
    with adapter.provision(GpuRequest.default(), image=image, labels={}, deadline=Deadline(60)) as box:
        (allocated,) = double.allocations().values()
        # what the device plugin handed the pod, as the kubelet reports it (allocatedResourcesStatus)
        assert box.granted == frozenset(allocated)
        listing = box.exec(["nvidia-smi", "-L"], timeout=30)
        assert listing.ok, listing
        assert len(listing.stdout.splitlines()) == 1
        seen = uuids(box.exec(SMI_UUIDS, timeout=30).stdout)
        assert seen == list(allocated)
        assert set(seen) <= sim.inventory.uuids
        nodes = box.exec(["sh", "-c", "ls /dev | grep -E '^nvidia[0-9]+$'"], timeout=30)
        assert nodes.stdout.split() == [f"nvidia{sim.inventory.by_uuid(seen[0]).minor}"]  # type: ignore[union-attr]


def test_count_two_sees_two_distinct_inventory_uuids(
    adapter: KubernetesAdapter, sim: SimHost, image: str
) -> None:
    with adapter.provision(GpuRequest.of_count(2), image=image, labels={}, deadline=Deadline(60)) as box:
        seen = uuids(box.exec(SMI_UUIDS, timeout=30).stdout)
        assert len(seen) == len(set(seen)) == 2
        assert set(seen) <= sim.inventory.uuids


def test_count_over_is_rejected_with_the_scheduler_message_in_bound_and_leaves_nothing(
    adapter: KubernetesAdapter, double: KubeDouble, image: str
) -> None:
    labels = {LABEL_CASE: "count.over"}
    creates = double.pod_creates()
    start = time.monotonic()
    with pytest.raises(RequestRejected) as info:
        adapter.provision(GpuRequest.of_count(5), image=image, labels=labels, deadline=Deadline(60))
    elapsed = time.monotonic() - start
    assert elapsed < COUNT_OVER_BOUND_S
    assert "0/1 nodes are available: 1 Insufficient nvidia.com/gpu." in info.value.message
    diagnostics = info.value.diagnostics
    assert any(e["reason"] == "FailedScheduling" for e in diagnostics["events"])
    assert adapter.leftovers({**adapter.ctx.labels, **labels}) == []
    assert double.pod_names() == []
    assert double.containers() == []
    assert double.pod_creates() == creates + 1


def test_device_ids_are_rejected_before_any_request_reaches_the_api(
    double: KubeDouble, sim: SimHost, image: str, tmp_path: Path
) -> None:
    a = make_adapter(double, sim, image, tmp_path)
    served = len(double.requests)
    with pytest.raises(RequestRejected) as info:
        a.provision(
            GpuRequest.of_ids([sim.inventory.gpus[0].uuid]), image=image, labels={}, deadline=Deadline(30)
        )
    assert info.value.message.startswith(DEVICE_IDS_UNSUPPORTED)
    assert double.requests[served:] == []


def test_exec_reports_real_exit_codes_streams_and_timeouts(adapter: KubernetesAdapter, image: str) -> None:
    with adapter.provision(GpuRequest.none(), image=image, labels={}, deadline=Deadline(60)) as box:
        failed = box.exec(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=30)
        assert (failed.exit_code, failed.stdout, failed.stderr) == (3, "out\n", "err\n")
        assert box.exec(["true"], timeout=30).exit_code == 0
        assert box.exec(["sh", "-c", "exit 255"], timeout=30).exit_code == 255
        missing = box.exec(["no-such-binary-here"], timeout=30)
        assert missing.exit_code == 127
        start = time.monotonic()
        slow = box.exec(["sleep", "30"], timeout=1.5)
        assert slow.timed_out and slow.exit_code is None
        assert time.monotonic() - start < 5
        nogpu = box.exec(["sh", "-c", "ls /dev | grep -cE '^nvidia[0-9]+$'"], timeout=30)
        assert nogpu.stdout.strip() == "0"


def test_put_file_copies_bytes_exactly(adapter: KubernetesAdapter, image: str) -> None:
    data = bytes(range(256)) * 300  # binary, larger than one websocket frame chunk
    with adapter.provision(GpuRequest.none(), image=image, labels={}, deadline=Deadline(60)) as box:
        box.put_file("/tmp/gpuconform/probe.bin", data, 0o700)
        listed = box.exec(
            ["sh", "-c", "wc -c < /tmp/gpuconform/probe.bin; ls -l /tmp/gpuconform/probe.bin"], timeout=30
        )
        size, mode_line = listed.stdout.splitlines()
        assert int(size) == len(data)
        assert mode_line.startswith("-rwx------")
        import hashlib

        digest = box.exec(["sha256sum", "/tmp/gpuconform/probe.bin"], timeout=30).stdout.split()[0]
        assert digest == hashlib.sha256(data).hexdigest()


def test_concurrent_default_pods_get_disjoint_gpus(adapter: KubernetesAdapter, image: str) -> None:
    with (
        adapter.provision(GpuRequest.default(), image=image, labels={}, deadline=Deadline(60)) as one,
        adapter.provision(GpuRequest.default(), image=image, labels={}, deadline=Deadline(60)) as two,
    ):
        first = set(uuids(one.exec(SMI_UUIDS, timeout=30).stdout))
        second = set(uuids(two.exec(SMI_UUIDS, timeout=30).stdout))
        assert len(first) == len(second) == 1
        assert first.isdisjoint(second)


def test_release_busy_gpus_reject_after_the_bound_and_schedule_after_deletion(
    double: KubeDouble, sim: SimHost, image: str, tmp_path: Path
) -> None:
    a = make_adapter(double, sim, image, tmp_path, **{"kubernetes.unschedulable_wait": "2"})
    try:
        full = a.provision(GpuRequest.of_count(4), image=image, labels={}, deadline=Deadline(60))
        start = time.monotonic()
        with pytest.raises(RequestRejected, match="stayed busy"):
            a.provision(GpuRequest.default(), image=image, labels={}, deadline=Deadline(60))
        assert 2 <= time.monotonic() - start < 8
        full.close()
        full.close()  # idempotent
        assert a.gpu_nodes() == {"kubedouble-node": 4}
        with a.provision(GpuRequest.of_count(4), image=image, labels={}, deadline=Deadline(60)):
            pass  # every GPU schedules again
        assert double.pod_names() == []
    finally:
        a.gc(a.ctx.run_id)


def test_node_gpu_uuids_is_the_inventory(adapter: KubernetesAdapter, sim: SimHost) -> None:
    assert adapter.node_gpu_uuids() == {"kubedouble-node": sim.inventory.uuids}


def test_cluster_ground_truth_is_read_from_the_gpu_nodes(
    double: KubeDouble, sim: SimHost, image: str, tmp_path: Path
) -> None:
    """What a real cluster's column is judged against, read through probe pods from the double."""
    a = make_adapter(double, sim, image, tmp_path, **{"kubernetes.ground_truth": "cluster"})
    assert a.available().ok
    try:
        truth = a.ground_truth()
        assert truth is not None and truth.source == "kubernetes nodes kubedouble-node"
        want = {
            g.uuid: (g.name, g.memory_total_mib, g.driver_version, g.pci_bus_id) for g in sim.inventory.gpus
        }
        assert {
            g.uuid: (g.name, g.memory_total_mib, g.driver_version, g.pci_bus_id) for g in truth.gpus
        } == want
        assert a.ground_truth() is truth  # probed once per adapter
        assert double.pod_names() == []  # the probe pods are gone, their GPUs free again
    finally:
        a.gc(a.ctx.run_id)


def test_missing_image_fails_fast_with_diagnostics_and_no_pod(
    adapter: KubernetesAdapter, double: KubeDouble
) -> None:
    with pytest.raises(InfrastructureError) as info:
        adapter.provision(
            GpuRequest.default(), image="localhost/gpuconform/absent:0", labels={}, deadline=Deadline(60)
        )
    assert "ErrImage" in info.value.message
    diagnostics = info.value.diagnostics
    assert diagnostics["describe"]["containers"][0]["state"]["waiting"]["reason"].startswith("ErrImage")
    assert double.pod_names() == []
    assert double.allocations() == {}


def test_gc_removes_labelled_pods_namespaces_and_their_containers(
    double: KubeDouble, sim: SimHost, image: str, tmp_path: Path
) -> None:
    a = make_adapter(double, sim, image, tmp_path)
    a.provision(GpuRequest.default(), image=image, labels={}, deadline=Deadline(60))  # left behind on purpose
    assert len(double.containers()) == 1
    gone = a.gc(a.ctx.run_id)
    assert any(g.startswith("pod/") for g in gone)
    assert f"namespace/{a.namespace}" in gone
    assert double.pod_names() == []
    assert double.containers() == []
    assert a.leftovers({LABEL_RUN: a.ctx.run_id}) == []


def test_simulated_host_faults_reach_the_pod_through_the_device_plugin(image: str, tmp_path: Path) -> None:
    host = _sim("wrong-gpu:0")
    try:
        with KubeDouble.from_sim_host(host) as kube:
            a = make_adapter(kube, host, image, tmp_path)
            with a.provision(GpuRequest.default(), image=image, labels={}, deadline=Deadline(60)) as box:
                (allocated,) = kube.allocations().values()
                assert allocated == (host.inventory.gpus[0].uuid,)  # the plugin handed out GPU 0 ...
                seen = uuids(box.exec(SMI_UUIDS, timeout=30).stdout)
                assert seen == [host.inventory.gpus[1].uuid]  # ... and its CDI entry injected GPU 1
            a.gc(a.ctx.run_id)
            assert kube.containers() == []
    finally:
        host.down()
