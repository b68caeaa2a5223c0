"""GPU counts: count.1, count.2, count.max, count.over, count.zero."""

from __future__ import annotations

from gpuconform.conformance.catalogue import case
from gpuconform.conformance.observe import expect_exactly, shape_request
from gpuconform.drivers.request import GpuRequest
from gpuconform.fixtures.cell import Cell


def _count_case(cell: Cell, shape: str) -> None:
    req = shape_request(cell, shape)
    if req.wanted > len(cell.inventory.gpus):
        cell.skip(f"precondition: needs {req.wanted} GPUs, the host has {len(cell.inventory.gpus)}")
    sandbox = cell.shared(req)
    uuids = expect_exactly(cell, sandbox, req.wanted, sandbox.granted)
    cell.passed(f"count {req.wanted} sees exactly {len(uuids)} distinct inventory GPU(s)")


@case("count.1")
def test_count_1(cell: Cell) -> None:
    _count_case(cell, "count.1")


@case("count.2")
def test_count_2(cell: Cell) -> None:
    _count_case(cell, "count.2")


@case("count.max")
def test_count_max(cell: Cell) -> None:
    _count_case(cell, "count.max")


@case("count.over")
def test_count_over(cell: Cell) -> None:
    over = len(cell.inventory.gpus) + 1
    cell.expect_rejection(GpuRequest.of_count(over))


@case("count.zero")
def test_count_zero(cell: Cell) -> None:
    cell.expect_rejection(GpuRequest.of_count(0), validation=True, must_name="greater than 0")
