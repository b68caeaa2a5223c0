"""Doctor's real-host checks against the most faithful doubles there are here.

No GPU, IOMMU or cluster exists on this machine: the QEMU/VFIO lines run against the fake sysfs
tree the VFIO code is tested with (fixtures/sim/fakesysfs.py), the Kubernetes lines against the API
double through the real client, and the Docker lines against engine facts as the API reports
them. What these doubles cannot show (a real IOMMU, a real device plugin) is checked on GPU
runners only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from gpuconform.conformance.doctor.cluster import kubernetes_checks
from gpuconform.conformance.doctor.hostfacts import HostFacts, host_checks
from gpuconform.conformance.doctor.model import Check, Status
from gpuconform.conformance.doctor.vm import qemu_checks
from gpuconform.drivers.inventory import Inventory, records_from_query
from gpuconform.fixtures.sim.fakesysfs import FakeSysfs, intel_nic, nvidia_audio, nvidia_gpu

GPU_A, GPU_B = "0000:18:00.0", "0000:2a:00.0"


def _inventory(*bus_ids: str) -> Inventory:
    rows = [
        {"index": i, "uuid": f"GPU-{i:08x}-0000-4000-8000-000000000000", "name": "NVIDIA H100 80GB HBM3",
         "pci.bus_id": f"0000{bdf}", "memory.total": 81559, "driver_version": "580.105.08"}
        for i, bdf in enumerate(bus_ids)
    ]  # fmt: skip
    return Inventory(host="gpu-a", gpus=records_from_query(rows), simulated=False, source="test")


def _lines(checks: Sequence[Check]) -> dict[str, tuple[Status, str]]:
    return {c.what: (c.status, c.detail) for c in checks}


def test_a_gpu_on_the_bus_without_a_working_nvidia_smi_is_a_missing_host_driver(tmp_path: Path) -> None:
    tree = FakeSysfs.for_gpus(tmp_path / "sys", [GPU_A])
    facts = HostFacts(None, sysfs=tree.root, dev_root=tmp_path, smi_argv=(str(tmp_path / "no-nvidia-smi"),))
    checks = host_checks(facts)
    lines = _lines(checks)
    assert lines["host driver"][0] == Status.MISSING
    assert f"though the kernel shows NVIDIA hardware ({GPU_A} on nvidia" in lines["host driver"][1]
    assert lines["nvidia-smi"][0] == Status.MISSING
    assert "hint: install the NVIDIA driver" in checks[0].line()


def test_a_host_whose_gpus_are_all_on_vfio_pci_runs_only_the_qemu_columns(tmp_path: Path) -> None:
    tree = FakeSysfs.for_gpus(tmp_path / "sys", [GPU_A])
    tree.set_driver(GPU_A, "vfio-pci")
    facts = HostFacts(None, sysfs=tree.root, dev_root=tmp_path)
    [line] = host_checks(facts)
    assert (line.status, line.what) == (Status.NOTE, "host driver")
    assert "every NVIDIA GPU is bound to vfio-pci" in line.detail and "host.uuid_map" in line.hint


def test_qemu_lists_each_gpus_iommu_group_and_its_companions(tmp_path: Path) -> None:
    tree = FakeSysfs.create(
        tmp_path / "sys",
        [
            nvidia_gpu(GPU_A, 10),
            nvidia_audio(GPU_A[:-1] + "1", 10),
            nvidia_gpu(GPU_B, 11),
            intel_nic("0000:2b:00.0", 11),
        ],
    )
    lines = _lines(qemu_checks(HostFacts(_inventory(GPU_A, GPU_B), sysfs=tree.root)))
    assert lines["IOMMU"] == (Status.OK, "on (2 groups)")
    status, detail = lines[f"IOMMU group {GPU_A}"]
    assert status == Status.OK and detail.startswith("group 10, bound to nvidia; passed through with it: ")
    assert GPU_A[:-1] + "1" in detail
    assert "0000:2b:00.0" in lines[f"IOMMU group {GPU_B}"][1]
    assert lines["vfio-pci"] == (Status.OK, "loaded")


def test_qemu_without_iommu_says_how_to_turn_it_on(tmp_path: Path) -> None:
    tree = FakeSysfs.create(tmp_path / "sys", [nvidia_gpu(GPU_A, None)])
    checks = qemu_checks(HostFacts(_inventory(GPU_A), sysfs=tree.root))
    lines = _lines(checks)
    assert lines["IOMMU"][0] == Status.MISSING
    assert "intel_iommu=on" in next(c for c in checks if c.what == "IOMMU").hint
    assert lines[f"IOMMU group {GPU_A}"] == (Status.WRONG, "the GPU has no IOMMU group")


@pytest.mark.skipif(os.geteuid() != 0, reason="the simulated host (mknod) and podman need root")
def test_kubernetes_context_device_plugin_and_allocatable_gpus_through_the_real_client(
    tmp_path: Path,
) -> None:
    from gpuconform.fixtures.sim.kubedouble import KubeDouble
    from gpuconform.fixtures.sim.simgpu.host import SimHost

    (tmp_path / "cdi").mkdir()
    sim = SimHost.up("h100x4", instance=f"kd{os.getpid()}", cdi_dir=tmp_path / "cdi", owner_pid=os.getpid())
    try:
        with KubeDouble.from_sim_host(sim) as kube:
            config = kube.write_kubeconfig(tmp_path / "kubeconfig")
            lines = _lines(kubernetes_checks(HostFacts(sim.inventory), str(config), None))
    finally:
        sim.down()
    assert lines["kubernetes context"][0] == Status.OK
    assert lines["device plugin"][0] == Status.OK
    assert "kube-system/kubedouble-device-plugin ready on" in lines["device plugin"][1]
    assert lines["allocatable GPUs"][0] == Status.OK
    assert "=4" in lines["allocatable GPUs"][1]


def test_kubernetes_without_a_context_is_missing_with_a_hint(tmp_path: Path) -> None:
    checks = kubernetes_checks(HostFacts(None), str(tmp_path / "absent-kubeconfig"), None)
    assert [(c.what, c.status) for c in checks] == [("kubernetes context", Status.MISSING)]
    assert "gpuconform cluster up --kind" in checks[0].hint
