"""MIG (Multi-Instance GPU): mig.each and mig.parent.

A100/H100 runners partition GPUs into MIG devices and hand sandboxes those, not whole GPUs. Inside
a sandbox ``nvidia-smi -L`` then lists the parent GPU with the MIG devices the sandbox may use as
child lines. A MIG device given correctly shows exactly itself under its parent; a stack that
injects the parent's every capability node shows its siblings too, and one that injects no
capability node shows the parent alone (kubernetes-sigs/dra-driver-nvidia-gpu#787). Both are
defects these cases name. Comparison is by UUID, as everywhere (SPEC section 2).

On a host without MIG-enabled GPUs both cases are a reasoned ``skip``.
"""

from __future__ import annotations

from gpuconform.conformance.catalogue import case
from gpuconform.conformance.observe import expect_nodes_of, list_gpus
from gpuconform.drivers.base import Sandbox
from gpuconform.drivers.inventory import MigRecord
from gpuconform.drivers.request import GpuRequest
from gpuconform.fixtures.cell import Cell
from gpuconform.workloads.nvidia_smi import ListedGpu

NO_MIG = (
    "precondition: no GPU of this host is in MIG mode, so there is no MIG device to request "
    "(hint: --sim mig simulates a host with MIG-enabled GPUs)"
)


def _mig_ids(cell: Cell, mig: MigRecord) -> list[str]:
    """The MIG device's ids under the driver's own native ids (CDI names learnt from the specs,
    where it learns them), so it is asked for by a name the engine knows."""
    named = cell.id_inventory().mig_by_uuid(mig.uuid)
    return list((named or mig).ids(cell.id_scheme))


def _label(mig: MigRecord) -> str:
    return f"MIG {mig.profile} device {mig.device} of GPU {mig.parent_index}"


def _observe(cell: Cell, sandbox: Sandbox) -> tuple[list[str], list[str]]:
    """(GPU UUIDs, MIG UUIDs) ``nvidia-smi -L`` lists in ``sandbox``, recorded in the evidence."""
    listed: tuple[ListedGpu, ...] = list_gpus(cell, sandbox)
    gpus = [g.uuid for g in listed]
    migs = [m.uuid for g in listed for m in g.mig]
    cell.parsed.setdefault("listed_mig", []).append({g.uuid: [m.uuid for m in g.mig] for g in listed})
    return gpus, migs


def _judge_mig(cell: Cell, mig: MigRecord, device_id: str, gpus: list[str], migs: list[str]) -> str | None:
    """Why the sandbox for ``mig`` is wrong, naming the defect; None when it sees exactly it."""
    inventory = cell.inventory
    want = f"{_label(mig)} ({mig.uuid})"
    if gpus != [mig.parent_uuid]:
        others = [u for u in gpus if u != mig.parent_uuid]
        if mig.parent_uuid not in gpus:
            return (
                f"{device_id} should show {want} under GPU {mig.parent_uuid}; the sandbox lists GPUs {gpus}"
            )
        return (
            f"{device_id} should show only its parent GPU {mig.parent_uuid}; the sandbox also lists {others}"
        )
    if not migs:
        return (
            f"{device_id} should show {want}; the sandbox sees its parent GPU {mig.parent_uuid} with no MIG "
            "device: the whole GPU was injected without the MIG device's capability nodes "
            "(/dev/nvidia-caps), so nothing in it is usable"
        )
    if migs == [mig.uuid]:
        return None
    extra = [u for u in migs if u != mig.uuid]
    siblings = [u for u in extra if (m := inventory.mig_by_uuid(u)) and m.parent_uuid == mig.parent_uuid]
    if siblings and mig.uuid in migs:
        named = ", ".join(
            f"{_label(m)} {m.uuid}" for u in siblings if (m := inventory.mig_by_uuid(u)) is not None
        )
        return (
            f"{device_id} should show only {want}; the sandbox also sees its sibling(s) {named}: "
            "the stack injected the whole parent GPU's MIG devices for one MIG request"
        )
    if mig.uuid not in migs:
        return f"{device_id} should show {want}; the sandbox sees MIG device(s) {migs} instead"
    return f"{device_id} should show only {want}; the sandbox also sees MIG device(s) {extra}"


