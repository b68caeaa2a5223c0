"""Pods as sandboxes: the manifest, the wait for Running, and the sandbox object.

``StartJudge`` decides from successive observations of a starting pod whether it runs, failed,
or is a clean refusal (``Insufficient nvidia.com/gpu``) — pure enough to unit-test with plain
dicts and a fake clock. ``wait_running`` feeds it from a watch that carries both
``timeout_seconds`` and ``_request_timeout`` (a watch without the latter can hang forever).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gpuconform.drivers.base import ExecResult, Launch, Sandbox
from gpuconform.drivers.errors import (
    Deadline,
    DeadlineExceeded,
    HarnessError,
    InfrastructureError,
    RequestRejected,
)
from gpuconform.drivers.kube_diag import GPU_RESOURCE, as_plain, classify_pod, collect_diagnostics
from gpuconform.drivers.kube_exec import exec_in_pod

if TYPE_CHECKING:
    from gpuconform.drivers.kubernetes import KubernetesAdapter

CONTAINER = "sandbox"
SLEEP_FOREVER = ("sleep", "2147483647")
DELETE_WAIT_S = 60.0
API_TIMEOUT_S = 10.0
LONG_WATCH_S = 10.0
SHORT_WATCH_S = 2.0


def label_value(text: str) -> str:
    """``text`` as a valid label value (63 chars of [A-Za-z0-9._-], alphanumeric at both ends)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:63].strip("-._")


def dns_label(text: str, limit: int = 63) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:limit].strip("-") or "x"


def run_namespace(run_id: str) -> str:
    """The namespace the harness creates for one run (and deletes in ``teardown_run``)."""
    return f"gpuconform-{dns_label(run_id, 52)}"


def build_pod_manifest(
    name: str,
    namespace: str,
    *,
    image: str,
    gpus: int,
    labels: Mapping[str, str],
    env: Mapping[str, str] | None = None,
    runtime_class: str = "",
    pull_policy: str = "IfNotPresent",
    node: str | None = None,
    units: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The pod for a request of ``gpus`` GPUs (0: none), sleeping until the harness deletes it.

    ``units`` adds other device-plugin resources by count (``nvidia.com/mig-3g.40gb: 1``: MIG
    devices under the plugin's mixed strategy)."""
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": list(SLEEP_FOREVER),
    }
    limits = {GPU_RESOURCE: str(gpus)} if gpus else {}
    limits.update({name: str(n) for name, n in sorted((units or {}).items()) if n})
    if limits:
        container["resources"] = {"limits": limits}
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 0,
        "automountServiceAccountToken": False,
        "containers": [container],
    }
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    if node:
        term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
        required = {"nodeSelectorTerms": [term]}
        spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}
    labels = {k: label_value(v) for k, v in labels.items()}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": spec,
    }


