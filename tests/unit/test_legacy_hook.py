"""The simulated nvidia-container-runtime-hook, run as dockerd runs it, into a target directory.

Each test writes an OCI bundle (config.json with the process env dockerd would produce) and a
plan.json in the plan.md format, runs the hook as a subprocess with the OCI state on stdin, and
looks at what it created under ``--target-root`` (instead of entering a container's namespace).
The nsenter path itself runs in tests/integration/test_docker_legacy.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gpuconform.fixtures.sim.simgpu.layout import SANDBOX_DESC_DIR, SANDBOX_NVIDIA_SMI

HOOK = Path(__file__).resolve().parents[2] / "fixtures" / "sim" / "simgpu" / "legacy_hook.py"
UUIDS = [f"GPU-0000000{i}-aaaa-bbbb-cccc-dddddddddddd" for i in range(4)]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the hook creates device nodes (mknod needs root)")


def node(path: str, host: Path) -> dict[str, Any]:
    return {"path": path, "hostPath": str(host), "type": "c", "major": 1, "minor": 3}


def mount(path: str, host: Path) -> dict[str, Any]:
    return {"containerPath": path, "hostPath": str(host), "options": ["ro", "nosuid", "nodev", "bind"]}


def write_plan(host: Path, redirect: dict[int, int] | None = None) -> Path:
    """A 4-GPU plan; ``redirect`` makes index i inject GPU j (how a wrong-gpu fault looks)."""
    (host / "gpus").mkdir(parents=True)
    (host / "bin").mkdir()
    for i in range(4):
        (host / "gpus" / str(i)).write_text(f"MINOR={i}\nUUID={UUIDS[i]}\n")
    (host / "bin" / "nvidia-smi").write_text("#!/bin/sh\necho simulated\n")
    (host / "bin" / "nvidia-smi").chmod(0o755)

    def edits(i: int) -> dict[str, Any]:
        j = (redirect or {}).get(i, i)
        return {
            "nodes": [node(f"/dev/nvidia{j}", host / "dev" / f"nvidia{j}")],
            "mounts": [mount(f"{SANDBOX_DESC_DIR}/{j}", host / "gpus" / str(j))],
        }

    devices: dict[str, Any] = {}
    for i in range(4):
        devices[str(i)] = devices[UUIDS[i]] = edits(i)
    devices["all"] = {
        "nodes": [n for i in range(4) for n in edits(i)["nodes"]],
        "mounts": [m for i in range(4) for m in edits(i)["mounts"]],
    }
    plan = {
        "instance": "unit",
        "cdi_kind": "sim.gpuconform.dev/unit",
        "common": {
            "nodes": [node("/dev/nvidiactl", host / "dev" / "nvidiactl")],
            "mounts": [mount(SANDBOX_NVIDIA_SMI, host / "bin" / "nvidia-smi")],
        },
        "devices": devices,
    }
    (host / "plan.json").write_text(json.dumps(plan))
    return host / "plan.json"


def run_hook(
    tmp_path: Path, env: list[str], verb: str = "prestart", redirect: dict[int, int] | None = None
) -> tuple[subprocess.CompletedProcess[str], Path]:
    plan = write_plan(tmp_path / "host", redirect)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"root": {"path": "rootfs"}, "process": {"env": env}}))
    target = tmp_path / "rootfs"
    (target / "dev").mkdir(parents=True)
    state = {"ociVersion": "1.0.2-dev", "id": "c" * 64, "status": "creating", "pid": 1, "bundle": str(bundle)}
    argv = [sys.executable, str(HOOK), verb, "--plan", str(plan), "--target-root", str(target)]
    proc = subprocess.run(argv, input=json.dumps(state), capture_output=True, text=True, timeout=30)
    return proc, target


def injected(target: Path) -> tuple[list[str], list[str], bool]:
    """(device nodes under dev/, descriptor files, whether nvidia-smi is there)."""
    nodes = sorted(p.name for p in (target / "dev").iterdir() if stat.S_ISCHR(p.lstat().st_mode))
    desc_dir = target / SANDBOX_DESC_DIR.lstrip("/")
    descriptors = sorted(p.name for p in desc_dir.iterdir()) if desc_dir.is_dir() else []
    return nodes, descriptors, (target / SANDBOX_NVIDIA_SMI.lstrip("/")).is_file()


PATH_ENV = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"


def test_all_injects_every_gpu_the_control_node_and_nvidia_smi(tmp_path: Path) -> None:
    proc, target = run_hook(tmp_path, [PATH_ENV, "NVIDIA_VISIBLE_DEVICES=all"])
    assert proc.returncode == 0, proc.stderr
    nodes, descriptors, smi = injected(target)
    assert nodes == ["nvidia0", "nvidia1", "nvidia2", "nvidia3", "nvidiactl"]
    assert descriptors == ["0", "1", "2", "3"]
    assert smi and os.access(target / SANDBOX_NVIDIA_SMI.lstrip("/"), os.X_OK)
    assert os.major((target / "dev/nvidia2").stat().st_rdev) == 1
    assert (target / SANDBOX_DESC_DIR.lstrip("/") / "2").read_text() == f"MINOR=2\nUUID={UUIDS[2]}\n"


def test_indices_and_uuids_inject_exactly_those_gpus(tmp_path: Path) -> None:
    proc, target = run_hook(tmp_path, [PATH_ENV, f"NVIDIA_VISIBLE_DEVICES=1,{UUIDS[3]}"])
    assert proc.returncode == 0, proc.stderr
    assert injected(target) == (["nvidia1", "nvidia3", "nvidiactl"], ["1", "3"], True)


def test_the_last_occurrence_wins_as_dockerd_appends_its_own(tmp_path: Path) -> None:
    # An image with ENV NVIDIA_VISIBLE_DEVICES=all that requested GPU 2: dockerd appends "=2" last.
    proc, target = run_hook(tmp_path, [PATH_ENV, "NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_VISIBLE_DEVICES=2"])
    assert proc.returncode == 0, proc.stderr
    assert injected(target) == (["nvidia2", "nvidiactl"], ["2"], True)


@pytest.mark.parametrize(
    "env",
    [[PATH_ENV], [PATH_ENV, "NVIDIA_VISIBLE_DEVICES="], [PATH_ENV, "NVIDIA_VISIBLE_DEVICES=void"]],
    ids=["unset", "empty", "void"],
)
def test_unset_empty_or_void_injects_nothing(tmp_path: Path, env: list[str]) -> None:
    proc, target = run_hook(tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert injected(target) == ([], [], False)


def test_none_injects_the_driver_files_but_no_gpu(tmp_path: Path) -> None:
    proc, target = run_hook(tmp_path, [PATH_ENV, "NVIDIA_VISIBLE_DEVICES=none"])
    assert proc.returncode == 0, proc.stderr
    assert injected(target) == (["nvidiactl"], [], True)


def test_unknown_entry_fails_naming_it_and_injects_nothing(tmp_path: Path) -> None:
    proc, target = run_hook(tmp_path, [PATH_ENV, "NVIDIA_VISIBLE_DEVICES=0,7"])
    assert proc.returncode == 1
    assert "nvidia-container-cli: device error: 7: unknown device" in proc.stderr
    assert injected(target) == ([], [], False)
    assert "refused" in (tmp_path / "host" / "legacy-hook.log").read_text()


def test_the_plan_decides_what_an_entry_injects(tmp_path: Path) -> None:
    # Faults are applied in plan.json: the hook injects what the entry says, not what it names.
    proc, target = run_hook(tmp_path, [PATH_ENV, "NVIDIA_VISIBLE_DEVICES=1"], redirect={1: 2})
    assert proc.returncode == 0, proc.stderr
    assert injected(target) == (["nvidia2", "nvidiactl"], ["2"], True)


def test_other_hook_verbs_do_nothing(tmp_path: Path) -> None:
    proc, target = run_hook(tmp_path, [PATH_ENV, "NVIDIA_VISIBLE_DEVICES=all"], verb="poststop")
    assert proc.returncode == 0
    assert injected(target) == ([], [], False)


def test_a_symlink_out_of_the_rootfs_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "rootfs" / "usr").mkdir(parents=True)
    (tmp_path / "rootfs" / "usr" / "bin").symlink_to(outside)  # absolute: resolves on the host
    proc, _ = run_hook(tmp_path, [PATH_ENV, "NVIDIA_VISIBLE_DEVICES=0"])
    assert proc.returncode == 1
    assert "outside rootfs" in proc.stderr
    assert list(outside.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="the simulated host and the hook's mknod need root")
def test_a_real_plan_injects_the_elf_and_its_library_but_no_loader(tmp_path: Path) -> None:
    from gpuconform.fixtures.sim.simgpu.host import SimHost

    (tmp_path / "cdi").mkdir()
    sim = SimHost.up(
        "h100x2", instance="hook", base=tmp_path / "sim", cdi_dir=tmp_path / "cdi", owner_pid=os.getpid()
    )
    try:
        bundle, target = tmp_path / "bundle", tmp_path / "rootfs"
        bundle.mkdir()
        (target / "dev").mkdir(parents=True)
        env = [PATH_ENV, "NVIDIA_VISIBLE_DEVICES=0"]
        (bundle / "config.json").write_text(json.dumps({"root": {"path": "rootfs"}, "process": {"env": env}}))
        state = {"id": "d" * 64, "pid": 1, "bundle": str(bundle)}
        argv = [
            sys.executable,
            str(HOOK),
            "prestart",
            "--plan",
            str(sim.root / "plan.json"),
            "--target-root",
            str(target),
        ]
        proc = subprocess.run(argv, input=json.dumps(state), capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        library = target / "usr" / "lib" / sim.state["multiarch"] / "libnvidia-ml.so.1"
        assert (target / "usr/bin/nvidia-smi").read_bytes() == sim.nvidia_smi_path.read_bytes()
        assert library.read_bytes() == sim.nvml_library_path.read_bytes()
        assert os.access(library, os.X_OK)
        assert not [p for p in target.rglob("*") if p.name.startswith(("ld-linux", "libc.so"))]
    finally:
        sim.down()