@case("mig.each")
def test_mig_each(cell: Cell) -> None:
    migs = cell.inventory.migs
    if not migs:
        cell.skip(NO_MIG)
    for mig in migs:
        ids = _mig_ids(cell, mig)
        if not ids:
            cell.fail(
                f"{cell.driver} has no {cell.id_scheme} id for {_label(mig)} ({mig.uuid}): "
                "its configuration (CDI spec, device plugin) does not name the MIG device"
            )
        if cell.expectation == "reject":
            cell.expect_rejection(GpuRequest.of_ids(ids[:1]))
        sandbox = cell.own(GpuRequest.of_ids(ids[:1]))
        try:
            gpus, seen = _observe(cell, sandbox)
            cell.details.append({"id": ids[0], "mig": mig.uuid, "gpus": gpus, "migs": seen})
            cell.seen = tuple(sorted({*(cell.seen or ()), *gpus, *seen}))
            problem = _judge_mig(cell, mig, ids[0], gpus, seen)
            if problem is None:  # the right devices: the GPU node must be the parent's alone
                expect_nodes_of(cell, sandbox, [mig.parent_uuid])
        finally:
            cell.release(sandbox)
        if problem is not None:
            cell.fail(
                problem,
                expected={"gpus": [mig.parent_uuid], "migs": [mig.uuid]},
                seen={"gpus": gpus, "migs": seen},
            )
    parents = sorted({m.parent_index for m in migs})
    cell.passed(
        f"each of the {len(migs)} MIG devices (on GPUs {', '.join(map(str, parents))}), selected by its own "
        "id, is the only MIG device seen, under its parent GPU"
    )


@case("mig.parent")
def test_mig_parent(cell: Cell) -> None:
    inventory = cell.inventory
    parents = [g for g in inventory.gpus if inventory.migs_of(g.uuid)]
    if not parents:
        cell.skip(NO_MIG)
    visible: dict[int, int] = {}
    for gpu in parents:
        ids = cell.native_ids(gpu)
        if not ids:
            cell.fail(f"{cell.driver} has no id for MIG-enabled GPU {gpu.index} ({gpu.uuid})")
        if cell.expectation == "reject":
            cell.expect_rejection(GpuRequest.of_ids(ids[:1]))
        sandbox = cell.own(GpuRequest.of_ids(ids[:1]))
        try:
            gpus, seen = _observe(cell, sandbox)
            cell.details.append({"id": ids[0], "gpu": gpu.uuid, "gpus": gpus, "migs": seen})
            cell.seen = tuple(sorted({*(cell.seen or ()), *gpus, *seen}))
            own = {m.uuid for m in inventory.migs_of(gpu.uuid)}
            foreign = [u for u in seen if u not in own]
            if gpus == [gpu.uuid] and not foreign:
                expect_nodes_of(cell, sandbox, [gpu.uuid])
        finally:
            cell.release(sandbox)
        if gpus != [gpu.uuid]:
            cell.fail(
                f"{ids[0]} (MIG-enabled GPU {gpu.index}) should show exactly {gpu.uuid}; "
                f"the sandbox lists {gpus}",
                expected=[gpu.uuid],
                seen=gpus,
            )
        if foreign:
            cell.fail(
                f"{ids[0]} (MIG-enabled GPU {gpu.index}) shows MIG device(s) {foreign} that are not its own",
                expected=sorted(own),
                seen=seen,
            )
        visible[gpu.index] = len(seen)
    summary = ", ".join(f"GPU {i} with {n} of its MIG devices visible" for i, n in visible.items())
    cell.passed(f"each MIG-enabled GPU requested whole is the only GPU seen ({summary})")
