"""A GPU host is never run as a simulated one; a vfio-only host runs the VM column; qemu is opt-in.

The "host" is a fake sysfs tree (fixtures.fakesysfs), a fake /dev and a fake ``nvidia-smi`` first
on PATH that fails the way a driver/library mismatch does (NVML exit 18).
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from gpuconform.drivers.registry import BUILTIN, default_drivers
from gpuconform.fixtures.hostgpus import UNKNOWN_UUID_PREFIX, HostGpuError, detect_nvidia
from gpuconform.fixtures.settings import Settings
from gpuconform.fixtures.sim import environment
from gpuconform.fixtures.sim.environment import (
    EnvironmentSetupError,
    discover_real_inventory,
    ensure_environment,
)
from gpuconform.fixtures.sim.fakesysfs import FakeSysfs, intel_nic, nvidia_audio, nvidia_gpu

MISMATCH = "Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 580.95"


def fake_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, code: int, out: str) -> Path:
    """An ``nvidia-smi`` on PATH that prints ``out`` and exits ``code`` (and logs that it ran)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    script = bindir / "nvidia-smi"
    script.write_text(f"#!/bin/sh\necho ran >> {bindir}/calls\ncat <<'EOF'\n{out}\nEOF\nexit {code}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    return bindir / "calls"


@pytest.fixture
def gpu_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeSysfs:
    """Two GPUs on the nvidia driver, a NIC, and /dev/nvidiactl; the environment reads these roots."""
    tree = FakeSysfs.create(
        tmp_path / "sys",
        [
            nvidia_gpu("0000:18:00.0", 10),
            nvidia_audio("0000:18:00.1", 10),
            nvidia_gpu("0000:2a:00.0", 11),
            intel_nic("0000:03:00.0", 3),
        ],
    )
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "nvidiactl").touch()
    monkeypatch.setattr(environment, "SYS_ROOT", tree.root)
    monkeypatch.setattr(environment, "DEV_ROOT", dev)
    return tree


def no_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuconform.fixtures.sim.simgpu.host import SimHost

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a simulated host was brought up on a GPU host")

    monkeypatch.setattr(SimHost, "up", refuse)


def test_machine_without_nvidia_hardware_is_told_apart_from_a_gpu_host(tmp_path: Path) -> None:
    tree = FakeSysfs.create(tmp_path / "sys", [intel_nic("0000:03:00.0", 3)])
    (tmp_path / "dev").mkdir()
    assert not detect_nvidia(tree.root, tmp_path / "dev").present
    assert discover_real_inventory(sys_root=tree.root, dev_root=tmp_path / "dev") is None
    (tmp_path / "dev/nvidiactl").touch()  # a driver loaded with no PCI function visible: still a GPU host
    assert detect_nvidia(tree.root, tmp_path / "dev").present


