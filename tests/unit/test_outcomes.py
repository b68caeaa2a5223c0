"""exception_verdict: how an exception escaping a case becomes its verdict (SPEC 5); and
judge_rejection, the one judgement of a request that may have to be refused."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from unittest.mock import NonCallableMock

import pytest

from gpuconform.conformance.catalogue import BY_ID
from gpuconform.drivers.base import (
    Adapter,
    AdapterContext,
    DeadlineExceeded,
    DriverUnavailable,
    HarnessError,
    InfrastructureError,
    RequestRejected,
    Sandbox,
)
from gpuconform.drivers.inventory import Inventory
from gpuconform.drivers.leases import GpuLeases
from gpuconform.drivers.request import GpuRequest, RequestError
from gpuconform.fixtures.cell import Cell
from gpuconform.fixtures.outcomes import Demand, exception_verdict, judge_rejection
from gpuconform.reports.evidence import Verdict
from gpuconform.workloads.compute_judge import ProbeOutputError
from gpuconform.workloads.nvidia_smi import SmiParseError


class FakeAdapter:
    """The part of an adapter the judgements use: its context (labels) and ``leftovers``, which
    reports ``left``. Anything else (provisioning above all) is absent, so a judgement that
    reached for it would fail loudly instead of quietly using a default."""

    name = "fake"

    def __init__(self, ctx: AdapterContext, left: list[str] | None = None) -> None:
        self.ctx = ctx
        self.left = left or []
        self.asked: list[Mapping[str, str]] = []

    def leftovers(self, labels: Mapping[str, str]) -> list[str]:
        self.asked.append(dict(labels))
        return list(self.left)


def make_cell(
    tmp_path: Path,
    *,
    expectation: str = "supported",
    required: frozenset[str] = frozenset(),
    left: list[str] | None = None,
    case_id: str = "count.over",
) -> Cell:
    inventory = Inventory(host="h", gpus=(), simulated=True, source="test")
    ctx = AdapterContext(inventory, GpuLeases(tmp_path), run_id="r1")
    runtime = cast(Any, SimpleNamespace(settings=SimpleNamespace(required=required)))
    adapter = cast(Adapter, FakeAdapter(ctx, left))
    return Cell("fake", adapter, BY_ID[case_id], expectation, runtime, inventory)


def test_rejection_expected_by_the_profile_is_rejected(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, expectation="reject")
    verdict, reason = exception_verdict(RequestRejected("too many GPUs"), cell)
    assert verdict is Verdict.REJECTED
    assert reason == "rejected by fake as the profile declares: too many GPUs"
    assert cell.parsed["rejection"] == "too many GPUs"


def test_rejection_checks_leftovers_with_the_cells_labels(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, expectation="reject", left=["container abc", "volume v1"])
    verdict, reason = exception_verdict(RequestRejected("no"), cell)
    assert verdict is Verdict.FAIL
    assert reason == "rejected by fake, but left behind: container abc, volume v1"
    adapter = cast(FakeAdapter, cell.adapter)
    # The run's own labels (whatever the context holds) plus the case's, never a guess of them.
    assert adapter.asked == [{**adapter.ctx.labels, "dev.gpuconform.case": "count.over"}]
    assert adapter.asked[0]["dev.gpuconform.run"] == "r1"


def test_rejection_of_a_supported_request_fails(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, expectation="supported")
    verdict, reason = exception_verdict(RequestRejected("refused", hint="upgrade"), cell)
    assert verdict is Verdict.FAIL
    assert reason == "fake rejected a request the profile declares supported: refused (hint: upgrade)"


def test_validation_error_expected_to_reject_is_rejected_by_validation(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, expectation="reject", case_id="count.zero")
    verdict, reason = exception_verdict(RequestError("gpu count must be greater than 0"), cell)
    assert verdict is Verdict.REJECTED
    assert reason == "rejected by validation as the profile declares: gpu count must be greater than 0"


def test_validation_error_on_a_supported_case_fails(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, expectation="supported")
    verdict, reason = exception_verdict(RequestError("bad"), cell)
    assert verdict is Verdict.FAIL
    assert reason == "validation rejected a request the profile declares supported: bad"


def test_driver_unavailable_is_a_skip_when_not_required(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, required=frozenset({"docker"}))
    verdict, reason = exception_verdict(DriverUnavailable("engine down"), cell)
    assert verdict is Verdict.SKIP
    assert reason == "driver not available: engine down"


def test_driver_unavailable_is_an_error_when_required(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, required=frozenset({"fake"}))
    verdict, reason = exception_verdict(DriverUnavailable("engine down"), cell)
    assert verdict is Verdict.ERROR
    assert reason == "required driver unavailable: engine down"


@pytest.mark.parametrize(
    "exc",
    [SmiParseError("line 3: no UUID"), ProbeOutputError("line 3: no UUID")],
    ids=["smi", "probe"],
)
def test_unparseable_evidence_is_inconclusive(tmp_path: Path, exc: Exception) -> None:
    verdict, reason = exception_verdict(exc, make_cell(tmp_path))
    assert verdict is Verdict.INCONCLUSIVE
    assert reason == "could not parse the evidence: line 3: no UUID"


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (InfrastructureError("engine 500"), "InfrastructureError: engine 500"),
        (
            DeadlineExceeded("exec: deadline of 5s exceeded"),
            "DeadlineExceeded: exec: deadline of 5s exceeded",
        ),
        (HarnessError("odd"), "HarnessError: odd"),
    ],
    ids=["infrastructure", "deadline", "harness"],
)
def test_infrastructure_failures_are_errors(tmp_path: Path, exc: Exception, reason: str) -> None:
    assert exception_verdict(exc, make_cell(tmp_path)) == (Verdict.ERROR, reason)


@pytest.mark.parametrize("expectation", ["supported", "reject"])
def test_any_other_exception_is_a_harness_error(tmp_path: Path, expectation: str) -> None:
    cell = make_cell(tmp_path, expectation=expectation)
    verdict, reason = exception_verdict(KeyError("uuid"), cell)
    assert verdict is Verdict.ERROR
    assert reason == "harness error KeyError: 'uuid'"
    assert not verdict.good


def test_a_plain_value_error_is_not_mistaken_for_a_rejection(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, expectation="reject")
    verdict, reason = exception_verdict(ValueError("int('x')"), cell)
    assert (verdict, reason) == (Verdict.ERROR, "harness error ValueError: int('x')")
    assert "rejection" not in cell.parsed


# ---- judge_rejection: the one judgement behind expect_rejection, a profile's reject and an escape ----


def _sandbox(shape_count: int = 5) -> Sandbox:
    """A provisioned sandbox as far as the judgement reads one (its id and request)."""
    sandbox = NonCallableMock(spec=Sandbox)
    sandbox.id = "fake-1"
    sandbox.request = GpuRequest.of_count(shape_count)
    return cast(Sandbox, sandbox)


@pytest.mark.parametrize(
    ("demand", "verdict", "reason"),
    [
        ("case", Verdict.REJECTED, "rejected by fake: 5 requested, 4 free"),
        ("profile", Verdict.REJECTED, "rejected by fake as the profile declares: 5 requested, 4 free"),
        (None, Verdict.FAIL, "fake rejected a request the profile declares supported: 5 requested, 4 free"),
    ],
)
def test_one_refusal_judged_under_each_demand(
    tmp_path: Path, demand: Demand | None, verdict: Verdict, reason: str
) -> None:
    cell = make_cell(tmp_path)
    assert judge_rejection(cell, RequestRejected("5 requested, 4 free"), demand=demand) == (verdict, reason)
    assert cell.parsed == {"rejection": "5 requested, 4 free", "rejected_by": "fake"}
    # Leftovers are asked whenever a refusal could be good; a refusal nobody wanted fails anyway.
    assert len(cast(FakeAdapter, cell.adapter).asked) == (0 if demand is None else 1)


@pytest.mark.parametrize(
    ("demand", "reason"),
    [
        ("case", "rejected, but left behind: container abc"),
        ("profile", "rejected by fake, but left behind: container abc"),
    ],
)
def test_a_refusal_that_leaves_something_behind_fails_under_either_demand(
    tmp_path: Path, demand: Demand, reason: str
) -> None:
    cell = make_cell(tmp_path, left=["container abc"])
    assert judge_rejection(cell, RequestRejected("no"), demand=demand) == (Verdict.FAIL, reason)
    assert cell.parsed["expected"] == "nothing left"
    assert cell.parsed["seen"] == ["container abc"]


def test_a_refusal_that_does_not_name_what_it_must_fails(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, case_id="device.invalid")
    judged = judge_rejection(cell, RequestRejected("no such device"), demand="case", must_name="11")
    assert judged == (Verdict.FAIL, "rejected, but the error does not name '11': no such device")
    named = judge_rejection(cell, RequestRejected("unknown device '11'"), demand="case", must_name="11")
    assert named == (Verdict.REJECTED, "rejected by fake: unknown device '11'")


def test_validation_refusal_is_by_validation(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, case_id="count.zero")
    judged = judge_rejection(cell, RequestError("gpu count must be greater than 0"), demand="case")
    assert judged == (Verdict.REJECTED, "rejected by validation: gpu count must be greater than 0")
    assert cell.parsed["rejected_by"] == "validation"


@pytest.mark.parametrize(
    ("demand", "judged"),
    [
        ("case", (Verdict.FAIL, "fake accepted request 'gpu;count=5' (sandbox fake-1); it must be rejected")),
        (
            "profile",
            (
                Verdict.FAIL,
                "the profile declares request 'gpu;count=5' must be rejected, "
                "but fake provisioned sandbox fake-1",
            ),
        ),
        (None, None),
    ],
)
def test_an_acceptance_fails_only_where_a_refusal_is_demanded(
    tmp_path: Path, demand: Demand | None, judged: tuple[Verdict, str] | None
) -> None:
    cell = make_cell(tmp_path)
    assert judge_rejection(cell, _sandbox(), demand=demand) == judged
    assert cast(FakeAdapter, cell.adapter).asked == []  # nothing refused: no leftover question


def test_validation_that_accepts_fails(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, case_id="count.zero")
    judged = judge_rejection(cell, GpuRequest.of_count(1), demand="case")
    assert judged == (Verdict.FAIL, "validation accepted request 'gpu;count=1'")
    assert cell.parsed["expected"] == "a validation error"


def test_an_escaped_refusal_records_the_same_evidence_as_a_demanded_one(tmp_path: Path) -> None:
    escaped, demanded = make_cell(tmp_path, expectation="reject"), make_cell(tmp_path)
    exception_verdict(RequestRejected("no"), escaped)
    judge_rejection(demanded, RequestRejected("no"), demand="case")
    assert escaped.parsed == demanded.parsed == {"rejection": "no", "rejected_by": "fake"}
