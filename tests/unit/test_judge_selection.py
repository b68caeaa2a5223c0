"""count.* and device.* judged on what a fake sandbox shows, refusals included (issue 18).

The refusal rows exercise fixtures/cell.py's rejection logic: a refusal passes only when it is
clean (nothing left behind) and names what it must; an acceptance of what must be refused fails.
"""

from __future__ import annotations

from typing import Any

import pytest

from gpuconform.drivers.base import Profile
from gpuconform.reports.evidence import Verdict
from tests.unit.fakesandbox import NVML_NO_PERMISSION, Answer, Shape, inventory, run_case, smi_list, world

INV = inventory("h100x4")
U = [g.uuid for g in INV.gpus]
NAME = INV.gpus[0].name
PASS, FAIL, REJECTED, SKIP = Verdict.PASS, Verdict.FAIL, Verdict.REJECTED, Verdict.SKIP
INCONCLUSIVE = Verdict.INCONCLUSIVE
LEFT = ["container gpuconform-unit-1 (exited)", "volume gpuconform-unit-1-scratch"]

TABLE: list[Any] = [
    # count.1 / count.2 / count.max
    pytest.param("count.1", {}, PASS, ["count 1 sees exactly 1 distinct"], id="count.1-healthy"),
    pytest.param(
        "count.1", {"faults": [("missing-gpu", 0)]}, FAIL, [f"missing {U[0]}"], id="count.1-missing-gpu"
    ),
    pytest.param("count.1", {"faults": [("extra-gpu", 0)]}, FAIL, [f"extra {U[1]}"], id="count.1-extra-gpu"),
    pytest.param(
        "count.1", {"faults": [("extra-node", 0)]}, FAIL, ["extra /dev/nvidia1"], id="count.1-extra-node"
    ),
    pytest.param("count.2", {}, PASS, ["count 2 sees exactly 2 distinct"], id="count.2-healthy"),
    pytest.param(
        "count.2", {"faults": [("wrong-gpu", 0)]}, FAIL, [f"missing {U[0]}"], id="count.2-wrong-gpu"
    ),
    pytest.param(
        "count.2",
        {"faults": [("uuid-mismatch", 1)]},
        FAIL,
        ["not in the host inventory"],
        id="count.2-uuid-mismatch",
    ),
    pytest.param(
        "count.2", {"faults": [("fallen-off-bus", 1)]}, FAIL, ["GPU_IS_LOST"], id="count.2-fallen-off-bus"
    ),
    pytest.param(
        "count.2",
        {"shape": Shape(answers={"nvidia-smi": Answer(4, NVML_NO_PERMISSION)})},
        FAIL,
        ["NO_PERMISSION"],
        id="count.2-permission",
    ),
    # the driver chose (kubernetes): count and inventory membership are all there is to judge
    pytest.param("count.2", {"granted_known": False}, PASS, ["exactly 2"], id="count.2-driver-chose"),
    pytest.param(
        "count.2",
        {"faults": [("uuid-mismatch", 0), ("uuid-mismatch", 1)]},
        FAIL,
        ["inventory: GPU-", ", GPU-"],
        id="count.2-two-foreign",
    ),
    pytest.param(
        "count.2",
        {"faults": [("missing-gpu", 0), ("missing-gpu", 1)]},
        FAIL,
        [f"missing {U[0]}, {U[1]}"],
        id="count.2-both-missing",
    ),
    pytest.param(
        "count.2",
        {"shape": Shape(answers={"ls -1 /dev": Answer(0, "null\nnvidiactl\n")})},
        FAIL,
        ["missing /dev/nvidia0, /dev/nvidia1"],
        id="count.2-nodes-missing",
    ),
    pytest.param(
        "count.2",
        {"granted_known": False, "faults": [("missing-gpu", 1)]},
        FAIL,
        ["sees 1 GPU(s), expected 2"],
        id="count.2-driver-chose-missing",
    ),
    pytest.param(
        "count.2",
        {"granted_known": False, "faults": [("uuid-mismatch", 0)]},
        FAIL,
        ["not in the host inventory"],
        id="count.2-driver-chose-foreign",
    ),
    pytest.param(
        "count.2",
        {
            "granted_known": False,
            "shape": Shape(answers={"nvidia-smi -L": Answer(0, smi_list([(NAME, U[0]), (NAME, U[0])]))}),
        },
        FAIL,
        ["lists a GPU twice"],
        id="count.2-same-gpu-twice",
    ),
    pytest.param("count.max", {}, PASS, ["count 4 sees exactly 4"], id="count.max-healthy"),
    pytest.param(
        "count.max", {"faults": [("missing-gpu", 3)]}, FAIL, [f"missing {U[3]}"], id="count.max-missing-gpu"
    ),
    # count.over: refused cleanly, or it fails
    pytest.param(
        "count.over", {}, REJECTED, ["rejected by fake", "5 GPU(s) requested"], id="count.over-refused"
    ),
    pytest.param(
        "count.over",
        {"accept_everything": True},
        FAIL,
        ["fake accepted request 'gpu;count=5'", "must be rejected"],
        id="count.over-accepted",
    ),
    pytest.param(
        "count.over",
        {"left_behind": LEFT},
        FAIL,
        ["rejected, but left behind: container gpuconform-unit-1 (exited), volume gpuconform-unit-1-scratch"],
        id="count.over-leftovers",
    ),
    pytest.param("count.zero", {}, REJECTED, ["rejected by validation", "greater than 0"], id="count.zero"),
    # device.*
    pytest.param("device.each", {}, PASS, ["each of the 4 GPUs"], id="device.each-healthy"),
    pytest.param(
        "device.each",
        {"faults": [("wrong-gpu", 2)]},
        FAIL,
        ["ids ['2'] (GPU 2) should show", U[3]],
        id="device.each-wrong-gpu",
    ),
    pytest.param(
        "device.each", {"faults": [("extra-gpu", 1)]}, FAIL, ["ids ['1'] (GPU 1)"], id="device.each-extra-gpu"
    ),
    pytest.param(
        "device.each",
        {"faults": [("uuid-mismatch", 1)]},
        FAIL,
        ["not in the host inventory"],
        id="device.each-uuid-mismatch",
    ),
    pytest.param(
        "device.each",
        {"faults": [("missing-gpu", 3)]},
        FAIL,
        ["ids ['3'] (GPU 3)", "sees []"],
        id="device.each-missing-gpu",
    ),
    pytest.param(
        "device.each",
        {"faults": [("extra-node", 3)]},
        FAIL,
        ["device nodes", "extra /dev/nvidia0"],
        id="device.each-extra-node",
    ),
    pytest.param(
        "device.each",
        {"faults": [("fallen-off-bus", 1)]},
        FAIL,
        ["GPU_IS_LOST"],
        id="device.each-fallen-off-bus",
    ),
    pytest.param("device.uuid", {}, PASS, [f"{U[1]} and 1 both select {U[1]}"], id="device.uuid-healthy"),
    pytest.param(
        "device.uuid", {"faults": [("wrong-gpu", 1)]}, FAIL, ["should show"], id="device.uuid-wrong-gpu"
    ),
    pytest.param("device.pair", {}, PASS, ["GPU 0 and GPU 3 with count 2"], id="device.pair-healthy"),
    pytest.param(
        "device.pair", {"faults": [("extra-gpu", 0)]}, FAIL, ["should show", U[1]], id="device.pair-extra-gpu"
    ),
    pytest.param(
        "device.pair", {"faults": [("missing-gpu", 3)]}, FAIL, ["should show"], id="device.pair-missing-gpu"
    ),
    pytest.param(
        "device.duplicate", {}, REJECTED, ["validation", "duplicate device ID '0'"], id="device.duplicate"
    ),
    pytest.param("device.mismatch", {}, REJECTED, ["validation", "must match"], id="device.mismatch"),
    pytest.param("device.empty", {}, REJECTED, ["validation", "non-empty"], id="device.empty"),
    pytest.param(
        "device.invalid", {}, REJECTED, ["rejected by fake: unknown device '11'"], id="device.invalid-refused"
    ),
    pytest.param(
        "device.invalid",
        {"refusal": lambda req: "no such device"},
        FAIL,
        ["does not name '11'"],
        id="device.invalid-unnamed",
    ),
    pytest.param(
        "device.invalid",
        {"accept_everything": True},
        FAIL,
        ["accepted request 'gpu;ids=11'"],
        id="device.invalid-accepted",
    ),
    pytest.param(
        "device.invalid", {"left_behind": LEFT}, FAIL, ["left behind"], id="device.invalid-leftovers"
    ),
]


