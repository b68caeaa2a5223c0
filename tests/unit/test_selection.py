"""select_gpus: request -> native ids, expected UUIDs and the lease behind them."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuconform.drivers.base import AdapterContext, Deadline, DeadlineExceeded, RequestRejected
from gpuconform.drivers.inventory import (
    REAL_CDI_KIND,
    SCHEME_CDI,
    SCHEME_PCI,
    GpuRecord,
    Inventory,
    MigRecord,
    default_native_ids,
)
from gpuconform.drivers.leases import GpuLeases
from gpuconform.drivers.request import GpuRequest
from gpuconform.drivers.selection import select_gpus

CDI_ALL = "nvidia.com/gpu=all"


def _gpu(index: int, native: bool = True) -> GpuRecord:
    uuid, bus = f"GPU-sel-{index}", f"0000:{0x18 + index:02x}:00.0"
    ids = default_native_ids(index, uuid, bus, REAL_CDI_KIND) if native else {}
    return GpuRecord(index, uuid, "sim", bus, 1024, "1.0", index, native_ids=ids)


def _ctx(tmp_path: Path, gpus: tuple[GpuRecord, ...] | None = None) -> AdapterContext:
    inventory = Inventory(
        host="h", gpus=gpus if gpus is not None else tuple(_gpu(i) for i in range(4)), simulated=True,
        source="test",
    )  # fmt: skip
    return AdapterContext(inventory, GpuLeases(tmp_path / "leases", poll_s=0.02), run_id="t")


def _held(ctx: AdapterContext) -> list[int]:
    """Indices of the GPUs some lease holds, as an independent lease table sees them."""
    probe = GpuLeases(ctx.leases.lock_dir, poll_s=0.02)
    held = []
    for gpu in ctx.inventory.gpus:
        try:
            probe.acquire_exact([gpu], Deadline(0)).release()
        except DeadlineExceeded:
            held.append(gpu.index)
    return held


def test_default_leases_the_lowest_free_gpu_and_returns_its_first_cdi_id(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    sel = select_gpus(ctx, GpuRequest.default(), SCHEME_CDI, Deadline(1))
    assert sel.ids == ("nvidia.com/gpu=0",)
    assert sel.granted == frozenset({"GPU-sel-0"})
    assert _held(ctx) == [0]
    sel.release()
    assert _held(ctx) == []


def test_default_skips_a_gpu_another_sandbox_holds(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    first = select_gpus(ctx, GpuRequest.default(), SCHEME_CDI, Deadline(1))
    second = select_gpus(ctx, GpuRequest.default(), SCHEME_CDI, Deadline(1))
    assert (first.ids, second.ids) == (("nvidia.com/gpu=0",), ("nvidia.com/gpu=1",))
    assert _held(ctx) == [0, 1]
    first.release()
    second.release()


def test_count_uses_the_schemes_first_native_id(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    sel = select_gpus(ctx, GpuRequest.of_count(2), SCHEME_PCI, Deadline(1))
    assert sel.ids == ("0000:18:00.0", "0000:19:00.0")
    assert sel.granted == frozenset({"GPU-sel-0", "GPU-sel-1"})
    assert _held(ctx) == [0, 1]
    sel.release()


def test_count_beyond_the_host_is_rejected(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    with pytest.raises(RequestRejected, match="^requested 5 GPUs but the host has 4"):
        select_gpus(ctx, GpuRequest.of_count(5), SCHEME_CDI, Deadline(1))
    assert _held(ctx) == []


def test_gpu_without_an_id_in_the_scheme_is_rejected_and_released(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, (_gpu(0, native=False),))
    with pytest.raises(RequestRejected) as info:
        select_gpus(ctx, GpuRequest.default(), SCHEME_CDI, Deadline(1))
    assert str(info.value) == "GPU GPU-sel-0 has no cdi id in the inventory"
    assert _held(ctx) == []


def test_no_gpu_request_selects_and_leases_nothing(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    sel = select_gpus(ctx, GpuRequest.none(), SCHEME_CDI, Deadline(1))
    assert (sel.ids, sel.granted, sel.lease.gpus) == ((), frozenset(), ())
    assert _held(ctx) == []


def test_explicit_ids_pass_through_untouched_and_are_leased(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    ids = ["nvidia.com/gpu=GPU-sel-3", "nvidia.com/gpu=1"]
    sel = select_gpus(ctx, GpuRequest.of_ids(ids, count=2), SCHEME_CDI, Deadline(1))
    assert sel.ids == tuple(ids)
    assert sel.granted == frozenset({"GPU-sel-1", "GPU-sel-3"})
    assert _held(ctx) == [1, 3]
    sel.release()
    assert _held(ctx) == []


def test_unknown_explicit_id_passes_through_and_is_not_leased(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    sel = select_gpus(ctx, GpuRequest.of_ids(["nvidia.com/gpu=11"]), SCHEME_CDI, Deadline(1))
    assert sel.ids == ("nvidia.com/gpu=11",)
    assert sel.granted == frozenset()
    assert sel.lease.gpus == ()
    assert _held(ctx) == []


def test_explicit_id_of_another_scheme_is_not_resolved(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    sel = select_gpus(ctx, GpuRequest.of_ids(["0000:19:00.0"]), SCHEME_CDI, Deadline(1))
    assert sel.ids == ("0000:19:00.0",)
    assert sel.granted == frozenset()
    assert _held(ctx) == []


def test_explicit_id_waits_for_a_held_gpu(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    holder = select_gpus(ctx, GpuRequest.of_count(2), SCHEME_CDI, Deadline(1))
    try:
        with pytest.raises(DeadlineExceeded, match="GPU-sel-1"):
            select_gpus(ctx, GpuRequest.of_ids(["nvidia.com/gpu=1"]), SCHEME_CDI, Deadline(0.1))
    finally:
        holder.release()


def test_all_id_leases_every_gpu(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    sel = select_gpus(ctx, GpuRequest.of_ids([CDI_ALL]), SCHEME_CDI, Deadline(1), all_id=CDI_ALL)
    assert sel.ids == (CDI_ALL,)
    assert sel.granted == frozenset({f"GPU-sel-{i}" for i in range(4)})
    assert _held(ctx) == [0, 1, 2, 3]
    sel.release()
    assert _held(ctx) == []


def test_all_id_without_all_id_configured_is_an_unknown_id(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    sel = select_gpus(ctx, GpuRequest.of_ids([CDI_ALL]), SCHEME_CDI, Deadline(1))
    assert sel.granted == frozenset()
    assert _held(ctx) == []


def test_unleased_default_leases_nothing_even_when_held(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    holder = select_gpus(ctx, GpuRequest.default(), SCHEME_CDI, Deadline(1))
    try:
        sel = select_gpus(ctx, GpuRequest.of_count(2), SCHEME_CDI, Deadline(0), leased=False)
        assert sel.ids == ("nvidia.com/gpu=0", "nvidia.com/gpu=1")
        assert sel.granted == frozenset({"GPU-sel-0", "GPU-sel-1"})
        assert sel.lease.gpus == ()
        assert _held(ctx) == [0]
    finally:
        holder.release()


def test_unleased_explicit_and_all_ids(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    sel = select_gpus(
        ctx, GpuRequest.of_ids(["nvidia.com/gpu=2", "nvidia.com/gpu=9"], count=2), SCHEME_CDI,
        Deadline(1), leased=False,
    )  # fmt: skip
    assert sel.ids == ("nvidia.com/gpu=2", "nvidia.com/gpu=9")
    assert sel.granted == frozenset({"GPU-sel-2"})
    every = select_gpus(
        ctx, GpuRequest.of_ids([CDI_ALL]), SCHEME_CDI, Deadline(1), all_id=CDI_ALL, leased=False
    )
    assert every.granted == frozenset({f"GPU-sel-{i}" for i in range(4)})
    assert _held(ctx) == []


def test_unleased_count_beyond_the_host_is_rejected(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    with pytest.raises(RequestRejected, match="^requested 5 GPUs but the host has 4$"):
        select_gpus(ctx, GpuRequest.of_count(5), SCHEME_CDI, Deadline(1), leased=False)


def test_unleased_none_request_selects_nothing(tmp_path: Path) -> None:
    sel = select_gpus(_ctx(tmp_path), GpuRequest.none(), SCHEME_CDI, Deadline(1), leased=False)
    assert (sel.ids, sel.granted) == ((), frozenset())


def _mig_ctx(tmp_path: Path) -> AdapterContext:
    """Four GPUs; GPU 1 is split into two MIG devices named by CDI ``<gpu>:<mig>`` and UUID."""
    gpus = tuple(_gpu(i) for i in range(4))
    migs = tuple(
        MigRecord(
            f"MIG-sel-1-{d}", gpus[1].uuid, 1, d, "3g.40gb", d + 1, 0, 40192,
            native_ids={SCHEME_CDI: (f"{REAL_CDI_KIND}=1:{d}", f"{REAL_CDI_KIND}=MIG-sel-1-{d}")},
        )
        for d in range(2)
    )  # fmt: skip
    inventory = Inventory(host="h", gpus=gpus, simulated=True, source="test", migs=migs)
    return AdapterContext(inventory, GpuLeases(tmp_path / "leases", poll_s=0.02), run_id="t")


def test_a_mig_id_leases_its_parent_gpu(tmp_path: Path) -> None:
    ctx = _mig_ctx(tmp_path)
    sel = select_gpus(ctx, GpuRequest.of_ids(["nvidia.com/gpu=1:0"]), SCHEME_CDI, Deadline(1))
    assert sel.ids == ("nvidia.com/gpu=1:0",)  # passed through untouched
    assert sel.granted == frozenset({"GPU-sel-1"})
    assert _held(ctx) == [1]
    sel.release()
    assert _held(ctx) == []


def test_a_count_request_is_never_granted_the_parent_of_a_mig_device_in_use(tmp_path: Path) -> None:
    ctx = _mig_ctx(tmp_path)
    mig = select_gpus(ctx, GpuRequest.of_ids(["nvidia.com/gpu=MIG-sel-1-1"]), SCHEME_CDI, Deadline(1))
    whole = select_gpus(ctx, GpuRequest.of_count(3), SCHEME_CDI, Deadline(1))
    assert whole.granted == frozenset({"GPU-sel-0", "GPU-sel-2", "GPU-sel-3"})
    with pytest.raises(DeadlineExceeded):  # all four: waits for the MIG sandbox's parent
        select_gpus(ctx, GpuRequest.of_count(4), SCHEME_CDI, Deadline(0.2)).release()
    whole.release()
    mig.release()


def test_a_mig_request_waits_for_a_whole_gpu_lease_of_its_parent(tmp_path: Path) -> None:
    ctx = _mig_ctx(tmp_path)
    parent = select_gpus(ctx, GpuRequest.of_ids(["nvidia.com/gpu=1"]), SCHEME_CDI, Deadline(1))
    with pytest.raises(DeadlineExceeded, match="GPU-sel-1"):
        select_gpus(ctx, GpuRequest.of_ids(["nvidia.com/gpu=1:0"]), SCHEME_CDI, Deadline(0.2))
    parent.release()
    select_gpus(ctx, GpuRequest.of_ids(["nvidia.com/gpu=1:0"]), SCHEME_CDI, Deadline(1)).release()


def test_mig_siblings_exclude_each_other_the_documented_cost(tmp_path: Path) -> None:
    ctx = _mig_ctx(tmp_path)
    first = select_gpus(ctx, GpuRequest.of_ids(["nvidia.com/gpu=1:0"]), SCHEME_CDI, Deadline(1))
    with pytest.raises(DeadlineExceeded):
        select_gpus(ctx, GpuRequest.of_ids(["nvidia.com/gpu=1:1"]), SCHEME_CDI, Deadline(0.2))
    first.release()


def test_unleased_mig_id_expects_its_parent(tmp_path: Path) -> None:
    ctx = _mig_ctx(tmp_path)
    sel = select_gpus(ctx, GpuRequest.of_ids(["nvidia.com/gpu=1:1"]), SCHEME_CDI, Deadline(1), leased=False)
    assert sel.granted == frozenset({"GPU-sel-1"})
    assert _held(ctx) == []
