"""The parallel run's scheduler (fixtures/schedule.py) against fake xdist workers.

The fake workers keep xdist's rule that matters here: a worker runs an item only once it holds
the next one (or has been told to shut down). A small simulation drives the scheduler through a
whole matrix and checks what the leases would otherwise have to sort out: no two units running
at the same time on different workers hold the same GPU, every item runs exactly once, and the
run never stalls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gpuconform.conformance.catalogue import BY_ID, CATALOGUE
from gpuconform.fixtures.schedule import (
    Demand,
    GpuScheduling,
    case_demand,
    cell_demand,
    cell_of_nodeid,
    plan_units,
    read_placement,
    write_placement,
)

DRIVERS = ["host", "podman", "kubernetes", "qemu", "qemu-single"]


@dataclass(eq=False)
class FakeWorker:
    name: str
    queue: list[int] = field(default_factory=list)
    shutting_down: bool = False

    def send_runtest_some(self, indices: Sequence[int]) -> None:
        assert not self.shutting_down, f"{self.name} got work after shutdown"
        self.queue.extend(indices)

    def shutdown(self) -> None:
        self.shutting_down = True

    def runnable(self) -> bool:
        return len(self.queue) >= 2 or (self.shutting_down and bool(self.queue))

    def __repr__(self) -> str:
        return self.name


def collection(drivers: Sequence[str] = DRIVERS) -> list[str]:
    """Node ids as the plugin names cells (with loadgroup's @group suffix), in catalogue order."""
    return [
        f"conformance/test_x.py::test_{c.id.replace('.', '_')}[{d}-{c.id}]@{d}"
        for d in drivers
        for c in CATALOGUE
    ]


def scheduler(host_gpus: int | None, nodes: int, drivers: Sequence[str] = DRIVERS) -> GpuScheduling:
    placed: dict[str, frozenset[int]] = {}

    def place(nodeids: Sequence[str], gpus: frozenset[int]) -> None:
        placed.update(dict.fromkeys(nodeids, gpus))

    sched = GpuScheduling(nodes, cell_demand(drivers), lambda: host_gpus, place)
    sched.placed = placed  # type: ignore[attr-defined]
    return sched


def two_workers(sched: GpuScheduling, items: list[str]) -> tuple[FakeWorker, FakeWorker]:
    """Two workers that have joined the scheduler and collected ``items``."""
    a, b = FakeWorker("gw0"), FakeWorker("gw1")
    for w in (a, b):
        sched.add_node(w)
        sched.add_node_collection(w, items)
    return a, b


def simulate(
    sched: GpuScheduling, workers: list[FakeWorker], items: list[str], durations: dict[str, int]
) -> int:
    """Run to the end in time steps; returns the number of steps. Fails on overlap or stall."""
    for w in workers:
        sched.add_node(w)
    for w in workers:
        sched.add_node_collection(w, items)
    sched.schedule()
    running: dict[FakeWorker, tuple[str, int]] = {}
    ran: list[str] = []
    step = 0
    while not (sched.tests_finished and all(not w.queue for w in workers)):
        step += 1
        assert step < 10_000, "the run stalled"
        for w in workers:
            if w not in running and w.runnable():
                nodeid = items[w.queue[0]]
                running[w] = (nodeid, durations.get(nodeid, 1))
        assert running or any(w.runnable() for w in workers), (
            f"no worker can run: queues {[(w, w.queue) for w in workers]}, queue {len(sched.queue)}"
        )
        _check_disjoint(sched)
        for w in list(running):
            nodeid, left = running[w]
            if left > 1:
                running[w] = (nodeid, left - 1)
                continue
            del running[w]
            index = w.queue.pop(0)
            ran.append(items[index])
            sched.mark_test_complete(w, index)
        if sched.tests_finished:
            for w in workers:
                w.shutdown()
    assert sorted(ran) == sorted(items)
    return step


def _check_disjoint(sched: GpuScheduling) -> None:
    """What different workers' unfinished units hold (or will hold) never overlaps."""
    nodes = list(sched.assigned)
    for i, a in enumerate(nodes):
        for b in nodes[i + 1 :]:
            assert not sched.held(a) & sched.held(b), (a, sorted(sched.held(a)), b, sorted(sched.held(b)))


def test_cell_node_ids_parse_with_and_without_the_group_suffix() -> None:
    assert cell_of_nodeid("c/t.py::test_count_2[qemu-single-count.2]@qemu-single", DRIVERS) == (
        "qemu-single",
        BY_ID["count.2"],
    )
    assert cell_of_nodeid("c/t.py::test_count_2[qemu-count.2]", DRIVERS) == ("qemu", BY_ID["count.2"])
    assert cell_of_nodeid("c/t.py::test_other[param]", DRIVERS) is None
    assert cell_of_nodeid("tests/unit/test_a.py::test_b", DRIVERS) is None


def test_cells_sharing_a_sandbox_are_one_unit_and_own_sandbox_cells_their_own() -> None:
    units = plan_units(collection(["podman"]), lambda n: cell_demand(["podman"])(n, 4))
    by_key = {u.key: u for u in units}
    default = by_key["podman/default:busybox"]
    assert [n.split("[")[1].split("]")[0] for n in default.nodeids] == [
        "podman-smi.default",
        "podman-smi.nodes",
    ]
    assert len(by_key["podman/default:python"].nodeids) == 6  # cuda.* and lifecycle.persist
    own = [u for u in units if "::" in u.key]
    assert {u.key.split("[")[1].split("]")[0] for u in own} >= {"podman-device.each", "podman-release"}


def test_demand_by_the_catalogue_hints() -> None:
    assert case_demand(BY_ID["count.max"], host_gpus=4, weight=1.0)[:2] == (frozenset(), 4)
    assert case_demand(BY_ID["device.pair"], host_gpus=4, weight=1.0)[:2] == (frozenset({0, 3}), 0)
    assert case_demand(BY_ID["device.pair"], host_gpus=1, weight=1.0)[:2] == (frozenset({0}), 0)
    assert case_demand(BY_ID["device.each"], host_gpus=4, weight=10.0) == (frozenset(range(4)), 0, 40.1)
    assert case_demand(BY_ID["count.zero"], host_gpus=4, weight=10.0) == (frozenset(), 0, 0.1)
    # Kubernetes and the bare host lease nothing: their cells claim no GPU.
    demand = cell_demand(DRIVERS)
    assert demand("t.py::t[kubernetes-count.max]", 4) == Demand(
        "kubernetes/count.max:busybox", frozenset(), 0, 1.1
    )
    assert demand("t.py::t[host-device.each]", 4).named == frozenset()
    assert demand("t.py::t[qemu-count.max]", None).count == 0  # GPU count unknown: nothing held back


@pytest.mark.parametrize("host_gpus", [1, 2, 4, 8])
@pytest.mark.parametrize("nodes", [2, 3])
def test_a_whole_matrix_runs_once_without_two_workers_on_one_gpu(host_gpus: int, nodes: int) -> None:
    items = collection()
    durations = {n: (7 if "qemu" in n else 1) for n in items}
    sched = scheduler(host_gpus, nodes)
    simulate(sched, [FakeWorker(f"gw{i}") for i in range(nodes)], items, durations)
    placed: dict[str, frozenset[int]] = sched.placed  # type: ignore[attr-defined]
    assert placed[next(n for n in items if "[qemu-count.max]" in n)] == frozenset(range(host_gpus))


def test_two_workers_finish_sooner_than_one() -> None:
    items = collection()
    durations = {n: (7 if "qemu" in n else 1) for n in items}
    one = simulate(scheduler(4, 1), [FakeWorker("gw0")], items, durations)
    two = simulate(scheduler(4, 2), [FakeWorker("gw0"), FakeWorker("gw1")], items, durations)
    assert two < one * 0.75, (one, two)


def test_a_wide_unit_goes_first_and_nothing_that_needs_its_gpus_runs_beside_it() -> None:
    items = [f"t.py::t[podman-{c}]" for c in ("count.1", "count.max", "count.zero")]
    sched = scheduler(2, 2, ["podman"])
    a, b = two_workers(sched, items)
    sched.schedule()
    assert [items[i] for i in a.queue] == [items[1], items[0]], "count.max first, count.1 after it"
    assert [items[i] for i in b.queue] == [items[2]], "beside it only what needs no GPU"
    assert sched.held(a) == frozenset({0, 1}) and sched.held(b) == frozenset()


def _stuck(host_gpus: int, queue: list[str]) -> tuple[GpuScheduling, FakeWorker, FakeWorker]:
    """Two workers each down to a last item that holds one GPU; ``queue`` still to run."""
    held = ["t.py::t[podman-count.1]", "t.py::t[qemu-count.1]"]
    items = held + queue
    sched = scheduler(host_gpus, 2, ["podman", "qemu"])
    a, b = two_workers(sched, items)
    sched.collection, sched.every = items, frozenset(range(host_gpus))
    sched.queue = plan_units(items, lambda n: cell_demand(["podman", "qemu"])(n, host_gpus))
    for worker, gpu, nodeid in ((a, 0, held[0]), (b, 1, held[1])):
        unit = next(u for u in sched.queue if u.nodeids == [nodeid])
        sched._assign(worker, unit, frozenset({gpu}))
    return sched, a, b


def test_workers_that_hold_gpus_are_never_left_waiting_for_each_other() -> None:
    """Both are down to their last item, each holding a GPU, and what is left needs both: if
    neither got work, neither last item would ever run. Each gets a unit; the leases order them."""
    sched, a, b = _stuck(2, ["t.py::t[podman-count.max]", "t.py::t[qemu-count.max]"])
    sched._dispatch()
    assert len(a.queue) == 2 and len(b.queue) == 2
    assert not sched.queue


def test_a_forced_unit_lets_the_other_worker_finish() -> None:
    sched, a, b = _stuck(2, ["t.py::t[podman-count.max]"])
    sched._dispatch()
    assert len(a.queue) + len(b.queue) == 3
    assert (a.shutting_down or len(a.queue) == 2) and (b.shutting_down or len(b.queue) == 2)


def test_a_worker_that_holds_nothing_waits_for_room() -> None:
    """count.max needs the GPU the other worker's unit (two items, still running) holds: the
    idle worker holds nothing, so it waits for room rather than wait on a lease."""
    items = ["t.py::t[podman-count.1]", "t.py::t[qemu-smi.default]", "t.py::t[qemu-smi.nodes]"]
    items.append("t.py::t[podman-count.max]")
    sched = scheduler(3, 2, ["podman", "qemu"])
    a, b = two_workers(sched, items)
    sched.collection, sched.every = items, frozenset(range(3))
    sched.queue = plan_units(items, lambda n: cell_demand(["podman", "qemu"])(n, 3))
    count_1, default, count_max = sched.queue
    sched._assign(a, count_1, frozenset({0}))
    sched._assign(b, default, frozenset({1}))
    sched.mark_test_complete(a, 0)
    assert a.queue == [0] and not a.shutting_down
    assert sched.queue == [count_max]
    sched.mark_test_complete(b, 1)  # b is down to its last item: it will free GPU 1 first
    assert not sched.queue and 3 in a.queue + b.queue


def test_a_lost_worker_gives_back_what_it_had_not_run() -> None:
    items = collection(["podman"])
    sched = scheduler(4, 2, ["podman"])
    a, b = two_workers(sched, items)
    sched.schedule()
    sent = [items[i] for i in a.queue]
    crashed = sched.remove_node(a)
    assert crashed == sent[0]
    requeued = [n for u in sched.queue for n in u.pending]
    assert crashed not in requeued
    assert set(sent[1:]) <= set(requeued) | {items[i] for i in b.queue}


def test_placements_reach_the_worker_by_file(tmp_path: Path) -> None:
    write_placement(tmp_path, ["a::b[podman-count.2]@podman"], ["GPU-1", "GPU-2"])
    assert read_placement(tmp_path, "a::b[podman-count.2]@podman") == {"GPU-1", "GPU-2"}
    assert read_placement(tmp_path, "a::b[podman-count.1]@podman") == frozenset()
