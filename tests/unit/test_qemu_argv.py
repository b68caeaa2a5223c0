"""The QEMU adapter without booting: its command line, the fw_cfg payload, and request handling.

Requests that must be refused are checked to be refused before anything starts: no lease held,
no VM directory, no QEMU process (``vm.launch`` is replaced by a function that fails the test).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from gpuconform.drivers import qemu_vm as vm
from gpuconform.drivers.base import AdapterContext, Deadline, InfrastructureError, RequestRejected
from gpuconform.drivers.inventory import Inventory
from gpuconform.drivers.leases import GpuLeases
from gpuconform.drivers.qemu import QemuAdapter, QemuSingleAdapter
from gpuconform.drivers.qemu_guest import guest_payload
from gpuconform.drivers.request import GpuRequest
from gpuconform.fixtures.sim.offer import simulated_host
from gpuconform.fixtures.sim.simgpu.faults import parse_faults
from gpuconform.fixtures.sim.simgpu.plan import build_plan, injection
from gpuconform.fixtures.sim.simgpu.profiles import get_profile

KIND = "sim.gpuconform.dev/unit"


def _spec(**kw: object) -> vm.VmSpec:
    base: dict[str, object] = dict(
        name="gpuconform-r1-abcd",
        binary="qemu-system-x86_64",
        accel="tcg",
        memory_mib=1024,
        cpus=2,
        kernel=Path("/c/vmlinuz"),
        initrd=Path("/c/initrd.img"),
        append="console=ttyS0",
        ssh_port=40022,
        console_log=Path("/s/console.log"),
        pidfile=Path("/s/qemu.pid"),
    )
    base.update(kw)
    return vm.VmSpec(**base)  # type: ignore[arg-type]


def _values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def test_simulated_vm_gets_no_vfio_device_and_its_payload_through_fw_cfg() -> None:
    argv = vm.qemu_argv(_spec(fw_cfg=(("hostkey", Path("/s/hostkey")), ("gpu1", Path("/sim/gpus/1")))))
    assert not any("vfio-pci" in a for a in argv)
    assert _values(argv, "-fw_cfg") == [
        "name=opt/gpuconform/hostkey,file=/s/hostkey",
        "name=opt/gpuconform/gpu1,file=/sim/gpus/1",
    ]
    assert _values(argv, "-name") == ["gpuconform-r1-abcd"]
    assert _values(argv, "-machine") == ["q35"]
    assert _values(argv, "-accel") == ["tcg,thread=multi"]
    assert _values(argv, "-serial") == ["file:/s/console.log"]


def test_ssh_is_forwarded_from_loopback_only() -> None:
    [netdev] = _values(vm.qemu_argv(_spec()), "-netdev")
    assert netdev == "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22"


def test_each_passed_through_gpu_sits_behind_its_own_pcie_root_port() -> None:
    argv = vm.qemu_argv(_spec(accel="kvm", vfio_bdfs=("0000:18:00.0", "0000:2a:00.0")))
    devices = _values(argv, "-device")
    ports = [d for d in devices if d.startswith("pcie-root-port")]
    gpus = [d for d in devices if d.startswith("vfio-pci")]
    assert ports == [
        "pcie-root-port,id=gpuport0,bus=pcie.0,chassis=1,slot=1",
        "pcie-root-port,id=gpuport1,bus=pcie.0,chassis=2,slot=2",
    ]
    assert gpus == ["vfio-pci,host=0000:18:00.0,bus=gpuport0", "vfio-pci,host=0000:2a:00.0,bus=gpuport1"]
    assert _values(argv, "-cpu") == ["host"] and _values(argv, "-accel") == ["kvm"]


def test_option_values_escape_commas() -> None:
    argv = vm.qemu_argv(_spec(disks=(Path("/a,b/py.ext4"),)))
    assert "file=/a,,b/py.ext4,if=none,id=disk0,format=raw,snapshot=on" in _values(argv, "-drive")


def test_guest_disk_is_copy_on_write_never_read_only() -> None:
    [drive] = _values(vm.qemu_argv(_spec(disks=(Path("/c/root.ext4"),))), "-drive")
    options = drive.split(",")
    assert "snapshot=on" in options and not any(o.startswith("readonly") for o in options)


def test_64_bit_pci_hole_is_set_only_when_sized() -> None:
    assert "-global" not in vm.qemu_argv(_spec())
    argv = vm.qemu_argv(_spec(accel="kvm", vfio_bdfs=("0000:18:00.0",), pci_hole64=256 << 30))
    assert _values(argv, "-global") == ["q35-pcihost.pci-hole64-size=256G"]


def _plan(tmp_path: Path, faults: str = "") -> dict[str, object]:
    prof = get_profile("h100x4")
    root = tmp_path / "sim"
    (root / "gpus").mkdir(parents=True)
    (root / "bin").mkdir()
    for gpu in prof.gpus:
        (root / "gpus" / str(gpu.minor)).write_text(f"MINOR={gpu.minor}\n")
    (root / "bin" / "nvidia-smi").write_text("#!/bin/sh\n")
    (root / "bin" / "nvidia-smi").chmod(0o755)
    parsed = parse_faults([faults] if faults else [], prof.count)
    return build_plan("unit", prof.gpus, parsed, root)


def test_payload_carries_nodes_descriptors_and_nvidia_smi_of_the_granted_gpus(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    payload = guest_payload([injection(plan, "0"), injection(plan, "2")])  # type: ignore[list-item]
    lines = payload.manifest.splitlines()
    assert "node /dev/nvidia0 c 1 3" in lines and "node /dev/nvidia2 c 1 3" in lines
    assert "node /dev/nvidiactl c 1 3" in lines and not any("nvidia1 " in line for line in lines)
    assert "file gpu0 /run/gpuconform-sim/gpus/0 644" in lines
    assert "file nvidia-smi /usr/bin/nvidia-smi 755" in lines
    assert payload.gpu_minors == (0, 2)
    assert dict(payload.files)["gpu2"] == tmp_path / "sim" / "gpus" / "2"


def test_payload_follows_the_plan_when_a_fault_injects_the_wrong_gpu(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "wrong-gpu:1")
    payload = guest_payload([injection(plan, "1"), injection(plan, "2")])  # type: ignore[list-item]
    assert payload.gpu_minors == (2,)  # both entries inject GPU 2: merged once, as a runtime would
    assert payload.manifest.count("node /dev/nvidia2 ") == 1


def test_payload_refuses_a_missing_simulated_file(tmp_path: Path) -> None:
    mount = {"containerPath": "/run/gpuconform-sim/gpus/0", "hostPath": str(tmp_path / "gone")}
    with pytest.raises(InfrastructureError, match="is missing"):
        guest_payload([{"mounts": [mount]}])


@pytest.fixture
def ctx(tmp_path: Path) -> AdapterContext:
    prof = get_profile("h100x4")
    inv = Inventory(host="unit", gpus=prof.records(KIND), simulated=True, source="unit", cdi_kind=KIND)
    return AdapterContext(
        inv,
        GpuLeases(tmp_path / "leases"),
        run_id="r1",
        state_dir=tmp_path / "state",
        sim=simulated_host({}, inv),
    )


@pytest.fixture
def no_boot(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("QEMU was started for a request that must be refused")

    monkeypatch.setattr(vm, "launch", refuse)


def _nothing_left(ctx: AdapterContext) -> None:
    assert not (Path(ctx.state_dir) / "qemu" / "vms" / "r1").exists() or not any(
        (Path(ctx.state_dir) / "qemu" / "vms" / "r1").iterdir()
    )
    every = ctx.leases.acquire(ctx.inventory.gpus, len(ctx.inventory.gpus), Deadline(1))  # all free again
    every.release()


@pytest.mark.usefixtures("no_boot")
def test_an_unknown_device_id_is_rejected_by_name_before_anything_starts(ctx: AdapterContext) -> None:
    with pytest.raises(RequestRejected, match="'0000:99:00.0'") as info:
        QemuAdapter(ctx).provision(
            GpuRequest.of_ids(["0000:99:00.0"]), image="busybox", labels={}, deadline=Deadline(5)
        )
    assert "0000:18:00.0" in info.value.hint  # the hint lists the ids that do exist
    _nothing_left(ctx)


@pytest.mark.usefixtures("no_boot")
def test_count_over_the_inventory_is_rejected_before_anything_starts(ctx: AdapterContext) -> None:
    with pytest.raises(RequestRejected, match="requested 5 GPUs but the host has 4"):
        QemuAdapter(ctx).provision(GpuRequest.of_count(5), image="busybox", labels={}, deadline=Deadline(5))
    _nothing_left(ctx)


@pytest.mark.usefixtures("no_boot")
@pytest.mark.parametrize("req", [GpuRequest.of_count(2), GpuRequest.of_ids(["0", "1"], count=2)])
def test_qemu_single_rejects_more_than_one_gpu(ctx: AdapterContext, req: GpuRequest) -> None:
    with pytest.raises(RequestRejected, match="one GPU per VM; 2 requested"):
        QemuSingleAdapter(ctx).provision(req, image="busybox", labels={}, deadline=Deadline(5))
    _nothing_left(ctx)


def test_qemu_single_is_also_an_option_and_declares_multi_gpu_cases_must_reject(ctx: AdapterContext) -> None:
    ctx.options = {"qemu.single": "1"}
    profile = QemuAdapter(ctx).profile
    assert {c: profile.expect(c) for c in ("count.2", "device.pair", "count.max", "smi.all", "count.1")} == {
        "count.2": "reject",
        "device.pair": "reject",
        "count.max": "reject",
        "smi.all": "reject",
        "count.1": "supported",
    }
    assert (
        QemuAdapter(AdapterContext(ctx.inventory, ctx.leases, "r1")).profile.expect("count.2") == "supported"
    )


def test_device_ids_resolve_from_pci_bus_ids_in_either_width_and_host_indices(ctx: AdapterContext) -> None:
    adapter = QemuAdapter(ctx)
    gpus = ctx.inventory.gpus
    wide = "0000" + gpus[1].pci_bus_id  # nvidia-smi's 8-hex-digit domain
    assert adapter.resolve_ids([gpus[0].pci_bus_id, wide, "3"]) == [gpus[0], gpus[1], gpus[3]]
    with pytest.raises(RequestRejected, match="a second time"):
        adapter.resolve_ids(["0", gpus[0].pci_bus_id])


def test_a_real_sysfs_root_is_refused_on_a_simulated_host(ctx: AdapterContext) -> None:
    ctx.options = {"qemu.sysfs_root": "/sys"}
    with pytest.raises(InfrastructureError, match="refusing qemu.sysfs_root=/sys"):
        QemuAdapter(ctx).vfio_site()


def test_gc_removes_the_runs_vm_directories(ctx: AdapterContext) -> None:
    leftover = Path(ctx.state_dir) / "qemu" / "vms" / "r1" / "gpuconform-r1-dead"
    leftover.mkdir(parents=True)
    (leftover / "qemu.pid").write_text("999999\n")
    other = Path(ctx.state_dir) / "qemu" / "vms" / "r2"
    other.mkdir(parents=True)
    removed = QemuAdapter(ctx).gc("r1")
    assert not leftover.exists() and other.exists()
    assert any("VM directories" in line for line in removed)


def test_cpu_model_is_the_hosts_under_kvm_one_without_avx_under_tcg_or_the_runners() -> None:
    assert _values(vm.qemu_argv(_spec(accel="kvm")), "-cpu") == ["host"]
    assert _values(vm.qemu_argv(_spec(accel="tcg")), "-cpu") == [vm.TCG_CPU] == ["Nehalem"]
    assert _values(vm.qemu_argv(_spec(accel="tcg", cpu_model="max")), "-cpu") == ["max"]


def test_a_kvm_probe_verdict_is_kept_for_this_boot_and_asked_again_for_another_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hanging nested KVM cost each process the whole probe timeout; its verdict is now kept
    on disk, keyed by this boot, the binary, the kernel and /dev/kvm."""
    calls: list[list[str]] = []

    def fake_run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        raise subprocess.TimeoutExpired(argv, 5)

    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"kernel")
    monkeypatch.setattr(vm, "PROBE_CACHE", tmp_path / "cache")
    monkeypatch.setattr(vm, "_PROBES", {})
    monkeypatch.setattr(os, "access", lambda path, mode: True)
    monkeypatch.setattr(subprocess, "run", fake_run)
    if not Path("/dev/kvm").exists():
        pytest.skip("the cache key includes /dev/kvm's identity; this machine has none")
    first = vm.kvm_usable("/bin/true", kernel)
    assert first == (False, "kvm probe hung for 5s (nested KVM?)") and len(calls) == 1
    monkeypatch.setattr(vm, "_PROBES", {})  # a new process
    kept = vm.kvm_usable("/bin/true", kernel)
    assert kept[0] is False and "kept from an earlier probe" in kept[1] and len(calls) == 1
    monkeypatch.setattr(vm, "_PROBES", {})
    other = tmp_path / "vmlinux2"
    other.write_bytes(b"another kernel")
    vm.kvm_usable("/bin/true", other)
    assert len(calls) == 2
