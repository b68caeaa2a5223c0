"""exclusive.concurrent, env.escalation and release judged on fake sandboxes (issue 18).

The point of ``exclusive.concurrent``: two empty sets are disjoint, so a stack that injects no GPU
at all must fail it (each sandbox must first see exactly its grant), as must one that hands the
same GPU to both.
"""

from __future__ import annotations

from typing import Any

import pytest

from gpuconform.drivers.base import Profile
from gpuconform.reports.evidence import Verdict
from tests.unit.fakesandbox import Answer, Shape, inventory, run_case, world

INV = inventory("h100x4")
U = [g.uuid for g in INV.gpus]
U2 = [g.uuid for g in inventory("h100x2").gpus]
PASS, FAIL, SKIP = Verdict.PASS, Verdict.FAIL, Verdict.SKIP
SHARING = Profile("fake", oversubscribe="shared")

EXCLUSIVE: list[Any] = [
    pytest.param("h100x4", {}, PASS, ["disjoint GPUs", U[0], U[1]], id="healthy-4"),
    pytest.param("h100x2", {}, PASS, ["disjoint GPUs"], id="healthy-2-third-refused"),
    # both see nothing: the simulator's missing-gpu on both GPUs (the red run)
    pytest.param(
        "h100x2",
        {"faults": [("missing-gpu", 0), ("missing-gpu", 1)]},
        FAIL,
        [f"missing {U2[0]}"],
        id="both-see-nothing",
    ),
    pytest.param(
        "h100x4",
        {"granted_known": False, "faults": [("missing-gpu", 0), ("missing-gpu", 1)]},
        FAIL,
        ["sees 0 GPU(s), expected 1"],
        id="both-see-nothing-driver-chose",
    ),
    pytest.param(
        "h100x4", {"faults": [("missing-gpu", 1)]}, FAIL, [f"missing {U[1]}"], id="second-sees-nothing"
    ),
    pytest.param(
        "h100x4",
        {"shape": Shape(answers={"nvidia-smi -L": Answer(0, "No devices found.\n")}), "granted_known": False},
        FAIL,
        ["sees 0 GPU(s)"],
        id="no-devices-found",
    ),
    # the same GPU in both: a selection that ignores what is taken (class 7)
    pytest.param(
        "h100x4", {"share_gpus": True}, FAIL, [f"both see {U[0]}", "exclusive"], id="same-gpu-twice"
    ),
    pytest.param(
        "h100x4",
        {"share_gpus": True, "granted_known": False},
        FAIL,
        [f"both see {U[0]}"],
        id="same-gpu-twice-driver-chose",
    ),
    pytest.param("h100x4", {"faults": [("wrong-gpu", 0)]}, FAIL, ["wrong GPUs"], id="wrong-gpu"),
    pytest.param("h100x4", {"faults": [("extra-gpu", 0)]}, FAIL, [f"extra {U[1]}"], id="extra-gpu"),
    pytest.param("h100x4", {"faults": [("extra-node", 0)]}, FAIL, ["device nodes"], id="extra-node"),
    # the third sandbox on a full 2-GPU host
    pytest.param(
        "h100x2", {"accept_everything": True}, FAIL, ["third sandbox", "must be refused"], id="third-accepted"
    ),
    pytest.param(
        "h100x2",
        {"profile": SHARING},
        FAIL,
        ["third sandbox", "was refused, the profile expects sharing"],
        id="third-refused-when-sharing",
    ),
    pytest.param(
        "h100x2",
        {"profile": SHARING, "share_gpus": True},
        FAIL,
        ["both see"],
        id="sharing-profile-still-exclusive-pair",
    ),
    pytest.param("single", {}, SKIP, ["needs 2 GPUs"], id="one-gpu-host"),
]


@pytest.mark.parametrize(("gpus", "stack", "verdict", "words"), EXCLUSIVE)
def test_exclusive_concurrent(gpus: str, stack: dict[str, Any], verdict: Verdict, words: list[str]) -> None:
    outcome = run_case("exclusive.concurrent", world(gpus, **stack))
    assert outcome.verdict is verdict, outcome.reason
    for word in words:
        assert word in outcome.reason, f"{word!r} not in {outcome.reason!r}"


def test_a_non_exclusive_profile_tolerates_a_shared_gpu() -> None:
    outcome = run_case(
        "exclusive.concurrent", world(profile=Profile("fake", exclusive=False), share_gpus=True)
    )
    assert outcome.verdict is PASS