def granted_from_status(pod: Mapping[str, Any]) -> frozenset[str] | None:
    """The device ids the device plugin handed the sandbox container, from its
    ``allocatedResourcesStatus`` (kubelet feature ResourceHealthStatus, Kubernetes 1.31+), for
    ``nvidia.com/*`` resources: GPU and MIG UUIDs with the NVIDIA plugin (a time-slicing replica's
    ``<uuid>::<n>`` suffix dropped). None where the kubelet does not report it: the grant is then
    unknown before looking, and cases judge by count and inventory membership."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") != CONTAINER or "allocatedResourcesStatus" not in status:
            continue
        return frozenset(
            str(res.get("resourceID") or "").split("::", 1)[0]
            for entry in status.get("allocatedResourcesStatus") or []
            if str(entry.get("name") or "").startswith("nvidia.com/")
            for res in entry.get("resources") or []
            if res.get("resourceID")
        )
    return None


class StartJudge:
    """Judges observations of one starting pod; ``bound`` is the unschedulable wait in seconds.

    A GPU count above every node's allocatable (``largest_node()``) is rejected on first sight of
    ``Insufficient nvidia.com/gpu``; a count that fits but finds the GPUs busy is rejected once it
    has stayed unschedulable for ``bound`` seconds; other unschedulable reasons are errors then.
    """

    def __init__(
        self,
        pod_id: str,
        gpus: int,
        bound: float,
        largest_node: Callable[[], int],
        events: Callable[[], Sequence[Mapping[str, Any]]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pod_id, self.gpus, self.bound = pod_id, gpus, bound
        self.largest_node, self.events, self.clock = largest_node, events, clock
        self.unschedulable_since: float | None = None
        self.last = "no status yet"

    def __call__(self, pod: Mapping[str, Any]) -> bool:
        """True when the pod runs; False to keep waiting; raises when it never will."""
        state = classify_pod(pod)
        if state.phase == "unschedulable" and not state.insufficient_gpu:
            state = classify_pod(pod, self.events())  # the reason may only be in the events
        self.last = f"{state.phase}: {state.message}" if state.message else state.phase
        if state.phase == "running":
            return True
        if state.phase == "failed":
            raise InfrastructureError(f"pod {self.pod_id} failed to start: {state.message}")
        if state.phase != "unschedulable":
            return False
        now = self.clock()
        if self.unschedulable_since is None:
            self.unschedulable_since = now
        waited = now - self.unschedulable_since
        if state.insufficient_gpu:
            largest = self.largest_node()
            if self.gpus > largest or waited >= self.bound:
                why = (
                    f"no node has {self.gpus} allocatable, the largest has {largest}"
                    if self.gpus > largest
                    else f"the GPUs stayed busy for {waited:.0f}s"
                )
                raise RequestRejected(
                    f"the scheduler cannot place {self.gpus} x {GPU_RESOURCE} ({why}): {state.message}",
                    hint="lower the count, or free GPUs held by other pods",
                )
        elif waited >= self.bound:
            raise InfrastructureError(
                f"pod {self.pod_id} unschedulable for {waited:.0f}s for a reason "
                f"other than GPUs: {state.message}"
            )
        return False


def wait_running(
    core: Any, namespace: str, name: str, judge: StartJudge, deadline: Deadline
) -> dict[str, Any]:
    """Watch pod ``name`` until ``judge`` says it runs (or raises); return the pod as JSON."""
    from kubernetes import watch

    selector = f"metadata.name={name}"
    while True:
        if deadline.expired:
            raise DeadlineExceeded(
                f"pod {namespace}/{name} not Running within {deadline.seconds:.0f}s "
                f"(last state: {judge.last})",
                hint="see the diagnostics: events and container states",
            )
        # Short windows while unschedulable, so the bound is checked every ~2 s without events.
        short = judge.unschedulable_since is not None
        window = max(1, int(min(SHORT_WATCH_S if short else LONG_WATCH_S, deadline.remaining)))
        w = watch.Watch()
        try:
            for event in w.stream(
                core.list_namespaced_pod,
                namespace,
                field_selector=selector,
                timeout_seconds=window,
                _request_timeout=(deadline.cap(5.0), max(1.0, deadline.cap(window + 2.0))),
            ):
                if event.get("type") == "DELETED":
                    raise InfrastructureError(f"pod {namespace}/{name} was deleted while starting")
                if event.get("type") in ("ADDED", "MODIFIED") and judge(event["raw_object"]):
                    return dict(event["raw_object"])
                if not short and judge.unschedulable_since is not None:
                    break  # just became unschedulable: continue on short windows
        except HarnessError:
            raise
        except Exception:  # a watch cut by its timeout or by the server: one read decides
            pass
        finally:
            w.stop()
        pod = as_plain(
            core.read_namespaced_pod(name, namespace, _request_timeout=deadline.cap(API_TIMEOUT_S))
        )
        if judge(pod):
            return dict(pod)


class PodSandbox(Sandbox):
    """One pod, named ``<namespace>/<name>``; the scheduler chose its GPUs (``granted`` is None)."""

    adapter: KubernetesAdapter

    def __init__(
        self, adapter: KubernetesAdapter, launch: Launch, namespace: str, name: str, node: str | None
    ) -> None:
        super().__init__(adapter, launch, f"{namespace}/{name}")
        self.namespace, self.name, self.node = namespace, name, node
        self.versions["node"] = str(node)

    def raw_exec(self, argv: Sequence[str], *, timeout: float, stdin: bytes | None = None) -> ExecResult:
        configuration = self.adapter.configuration()
        return exec_in_pod(
            configuration, self.namespace, self.name, CONTAINER, argv, timeout=timeout, stdin=stdin
        )

    def diagnostics(self) -> dict[str, Any]:
        """The pod's describe, events and logs, read now."""
        return collect_diagnostics(self.adapter.core(), self.namespace, self.name)

    def teardown(self) -> None:
        self.adapter.delete_pod(self.name, Deadline(DELETE_WAIT_S), self.namespace)
