"""Reading a pod the way ``kubectl describe`` does: running, unschedulable, or broken, and why.

Everything here works on plain JSON dicts (camelCase, as the API serves them) rather than client
model objects, so it does not depend on which generation of the ``kubernetes`` client is installed
and is unit-testable without a cluster. ``collect_diagnostics`` is the one function that talks to
the API; it never raises, because it runs while something else has already gone wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

GPU_RESOURCE = "nvidia.com/gpu"
INSUFFICIENT_GPU = f"Insufficient {GPU_RESOURCE}"
# Container waiting reasons that never resolve by waiting longer.
FATAL_WAITING_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerError",
        "CreateContainerConfigError",
        "RunContainerError",
        "CrashLoopBackOff",
    }
)
LOG_TAIL_LINES = 200

PodPhase = Literal["running", "pending", "unschedulable", "failed"]


@dataclass(frozen=True)
class PodState:
    """What a pod's status means to the adapter.

    ``insufficient_gpu`` is set for an unschedulable pod whose scheduler message names
    ``Insufficient nvidia.com/gpu`` (the clean ``count.over`` refusal).
    """

    phase: PodPhase
    message: str = ""
    insufficient_gpu: bool = False


def as_plain(obj: Any) -> Any:
    """A client model (any generator version) or dict as the plain JSON the API served."""
    if obj is None or isinstance(obj, (dict, list, str, int, float, bool)):
        return obj
    from kubernetes.client import ApiClient  # the client is optional until a cluster is used

    return ApiClient().sanitize_for_serialization(obj)


def _conditions(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list((pod.get("status") or {}).get("conditions") or [])


def unschedulable_message(pod: Mapping[str, Any]) -> str | None:
    """The scheduler's message when ``PodScheduled=False/Unschedulable``; None otherwise."""
    for cond in _conditions(pod):
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            return str(cond.get("message") or "Unschedulable")
    return None


def insufficient_gpu(message: str) -> bool:
    return INSUFFICIENT_GPU in message


def scheduling_failures(events: Iterable[Mapping[str, Any]]) -> list[str]:
    """The messages of ``FailedScheduling`` events, newest last."""
    failed = [e for e in events if e.get("reason") == "FailedScheduling"]
    failed.sort(key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    return [str(e.get("message") or "") for e in failed]


def classify_pod(pod: Mapping[str, Any], events: Sequence[Mapping[str, Any]] = ()) -> PodState:
    """Whether the pod is running, still coming up, unschedulable or failed (with the reason)."""
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return PodState("failed", "pod is being deleted")
    if phase in ("Failed", "Succeeded"):
        reason = status.get("reason") or phase
        return PodState("failed", f"pod {phase.lower()} ({reason}): {status.get('message') or _term(status)}")
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in FATAL_WAITING_REASONS:
            return PodState(
                "failed", f"container {cs.get('name')} {waiting['reason']}: {waiting.get('message', '')}"
            )
        if state.get("terminated"):
            return PodState("failed", f"container {cs.get('name')} terminated: {_term(status)}")
    if phase == "Running" and all(
        cs.get("ready") or (cs.get("state") or {}).get("running")
        for cs in status.get("containerStatuses") or [{}]
    ):
        return PodState("running")
    message = unschedulable_message(pod)
    if message is not None:
        texts = [message, *scheduling_failures(events)]
        gpu = any(insufficient_gpu(t) for t in texts)
        best = next((t for t in texts if insufficient_gpu(t)), message) if gpu else message
        return PodState("unschedulable", best, insufficient_gpu=gpu)
    return PodState("pending", f"phase {phase}")


def _term(status: Mapping[str, Any]) -> str:
    for cs in status.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or {}
        if term:
            return f"exit {term.get('exitCode')} ({term.get('reason', '')}) {term.get('message', '')}".strip()
    return "no container status"


def summarize_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The describe-equivalent: phase, node, conditions, container states, GPU limits."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    return {
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "node": spec.get("nodeName"),
        "phase": status.get("phase"),
        "reason": status.get("reason"),
        "message": status.get("message"),
        "gpu_limits": [
            ((c.get("resources") or {}).get("limits") or {}).get(GPU_RESOURCE)
            for c in spec.get("containers") or []
        ],
        "runtime_class": spec.get("runtimeClassName"),
        "conditions": [
            {k: c.get(k) for k in ("type", "status", "reason", "message")} for c in _conditions(pod)
        ],
        "containers": [
            {
                "name": cs.get("name"),
                "ready": cs.get("ready"),
                "restarts": cs.get("restartCount"),
                "state": cs.get("state"),
            }
            for cs in status.get("containerStatuses") or []
        ],
    }


def summarize_events(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{k: e.get(k) for k in ("type", "reason", "message", "count")} for e in events]


def pod_gpu_limit(count: int | None) -> dict[str, str]:
    """``resources.limits`` for a request of ``count`` GPUs (none for 0 / no GPU)."""
    return {GPU_RESOURCE: str(count)} if count else {}


def list_events(core: Any, namespace: str, name: str, timeout: float) -> list[dict[str, Any]]:
    """Events whose involved object is pod ``name`` (raises the client's errors)."""
    resp = core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}", _request_timeout=timeout
    )
    return list(as_plain(resp).get("items") or [])


def collect_diagnostics(core: Any, namespace: str, name: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """Pod describe-equivalent, its events and its logs; each part says why when unavailable."""
    diag: dict[str, Any] = {"pod": f"{namespace}/{name}"}
    try:
        diag["describe"] = summarize_pod(
            as_plain(core.read_namespaced_pod(name, namespace, _request_timeout=timeout))
        )
    except Exception as exc:  # diagnostics must never mask the original failure
        diag["describe"] = f"unavailable: {api_error_message(exc)}"
    try:
        diag["events"] = summarize_events(list_events(core, namespace, name, timeout))
    except Exception as exc:
        diag["events"] = f"unavailable: {api_error_message(exc)}"
    try:
        diag["logs"] = str(
            core.read_namespaced_pod_log(name, namespace, tail_lines=LOG_TAIL_LINES, _request_timeout=timeout)
        )
    except Exception as exc:
        diag["logs"] = f"unavailable: {api_error_message(exc)}"
    return diag


def _short(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if status is not None and reason is not None:
        return f"HTTP {status} {reason}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def api_error_message(exc: BaseException) -> str:
    """The API server's ``Status.message`` from an ApiException, else a short description."""
    import json

    body = getattr(exc, "body", None)
    if body:
        try:
            doc = json.loads(body)
            if isinstance(doc, dict) and doc.get("message"):
                return f"HTTP {getattr(exc, 'status', '?')}: {doc['message']}"
        except (TypeError, ValueError):
            pass
    return _short(exc)
