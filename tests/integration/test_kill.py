"""SIGKILL a whole ``gpuconform run`` process group at a random moment, run ``gpuconform gc``, and
find nothing of the run left: no container, daemon, API double, QEMU process, simulated host, CDI
spec, run directory or VFIO binding. Eight rounds across the podman, docker, kubernetes and qemu
columns, each killed 2 to 20 s in (the seed is printed, and ``KILL_SEED`` replays it).

"Nothing left" is read from the outside: every process whose command line names the run (the
private dockerd, its shims, the API double, QEMU's ``-name gpuconform-<run>-...``, conmon of the
run's containers), Podman containers labelled with the run, the simulated host's directory and
CDI spec, the private daemons' data roots and the run's state directory (which holds the qemu
column's fake sysfs and VFIO state). --out must still hold the previous results, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, podman_containers

pytestmark = pytest.mark.integration

CDI_DIRS = (Path("/var/run/cdi"), Path("/etc/cdi"))
SIM_BASE = Path("/run/gpuconform/sim")
DATA_BASE = Path("/var/lib/gpuconform")
STATE_BASE = Path(os.environ.get("GPUCONFORM_STATE", "/tmp/gpuconform"))

SEED = int(os.environ.get("KILL_SEED") or secrets.randbelow(10**6))
# (column, selection): enough cells that a kill 2-20 s in usually meets the run at work.
ROUNDS = [
    ("podman", "not cuda"),
    ("docker-legacy", "not cuda"),
    ("kubernetes", "not cuda"),
    ("qemu", "smi.default or count.1 or release"),
] * 2


def _processes_naming(run_id: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if run_id in argv:
            found.append(f"pid {entry.name}: {argv[:160]}")
    return found


def leftovers(run_id: str) -> list[str]:
    left = [f"process {p}" for p in _processes_naming(run_id)]
    left += [f"container {c}" for c in podman_containers(f"dev.gpuconform.run={run_id}")]
    left += [f"simulated host {p}" for p in SIM_BASE.glob(f"r{run_id}")]
    left += [f"CDI spec {p}" for d in CDI_DIRS if d.is_dir() for p in d.glob(f"*r{run_id}*")]
    left += [f"daemon data root {p}" for p in DATA_BASE.glob(f"*r{run_id}*")] if DATA_BASE.is_dir() else []
    left += [f"run directory {p}" for p in (STATE_BASE / "runs").glob(run_id)]
    return left


def vfio_bindings(run_id: str, *elsewhere: Path) -> list[str]:
    """GPU bus ids the run's qemu column holds on vfio-pci in its fake sysfs (from its state file,
    in the run directory or at the ``qemu.vfio_state`` paths ``elsewhere``)."""
    found = []
    for path in [*(STATE_BASE / "runs" / run_id).glob("**/vfio-bindings.json"), *elsewhere]:
        try:
            found += [str(b["gpu"]) for b in json.loads(path.read_text())["bindings"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def _settled_leftovers(run_id: str, settle_s: float = 15.0) -> list[str]:
    """Leftovers once exiting processes had a moment to go (conmon outlives ``podman rm`` briefly)."""
    end = time.monotonic() + settle_s
    left = leftovers(run_id)
    while left and time.monotonic() < end:
        time.sleep(0.5)
        left = leftovers(run_id)
    return left


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.json")
    }


def test_sigkill_at_random_moments_then_gc_leaves_nothing(tmp_path: Path) -> None:
    print(f"KILL_SEED={SEED}")
    rng = random.Random(SEED)
    out = tmp_path / "results"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"schema": 1, "run_id": "before", "records": []}))
    before = _digest(out)
    report = []
    for round_no, (column, selection) in enumerate(ROUNDS):
        run_id = f"kill{round_no}{secrets.token_hex(3)}"
        after = rng.uniform(2, 20)
        # The qemu rounds keep their VFIO record where the run's own option says, outside the run
        # directory: gc finds it only through the options the run recorded (run.json).
        state_file = tmp_path / "vfio" / f"{run_id}.json"
        own = ["--driver-opt", f"qemu.vfio_state={state_file}"] if column.startswith("qemu") else []
        argv = [
            sys.executable, "-m", "gpuconform.conformance.cli",
            "run", "--drivers", column, "--require-driver", column,
            "-n", "2" if round_no % 2 else "0", "-k", selection, "--out", str(out), *own,
            "--", "--lease-dir", str(tmp_path / "leases"),
        ]  # fmt: skip
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "GPUCONFORM_RUN_ID": run_id},
        )
        time.sleep(after)
        finished = proc.poll() is not None
        if not finished:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        held = leftovers(run_id)
        bound = vfio_bindings(run_id, state_file)
        held += [f"VFIO binding {bdf}" for bdf in bound]
        gc = subprocess.run(
            [sys.executable, "-m", "gpuconform.conformance.cli", "gc"],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert gc.returncode == 0, gc.stderr
        left = _settled_leftovers(run_id)
        left += [
            f"VFIO binding {bdf} still recorded in {state_file}" for bdf in vfio_bindings(run_id, state_file)
        ]
        report.append(f"{column} killed at {after:.1f}s{' (had finished)' if finished else ''}: "
                      f"{len(held)} things held ({len(bound)} VFIO bindings), {len(left)} left")  # fmt: skip
        print(report[-1], flush=True)
        for bdf in bound:  # the fake sysfs goes with the run directory: gc says what it gave back
            assert any("restored" in line and f"{bdf} -> " in line for line in gc.stdout.splitlines()), (
                f"round {round_no}: gc did not give back {bdf} to its driver:\n{gc.stdout}"
            )
        assert left == [], f"round {round_no} ({column}, seed {SEED}): {left}\ngc said:\n{gc.stdout}"
        after_kill = _digest(out)
        if finished or after_kill != before:
            # A run that ended (or was killed between moving its results into place and exiting)
            # replaced --out as a whole, with its own complete results: never a mix, never partial.
            doc = json.loads((out / "results.json").read_text())
            assert doc["run_id"] == run_id and not doc.get("partial"), f"round {round_no}: --out is {doc}"
            before = after_kill
    print("\n".join(report))
    killed_holding = [line for line in report if "had finished" not in line and ": 0 things held" not in line]
    assert len(killed_holding) >= 4, f"too few rounds were killed while holding something: {report}"
