"""Nothing is left behind: not after a normal run, not after Ctrl-C, not after SIGKILL + gc."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, conformance_argv, podman_containers

pytestmark = pytest.mark.integration

CDI_DIR = Path("/var/run/cdi")
SIM_BASE = Path("/run/gpuconform/sim")


RUN_ID = "cleanup" + secrets.token_hex(3)


def _sim_specs() -> list[str]:
    """The run's CDI spec, if it exists (the simulated host instance is named r<run id>)."""
    return sorted(p.name for p in CDI_DIR.glob(f"gpuconform-sim-r{RUN_ID}.*"))


def _sim_roots() -> list[str]:
    return sorted(p.name for p in SIM_BASE.glob(f"r{RUN_ID}")) if SIM_BASE.exists() else []


def _ours() -> list[str]:
    """Containers of the run under test (other runs on this machine are not ours to judge)."""
    return podman_containers(f"dev.gpuconform.run={RUN_ID}")


def _start_run(out: Path) -> subprocess.Popen[str]:
    argv = conformance_argv(out, "--drivers", "podman", "--sim", "h100x4", "-k", "device")
    return subprocess.Popen(
        argv,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "GPUCONFORM_RUN_ID": RUN_ID},
    )


def _wait_for_container(proc: subprocess.Popen[str], timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if _ours():
            return
        if proc.poll() is not None:
            pytest.fail(
                f"run ended before any container existed: {proc.stdout.read() if proc.stdout else ''}"
            )
        time.sleep(0.2)
    pytest.fail("no container appeared within the timeout")


def test_ctrl_c_removes_containers_and_the_simulated_host(tmp_path: Path) -> None:
    before = (_sim_specs(), _sim_roots())
    proc = _start_run(tmp_path / "out")
    _wait_for_container(proc)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    assert not _ours(), "containers left after Ctrl-C"
    assert (_sim_specs(), _sim_roots()) == before, "simulated host left after Ctrl-C"


def test_sigkill_leftovers_are_removed_by_gc(tmp_path: Path) -> None:
    before = (_sim_specs(), _sim_roots())
    proc = _start_run(tmp_path / "out")
    _wait_for_container(proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert _ours() or _sim_specs() != before[0], "nothing was left to collect; the test proves nothing"
    gc = subprocess.run(
        [sys.executable, "-m", "conformance.cli", "gc"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert gc.returncode == 0, gc.stderr
    assert not _ours(), gc.stdout
    assert (_sim_specs(), _sim_roots()) == before, gc.stdout
