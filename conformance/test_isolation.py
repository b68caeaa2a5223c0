"""Isolation and lifecycle: exclusive.concurrent, env.escalation, release."""

from __future__ import annotations

from gpuconform.conformance.catalogue import case
from gpuconform.conformance.observe import expect_exactly, expect_no_gpu, list_gpus
from gpuconform.drivers.base import DeadlineExceeded, RequestRejected
from gpuconform.drivers.request import GpuRequest
from gpuconform.fixtures.cell import Cell

THIRD_SANDBOX_WAIT_S = 15.0


@case("exclusive.concurrent")
def test_exclusive_concurrent(cell: Cell) -> None:
    gpus = cell.inventory.gpus
    if len(gpus) < 2:
        cell.skip("precondition: needs 2 GPUs, the host has 1")
    first, second = cell.own_all([GpuRequest.default(), GpuRequest.default()])  # together if it can
    # Each must hold exactly its grant first: two sandboxes that see nothing share nothing, and
    # "disjoint" must never be how a stack that injects no GPU passes.
    seen_first = set(expect_exactly(cell, first, 1, first.granted))
    seen_second = set(expect_exactly(cell, second, 1, second.granted))
    cell.seen = tuple(sorted(seen_first | seen_second))
    cell.details.append({"first": sorted(seen_first), "second": sorted(seen_second)})
    shared = seen_first & seen_second
    if shared and cell.profile.exclusive:
        cell.fail(
            f"two concurrent sandboxes both see {', '.join(sorted(shared))}; the profile declares "
            "exclusive GPUs",
            expected="disjoint",
            seen=sorted(shared),
        )
    if len(gpus) == 2:
        _third_on_full_host(cell, seen_first | seen_second)
    cell.passed(f"two concurrent sandboxes see disjoint GPUs {sorted(seen_first)} and {sorted(seen_second)}")


def _third_on_full_host(cell: Cell, taken: set[str]) -> None:
    """On a 2-GPU host both are taken: a third default request is refused or openly shared."""
    expected = cell.profile.oversubscribe
    try:
        third = cell.extra(GpuRequest.default(), wait_s=THIRD_SANDBOX_WAIT_S)
    except (RequestRejected, DeadlineExceeded) as exc:
        cell.details.append({"third": f"refused: {exc}"})
        if expected != "reject":
            cell.fail(f"a third sandbox on a full 2-GPU host was refused, the profile expects sharing: {exc}")
        return
    seen = {g.uuid for g in list_gpus(cell, third)}
    cell.details.append({"third": sorted(seen)})
    if expected == "reject":
        cell.fail(
            f"a third sandbox on a full 2-GPU host got {sorted(seen)}; the profile says it must be refused",
            expected="rejected",
            seen=sorted(seen),
        )
    if not seen & taken:
        cell.fail("a third sandbox on a full 2-GPU host sees no GPU although the profile declares sharing")


@case("env.escalation")
def test_env_escalation(cell: Cell) -> None:
    """The image asks for every GPU itself (NVIDIA_VISIBLE_DEVICES=all); only the request counts."""
    none, one = cell.own_all([GpuRequest.none(), GpuRequest.default()], image="busybox-envall")
    expect_no_gpu(cell, none, "no GPU requested, image sets NVIDIA_VISIBLE_DEVICES=all")
    cell.release(none)
    expect_exactly(cell, one, 1, one.granted)
    cell.passed("NVIDIA_VISIBLE_DEVICES=all in the image widens neither a no-GPU nor a one-GPU sandbox")


@case("release")
def test_release(cell: Cell) -> None:
    first = cell.own(GpuRequest.default())
    # The GPU it holds is the one it was granted and sees: judging "selectable again" on a GPU
    # the sandbox merely listed (a wrong one) would prove nothing about the one teardown freed.
    held = set(expect_exactly(cell, first, 1, first.granted))
    cell.release(first)
    problems = cell.release_problems(first)
    if problems:
        cell.fail(f"after teardown: {'; '.join(problems)}")
    gpus = [g for g in cell.inventory.gpus if g.uuid in held]
    ids = [cell.native_ids(g)[0] for g in gpus if cell.native_ids(g)]
    if ids and len(ids) == len(gpus):
        again = cell.own(GpuRequest.of_ids(ids))
        expect_exactly(cell, again, len(gpus), held)
        cell.passed(f"after teardown {', '.join(sorted(held))} is selectable again by its id {ids[0]}")
    everything = cell.own(GpuRequest.of_count(len(cell.inventory.gpus)))
    expect_exactly(cell, everything, len(cell.inventory.gpus), everything.granted)
    cell.passed(f"after teardown {', '.join(sorted(held))} is allocatable again (a full-count request works)")
