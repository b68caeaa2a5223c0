"""The exec status channel (channel 3) and the put_file command, without a cluster."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

from gpuconform.drivers.base import put_file_argv
from gpuconform.drivers.kube_exec import ExecProtocolError, parse_exec_status


def test_success_status_is_exit_zero() -> None:
    assert parse_exec_status('{"metadata":{},"status":"Success"}').exit_code == 0


def test_non_zero_exit_code_comes_from_the_exit_code_cause() -> None:
    doc = {
        "metadata": {},
        "status": "Failure",
        "message": "command terminated with non-zero exit code: "
        "error executing command [sh -c exit 3], exit code 3",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
    }
    assert parse_exec_status(json.dumps(doc)).exit_code == 3


def test_missing_executable_is_reported_like_a_shell_with_127() -> None:
    doc = {
        "status": "Failure",
        "reason": "InternalError",
        "message": "Internal error occurred: error executing command in container: "
        'failed to exec in container: exec: "nvidia-smi": executable file not found in $PATH: unknown',
    }
    status = parse_exec_status(json.dumps(doc))
    assert status.exit_code == 127
    assert "nvidia-smi" in status.message


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[1]",
        '{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"x"}]}}',
        '{"status":"Failure","reason":"InternalError","message":"container not running"}',
    ],
)
def test_unreadable_or_foreign_statuses_are_protocol_errors(text: str) -> None:
    with pytest.raises(ExecProtocolError):
        parse_exec_status(text)


def test_put_file_command_writes_exactly_size_bytes_without_needing_eof(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "dir" / "probe.bin"
    data = b"\x00\x01binary\nprobe\xff"
    # Trailing bytes stand in for a stdin that is never closed (v4 cannot send EOF).
    proc = subprocess.run(
        put_file_argv(str(target), len(data), 0o640),
        input=data + b"TRAILING",
        capture_output=True,
        timeout=10,
    )
    assert proc.returncode == 0, proc.stderr
    assert target.read_bytes() == data
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
