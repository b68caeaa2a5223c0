"""Pure parts of the kubernetes adapter: the pod manifest, names/labels, and StartJudge."""

from __future__ import annotations

from typing import Any

import pytest

from gpuconform.drivers.base import InfrastructureError, RequestRejected
from gpuconform.drivers.kube_pods import StartJudge, build_pod_manifest, dns_label, label_value, run_namespace

INSUFFICIENT = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."


def manifest(**kwargs: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"image": "busybox:1", "gpus": 1, "labels": {"dev.gpuconform.run": "r1"}}
    return build_pod_manifest("p", "ns", **{**base, **kwargs})


def test_default_request_limits_one_gpu_and_sets_no_runtime_class() -> None:
    pod = manifest()
    (ctr,) = pod["spec"]["containers"]
    assert ctr["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert "runtimeClassName" not in pod["spec"]
    assert "affinity" not in pod["spec"]
    assert ctr["command"] == ["sleep", "2147483647"]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert ctr["imagePullPolicy"] == "IfNotPresent"


def test_count_n_limits_n_gpus_and_no_gpu_request_has_no_limits() -> None:
    assert manifest(gpus=3)["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "3"}
    assert "resources" not in manifest(gpus=0)["spec"]["containers"][0]


def test_runtime_class_only_when_asked() -> None:
    assert manifest(runtime_class="nvidia")["spec"]["runtimeClassName"] == "nvidia"


def test_node_pin_uses_metadata_name_match_fields() -> None:
    affinity = manifest(node="worker-1")["spec"]["affinity"]["nodeAffinity"]
    terms = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["worker-1"]}]}]


def test_env_and_labels_are_rendered_valid() -> None:
    pod = manifest(env={"B": "2", "A": "1"}, labels={"dev.gpuconform.case": "smi default/x!"})
    assert pod["spec"]["containers"][0]["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert pod["metadata"]["labels"] == {"dev.gpuconform.case": "smi-default-x"}


def test_label_values_and_namespace_names_are_valid_kubernetes_names() -> None:
    assert label_value("-run:2024/01 x-") == "run-2024-01-x"
    assert len(label_value("a" * 100)) == 63
    assert run_namespace("Run_2024.01:ABC") == "gpuconform-run-2024-01-abc"
    assert len(run_namespace("x" * 200)) <= 63
    assert dns_label("///") == "x"


def pending(message: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Pending"}
    if message is not None:
        status["conditions"] = [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
        ]
    return {"metadata": {"name": "p"}, "status": status}


RUNNING = {
    "metadata": {"name": "p"},
    "status": {
        "phase": "Running",
        "containerStatuses": [{"name": "sandbox", "ready": True, "state": {"running": {}}}],
    },
}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def judge(
    gpus: int, largest: int = 4, events: list[dict[str, Any]] | None = None, clock: Clock | None = None
) -> StartJudge:
    return StartJudge("ns/p", gpus, 20.0, lambda: largest, lambda: events or [], clock or Clock())


def test_judge_waits_while_pending_and_accepts_running() -> None:
    j = judge(1)
    assert j(pending()) is False
    assert j(RUNNING) is True


def test_count_above_every_node_is_rejected_on_first_sight_with_the_scheduler_message() -> None:
    with pytest.raises(RequestRejected) as info:
        judge(5, largest=4)(pending(INSUFFICIENT))
    assert INSUFFICIENT in str(info.value)
    assert "largest has 4" in str(info.value)


def test_count_that_fits_but_finds_gpus_busy_is_rejected_after_the_bound() -> None:
    clock = Clock()
    j = judge(2, largest=4, clock=clock)
    assert j(pending(INSUFFICIENT)) is False
    clock.now += 19.0
    assert j(pending(INSUFFICIENT)) is False
    clock.now += 1.5
    with pytest.raises(RequestRejected, match="stayed busy for 20s"):
        j(pending(INSUFFICIENT))


def test_insufficient_gpu_found_only_in_events_still_counts() -> None:
    events = [
        {"reason": "FailedScheduling", "message": INSUFFICIENT, "lastTimestamp": "2024-01-01T00:00:00Z"}
    ]
    with pytest.raises(RequestRejected, match="Insufficient nvidia.com/gpu"):
        judge(9, largest=4, events=events)(pending("0/1 nodes are available."))


def test_unschedulable_for_another_reason_is_an_error_after_the_bound_not_a_rejection() -> None:
    clock = Clock()
    j = judge(1, clock=clock)
    message = "0/1 nodes are available: 1 node(s) had untolerated taint {x: y}."
    assert j(pending(message)) is False
    clock.now += 21
    with pytest.raises(InfrastructureError, match="other than GPUs") as info:
        j(pending(message))
    assert not isinstance(info.value, RequestRejected)


def test_fatal_container_state_fails_at_once() -> None:
    pod = {
        "metadata": {"name": "p"},
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": "sandbox",
                    "state": {"waiting": {"reason": "ErrImagePull", "message": "no such image"}},
                }
            ],
        },
    }
    with pytest.raises(InfrastructureError, match="ErrImagePull: no such image"):
        judge(1)(pod)
