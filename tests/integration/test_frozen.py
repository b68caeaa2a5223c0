"""A frozen engine never hangs a run: the private dockerd, the Kubernetes API double or a QEMU
guest stopped with SIGSTOP after the first cell finished gives ``error`` for the cells that need
it, within their deadlines; the run ends, writes its results, and its own teardown leaves nothing
of the run behind (the frozen process included).

The freeze is real: the engine's process is stopped by signal, so sockets stay open and nothing
answers, which is what a wedged daemon or a hung guest looks like from the client side.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gpuconform.drivers import qemu_vm as vm
from tests.integration.conftest import REPO
from tests.integration.test_kill import STATE_BASE, leftovers

pytestmark = pytest.mark.integration

# Bounds: a cell's provisioning deadline, and the whole frozen run.
PROVISION_S = "60"
RUN_LIMIT_S = 420


def _env_process(run_id: str, name: str) -> int | None:
    try:
        doc = json.loads((STATE_BASE / "runs" / run_id / "env.json").read_text())
    except (OSError, ValueError):
        return None
    pid = doc.get("processes", {}).get(name)
    return int(pid) if pid else None


def _qemu_pid(run_id: str) -> int | None:
    found = vm.vm_processes(f"{vm.NAME_PREFIX}{run_id}-")
    return min(found) if found else None


GOOD = ("pass", "rejected", "unsupported")


def _records(run_id: str) -> dict[str, str]:
    """The run's finished cells so far: case -> verdict."""
    folder = STATE_BASE / "runs" / run_id / "records"
    out = {}
    for path in folder.glob("*.json") if folder.is_dir() else ():
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        out[str(doc["case"])] = str(doc["verdict"])
    return out


def _frozen_run(
    tmp_path: Path, column: str, selection: str, find_pid: Callable[[str], int | None], *options: str
) -> tuple[dict[str, str], float]:
    """Run ``column``; once a cell has finished well and the engine is up, SIGSTOP what
    ``find_pid`` names; return the verdicts of the cells that ended after the freeze (at least
    one of them an error) and the seconds from the freeze to the run's end."""
    run_id = f"frz{secrets.token_hex(4)}"
    out = tmp_path / "out"
    argv = [
        sys.executable, "-m", "gpuconform.conformance.cli",
        "run", "--drivers", column, "--require-driver", column,
        "-n", "0", "-k", selection, "--out", str(out), *options,
        "--", "--provision-timeout", PROVISION_S, "--lease-dir", str(tmp_path / "leases"),
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, env={**os.environ, "GPUCONFORM_RUN_ID": run_id},
    )  # fmt: skip
    frozen: int | None = None
    before: dict[str, str] = {}
    try:
        end = time.monotonic() + 300
        while frozen is None:
            assert proc.poll() is None, f"the run ended before the freeze: {proc.communicate()[0][-2000:]}"
            assert time.monotonic() < end, "the engine never came up with a cell finished"
            pid = find_pid(run_id)
            done = _records(run_id)
            if pid is not None and any(v in GOOD for v in done.values()):  # it worked, then froze
                os.kill(pid, signal.SIGSTOP)
                frozen, before = pid, done
            time.sleep(0.2)
        t0 = time.monotonic()
        try:
            output = proc.communicate(timeout=RUN_LIMIT_S)[0]
        except subprocess.TimeoutExpired:
            pytest.fail(f"{column}: the run hung for {RUN_LIMIT_S}s after its engine froze")
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        if frozen is not None:
            try:
                os.kill(frozen, signal.SIGCONT)
            except ProcessLookupError:
                pass
    left = leftovers(run_id)
    if left:  # clean up for the next test, then fail
        subprocess.run(
            [sys.executable, "-m", "gpuconform.conformance.cli", "gc"],
            cwd=REPO,
            capture_output=True,
            timeout=300,
        )
    assert left == [], f"{column}: the run's own teardown left {left}\n{output[-3000:]}"
    assert proc.returncode == 1, output[-3000:]
    results = json.loads((out / "results.json").read_text())
    verdicts = {r["case"]: r["verdict"] for r in results["records"] if r["driver"] == column}
    after = {case: v for case, v in verdicts.items() if case not in before}
    assert "error" in after.values(), f"no cell after the freeze was an error: {after} (before: {before})"
    return after, took


def test_a_frozen_private_dockerd_gives_error_and_the_run_ends(tmp_path: Path) -> None:
    verdicts, took = _frozen_run(
        tmp_path, "docker-legacy", "count or device", lambda r: _env_process(r, "dockerd"),
        "--driver-opt", "docker-legacy.timeout=10",
    )  # fmt: skip
    assert "error" in verdicts.values(), verdicts
    print(f"dockerd frozen: run ended {took:.0f}s later; {verdicts}")


def test_a_frozen_kubernetes_api_double_gives_error_and_the_run_ends(tmp_path: Path) -> None:
    verdicts, took = _frozen_run(
        tmp_path, "kubernetes", "smi or count", lambda r: _env_process(r, "kubedouble")
    )
    assert "error" in verdicts.values(), verdicts
    print(f"API double frozen: run ended {took:.0f}s later; {verdicts}")


def test_a_frozen_qemu_guest_gives_error_and_the_run_ends(tmp_path: Path) -> None:
    verdicts, took = _frozen_run(tmp_path, "qemu", "smi", _qemu_pid)
    assert "error" in verdicts.values(), verdicts
    print(f"QEMU guest frozen: run ended {took:.0f}s later; {verdicts}")
