"""Running a local command in its own process group, the whole group killed when it times out.

``subprocess.run(timeout=...)`` kills only the child it started: a command that forked (a shell
running ``sleep 300 &``, a probe with workers) leaves its children running on the host. The bare
host's sandbox runs commands here instead, so a timed-out command is gone with everything it
started, the way the other sandboxes' commands are killed inside (drivers/inside.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence

from gpuconform.drivers.base import ExecResult
from gpuconform.drivers.subproc import missing_binary

# After SIGKILL to the group, how long to wait for the leader and the pipes: a process in
# uninterruptible sleep cannot die at once; past this the result is returned anyway.
REAP_TIMEOUT_S = 5.0


def run_in_group(
    argv: Sequence[str],
    *,
    timeout: float,
    input_data: bytes | None = None,
    env: Mapping[str, str] | None = None,
) -> ExecResult:
    """Run ``argv`` as the leader of a new session (so of a new process group); on timeout kill
    the whole group. A missing binary gives exit 127 (as a shell would)."""
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if input_data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        return missing_binary(argv, exc, start)
    try:
        out, err = proc.communicate(input_data, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        try:
            out, err = proc.communicate(timeout=REAP_TIMEOUT_S)
        except subprocess.TimeoutExpired:  # a child still holds the pipes: give up on the rest
            proc.kill()
            out, err = b"", b""
        return ExecResult(tuple(argv), None, _text(out), _text(err), time.monotonic() - start, timed_out=True)
    return ExecResult(tuple(argv), proc.returncode, _text(out), _text(err), time.monotonic() - start)


def kill_group(pgid: int) -> None:
    """SIGKILL every process in group ``pgid``; a group already empty is fine. Called only while
    the leader is not yet reaped, so the id cannot have been reused by another group."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _text(data: bytes | None) -> str:
    return "" if data is None else data.decode("utf-8", errors="replace")