@pytest.mark.parametrize(("case", "stack", "verdict", "words"), TABLE)
def test_selection(case: str, stack: dict[str, Any], verdict: Verdict, words: list[str]) -> None:
    outcome = run_case(case, world(**stack))
    assert outcome.verdict is verdict, outcome.reason
    for word in words:
        assert word in outcome.reason, f"{word!r} not in {outcome.reason!r}"


def test_device_unsupported_is_judged_when_the_profile_names_it() -> None:
    profile = Profile("fake", cases={"device.unsupported": "reject"})
    accepting = run_case("device.unsupported", world(profile=profile))
    assert accepting.verdict is FAIL
    assert "must be rejected" in accepting.reason
    refusing = run_case("device.unsupported", world(profile=profile, refuse_ids=True))
    assert refusing.verdict is REJECTED
    assert "has no device ids" in refusing.reason


def test_a_profile_that_declares_rejection_fails_a_provisioned_sandbox() -> None:
    """A shared sandbox provisioned for a case whose profile says 'reject' is a fail (cell.py)."""
    outcome = run_case("count.2", world(profile=Profile("fake", cases={"count.*": "reject"})))
    assert outcome.verdict is FAIL
    assert "must be rejected, but fake provisioned sandbox" in outcome.reason


def test_a_refusal_the_profile_declares_is_rejected_not_failed() -> None:
    refusing = world(profile=Profile("fake", cases={"count.max": "reject"}))
    refusing.taken = frozenset(U[:1])  # four are wanted, three are free
    outcome = run_case("count.max", refusing)
    assert outcome.verdict is REJECTED
    assert "as the profile declares" in outcome.reason
    refusing.left_behind = LEFT
    assert run_case("count.max", refusing).verdict is FAIL


def test_a_count_beyond_the_host_is_a_skipped_precondition() -> None:
    outcome = run_case("count.2", world("single"))
    assert outcome.verdict is SKIP
    assert outcome.reason.startswith("precondition: needs 2 GPUs, the host has 1")


def test_device_pair_needs_two_gpus() -> None:
    assert run_case("device.pair", world("single")).verdict is SKIP


def test_the_sandboxes_of_a_failed_case_are_closed_and_the_gpus_free() -> None:
    adapter = world(faults=[("wrong-gpu", 2)])
    run_case("device.each", adapter)
    assert adapter.provisioned and all(s.closed for s in adapter.provisioned)
    assert adapter.taken == frozenset()


def test_unparseable_listing_is_inconclusive_for_ids() -> None:
    shape = Shape(answers={"nvidia-smi -L": Answer(0, "GPU 0: H100 (UUID: not-a-uuid)\n")})
    outcome = run_case("device.each", world(shape=shape))
    assert outcome.verdict is INCONCLUSIVE
    assert "could not parse the evidence" in outcome.reason
