"""conformance/compute.py run_probe: when the probe "is absent" and when it only quotes a missing file.

A probe document on a host without libcuda says ``libcuda.so.1: cannot open shared object file:
No such file or directory``; that must not read as "the sandbox has no python3" (a skip that
hid every cuda.* verdict on the simulated host once the document started carrying it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, NoReturn, cast

import pytest

from gpuconform.conformance import compute
from gpuconform.drivers.base import ExecResult
from gpuconform.fixtures.cell import CaseOutcome
from gpuconform.reports.evidence import Verdict


class FakeSandbox:
    driver = "podman"

    def __init__(self, result: ExecResult) -> None:
        self.id = f"sb-{id(self)}"
        self.result = result
        self.files: dict[str, bytes] = {}

    def put_file(self, path: str, data: bytes, mode: int = 0o755) -> None:
        self.files[path] = data

    def exec(self, argv: Sequence[str], *, timeout: float) -> ExecResult:
        return self.result


class FakeCell:
    driver = "podman"

    def __init__(self) -> None:
        self.commands: list[dict[str, Any]] = []

    def run(self, sandbox: FakeSandbox, argv: Sequence[str], *, timeout: float = 60) -> ExecResult:
        return sandbox.exec(argv, timeout=timeout)

    def skip(self, reason: str) -> NoReturn:
        raise CaseOutcome(Verdict.SKIP, reason)

    def error(self, reason: str) -> NoReturn:
        raise CaseOutcome(Verdict.ERROR, reason)


def outcome(result: ExecResult) -> Any:
    compute._CACHE.clear()
    return compute.run_probe(cast(Any, FakeCell()), cast(Any, FakeSandbox(result)))


def test_a_document_quoting_dlopens_message_is_parsed_not_taken_for_a_missing_python() -> None:
    doc = {
        "probe_version": 1,
        "mode": "simulated",
        "simulated": True,
        "cuda": {"ok": True, "device_count": 0},
        "devices": [],
        "errors": [],
        "driver_api": {"error": "libcuda.so.1: cannot open shared object file: No such file or directory"},
    }
    result = ExecResult(("python3",), 0, json.dumps(doc) + "\n", "", 1.0)
    assert outcome(result)["driver_api"] == doc["driver_api"]


@pytest.mark.parametrize(
    ("exit_code", "stderr"),
    [
        (127, "sh: python3: not found"),
        (127, 'exec: "python3": executable file not found in $PATH'),
        (1, "crun: executable file `python3` not found: No such file or directory"),
    ],
)
def test_no_python3_in_the_sandbox_is_a_skip_naming_the_probe_image(exit_code: int, stderr: str) -> None:
    with pytest.raises(CaseOutcome) as caught:
        outcome(ExecResult(("python3",), exit_code, "", stderr, 0.1))
    assert caught.value.verdict is Verdict.SKIP
    assert "--probe-image" in caught.value.reason


@pytest.mark.parametrize(
    ("driver", "remedy"),
    [("host", "--driver-opt host.python=PATH"), ("podman", "pass --probe-image IMAGE")],
)
def test_gap_names_the_remedy_of_the_sandboxs_driver(driver: str, remedy: str) -> None:
    doc = {
        "mode": "driver",
        "simulated": False,
        "cuda": {"ok": True, "device_count": 1},
        "devices": [],
        "stack": {"python": "/usr/bin/python3", "cupy": {"present": False}, "libcuda": {"loaded": True}},
        "driver_api": {"ok": True},
    }
    sandbox = FakeSandbox(ExecResult(("python3",), 0, "", "", 0.0))
    sandbox.driver = driver
    real = cast(Any, SimpleNamespace(inventory=SimpleNamespace(simulated=False)))
    gap = compute.gap(real, cast(Any, sandbox), doc, needs_cupy=True)
    assert gap is not None
    assert (gap.verdict, remedy in gap.reason) == ("skip", True)
    assert compute.gap(real, cast(Any, sandbox), doc, needs_cupy=False) is None
    simulated = cast(Any, SimpleNamespace(inventory=SimpleNamespace(simulated=True)))
    assert compute.gap(simulated, cast(Any, sandbox), doc, needs_cupy=True) is None
