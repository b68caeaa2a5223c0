"""MIG (Multi-Instance GPU): mig.each and mig.parent.

A100/H100 runners partition GPUs into MIG devices and hand sandboxes those, not whole GPUs. Inside
a sandbox ``nvidia-smi -L`` then lists the parent GPU with the MIG devices the sandbox may use as
child lines. A MIG device given correctly shows exactly itself under its parent; a stack that
injects the parent's every capability node shows its siblings too, and one that injects no
capability node shows the parent alone (kubernetes-sigs/dra-driver-nvidia-gpu#787). Both are
defects these cases name. Comparison is by UUID, as everywhere (SPEC section 2).

The MIG devices come from the driver's own view (``cell.id_inventory()``): for the containers the
run's inventory with the names their CDI specs give; for Kubernetes the MIG units its nodes
advertise, whose native id is a resource class (``nvidia.com/mig-3g.40gb``) rather than one device.
Where one id names several MIG devices the driver picks one: each distinct id is requested once
and the sandbox is judged against the device it was granted (the kubelet's
``allocatedResourcesStatus``), or, where the grant is not reported, against the one MIG device of
that class it shows.

On a host without MIG-enabled GPUs both cases are a reasoned ``skip``.
"""

from __future__ import annotations

from gpuconform.conformance.catalogue import case
from gpuconform.conformance.observe import device_nodes, expect_nodes_of, list_gpus
from gpuconform.drivers.base import Sandbox
from gpuconform.drivers.inventory import Inventory, MigRecord
from gpuconform.drivers.request import GpuRequest
from gpuconform.fixtures.cell import Cell
from gpuconform.workloads.nvidia_smi import ListedGpu

NO_MIG = (
    "precondition: no GPU of this host is in MIG mode, so there is no MIG device to request "
    "(hint: --sim mig simulates a host with MIG-enabled GPUs)"
)


def _mig_ids(cell: Cell, host: Inventory, mig: MigRecord) -> list[str]:
    """The MIG device's ids under the driver's own native ids (CDI names learnt from the specs,
    where it learns them), so it is asked for by a name the engine knows."""
    named = host.mig_by_uuid(mig.uuid)
    return list((named or mig).ids(cell.id_scheme))


def _requests(cell: Cell, host: Inventory) -> list[tuple[str, list[MigRecord]]]:
    """Each distinct first id once, with the MIG devices it may yield (one where the id names a
    device, all of a profile where it names a resource class); fails for a device with no id."""
    out: dict[str, list[MigRecord]] = {}
    for mig in host.migs:
        ids = _mig_ids(cell, host, mig)
        if not ids:
            cell.fail(
                f"{cell.driver} has no {cell.id_scheme} id for {_label(mig)} ({mig.uuid}): "
                "its configuration (CDI spec, device plugin) does not name the MIG device"
            )
        out.setdefault(ids[0], []).append(mig)
    return list(out.items())


def _granted_mig(
    cell: Cell, device_id: str, candidates: list[MigRecord], granted: frozenset[str] | None, seen: list[str]
) -> MigRecord:
    """The MIG device ``device_id`` yielded: the only candidate, else the one the driver reports
    granting, else (grant not reported) the one candidate the sandbox shows; fails otherwise."""
    if len(candidates) == 1:
        return candidates[0]
    pool = {m.uuid: m for m in candidates}
    if granted is not None:
        chosen = sorted(u for u in granted if u in pool)
        if len(chosen) != 1:
            cell.fail(
                f"{device_id} asks for one of {sorted(pool)}; the driver reports granting {sorted(granted)}",
                expected=f"one of {sorted(pool)}",
                seen=sorted(granted),
            )
        return pool[chosen[0]]
    shown = [u for u in seen if u in pool]
    if len(shown) == 1:
        return pool[shown[0]]
    cell.fail(
        f"{device_id} should show exactly one of its MIG devices {sorted(pool)}; the sandbox shows MIG "
        f"device(s) {seen}",
        expected=f"one of {sorted(pool)}",
        seen=seen,
    )


