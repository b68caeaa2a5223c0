"""SimHost up/down/status/gc against temporary base and CDI directories (needs root: mknod)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from gpuconform.drivers.inventory import Inventory
from gpuconform.fixtures.sim.simgpu import cdi
from gpuconform.fixtures.sim.simgpu.host import SimHost, SimHostError
from gpuconform.fixtures.sim.simgpu.layout import parse_descriptor
from gpuconform.fixtures.sim.simgpu.profiles import foreign_uuid, get_profile

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creating device nodes (mknod) needs root")


@pytest.fixture
def dirs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    base, cdi_dir = tmp_path / "sim", tmp_path / "cdi"
    cdi_dir.mkdir()
    yield base, cdi_dir
    for state in SimHost.status(base):
        found = SimHost.find(state["instance"], base)
        if found is not None:
            found.down()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait(timeout=10)
    return proc.pid


def up(
    dirs: tuple[Path, Path], profile: str = "h100x4", *, instance: str = "gpu", faults: Sequence[str] = ()
) -> SimHost:
    base, cdi_dir = dirs
    return SimHost.up(
        profile, faults=faults, instance=instance, base=base, cdi_dir=cdi_dir, owner_pid=os.getpid()
    )


def test_up_builds_nodes_descriptors_nvidia_smi_inventory_plan_and_spec(dirs: tuple[Path, Path]) -> None:
    host = up(dirs, faults=["uuid-mismatch:2"], instance="gpu")
    root = host.root
    assert root == dirs[0] / "gpu"
    assert stat.S_IMODE(root.stat().st_mode) == 0o755
    for name in ("nvidia0", "nvidia1", "nvidia2", "nvidia3", "nvidiactl"):
        st = (root / "dev" / name).stat()
        assert stat.S_ISCHR(st.st_mode)
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    desc = parse_descriptor((root / "gpus" / "2").read_text())
    assert desc["UUID"] == foreign_uuid(get_profile("h100x4").gpus[2].uuid)
    assert desc["PCI"] == "00000000:3A:00.0"
    assert stat.S_IMODE((root / "gpus" / "0").stat().st_mode) == 0o644
    smi = host.nvidia_smi_path
    assert stat.S_IMODE(smi.stat().st_mode) == 0o755
    assert smi.read_bytes()[:4] == b"\x7fELF"
    library = root / "lib" / host.state["multiarch"] / "libnvidia-ml.so.1"
    assert host.nvml_library_path == library
    assert library.read_bytes()[:4] == b"\x7fELF"
    common = {m["containerPath"]: m["hostPath"] for m in host.plan["common"]["mounts"]}
    assert common == {
        "/usr/bin/nvidia-smi": str(smi),
        f"/usr/lib/{host.state['multiarch']}/libnvidia-ml.so.1": str(library),
    }
    inventory = Inventory.loads((root / "inventory.json").read_text())
    assert inventory == host.inventory
    assert inventory.simulated
    assert inventory.source == "sim:h100x4+uuid-mismatch:2"
    assert inventory.cdi_kind == host.cdi_kind == "sim.gpuconform.dev/gpu"
    assert [g.uuid for g in inventory.gpus] == [g.uuid for g in get_profile("h100x4").gpus]
    assert json.loads((root / "plan.json").read_text()) == host.plan
    assert host.cdi_spec_path == dirs[1] / "gpuconform-sim-gpu.yaml"
    assert cdi.is_ours(host.cdi_spec_path)
    state = json.loads((root / "state.json").read_text())
    assert state["faults"] == ["uuid-mismatch:2"]
    assert state["owner_pid"] == os.getpid()


def test_find_and_load_return_the_same_host(dirs: tuple[Path, Path]) -> None:
    host = up(dirs, profile="h100x2", instance="abc1")
    found = SimHost.find("abc1", dirs[0])
    assert found is not None
    assert found.inventory == host.inventory
    assert found.plan == host.plan
    assert found.injection("1") == host.injection("1")
    assert SimHost.load(host.root).cdi_spec_path == host.cdi_spec_path
    assert SimHost.find("nope", dirs[0]) is None


def test_sim_nvidia_smi_on_the_host_lists_the_instance_gpus(dirs: tuple[Path, Path]) -> None:
    host = up(dirs, profile="h100x2", instance="gpu")
    proc = subprocess.run(
        [str(host.nvidia_smi_path), "-L"],
        env={**os.environ, **host.host_env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    expected = [f"GPU {g.index}: {g.name} (UUID: {g.uuid})" for g in host.inventory.gpus]
    assert proc.stdout.splitlines() == expected


def test_down_leaves_nothing_and_is_idempotent(dirs: tuple[Path, Path]) -> None:
    host = up(dirs, instance="gpu")
    root, spec = host.root, host.cdi_spec_path
    host.down()
    assert not root.exists()
    assert not spec.exists()
    assert list(dirs[1].iterdir()) == []
    host.down()
    assert SimHost.status(dirs[0]) == []


@pytest.mark.parametrize("name", ["GPU", "1gpu", "gpu-1", "gpu_1", "", "a" * 33])
def test_invalid_instance_names_are_refused(dirs: tuple[Path, Path], name: str) -> None:
    with pytest.raises(SimHostError, match="lowercase letters and digits"):
        up(dirs, instance=name)
    assert not dirs[0].exists()


def test_foreign_spec_file_is_never_overwritten(dirs: tuple[Path, Path]) -> None:
    foreign = dirs[1] / "gpuconform-sim-gpu.yaml"
    foreign.write_text("cdiVersion: 0.5.0\nkind: example.com/gpu\ndevices: []\n")
    with pytest.raises(cdi.CdiSafetyError, match="not written by gpuconform"):
        up(dirs, instance="gpu")
    assert foreign.read_text() == "cdiVersion: 0.5.0\nkind: example.com/gpu\ndevices: []\n"
    assert not (dirs[0] / "gpu").exists()


def test_another_spec_declaring_the_same_kind_is_refused(dirs: tuple[Path, Path]) -> None:
    (dirs[1] / "someone.json").write_text(
        json.dumps({"cdiVersion": "0.5.0", "kind": "sim.gpuconform.dev/gpu", "devices": []})
    )
    with pytest.raises(cdi.CdiSafetyError, match="already declares"):
        up(dirs, instance="gpu")
    assert not (dirs[0] / "gpu").exists()


@pytest.mark.parametrize("bad", ["/usr/lib/gpuconform", "/dev/gpuconform", "/etc/nvidia-container-runtime/x"])
def test_real_system_and_nvidia_paths_are_refused_as_base(tmp_path: Path, bad: str) -> None:
    with pytest.raises(SimHostError, match="never writes into system or NVIDIA paths"):
        SimHost.up("single", base=Path(bad), cdi_dir=tmp_path, owner_pid=os.getpid())
    assert not Path(bad).exists()


def test_an_instance_that_is_up_is_not_started_twice(dirs: tuple[Path, Path]) -> None:
    first = up(dirs, instance="gpu")
    with pytest.raises(SimHostError, match="already up"):
        up(dirs, instance="gpu", profile="single")
    assert SimHost.load(first.root).profile == "h100x4"
    assert first.cdi_spec_path.exists()
    base, cdi_dir = dirs
    persistent = SimHost.up("single", instance="keep", base=base, cdi_dir=cdi_dir, owner_pid=None)
    with pytest.raises(SimHostError, match="owner: none"):
        SimHost.up("single", instance="keep", base=base, cdi_dir=cdi_dir, owner_pid=None)
    persistent.down()


def test_an_instance_of_a_dead_owner_is_collected_by_the_next_up(dirs: tuple[Path, Path]) -> None:
    base, cdi_dir = dirs
    SimHost.up("h100x4", instance="gpu", base=base, cdi_dir=cdi_dir, owner_pid=dead_pid())
    second = up(dirs, instance="gpu", profile="h100x2")
    assert second.profile == "h100x2"
    assert len(second.inventory.gpus) == 2
    assert [s["instance"] for s in SimHost.status(base)] == ["gpu"]


def test_gc_removes_dead_instances_and_orphan_specs_only(dirs: tuple[Path, Path]) -> None:
    base, cdi_dir = dirs
    dead = SimHost.up("h100x2", instance="dead", base=base, cdi_dir=cdi_dir, owner_pid=dead_pid())
    live = up(dirs, instance="live")
    orphan = SimHost.up("single", instance="orphan", base=base, cdi_dir=cdi_dir, owner_pid=os.getpid())
    orphan_spec = orphan.cdi_spec_path
    import shutil

    shutil.rmtree(orphan.root)  # as if its instance dir vanished (e.g. /run was cleared)
    foreign = cdi_dir / "vendor.yaml"
    foreign.write_text("cdiVersion: 0.5.0\nkind: example.com/gpu\ndevices: []\n")

    removed = SimHost.gc(base, cdi_dir)

    assert any("dead" in r for r in removed)
    assert any(str(orphan_spec) in r for r in removed)
    assert len(removed) == 2
    assert not dead.root.exists()
    assert not dead.cdi_spec_path.exists()
    assert not orphan_spec.exists()
    assert live.root.exists()
    assert live.cdi_spec_path.exists()
    assert foreign.exists()
    assert SimHost.gc(base, cdi_dir) == []


def test_status_reports_each_instance(dirs: tuple[Path, Path]) -> None:
    base, cdi_dir = dirs
    up(dirs, instance="one", faults=["wrong-gpu:1"])
    SimHost.up("single", instance="two", base=base, cdi_dir=cdi_dir, owner_pid=dead_pid())
    by_name = {s["instance"]: s for s in SimHost.status(base)}
    assert by_name["one"]["state"] == "up"
    assert by_name["one"]["faults"] == ["wrong-gpu:1"]
    assert by_name["one"]["spec_present"] is True
    assert by_name["two"]["state"] == "stale"


def test_a_failed_up_leaves_nothing_behind(dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_write(spec: object, path: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(cdi, "write_spec", broken_write)
    with pytest.raises(OSError, match="disk full"):
        up(dirs, instance="gpu")
    assert not (dirs[0] / "gpu").exists()
    assert list(dirs[1].iterdir()) == []


def test_bad_fault_is_refused_before_anything_is_created(dirs: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="0..3"):
        up(dirs, instance="gpu", faults=["fallen-off-bus:9"])
    assert not (dirs[0] / "gpu").exists()
