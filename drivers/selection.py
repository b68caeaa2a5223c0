"""Choosing GPUs for a request on drivers without an allocator (docker, podman, qemu, host).

Default and count requests lease free GPUs (lowest index first) and turn them into native ids;
explicit ids are passed through untouched so the engine itself judges them, and leased when
the inventory knows them so concurrent sandboxes stay disjoint.

A MIG device's id leases its parent GPU (``_leased_gpu``): a whole-GPU request and a MIG request
on the same parent then exclude each other, so no count request is handed a GPU a MIG sandbox is
using. The cost: MIG siblings of one parent never run at the same time either (one lock per GPU,
not per slice); the MIG cases take them one after another anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpuconform.drivers.errors import Deadline, RequestRejected
from gpuconform.drivers.inventory import GpuRecord, Inventory
from gpuconform.drivers.leases import Lease
from gpuconform.drivers.request import GpuRequest

if TYPE_CHECKING:
    from gpuconform.drivers.base import AdapterContext


@dataclass
class Selection:
    """What a provision asks the engine for, what it should yield, and the lease behind it."""

    ids: tuple[str, ...]  # native ids handed to the engine
    granted: frozenset[str] | None  # UUIDs the request should yield; None: the engine chooses
    lease: Lease

    def release(self) -> None:
        self.lease.release()


def select_gpus(
    ctx: AdapterContext,
    req: GpuRequest,
    scheme: str,
    deadline: Deadline,
    *,
    all_id: str | None = None,
    leased: bool = True,
    inventory: Inventory | None = None,
) -> Selection:
    """Resolve ``req`` into native ids and a lease; RequestRejected for a count beyond the host.

    ``leased=False`` is for observers that isolate nothing (the bare host's baseline), which must
    be able to look at GPUs a sandbox holds. ``inventory`` is the adapter's view of the host when
    its ids were learnt (learn_cdi_ids); the same GPUs as ``ctx.inventory``, other native ids.
    """
    inventory = inventory or ctx.inventory
    if not leased:
        return _unleased(inventory, req, scheme, all_id)
    if not req.gpu:
        return Selection((), frozenset(), Lease(()))
    if req.device_ids:
        wanted: list[GpuRecord] = []
        for device_id in req.device_ids:
            if all_id is not None and device_id == all_id:
                wanted.extend(inventory.gpus)
                continue
            gpu = _leased_gpu(inventory, scheme, device_id)
            if gpu is not None:
                wanted.append(gpu)
        unique = tuple({g.uuid: g for g in wanted}.values())
        lease = ctx.leases.acquire_exact(unique, deadline)
        return Selection(tuple(req.device_ids), lease.uuids, lease)
    lease = ctx.leases.acquire(inventory.gpus, req.wanted, deadline)
    ids = []
    for gpu in lease.gpus:
        native = gpu.ids(scheme)
        if not native:
            lease.release()
            raise RequestRejected(f"GPU {gpu.uuid} has no {scheme} id in the inventory")
        ids.append(native[0])
    return Selection(tuple(ids), lease.uuids, lease)


def _leased_gpu(inventory: Inventory, scheme: str, device_id: str) -> GpuRecord | None:
    """The GPU whose lease an explicit id takes: the GPU it names, or a MIG device's parent (its
    MIG devices share the parent's lock); None for an id that names nothing the inventory knows."""
    gpu = inventory.resolve(scheme, device_id)
    if gpu is not None:
        return gpu
    mig = inventory.resolve_mig(scheme, device_id)
    return inventory.by_uuid(mig.parent_uuid) if mig is not None else None


def _unleased(inventory: Inventory, req: GpuRequest, scheme: str, all_id: str | None) -> Selection:
    if not req.gpu:
        return Selection((), frozenset(), Lease(()))
    if req.device_ids:
        gpus = [
            g
            for i in req.device_ids
            for g in (
                [*inventory.gpus] if i == all_id else [x for x in [_leased_gpu(inventory, scheme, i)] if x]
            )
        ]
        return Selection(tuple(req.device_ids), frozenset(g.uuid for g in gpus), Lease(()))
    if req.wanted > len(inventory.gpus):
        raise RequestRejected(f"requested {req.wanted} GPUs but the host has {len(inventory.gpus)}")
    gpus = sorted(inventory.gpus, key=lambda g: g.index)[: req.wanted]
    return Selection(tuple(g.ids(scheme)[0] for g in gpus), frozenset(g.uuid for g in gpus), Lease(()))
