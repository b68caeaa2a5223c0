"""Cluster-level calls of the kubernetes adapter: versions, GPU nodes, bounded deletes, gc.

Kept apart from the adapter so the adapter module holds the pod lifecycle only. Every call
carries ``_request_timeout``, and every "wait until gone" is a bounded poll: a GPU is free for the
next pod only once the pod holding it is gone from the API, so ``release`` depends on these waits.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from gpuconform.drivers.base import (
    Deadline,
    DeadlineExceeded,
    DriverUnavailable,
    HarnessError,
    InfrastructureError,
)
from gpuconform.drivers.kube_diag import GPU_RESOURCE, api_error_message, as_plain

__all__ = ["GPU_RESOURCE"]

# The device plugin's mixed MIG strategy advertises each MIG profile as its own resource.
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"


def mig_resource(profile: str) -> str:
    """``nvidia.com/mig-3g.40gb``: the resource a ``3g.40gb`` MIG device is a unit of."""
    return f"{MIG_RESOURCE_PREFIX}{profile}"


API_TIMEOUT_S = 10.0
VERSION_TIMEOUT_S = 3.0
POLL_S = 0.25
MANAGED_BY = {"app.kubernetes.io/managed-by": "gpuconform"}
# How the device plugin's DaemonSet is labelled by its Helm chart, by NVIDIA's static manifest,
# and by the manifests in fixtures/sim/kind (which carry both).
DEVICE_PLUGIN_SELECTORS = ("app.kubernetes.io/name=nvidia-device-plugin", "name=nvidia-device-plugin-ds")


# Where `gpuconform cluster up` leaves the kubeconfig and context of the cluster it made, so that
# `gpuconform run` finds it without flags (after --driver-opt kubernetes.kubeconfig and $KUBECONFIG).
CLUSTER_RECORD = Path("/var/tmp/gpuconform/kind-cluster.json")


def record_cluster(kubeconfig: Path, context: str, record: Path = CLUSTER_RECORD) -> Path:
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps({"kubeconfig": str(kubeconfig), "context": context}) + "\n")
    tmp.replace(record)
    return record


def recorded_cluster(record: Path = CLUSTER_RECORD) -> tuple[str, str] | None:
    """(kubeconfig, context) of the cluster `cluster up` made, if its kubeconfig still exists."""
    try:
        doc = json.loads(record.read_text())
        kubeconfig, context = str(doc["kubeconfig"]), str(doc["context"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (kubeconfig, context) if Path(kubeconfig).is_file() else None


def forget_cluster(record: Path = CLUSTER_RECORD) -> None:
    record.unlink(missing_ok=True)


def load_configuration(kubeconfig: str | None, context: str | None) -> Any:
    """A client Configuration from ``kubeconfig`` (else $KUBECONFIG, ~/.kube/config, in-cluster)."""
    try:
        from kubernetes import client, config
    except ImportError:
        raise DriverUnavailable(
            "the kubernetes Python client is not installed", hint="pip install 'gpuconform[kubernetes]'"
        ) from None
    cfg = client.Configuration()
    try:
        if kubeconfig or os.environ.get("KUBECONFIG") or Path("~/.kube/config").expanduser().exists():
            config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=cfg, persist_config=False
            )
        else:
            config.load_incluster_config(client_configuration=cfg)
    except Exception as exc:  # ConfigException, missing file, bad YAML: all mean "no target"
        raise DriverUnavailable(
            f"no usable Kubernetes configuration: {str(exc).strip()[:200]}",
            hint="pass --kubeconfig/--context, or create a kind cluster (`gpuconform cluster up --kind`)",
        ) from None
    cfg.retries = 0  # every call is bounded by its own timeout; no hidden retries
    return cfg


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def server_versions(api_client: Any) -> dict[str, str]:
    """The API server's version (raises when unreachable) and the device plugin's, if found."""
    from kubernetes import client

    info = as_plain(client.VersionApi(api_client).get_code(_request_timeout=VERSION_TIMEOUT_S))
    versions = {"kubernetes": str(info.get("gitVersion") or "unknown")}
    versions.update(device_plugin_versions(client.AppsV1Api(api_client)))
    return versions


def device_plugin_versions(apps: Any) -> dict[str, str]:
    """The device plugin DaemonSet's image and DEVICE_LIST_STRATEGY, or why they are unknown."""
    for selector in DEVICE_PLUGIN_SELECTORS:
        try:
            found = as_plain(
                apps.list_daemon_set_for_all_namespaces(
                    label_selector=selector, _request_timeout=VERSION_TIMEOUT_S
                )
            )
        except Exception as exc:
            return {"device_plugin": f"unknown ({api_error_message(exc)})"}
        for ds in found.get("items") or []:
            containers = (((ds.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
                "containers"
            ) or []
            for ctr in containers:
                env = {e.get("name"): e.get("value") for e in ctr.get("env") or []}
                return {
                    "device_plugin": str(ctr.get("image")),
                    "device_list_strategy": str(env.get("DEVICE_LIST_STRATEGY") or "default"),
                }
    return {"device_plugin": "not found (no DaemonSet labelled " + " or ".join(DEVICE_PLUGIN_SELECTORS) + ")"}


def ensure_namespace(core: Any, namespace: str, labels: dict[str, str] | None) -> None:
    """Create ``namespace`` with ``labels`` (already there is fine); with None, check it exists."""
    if labels is None:
        try:
            core.read_namespace(namespace, _request_timeout=API_TIMEOUT_S)
        except Exception as exc:
            raise InfrastructureError(
                f"namespace {namespace} is not usable: {api_error_message(exc)}",
                hint="create it, or leave the namespace option out to get one per run",
            ) from None
        return
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}}
    try:
        core.create_namespace(body, _request_timeout=API_TIMEOUT_S)
    except Exception as exc:
        if _status(exc) != 409:  # 409: another worker of this run made it first
            raise InfrastructureError(
                f"creating namespace {namespace} failed: {api_error_message(exc)}"
            ) from None


