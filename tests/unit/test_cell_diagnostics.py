"""A failed cell keeps what the engine said about the failure (issue 13: declared diagnostics).

Kubernetes errors carry a pod's events and logs in ``HarnessError.diagnostics``; before the
contract declared the hook nothing wrote them into the evidence, so an ``error`` cell had to be
rerun to be understood.
"""

from __future__ import annotations

from typing import Any

from gpuconform.drivers.base import InfrastructureError, Sandbox
from gpuconform.drivers.request import GpuRequest
from tests.unit.fakesandbox import make_cell, world


def test_an_errors_diagnostics_and_each_used_sandboxs_land_in_the_evidence() -> None:
    adapter = world("h100x4")
    cell = make_cell("smi.default", adapter)
    sandbox = cell.shared(GpuRequest.default())
    sandbox.diagnostics = lambda: {"events": ["FailedScheduling"]}  # type: ignore[method-assign]
    cell.keep_diagnostics(InfrastructureError("pod never ran", diagnostics={"phase": "Pending"}))
    kept = cell.parsed["diagnostics"]
    assert kept["phase"] == "Pending"
    assert "FailedScheduling" in str(kept)


def test_nothing_to_say_adds_nothing() -> None:
    cell = make_cell("smi.default", world("h100x4"))
    cell.keep_diagnostics(RuntimeError("plain bug"))
    assert "diagnostics" not in cell.parsed


def test_a_failure_to_collect_is_kept_never_raised() -> None:
    adapter = world("h100x4")
    cell = make_cell("smi.default", adapter)

    def broken(error: BaseException, sandboxes: Any = ()) -> dict[str, Any]:
        raise OSError("engine went away")

    adapter.diagnostics = broken  # type: ignore[method-assign]
    cell.keep_diagnostics(InfrastructureError("x"))
    assert cell.parsed["diagnostics"] == {"diagnostics_error": "OSError: engine went away"}


def test_sandboxes_are_the_cells_own() -> None:
    adapter = world("h100x4")
    cell = make_cell("smi.default", adapter)
    seen: list[tuple[Sandbox, ...]] = []

    def spy(error: BaseException, sandboxes: Any = ()) -> dict[str, Any]:
        seen.append(tuple(sandboxes))
        return {}

    adapter.diagnostics = spy  # type: ignore[method-assign]
    sandbox = cell.shared(GpuRequest.default())
    cell.keep_diagnostics(InfrastructureError("x"))
    assert seen == [(sandbox,)]
