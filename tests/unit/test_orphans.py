"""Orphaned conmon monitors of a killed ``podman run`` are found by container name and killed."""

from __future__ import annotations

import secrets
import subprocess
import time

from gpuconform.drivers.orphans import conmon_pids, kill_orphans


def _fake_conmon(name: str) -> subprocess.Popen[bytes]:
    """A process whose argv reads like conmon's (``conmon ... -n NAME``) and that has a child."""
    script = 'exec -a conmon bash -c "sleep 60 & wait" -n "$0"'
    return subprocess.Popen(["bash", "-c", script, name])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_conmon_of_our_run_and_its_children_are_killed_and_others_are_left() -> None:
    run = "ut" + secrets.token_hex(3)
    ours, other = _fake_conmon(f"gpuconform-{run}-abc"), _fake_conmon("gpuconform-someoneelse-abc")
    try:
        deadline = time.monotonic() + 10
        while ours.pid not in conmon_pids(f"gpuconform-{run}-") and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # its child is started
        killed = kill_orphans(f"gpuconform-{run}-")
        assert len(killed) == 1 and f"gpuconform-{run}-abc" in killed[0]
        pids = [int(p) for p in killed[0].split("pids ")[1].rstrip(")").split(", ")]
        assert len(pids) == 2 and pids[0] == ours.pid  # the monitor and the child it started
        ours.wait(timeout=10)
        time.sleep(0.2)
        assert not any(_alive(pid) for pid in pids)
        assert other.poll() is None
        assert kill_orphans(f"gpuconform-{run}-") == []
    finally:
        kill_orphans("gpuconform-someoneelse-")  # with its child
        for proc in (ours, other):
            proc.kill()
            proc.wait(timeout=10)
