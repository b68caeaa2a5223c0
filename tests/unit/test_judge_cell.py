"""fixtures/cell.py's verdict methods and observe's request shapes, directly (issue 18)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from gpuconform.conformance.observe import shape_request
from gpuconform.drivers import leases
from gpuconform.drivers.errors import InfrastructureError
from gpuconform.drivers.request import GpuRequest
from gpuconform.fixtures.cell import CaseOutcome, Cell
from gpuconform.reports.evidence import Verdict
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


def test_own_passes_image_and_env_through_to_the_driver() -> None:
    adapter = world()
    cell = make_cell("env.escalation", adapter)
    cell.own(GpuRequest.default(), image="python", env={"NVIDIA_VISIBLE_DEVICES": "all"})
    cell.own(GpuRequest.none())
    assert [(p["image"], p["env"]) for p in adapter.provisions] == [
        ("localhost/gpuconform-fake-python:unit", {"NVIDIA_VISIBLE_DEVICES": "all"}),
        ("localhost/gpuconform-fake-busybox-envall:unit", {}),
    ]
    assert adapter.provisions[0]["labels"] == {
        **cell.adapter.ctx.labels,
        "dev.gpuconform.case": "env.escalation",
    }
    assert cell.timings["shared_sandbox"] == 0.0
    cell.close_own()


def test_time_queued_for_a_lease_is_kept_apart_from_provisioning(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([1.00001, 1.2345678])
    monkeypatch.setattr(leases, "waited_s", lambda: next(clock))
    adapter = world()
    cell = make_cell("smi.default", adapter)
    sandbox = cell.own(GpuRequest.default())
    assert sandbox.timings == {"provision_s": 0.015, "lease_wait_s": 0.235}
    assert cell.timings["provision_s"] == 0.015


def test_a_released_sandbox_is_closed_once() -> None:
    adapter = world(teardown_timing=False)
    cell = make_cell("release", adapter)
    sandbox = cell.own(GpuRequest.default())
    cell.release(sandbox)
    cell.close_own()
    assert adapter.provisioned[0].closes == 1
    assert cell.timings["teardown_s"] == 0.0


def test_validation_that_accepts_what_it_must_refuse_fails() -> None:
    cell = make_cell("count.zero", world())
    with pytest.raises(CaseOutcome) as caught:
        cell.expect_rejection(GpuRequest.default(), validation=True)
    assert (caught.value.verdict, caught.value.reason) == (Verdict.FAIL, "validation accepted request 'gpu'")
    assert cell.parsed == {"expected": "a validation error"}


def test_a_validation_refusal_must_name_what_it_must() -> None:
    cell = make_cell("count.zero", world())
    with pytest.raises(CaseOutcome) as caught:
        cell.expect_rejection(GpuRequest.of_count(0), validation=True, must_name="zero")
    assert caught.value.verdict is Verdict.FAIL
    assert (
        caught.value.reason
        == "rejected, but the error does not name 'zero': gpu count must be greater than 0"
    )


def test_own_all_starts_together_where_the_adapter_allows_it_in_the_order_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapter = world()
    adapter.concurrent_starts = True
    real_start = adapter.start
    inside = [0, 0]  # starts running now, the most at once

    def slow_start(launch: Any) -> Any:
        inside[0] += 1
        inside[1] = max(inside)
        time.sleep(0.3)
        inside[0] -= 1
        return real_start(launch)

    monkeypatch.setattr(adapter, "start", slow_start)
    cell = make_cell("device.each", adapter)
    assert cell.starts_at_once == 2
    wanted = [GpuRequest.of_ids([str(i)]) for i in range(4)]
    began = time.monotonic()
    boxes = cell.own_all(wanted)
    assert time.monotonic() - began < 1.0, "four 0.3 s starts, two at a time"
    assert inside[1] == 2
    assert [sorted(b.granted or ()) for b in boxes] == [[g.uuid] for g in adapter.inv.gpus]
    cell.close_own()
    assert all(p.closes == 1 for p in adapter.provisioned)


def test_own_all_raises_a_failed_start_and_still_closes_the_ones_that_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapter = world()
    adapter.concurrent_starts = True
    real_start = adapter.start

    def start(launch: Any) -> Any:
        if launch.request.device_ids == ("1",):
            raise InfrastructureError("the engine fell over")
        return real_start(launch)

    monkeypatch.setattr(adapter, "start", start)
    cell = make_cell("device.each", adapter)
    with pytest.raises(InfrastructureError, match="fell over"):
        cell.own_all([GpuRequest.of_ids(["0"]), GpuRequest.of_ids(["1"])])
    assert len(adapter.provisioned) == 1
    cell.close_own()
    assert adapter.provisioned[0].closes == 1


def test_own_all_is_one_after_another_where_the_adapter_does_not_say_it_may() -> None:
    adapter = world()
    cell = make_cell("env.escalation", adapter)
    assert cell.starts_at_once == 1
    none, one = cell.own_all([GpuRequest.none(), GpuRequest.default()], image="busybox-envall")
    assert [p["request"] for p in adapter.provisions] == ["none", "gpu"]
    assert none.granted == frozenset() and one.granted is not None and len(one.granted) == 1
    cell.close_own()
