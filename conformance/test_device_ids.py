"""Selecting GPUs by the driver's native ids: device.each, .uuid, .pair, and the refusals."""

from __future__ import annotations

from gpuconform.conformance.catalogue import case
from gpuconform.conformance.observe import expect_nodes_of, list_gpus
from gpuconform.drivers.inventory import GpuRecord
from gpuconform.drivers.request import GpuRequest
from gpuconform.fixtures.cell import Cell


def _ids(cell: Cell, gpu: GpuRecord) -> list[str]:
    """The driver's ids for ``gpu``; a driver without native ids gets the UUID (it must refuse it)."""
    return cell.native_ids(gpu) or [gpu.uuid]


def _sees_only(cell: Cell, req: GpuRequest, expected: list[GpuRecord]) -> None:
    """Provision ``req`` in its own sandbox and fail unless it sees exactly ``expected``."""
    _each_sees_only(cell, [(req, expected)])


def _each_sees_only(cell: Cell, wants: list[tuple[GpuRequest, list[GpuRecord]]]) -> None:
    """Provision each request in its own sandbox (started together where the driver allows it)
    and fail unless each sees exactly its expected GPUs."""
    sandboxes = cell.own_all([req for req, _ in wants])
    wrong = []
    try:
        for (req, expected), sandbox in zip(wants, sandboxes, strict=True):
            want = sorted(g.uuid for g in expected)
            seen = tuple(g.uuid for g in list_gpus(cell, sandbox))
            cell.details.append({"ids": list(req.device_ids), "expected": want, "seen": list(seen)})
            cell.seen = tuple(sorted(set(cell.seen or ()) | set(seen)))
            if sorted(seen) == want:  # the right GPUs: now hold its nodes to them too (SPEC 4)
                expect_nodes_of(cell, sandbox, seen)
            else:
                wrong.append((req, expected, want, seen))
    finally:
        for sandbox in sandboxes:
            cell.release(sandbox)
    for req, expected, want, seen in wrong[:1]:
        names = ", ".join(f"GPU {g.index}" for g in expected)
        strangers = sorted(set(seen) - cell.inventory.uuids)
        note = f" ({', '.join(strangers)} not in the host inventory)" if strangers else ""
        cell.fail(
            f"ids {list(req.device_ids)} ({names}) should show {want}, the sandbox sees {list(seen)}{note}",
            expected=want,
            seen=list(seen),
        )


@case("device.each")
def test_device_each(cell: Cell) -> None:
    gpus = cell.inventory.gpus
    step = cell.starts_at_once  # a VM driver boots two at a time; each still sees only its own
    for at in range(0, len(gpus), step):
        _each_sees_only(
            cell, [(GpuRequest.of_ids(_ids(cell, gpu)[:1]), [gpu]) for gpu in gpus[at : at + step]]
        )
    cell.passed(f"each of the {len(cell.inventory.gpus)} GPUs, selected by its own id, is the only one seen")


@case("device.uuid")
def test_device_uuid(cell: Cell) -> None:
    gpu = cell.inventory.gpus[min(1, len(cell.inventory.gpus) - 1)]
    ids = _ids(cell, gpu)
    if cell.expectation == "reject":  # the driver must refuse ids of any form
        cell.expect_rejection(GpuRequest.of_ids(ids[:1]))
    uuid_forms = [i for i in ids if gpu.uuid in i]
    index_forms = [i for i in ids if gpu.uuid not in i]
    if not uuid_forms or not index_forms:
        cell.skip(f"precondition: {cell.driver} has no separate UUID-form and index-form ids ({ids})")
    _sees_only(cell, GpuRequest.of_ids(index_forms[:1]), [gpu])
    _sees_only(cell, GpuRequest.of_ids(uuid_forms[:1]), [gpu])
    cell.passed(f"{uuid_forms[0]} and {index_forms[0]} both select {gpu.uuid}")


@case("device.pair")
def test_device_pair(cell: Cell) -> None:
    gpus = cell.inventory.gpus
    if len(gpus) < 2:
        cell.skip("precondition: needs 2 GPUs, the host has 1")
    pair = [gpus[0], gpus[-1]]
    _sees_only(cell, GpuRequest.of_ids([_ids(cell, g)[0] for g in pair], count=2), pair)
    cell.passed(f"ids of GPU {pair[0].index} and GPU {pair[1].index} with count 2 see exactly those two")


@case("device.duplicate")
def test_device_duplicate(cell: Cell) -> None:
    first = _ids(cell, cell.inventory.gpus[0])[0]
    cell.expect_rejection(GpuRequest.of_ids([first, first], count=2), validation=True, must_name=first)


@case("device.mismatch")
def test_device_mismatch(cell: Cell) -> None:
    gpus = cell.inventory.gpus
    ids = [_ids(cell, gpus[0])[0], _ids(cell, gpus[-1])[0] if len(gpus) > 1 else cell.unknown_id()]
    cell.expect_rejection(GpuRequest.of_ids(ids, count=1), validation=True, must_name="must match")


@case("device.empty")
def test_device_empty(cell: Cell) -> None:
    cell.expect_rejection(GpuRequest.of_ids([""]), validation=True, must_name="non-empty")


@case("device.invalid")
def test_device_invalid(cell: Cell) -> None:
    unknown = cell.unknown_id()
    cell.expect_rejection(GpuRequest.of_ids([unknown]), must_name=unknown)


@case("device.unsupported")
def test_device_unsupported(cell: Cell) -> None:
    cell.expect_rejection(GpuRequest.of_ids([cell.inventory.gpus[0].uuid]))
