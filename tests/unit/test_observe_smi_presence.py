"""observe tells "nvidia-smi absent" from "present but cannot execute" (issue 19).

The doubles replay what the engines print (checked on this machine with podman and the
glibc-less busybox-static image, see tests/integration/test_simgpu_podman.py): runc reports a
missing ELF loader as ``exec /usr/bin/nvidia-smi: no such file or directory``, a shell as
``not found`` (127), the loader a missing library as ``error while loading shared libraries``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

import pytest

from gpuconform.conformance.observe import list_gpus, query_gpus
from gpuconform.drivers.base import ExecResult
from gpuconform.fixtures.cell import CaseOutcome
from gpuconform.reports.evidence import Verdict

RUNC_NO_LOADER = "exec /usr/bin/nvidia-smi: no such file or directory"
NO_LIBRARY = (
    "nvidia-smi: error while loading shared libraries: libnvidia-ml.so.1: "
    "cannot open shared object file: No such file or directory"
)


class FakeSandbox:
    id = "fake"

    def __init__(self, smi: ExecResult, on_path: bool) -> None:
        self.smi, self.on_path = smi, on_path

    def exec(self, argv: Sequence[str], *, timeout: float) -> ExecResult:
        if list(argv) == ["sh", "-c", "command -v nvidia-smi"]:
            return ExecResult(
                tuple(argv),
                0 if self.on_path else 1,
                "/usr/bin/nvidia-smi\n" if self.on_path else "",
                "",
                0.0,
            )
        assert argv[0] == "nvidia-smi"
        return self.smi


class FakeCell:
    def __init__(self) -> None:
        self.commands: list[tuple[str, ...]] = []
        self.parsed: dict[str, Any] = {}

    def run(self, sandbox: FakeSandbox, argv: Sequence[str], *, timeout: float = 60) -> ExecResult:
        self.commands.append(tuple(argv))
        return sandbox.exec(argv, timeout=timeout)

    def fail(self, reason: str, *, expected: Any = None, seen: Any = None) -> NoReturn:
        raise CaseOutcome(Verdict.FAIL, reason)


def outcome(code: int, stderr: str, on_path: bool, *, query: bool = False) -> CaseOutcome:
    cell, box = FakeCell(), FakeSandbox(ExecResult(("nvidia-smi",), code, "", stderr, 0.1), on_path)
    with pytest.raises(CaseOutcome) as caught:
        (query_gpus if query else list_gpus)(cell, box)  # type: ignore[arg-type]
    return caught.value


@pytest.mark.parametrize(
    ("code", "stderr"), [(127, RUNC_NO_LOADER), (1, RUNC_NO_LOADER), (127, "sh: nvidia-smi: not found")]
)
def test_present_binary_without_a_loader_is_reported_as_cannot_execute(code: int, stderr: str) -> None:
    for query in (False, True):
        result = outcome(code, stderr, on_path=True, query=query)
        assert result.verdict is Verdict.FAIL
        assert "nvidia-smi is present but cannot execute in this image (no glibc loader?)" in result.reason
        assert "/usr/bin/nvidia-smi" in result.reason
        assert "not present" not in result.reason


def test_missing_library_is_named() -> None:
    result = outcome(127, NO_LIBRARY, on_path=True)
    assert "cannot execute in this image (a shared library it needs is missing)" in result.reason
    assert "libnvidia-ml.so.1" in result.reason


def test_absent_binary_is_still_absent() -> None:
    result = outcome(127, "executable file `nvidia-smi` not found in $PATH", on_path=False)
    assert result.verdict is Verdict.FAIL
    assert "nvidia-smi is not present in the sandbox" in result.reason


def test_an_nvml_error_is_not_mistaken_for_either() -> None:
    result = outcome(15, "Unable to determine the device handle for GPU3: 0000:5D:00.0: GPU is lost.", True)
    assert "exited 15 (GPU_IS_LOST)" in result.reason
