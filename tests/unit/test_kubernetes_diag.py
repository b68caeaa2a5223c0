"""Reading pod states and collecting diagnostics that never raise."""

from __future__ import annotations

from typing import Any

from gpuconform.drivers.kube_diag import classify_pod, collect_diagnostics, scheduling_failures, summarize_pod


def test_running_pod_with_ready_container_is_running() -> None:
    pod = {"status": {"phase": "Running", "containerStatuses": [{"ready": True, "state": {"running": {}}}]}}
    assert classify_pod(pod).phase == "running"


def test_pod_being_deleted_or_terminated_is_failed() -> None:
    assert (
        classify_pod({"metadata": {"deletionTimestamp": "x"}, "status": {"phase": "Running"}}).phase
        == "failed"
    )
    terminated = {
        "status": {
            "phase": "Failed",
            "containerStatuses": [{"name": "c", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}],
        }
    }
    state = classify_pod(terminated)
    assert state.phase == "failed"
    assert "exit 1" in state.message


def test_unschedulable_pod_reports_the_gpu_message() -> None:
    pod = {
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
                }
            ],
        }
    }
    state = classify_pod(pod)
    assert (state.phase, state.insufficient_gpu) == ("unschedulable", True)
    assert state.message == "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."


def test_scheduling_failures_are_ordered_by_time() -> None:
    events = [
        {"reason": "FailedScheduling", "message": "second", "lastTimestamp": "2024-01-01T00:00:02Z"},
        {"reason": "Scheduled", "message": "ignored", "lastTimestamp": "2024-01-01T00:00:03Z"},
        {"reason": "FailedScheduling", "message": "first", "lastTimestamp": "2024-01-01T00:00:01Z"},
    ]
    assert scheduling_failures(events) == ["first", "second"]


def test_summary_names_gpu_limits_conditions_and_container_states() -> None:
    pod: dict[str, Any] = {
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {
            "nodeName": "n1",
            "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "2"}}}],
        },
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    summary = summarize_pod(pod)
    assert summary["gpu_limits"] == ["2"]
    assert summary["node"] == "n1"
    assert summary["conditions"] == [{"type": "Ready", "status": "True", "reason": None, "message": None}]


class BrokenCore:
    """Every call fails the way an unreachable API server does."""

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            assert "_request_timeout" in kwargs, f"{name} called without _request_timeout"
            raise ConnectionRefusedError("connection refused")

        return fail


def test_collect_diagnostics_never_raises_and_says_why_each_part_is_missing() -> None:
    diag = collect_diagnostics(BrokenCore(), "ns", "p", timeout=1)
    assert diag["pod"] == "ns/p"
    for part in ("describe", "events", "logs"):
        assert diag[part].startswith("unavailable: ConnectionRefusedError")
