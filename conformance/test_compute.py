"""CUDA compute inside the sandbox: cuda.init, cuda.uuid, cuda.vectoradd, cuda.matmul, cuda.bandwidth.

nvidia-smi working is not CUDA working (a stale uvm node, a missing fabric manager, a mismatched
compat library leave NVML fine and CUDA dead), so these cases judge what CUDA itself reports.
"""

from __future__ import annotations

from gpuconform.conformance.catalogue import case
from gpuconform.conformance.compute import apply, gap, run_probe
from gpuconform.conformance.observe import shape_request
from gpuconform.drivers.base import Sandbox
from gpuconform.drivers.request import GpuRequest
from gpuconform.fixtures.cell import Cell
from gpuconform.workloads.compute_judge import (
    bandwidth_ratios,
    judge_bandwidth,
    judge_init,
    judge_matmul,
    judge_uuid,
    judge_vectoradd,
)


def _sandbox(cell: Cell) -> tuple[Sandbox, frozenset[str] | None, int]:
    req = shape_request(cell, "default")
    sandbox = cell.shared(req)
    return sandbox, sandbox.granted, req.wanted


@case("cuda.init")
def test_cuda_init(cell: Cell) -> None:
    sandbox, granted, count = _sandbox(cell)
    doc = run_probe(cell, sandbox)
    apply(cell, gap(cell, sandbox, doc, needs_cupy=False) or judge_init(doc, granted, count))


@case("cuda.uuid")
def test_cuda_uuid(cell: Cell) -> None:
    sandbox, granted, count = _sandbox(cell)
    doc = run_probe(cell, sandbox)
    judgement = gap(cell, sandbox, doc, needs_cupy=False)
    apply(cell, judgement or judge_uuid(doc, granted, count, cell.inventory.uuids))


@case("cuda.vectoradd")
def test_cuda_vectoradd(cell: Cell) -> None:
    sandbox, granted, count = _sandbox(cell)
    doc = run_probe(cell, sandbox)
    apply(cell, gap(cell, sandbox, doc, needs_cupy=True) or judge_vectoradd(doc, granted, count))


@case("cuda.matmul")
def test_cuda_matmul(cell: Cell) -> None:
    sandbox, granted, count = _sandbox(cell)
    doc = run_probe(cell, sandbox)
    apply(cell, gap(cell, sandbox, doc, needs_cupy=True) or judge_matmul(doc, granted, count))


@case("cuda.bandwidth")
def test_cuda_bandwidth(cell: Cell) -> None:
    sandbox, granted, _ = _sandbox(cell)
    doc = run_probe(cell, sandbox)
    missing = gap(cell, sandbox, doc, needs_cupy=True)
    if missing is not None:
        apply(cell, missing)
    uuids = sorted(granted) if granted is not None else [str(d["uuid"]) for d in doc.get("devices", [])]
    same_gpus = GpuRequest.of_ids(uuids, count=len(uuids)) if uuids else GpuRequest.none()
    with cell.on_bare_host(same_gpus) as baseline:
        host_doc = run_probe(cell, baseline)
    if cell.inventory.simulated:
        cell.parsed["ratios"] = bandwidth_ratios(doc, host_doc)
        cell.skip("bandwidth parity is not judged on a simulated host (ratios recorded for information)")
    judgement = gap(cell, baseline, host_doc, needs_cupy=True)
    apply(cell, judgement or judge_bandwidth(doc, host_doc, cell.thresholds))