def _expect_parent_node(cell: Cell, host: Inventory, sandbox: Sandbox, mig: MigRecord) -> None:
    """The node check (SPEC 4) for a MIG sandbox: /dev/nvidiaN must be the parent's alone. The
    parent's minor comes from ``host``, which holds it where the column's own inventory may not (a
    Kubernetes column judged against the cluster's whole GPUs has no MIG parent in it)."""
    if mig.parent_uuid in cell.inventory.uuids:
        expect_nodes_of(cell, sandbox, [mig.parent_uuid])
        return
    parent = host.by_uuid(mig.parent_uuid)
    if (
        parent is None
        or not cell.node_minors_follow_host
        or cell.profile.expect("smi.nodes") == "unsupported"
    ):
        return
    nodes = device_nodes(cell, sandbox)
    if nodes != {parent.minor}:
        cell.fail(
            f"device nodes do not match {_label(mig)}: expected its parent's /dev/nvidia{parent.minor} "
            f"alone, the sandbox has {', '.join(f'/dev/nvidia{n}' for n in sorted(nodes)) or 'none'}",
            expected=[f"/dev/nvidia{parent.minor}"],
            seen=[f"/dev/nvidia{n}" for n in sorted(nodes)],
        )


def _label(mig: MigRecord) -> str:
    return f"MIG {mig.profile} device {mig.device} of GPU {mig.parent_index}"


def _observe(cell: Cell, sandbox: Sandbox) -> tuple[list[str], list[str]]:
    """(GPU UUIDs, MIG UUIDs) ``nvidia-smi -L`` lists in ``sandbox``, recorded in the evidence."""
    listed: tuple[ListedGpu, ...] = list_gpus(cell, sandbox)
    gpus = [g.uuid for g in listed]
    migs = [m.uuid for g in listed for m in g.mig]
    cell.parsed.setdefault("listed_mig", []).append({g.uuid: [m.uuid for m in g.mig] for g in listed})
    return gpus, migs


def _judge_mig(
    host: Inventory, mig: MigRecord, device_id: str, gpus: list[str], migs: list[str]
) -> str | None:
    """Why the sandbox for ``mig`` is wrong, naming the defect; None when it sees exactly it."""
    inventory = host
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
    host = cell.id_inventory()
    migs = host.migs
    if not migs:
        cell.skip(NO_MIG)
    requests = _requests(cell, host)
    for device_id, candidates in requests:
        if cell.expectation == "reject":
            cell.expect_rejection(GpuRequest.of_ids([device_id]))
        sandbox = cell.own(GpuRequest.of_ids([device_id]))
        try:
            gpus, seen = _observe(cell, sandbox)
            mig = _granted_mig(cell, device_id, candidates, sandbox.granted, seen)
            cell.details.append({"id": device_id, "mig": mig.uuid, "gpus": gpus, "migs": seen})
            cell.seen = tuple(sorted({*(cell.seen or ()), *gpus, *seen}))
            problem = _judge_mig(host, mig, device_id, gpus, seen)
            if problem is None:  # the right devices: the GPU node must be the parent's alone
                _expect_parent_node(cell, host, sandbox, mig)
        finally:
            cell.release(sandbox)
        if problem is not None:
            cell.fail(
                problem,
                expected={"gpus": [mig.parent_uuid], "migs": [mig.uuid]},
                seen={"gpus": gpus, "migs": seen},
            )
    parents = sorted({m.parent_index for m in migs})
    if len(requests) == len(migs):
        cell.passed(
            f"each of the {len(migs)} MIG devices (on GPUs {', '.join(map(str, parents))}), selected by its "
            "own id, is the only MIG device seen, under its parent GPU"
        )
    cell.passed(
        f"each of the {len(requests)} MIG resource(s) ({', '.join(i for i, _ in requests)}) of the "
        f"{len(migs)} MIG devices on GPUs {', '.join(map(str, parents))} yields exactly the one MIG "
        "device it was granted, under its parent GPU, with no sibling"
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