def gpu_nodes(core: Any) -> dict[str, int]:
    """Allocatable ``nvidia.com/gpu`` per node."""
    return {name: units.get(GPU_RESOURCE, 0) for name, units in device_units(core).items()}


def mig_nodes(core: Any) -> dict[str, dict[str, int]]:
    """Allocatable ``nvidia.com/mig-<profile>`` units per node (the device plugin's mixed MIG
    strategy); nodes without any are left out."""
    out = {
        name: {r: n for r, n in units.items() if r.startswith(MIG_RESOURCE_PREFIX) and n > 0}
        for name, units in device_units(core).items()
    }
    return {name: units for name, units in out.items() if units}


def device_units(core: Any) -> dict[str, dict[str, int]]:
    """Allocatable ``nvidia.com/*`` resources per node, as whole numbers (0 where unreadable)."""
    nodes = as_plain(core.list_node(_request_timeout=API_TIMEOUT_S))
    out: dict[str, dict[str, int]] = {}
    for node in nodes.get("items") or []:
        name = str((node.get("metadata") or {}).get("name"))
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        units: dict[str, int] = {GPU_RESOURCE: 0}
        for resource, value in allocatable.items():
            if str(resource).startswith("nvidia.com/"):
                try:
                    units[str(resource)] = int(str(value))
                except ValueError:
                    units[str(resource)] = 0
        out[name] = units
    return out


def delete_and_wait(core: Any, namespace: str, name: str, deadline: Deadline) -> None:
    """Delete pod ``name`` with grace 0 and poll until the API no longer has it."""
    try:
        core.delete_namespaced_pod(
            name, namespace, grace_period_seconds=0, _request_timeout=deadline.cap(API_TIMEOUT_S)
        )
    except Exception as exc:
        if _status(exc) == 404:
            return
        raise InfrastructureError(
            f"deleting pod {namespace}/{name} failed: {api_error_message(exc)}"
        ) from None
    wait_gone(
        lambda: core.read_namespaced_pod(name, namespace, _request_timeout=deadline.cap(API_TIMEOUT_S)),
        f"pod {namespace}/{name}",
        deadline,
    )


