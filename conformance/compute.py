"""Running the compute probe in a sandbox once, and handing its document to every cuda.* case.

The probe is copied in through the adapter's ``put_file`` and run with the sandbox's own
python3; its one JSON document serves every compute case of the shared sandbox, so the
(expensive) checks run once per sandbox, not once per case.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gpuconform.conformance.observe import is_absent
from gpuconform.drivers.base import SANDBOX_SCRATCH, ExecResult, Sandbox
from gpuconform.fixtures.cell import Cell
from gpuconform.workloads import cuda_probe
from gpuconform.workloads.compute_judge import (
    HOST_REMEDY,
    PROBE_IMAGE_REMEDY,
    Judgement,
    environment_gap,
    parse_probe_output,
)

PROBE_PATH = f"{SANDBOX_SCRATCH}/cuda_probe.py"
PROBE_TIMEOUT_S = 600.0
_CACHE: dict[str, tuple[ExecResult, Mapping[str, Any]]] = {}


def run_probe(cell: Cell, sandbox: Sandbox, *args: str) -> Mapping[str, Any]:
    """The probe's document for ``sandbox`` (run on first use, then reused by the other cases)."""
    key = f"{sandbox.driver}/{sandbox.id}/{' '.join(args)}"
    if key not in _CACHE:
        sandbox.put_file(PROBE_PATH, Path(cuda_probe.__file__).read_bytes(), 0o755)
        result = cell.run(sandbox, ["python3", PROBE_PATH, *args], timeout=PROBE_TIMEOUT_S)
        # A JSON document means python3 ran; its text may quote dlopen's "No such file or directory".
        if not result.stdout.lstrip().startswith("{") and is_absent(result):
            cell.skip(
                f"precondition: the {cell.driver} sandbox image has no python3 for the compute probe "
                "(pass one with --probe-image)"
            )
        if result.exit_code != 0:
            cell.error(f"the compute probe crashed (exit {result.exit_code}): {result.stderr.strip()[-300:]}")
        _CACHE.clear()  # one sandbox at a time: keep only the latest document
        _CACHE[key] = (result, parse_probe_output(result.stdout))
    else:
        cached, _ = _CACHE[key]
        cell.commands.append({**cached.to_json(), "sandbox": sandbox.id, "reused": True})
    return _CACHE[key][1]


def gap(cell: Cell, sandbox: Sandbox, doc: Mapping[str, Any], *, needs_cupy: bool) -> Judgement | None:
    """What the probe environment lacks on a real host (skip/error naming it), or None."""
    remedy = HOST_REMEDY if sandbox.driver == "host" else PROBE_IMAGE_REMEDY
    return environment_gap(doc, needs_cupy=needs_cupy, simulated_host=cell.inventory.simulated, remedy=remedy)


def apply(cell: Cell, judgement: Judgement) -> None:
    """End the case with the judge's verdict."""
    cell.parsed.update(judgement.parsed)
    verdicts = {
        "pass": cell.passed,
        "fail": cell.fail,
        "skip": cell.skip,
        "inconclusive": cell.inconclusive,
        "error": cell.error,
    }
    verdicts[judgement.verdict](judgement.reason)
