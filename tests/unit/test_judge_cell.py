"""fixtures/cell.py's verdict methods and observe's request shapes, directly (issue 18)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from conformance.observe import shape_request
from fixtures.cell import CaseOutcome, Cell
from reports.evidence import Verdict
from tests.unit.fakesandbox import make_cell, world


@pytest.mark.parametrize(
    ("method", "verdict"),
    [
        (Cell.passed, Verdict.PASS),
        (Cell.rejected, Verdict.REJECTED),
        (Cell.fail, Verdict.FAIL),
        (Cell.skip, Verdict.SKIP),
        (Cell.unsupported, Verdict.UNSUPPORTED),
        (Cell.inconclusive, Verdict.INCONCLUSIVE),
        (Cell.error, Verdict.ERROR),
    ],
)
def test_each_verdict_method_ends_the_case_with_its_verdict(
    method: Callable[..., Any], verdict: Verdict
) -> None:
    cell = make_cell("smi.default", world())
    with pytest.raises(CaseOutcome) as caught:
        method(cell, "the reason")
    assert (caught.value.verdict, caught.value.reason, str(caught.value)) == (
        verdict,
        "the reason",
        "the reason",
    )
    assert cell.parsed == {}


def test_fail_keeps_expected_and_seen_as_json() -> None:
    cell = make_cell("smi.default", world())
    with pytest.raises(CaseOutcome):
        cell.fail("r", expected=frozenset({"b", "a"}), seen=(3, 1))
    assert cell.parsed == {"expected": ["a", "b"], "seen": [3, 1]}


@pytest.mark.parametrize(
    ("shape", "wanted", "ids"),
    [("none", 0, ()), ("default", 1, ()), ("count.2", 2, ()), ("count.max", 4, ()), ("all", 4, ())],
)
def test_shape_request(shape: str, wanted: int, ids: tuple[str, ...]) -> None:
    req = shape_request(make_cell("smi.default", world()), shape)
    assert (req.wanted, req.device_ids) == (wanted, ids)


def test_the_all_shape_uses_the_drivers_all_id_when_it_has_one() -> None:
    req = shape_request(make_cell("smi.all", world(all_ids=["nvidia.com/gpu=all"])), "all")
    assert (req.device_ids, req.count) == (("nvidia.com/gpu=all",), None)


def test_an_unknown_shape_is_a_harness_bug_named() -> None:
    with pytest.raises(ValueError, match=r"^unknown sandbox shape 'count'$"):
        shape_request(make_cell("smi.default", world()), "count")