def wait_gone(read: Any, what: str, deadline: Deadline) -> None:
    while True:
        try:
            read()
        except Exception as exc:
            if _status(exc) == 404:
                return
            raise InfrastructureError(
                f"checking that {what} is gone failed: {api_error_message(exc)}"
            ) from None
        if deadline.expired:
            raise DeadlineExceeded(
                f"{what} still exists {deadline.seconds:.0f}s after its deletion",
                hint="a finalizer or a stuck kubelet holds it; its GPUs are not free",
            )
        time.sleep(min(POLL_S, deadline.remaining))


def labelled_pods(core: Any, selector: str, namespace: str | None = None) -> list[tuple[str, str]]:
    """(namespace, name) of the pods matching ``selector``, in one namespace or all."""
    if namespace:
        found = core.list_namespaced_pod(namespace, label_selector=selector, _request_timeout=API_TIMEOUT_S)
    else:
        found = core.list_pod_for_all_namespaces(label_selector=selector, _request_timeout=API_TIMEOUT_S)
    items = as_plain(found).get("items") or []
    return [(str(p["metadata"]["namespace"]), str(p["metadata"]["name"])) for p in items]


def delete_labelled_pods(
    core: Any, selector: str, deadline: Deadline, namespace: str | None = None
) -> list[str]:
    gone = []
    for ns, name in labelled_pods(core, selector, namespace):
        delete_and_wait(core, ns, name, deadline)
        gone.append(f"pod/{ns}/{name}")
    return gone


def delete_namespace(core: Any, namespace: str, deadline: Deadline) -> list[str]:
    """Delete ``namespace`` (its pods go with it) and wait until it is gone."""
    try:
        core.delete_namespace(namespace, _request_timeout=deadline.cap(API_TIMEOUT_S))
    except Exception as exc:
        if _status(exc) == 404:
            return []
        raise InfrastructureError(
            f"deleting namespace {namespace} failed: {api_error_message(exc)}"
        ) from None
    wait_gone(
        lambda: core.read_namespace(namespace, _request_timeout=deadline.cap(API_TIMEOUT_S)),
        f"namespace {namespace}",
        deadline,
    )
    return [f"namespace/{namespace}"]


T = TypeVar("T")


def answering(what: str, call: Callable[[], T]) -> T:
    """``call()``, with an API server that refuses connections as DriverUnavailable (nothing
    answers: nothing to collect) and any other client failure as InfrastructureError."""
    try:
        return call()
    except HarnessError:
        raise
    except Exception as exc:
        from urllib3.exceptions import MaxRetryError, NewConnectionError

        if isinstance(exc, MaxRetryError) and isinstance(exc.reason, NewConnectionError):
            raise DriverUnavailable(f"{what}: the Kubernetes API does not answer: {exc.reason}") from None
        raise InfrastructureError(f"{what} failed: {api_error_message(exc)}") from None


def labelled_objects(core: Any, selector: str) -> list[tuple[dict[str, str], float]]:
    """(labels, creation time in epoch seconds) of every pod and namespace matching ``selector``."""
    pods = as_plain(core.list_pod_for_all_namespaces(label_selector=selector, _request_timeout=API_TIMEOUT_S))
    spaces = as_plain(core.list_namespace(label_selector=selector, _request_timeout=API_TIMEOUT_S))
    found = []
    for item in (pods.get("items") or []) + (spaces.get("items") or []):
        meta = item.get("metadata") or {}
        found.append(({str(k): str(v) for k, v in (meta.get("labels") or {}).items()}, _epoch(meta)))
    return found


def _epoch(meta: Mapping[str, Any]) -> float:
    try:
        stamp = str(meta.get("creationTimestamp") or "").replace("Z", "+00:00")
        return dt.datetime.fromisoformat(stamp).timestamp() if stamp else 0.0
    except ValueError:
        return 0.0


def gc(core: Any, selector: str, deadline: Deadline) -> list[str]:
    """Delete the pods and namespaces matching ``selector`` (the harness's run label)."""
    gone = delete_labelled_pods(core, selector, deadline)
    found = as_plain(core.list_namespace(label_selector=selector, _request_timeout=API_TIMEOUT_S))
    for ns in found.get("items") or []:
        gone += delete_namespace(core, str(ns["metadata"]["name"]), deadline)
    return gone