def test_gpu_host_whose_nvidia_smi_fails_is_an_error_with_its_message(
    gpu_host: FakeSysfs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_smi(tmp_path, monkeypatch, code=18, out=MISMATCH)
    with pytest.raises(HostGpuError) as info:
        discover_real_inventory()
    message = str(info.value)
    assert calls.read_text().strip() == "ran"  # the failing nvidia-smi really was asked
    assert "exited 18 (LIB_RM_VERSION_MISMATCH)" in message
    assert "Driver/library version mismatch" in message
    assert "0000:18:00.0 on nvidia" in message and "\n" not in message


def test_gpu_host_without_nvidia_smi_installed_is_an_error(
    gpu_host: FakeSysfs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(HostGpuError, match="nvidia-smi is not installed"):
        discover_real_inventory()


@pytest.mark.parametrize("sim", ["auto", "none"])
def test_run_on_gpu_host_with_failing_smi_ends_in_error_and_never_simulates(
    gpu_host: FakeSysfs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim: str
) -> None:
    fake_smi(tmp_path, monkeypatch, code=18, out=MISMATCH)
    no_simulation(monkeypatch)
    run_dir = tmp_path / "run"
    for _ in range(2):  # a second process (an xdist worker) meets the same refusal
        with pytest.raises(EnvironmentSetupError, match="version mismatch") as info:
            ensure_environment(Settings(sim=sim), run_dir, "t1")
        assert "never run as a simulated one" in str(info.value)
    assert not (run_dir / "env.json").exists()  # no state, so nothing SIMULATED is ever recorded
    assert json.loads((run_dir / "env.error.json").read_text())["message"].startswith("this host has")


def test_gpu_host_with_working_smi_gives_the_real_inventory(
    gpu_host: FakeSysfs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = "\n".join(
        f"{i}, GPU-{i}1111111-2222-3333-4444-555555555555, NVIDIA H100 80GB HBM3, 00000000:{b}:00.0, "
        "81559, 580.105.08"
        for i, b in ((0, "18"), (1, "2A"))
    )
    fake_smi(tmp_path, monkeypatch, code=0, out=rows)  # the minor_number query gets unparsable rows
    no_simulation(monkeypatch)
    state = ensure_environment(Settings(sim="auto"), tmp_path / "run", "t2")
    assert not state.inventory.simulated and state.inventory.source == "nvidia-smi"
    assert [g.pci_bus_id for g in state.inventory.gpus] == ["0000:18:00.0", "0000:2a:00.0"]
    assert [g.minor for g in state.inventory.gpus] == [0, 1]


def vfio_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeSysfs:
    tree = FakeSysfs.create(
        tmp_path / "sys",
        [
            nvidia_gpu("0000:18:00.0", 10, driver="vfio-pci"),
            nvidia_audio("0000:18:00.1", 10, driver="vfio-pci"),
            nvidia_gpu("0000:2a:00.0", 11, driver="vfio-pci"),
        ],
    )
    (tmp_path / "dev").mkdir()
    monkeypatch.setattr(environment, "SYS_ROOT", tree.root)
    monkeypatch.setattr(environment, "DEV_ROOT", tmp_path / "dev")
    return tree


def test_vfio_only_host_runs_the_vm_column_with_an_inventory_from_sysfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vfio_host(tmp_path, monkeypatch)
    calls = fake_smi(
        tmp_path, monkeypatch, code=9, out="NVIDIA-SMI has failed because it couldn't communicate"
    )
    no_simulation(monkeypatch)
    state = ensure_environment(Settings(sim="auto"), tmp_path / "run", "t3")
    inv = state.inventory
    assert not inv.simulated and "vfio-pci" in inv.source and "UUIDs unknown" in inv.source
    assert [g.pci_bus_id for g in inv.gpus] == [
        "0000:18:00.0",
        "0000:2a:00.0",
    ]  # the audio function is no GPU
    assert inv.gpus[0].name == "NVIDIA PCI device 10de:2330 (IOMMU group 10)"
    assert all(g.uuid.startswith(UNKNOWN_UUID_PREFIX) for g in inv.gpus)
    for driver in ("host", "podman", "docker", "kubernetes"):
        assert "bound to vfio-pci" in state.options[f"{driver}.unavailable"]
    assert not calls.exists()  # nvidia-smi cannot speak for GPUs it does not drive
    # Without UUIDs every VM cell would fail its UUID comparison, blaming the driver: it skips instead.
    for driver in ("qemu", "qemu-single"):
        assert "0000:18:00.0, 0000:2a:00.0 are unknown" in state.options[f"{driver}.unavailable"]
        assert "host.uuid_map=FILE" in state.options[f"{driver}.unavailable"]


def test_vfio_only_host_takes_uuids_from_a_recorded_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vfio_host(tmp_path, monkeypatch)
    uuid_map = tmp_path / "uuids.csv"
    uuid_map.write_text("00000000:18:00.0, GPU-aaaa\n00000000:2A:00.0, GPU-bbbb\n")
    settings = Settings(sim="auto", driver_options={"host.uuid_map": str(uuid_map)})
    state = ensure_environment(settings, tmp_path / "run", "t4")
    assert [g.uuid for g in state.inventory.gpus] == ["GPU-aaaa", "GPU-bbbb"]
    assert "qemu.unavailable" not in state.options and "qemu-single.unavailable" not in state.options
    assert "bound to vfio-pci" in state.options["podman.unavailable"]
    assert state.inventory.gpus[1].ids("pci") == ("0000:2a:00.0", "1")


def test_a_bad_uuid_map_is_one_line_with_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vfio_host(tmp_path, monkeypatch)
    uuid_map = tmp_path / "uuids.csv"
    uuid_map.write_text("0, GPU-aaaa\n")
    settings = Settings(sim="auto", driver_options={"host.uuid_map": str(uuid_map)})
    with pytest.raises(EnvironmentSetupError, match=r"line 1: not a PCI bus id.*hint: the file is"):
        ensure_environment(settings, tmp_path / "run", "t5")


def test_qemu_is_opt_in_on_a_host_with_real_gpus(gpu_host: FakeSysfs) -> None:
    assert environment.uses_real_gpus(Settings(sim="auto"))
    drivers = default_drivers(real_gpus=environment.uses_real_gpus(Settings(sim="auto")))
    assert "qemu" not in drivers and "qemu-single" not in drivers
    assert drivers == [d for d in default_drivers(real_gpus=False) if not d.startswith("qemu")]
    assert {"host", "podman", "kubernetes"} <= set(drivers)
    assert not environment.uses_real_gpus(Settings(sim="h100x4"))  # an explicit simulated run
    assert default_drivers(real_gpus=False)[: len(BUILTIN)] == list(BUILTIN)


def test_qemu_stays_in_the_defaults_where_no_host_driver_holds_the_gpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vfio_host(tmp_path, monkeypatch)
    assert not environment.uses_real_gpus(Settings(sim="auto"))
    assert "qemu" in default_drivers(real_gpus=False)


def test_the_refusal_is_kept_as_one_line_for_the_runs_error_cells(
    gpu_host: FakeSysfs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_smi(tmp_path, monkeypatch, code=18, out=MISMATCH)
    run_dir = tmp_path / "run"
    assert environment.environment_error(run_dir) is None
    with pytest.raises(EnvironmentSetupError):
        ensure_environment(Settings(sim="auto"), run_dir, "t6")
    line = environment.environment_error(run_dir)
    assert line is not None and "\n" not in line
    assert line.startswith("this host has NVIDIA GPUs (0000:18:00.0 on nvidia, 0000:2a:00.0 on nvidia, ")
    assert (
        "exited 18 (LIB_RM_VERSION_MISMATCH): Failed to initialize NVML" in line
        and "(hint: fix the driver" in line
    )
