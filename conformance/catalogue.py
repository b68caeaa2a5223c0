"""The case catalogue of SPEC section 4: stable ids (the rows of the matrix) and their order.

Suites mark their test functions with ``@case("smi.default")``; the plugin turns each into one
pytest item per driver, named ``<driver>-<case>`` (e.g. ``docker-count.2``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

Image = Literal["busybox", "busybox-envall", "python"]


@dataclass(frozen=True)
class CaseInfo:
    id: str
    summary: str
    image: Image = "busybox"
    # Which request's sandbox the case shares with its neighbours (None: it makes its own).
    shares: str | None = None
    # What a profile that does not name the case expects of it.
    default_expectation: Literal["supported", "reject", "unsupported"] = "supported"
    # Hints for scheduling a parallel run (fixtures/schedule.py); GPU leases, not these, keep
    # sandboxes apart, so a wrong hint costs waiting, never a wrong verdict. ``gpus``: the most
    # GPUs the case holds at once ("all": every GPU of the host); ``ids``: which of them it names
    # by id, as positions in the inventory (negative: from the end; "each": every GPU in turn);
    # ``sandboxes``: how many it starts ("each": one per GPU; 0: refused before anything starts).
    gpus: int | Literal["all"] = 1
    ids: tuple[int, ...] | Literal["each"] = ()
    sandboxes: int | Literal["each"] = 1


CATALOGUE: tuple[CaseInfo, ...] = (
    CaseInfo(
        "smi.default",
        "default request: exactly one inventory GPU, host's name/memory/driver",
        shares="default",
    ),
    CaseInfo("smi.none", "no request: no device node and no GPU listed", shares="none", gpus=0),
    CaseInfo("smi.all", "the driver's all-GPUs form: exactly the whole inventory", shares="all", gpus="all"),
    CaseInfo("smi.nodes", "/dev/nvidiaN nodes match the granted GPUs exactly", shares="default"),
    CaseInfo("count.1", "count 1: exactly one inventory GPU", shares="count.1"),
    CaseInfo("count.2", "count 2: exactly two distinct inventory GPUs", shares="count.2", gpus=2),
    CaseInfo("count.max", "count = inventory size: every GPU", shares="count.max", gpus="all"),
    CaseInfo("count.over", "count = inventory + 1: rejected, nothing left behind", gpus=0, sandboxes=0),
    CaseInfo("count.zero", "count 0: rejected by validation", gpus=0, sandboxes=0),
    CaseInfo("device.each", "each GPU by native id: sees exactly that UUID", ids="each", sandboxes="each"),
    CaseInfo("device.uuid", "UUID-form id selects the same GPU as the index form", ids=(1,), sandboxes=2),
    CaseInfo("device.pair", "two ids with count 2: exactly those two", gpus=2, ids=(0, -1)),
    CaseInfo("device.duplicate", "duplicate ids: rejected by validation", gpus=0, sandboxes=0),
    CaseInfo("device.mismatch", "two ids with count 1: rejected by validation", gpus=0, sandboxes=0),
    CaseInfo("device.empty", "an empty id: rejected by validation", gpus=0, sandboxes=0),
    CaseInfo("device.invalid", "an unknown id: rejected, and the error names it", gpus=0),
    CaseInfo(
        "device.unsupported",
        "a driver without native ids rejects any id",
        default_expectation="unsupported",
        gpus=0,
    ),
    CaseInfo(
        "mig.each",
        "each MIG device by native id: exactly it, under its parent, no sibling, not the whole GPU",
        ids="each",
        sandboxes="each",
    ),
    CaseInfo(
        "mig.parent",
        "a MIG-enabled GPU requested whole: exactly that GPU, no other GPU's MIG device",
        ids="each",
    ),
    CaseInfo("exclusive.concurrent", "two default sandboxes at once see disjoint GPUs", gpus=2, sandboxes=2),
    CaseInfo(
        "env.escalation",
        "an image setting NVIDIA_VISIBLE_DEVICES=all sees only its grant",
        image="busybox-envall",
        sandboxes=2,
    ),
    CaseInfo("release", "after teardown the GPU is selectable again", sandboxes=2),
    CaseInfo(
        "cuda.init", "CUDA initialises; device count equals the grant", image="python", shares="default"
    ),
    CaseInfo("cuda.uuid", "CUDA's UUIDs equal the granted UUIDs", image="python", shares="default"),
    CaseInfo(
        "cuda.vectoradd",
        "a vector-add kernel is exact on every granted device",
        image="python",
        shares="default",
    ),
    CaseInfo(
        "cuda.matmul", "a matrix product matches numpy within tolerance", image="python", shares="default"
    ),
    CaseInfo(
        "cuda.bandwidth", "copy bandwidth as a ratio to the bare host", image="python", shares="default"
    ),
    # Last of the python default group: it reuses that sandbox, and its reload may revoke it.
    CaseInfo(
        "lifecycle.persist",
        "a GPU sandbox keeps its GPU: at start, after an interval, after the driver's reload event",
        image="python",
        shares="default",
    ),
)
BY_ID = {c.id: c for c in CATALOGUE}
ORDER = {c.id: i for i, c in enumerate(CATALOGUE)}

F = TypeVar("F", bound=Callable[..., object])


def case(case_id: str) -> Callable[[F], F]:
    """Mark a suite function as the implementation of catalogue case ``case_id``."""
    if case_id not in BY_ID:
        raise ValueError(f"unknown case id {case_id!r}; add it to conformance/catalogue.py first")

    def mark(fn: F) -> F:
        fn._gpuconform_case = BY_ID[case_id]  # type: ignore[attr-defined]
        return fn

    return mark