def test_both_sandboxes_were_looked_at() -> None:
    outcome = run_case("exclusive.concurrent", world())
    listed = [c["sandbox"] for c in outcome.cell.commands if c["argv"][:2] == ["nvidia-smi", "-L"]]
    assert len(set(listed)) == 2
    assert outcome.cell.details[0] == {"first": [U[0]], "second": [U[1]]}


ESCALATION: list[Any] = [
    pytest.param({}, PASS, ["widens neither"], id="healthy"),
    pytest.param(
        {"always_hook": True},
        FAIL,
        ["no GPU requested", "device nodes /dev/nvidia[0, 1, 2, 3] present"],
        id="always-hook",
    ),
    pytest.param(
        {"always_hook": True, "shape_for": {"none": Shape(extra_nodes=frozenset())}},
        FAIL,
        ["present"],
        id="always-hook-shared",
    ),
    pytest.param({"faults": [("extra-gpu", 0)]}, FAIL, [f"extra {U[1]}"], id="one-gpu-widened"),
    pytest.param(
        {"shape_for": {"none": Shape(answers={"nvidia-smi -L": Answer(0, f"GPU 0: X (UUID: {U[2]})\n")})}},
        FAIL,
        ["sees 1 GPU(s)"],
        id="none-sees-a-gpu",
    ),
]


@pytest.mark.parametrize(("stack", "verdict", "words"), ESCALATION)
def test_env_escalation(stack: dict[str, Any], verdict: Verdict, words: list[str]) -> None:
    outcome = run_case("env.escalation", world(**stack))
    assert outcome.verdict is verdict, outcome.reason
    for word in words:
        assert word in outcome.reason, f"{word!r} not in {outcome.reason!r}"


def test_release_healthy_and_broken() -> None:
    healthy = run_case("release", world())
    assert healthy.verdict is PASS
    assert "selectable again by its id 0" in healthy.reason
    kept = run_case("release", world(keep_on_close=True))  # teardown does not free the GPU
    assert kept.verdict is FAIL
    assert "in use by another sandbox" in kept.reason
    vfio = world()
    vfio.release_problems = lambda sandbox: ["0000:18:00.0 still bound to vfio-pci"]  # type: ignore[method-assign]
    stuck = run_case("release", vfio)
    assert stuck.verdict is FAIL
    assert stuck.reason == "after teardown: 0000:18:00.0 still bound to vfio-pci"
    wrong = run_case("release", world(faults=[("wrong-gpu", 0)]))
    assert wrong.verdict is FAIL


def test_release_without_native_ids_asks_for_every_gpu() -> None:
    no_ids = world()
    no_ids.native_ids = lambda gpu: []  # type: ignore[method-assign]
    outcome = run_case("release", no_ids)
    assert outcome.verdict is PASS
    assert "a full-count request works" in outcome.reason
    no_ids.keep_on_close = True
    assert run_case("release", no_ids).verdict is FAIL


def test_a_teardown_that_fails_spoils_a_good_verdict_only() -> None:
    good = run_case("exclusive.concurrent", world(close_error="stuck in removal"))
    assert good.verdict is Verdict.ERROR
    assert (
        good.reason == "teardown failed: fake-2: fake-2: stuck in removal; fake-1: fake-1: stuck in removal"
    )
    during = run_case("release", world(close_error="stuck in removal"))  # inside the case: its error
    assert (during.verdict, during.reason) == (Verdict.ERROR, "InfrastructureError: fake-1: stuck in removal")
    bad = run_case("exclusive.concurrent", world(share_gpus=True, close_error="stuck"))
    assert bad.verdict is FAIL
    assert "both see" in bad.reason


def test_a_vms_console_log_is_kept_for_the_evidence() -> None:
    outcome = run_case("exclusive.concurrent", world(console="x" * 5000 + "NVRM: probe failed"))
    logs = outcome.cell.console_logs()
    assert sorted(logs) == ["fake-1", "fake-2"]
    assert all(len(text) == 4096 and text.endswith("NVRM: probe failed") for text in logs.values())
    assert outcome.cell.console_logs(limit=5) == {"fake-1": "ailed", "fake-2": "ailed"}
    assert run_case("exclusive.concurrent", world(console="")).cell.console_logs() == {}
