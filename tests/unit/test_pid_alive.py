"""pid_alive: who still holds a VFIO binding or a run (a zombie does not).

Found by the kill test under CI: a SIGKILLed run's processes became zombies that PID 1 of the CI
sandbox did not reap, ``kill(pid, 0)`` succeeded on them, and gc kept the dead run's binding.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from gpuconform.drivers.vfio_state import pid_alive


def test_a_running_process_is_alive_and_a_reaped_one_is_not() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert pid_alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert not pid_alive(proc.pid)


def test_a_zombie_is_dead() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    end = time.monotonic() + 10
    while time.monotonic() < end:  # exited, not reaped: a zombie of ours
        with open(f"/proc/{proc.pid}/stat") as f:
            if f.read().rpartition(")")[2].split()[0] == "Z":
                break
        time.sleep(0.05)
    os.kill(proc.pid, 0)  # what the old check asked: it still succeeds
    assert not pid_alive(proc.pid)
    proc.wait()


def test_no_pid_is_dead() -> None:
    assert not pid_alive(0) and not pid_alive(-1)
