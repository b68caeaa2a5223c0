"""Running a local command under a deadline, as an ExecResult.

Podman's CLI, the bare host and the engines' helper binaries all go through here, so every
local process the harness starts has a timeout and its output captured together.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping, Sequence

from gpuconform.drivers.base import ExecResult


def run_command(
    argv: Sequence[str],
    *,
    timeout: float,
    input_data: bytes | None = None,
    env: Mapping[str, str] | None = None,
) -> ExecResult:
    """Run ``argv``; a missing binary gives exit 127 (as a shell would), a timeout ``timed_out``."""
    start = time.monotonic()
    try:
        proc = subprocess.run(
            list(argv),
            input=input_data,
            capture_output=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            check=False,
        )
    except FileNotFoundError as exc:
        return missing_binary(argv, exc, start)
    except subprocess.TimeoutExpired as exc:
        return ExecResult(
            tuple(argv), None, _text(exc.stdout), _text(exc.stderr), time.monotonic() - start, timed_out=True
        )
    return ExecResult(
        tuple(argv), proc.returncode, _text(proc.stdout), _text(proc.stderr), time.monotonic() - start
    )


def missing_binary(argv: Sequence[str], exc: FileNotFoundError, start: float) -> ExecResult:
    """What a shell would answer for a binary that is not there: exit 127 and a line saying so."""
    return ExecResult(
        tuple(argv),
        127,
        "",
        f"{argv[0]}: executable file not found ({exc.strerror})",
        time.monotonic() - start,
    )


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", errors="replace")
