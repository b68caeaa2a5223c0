"""A sandbox keeps its GPU over its life: lifecycle.persist.

Every other case looks once, right after start. A container that saw its GPU then can lose it
later: a ``systemctl daemon-reload`` makes systemd re-apply device rules without the NVIDIA nodes
the hook or CDI injected, and NVML inside fails "Failed to initialize NVML: Unknown Error"
(nvidia-container-toolkit#48, failure class 14). So this case looks three times in the same
sandbox: at start, after an interval, and after the driver's reload event (drivers/reload.py), and
names the first moment the GPU was gone and what it saw then.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from gpuconform.conformance.catalogue import case
from gpuconform.conformance.compute import PROBE_PATH, gap, run_probe
from gpuconform.conformance.observe import shape_request
from gpuconform.drivers.base import Sandbox
from gpuconform.fixtures.cell import Cell
from gpuconform.workloads.compute_judge import ProbeOutputError, judge_init, parse_probe_output
from gpuconform.workloads.nvidia_smi import nvml_error_name, parse_list

# Short on purpose: the case runs in every column of every matrix (the 15% budget of issue 11).
INTERVAL_S = 2.0
RELOAD_TIMEOUT_S = 120.0
PROBE_TIMEOUT_S = 300.0
AT_START, AFTER_RELOAD = "at start", "after the reload event"


def _smi(
    cell: Cell, sandbox: Sandbox, moment: str, expected: frozenset[str] | None, count: int
) -> frozenset[str]:
    """The UUIDs ``nvidia-smi -L`` lists at ``moment``; fail unless it works and lists ``expected``
    (or, where the driver chose the GPUs, ``count`` of them)."""
    result = cell.run(sandbox, ["nvidia-smi", "-L"])
    text = (result.stdout + result.stderr).strip()
    cell.parsed.setdefault("moments", {})[moment] = {"smi_exit": result.exit_code, "smi": text[:300]}
    if result.exit_code != 0:
        code = result.exit_code if result.exit_code is not None else -1
        cell.fail(
            f"GPU access lost {moment}: nvidia-smi -L exited {code} ({nvml_error_name(code)}): {text[:200]}",
            expected=sorted(expected) if expected is not None else f"{count} GPU(s)",
            seen=text[:300],
        )
    seen = frozenset(g.uuid for g in parse_list(result.stdout))
    if (expected is not None and seen != expected) or (expected is None and len(seen) != count):
        want = ", ".join(sorted(expected)) if expected is not None else f"{count} GPU(s)"
        cell.fail(
            f"GPU access changed {moment}: nvidia-smi -L lists {', '.join(sorted(seen)) or 'nothing'}, "
            f"expected {want}",
            expected=sorted(expected) if expected is not None else count,
            seen=sorted(seen),
        )
    return seen


def _cuda_doc(cell: Cell, sandbox: Sandbox, moment: str) -> Mapping[str, Any]:
    """A fresh probe document (the probe file is already inside: ``run_probe`` put it there)."""
    result = cell.run(sandbox, ["python3", PROBE_PATH, "--skip-bandwidth"], timeout=PROBE_TIMEOUT_S)
    try:
        return parse_probe_output(result.stdout)
    except ProbeOutputError:
        cell.fail(
            f"GPU access lost {moment}: the compute probe no longer runs (exit {result.exit_code}): "
            f"{(result.stderr or result.stdout).strip()[-200:]}"
        )


def _cuda(cell: Cell, doc: Mapping[str, Any], moment: str, uuids: frozenset[str]) -> None:
    judgement = judge_init(doc, uuids, len(uuids), smi_count=len(uuids))
    cell.parsed.setdefault("moments", {}).setdefault(moment, {})["cuda"] = judgement.reason
    if judgement.verdict != "pass":
        cell.fail(f"CUDA lost {moment} while nvidia-smi still lists the GPU: {judgement.reason}")


@case("lifecycle.persist")
def test_lifecycle_persist(cell: Cell) -> None:
    req = shape_request(cell, "default")
    sandbox = cell.shared(req)  # the python default sandbox of cuda.*: no start of its own
    uuids = _smi(cell, sandbox, AT_START, sandbox.granted, req.wanted)
    cell.seen = tuple(sorted(uuids))
    doc = run_probe(cell, sandbox)  # cuda.*'s document when they ran first
    missing = gap(cell, sandbox, doc, needs_cupy=False)
    cuda = missing is None
    if cuda:
        _cuda(cell, doc, AT_START, uuids)
    else:
        cell.parsed["cuda"] = f"not checked (nvidia-smi only): {missing.reason if missing else ''}"

    time.sleep(INTERVAL_S)
    after_interval = f"after {INTERVAL_S:g} s"
    _smi(cell, sandbox, after_interval, uuids, req.wanted)
    if cuda:
        _cuda(cell, _cuda_doc(cell, sandbox, after_interval), after_interval, uuids)

    status, what = sandbox.reload_event(timeout=RELOAD_TIMEOUT_S)
    cell.parsed["reload_event"] = {"status": status, "what": what}
    kept = f"{', '.join(sorted(uuids))} kept {AT_START} and {after_interval}"
    if status == "unsupported":
        cell.unsupported(f"{what} ({kept})")
    if status != "done":
        cell.skip(f"{what} ({kept}; the reload was not tried)")
    _smi(cell, sandbox, AFTER_RELOAD, uuids, req.wanted)
    if cuda:
        _cuda(cell, _cuda_doc(cell, sandbox, AFTER_RELOAD), AFTER_RELOAD, uuids)
    checks = "nvidia-smi and CUDA" if cuda else "nvidia-smi (CUDA out of reach here)"
    cell.passed(f"{kept} and after the reload event ({what}): {checks} each time")
