"""Kubernetes: the context reachable, the NVIDIA device plugin's DaemonSet ready, GPUs allocatable.

On a simulated host each run starts its own API double (pods as Podman containers), so what
doctor checks there is what the double needs.
"""

from __future__ import annotations

from typing import Any

from gpuconform.conformance.doctor.hostfacts import HostFacts
from gpuconform.conformance.doctor.model import Check, missing, note, ok, wrong
from gpuconform.drivers.subproc import run_command

TIMEOUT_S = 10.0


def kubernetes_checks(facts: HostFacts, kubeconfig: str | None, context: str | None) -> list[Check]:
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        return [
            missing(
                "kubernetes client",
                "the kubernetes Python package is missing",
                "pip install 'gpuconform[kubernetes]'",
            )
        ]
    if facts.simulated:
        podman = run_command(["podman", "version", "--format", "{{.Client.Version}}"], timeout=TIMEOUT_S)
        if not podman.ok:
            return [
                missing(
                    "API double",
                    "podman is not usable, and the API double runs pods with it",
                    "apt-get install podman",
                )
            ]
        return [
            ok("kubernetes client", "installed"),
            ok("API double", f"each run starts one; pods run as Podman {podman.stdout.strip()} containers"),
            note(
                "cluster",
                "the device plugin and a real scheduler are only checked on a real cluster (--sim none)",
            ),
        ]
    return _real_cluster(kubeconfig, context)


def _real_cluster(kubeconfig: str | None, context: str | None) -> list[Check]:
    from kubernetes import client

    from gpuconform.drivers.base import HarnessError
    from gpuconform.drivers.kube_cluster import (
        DEVICE_PLUGIN_SELECTORS,
        gpu_nodes,
        load_configuration,
        server_versions,
    )
    from gpuconform.drivers.kube_diag import api_error_message

    try:
        api = client.ApiClient(load_configuration(kubeconfig, context))
    except HarnessError as exc:
        return [
            missing(
                "kubernetes context",
                str(exc),
                "gpuconform cluster up --kind, or --driver-opt kubernetes.kubeconfig=...",
            )
        ]
    out: list[Check] = []
    try:
        versions = server_versions(api)
    except Exception as exc:
        return [
            missing(
                "kubernetes context",
                f"API server not reachable: {api_error_message(exc)}",
                "kubectl cluster-info",
            )
        ]
    out.append(ok("kubernetes context", f"API server {versions.get('kubernetes', '?')} reachable"))
    out.append(_daemonset(client.AppsV1Api(api), DEVICE_PLUGIN_SELECTORS, api_error_message))
    try:
        nodes = gpu_nodes(client.CoreV1Api(api))
    except Exception as exc:
        out.append(
            wrong(
                "allocatable GPUs", f"cannot list nodes: {api_error_message(exc)}", "check RBAC: list nodes"
            )
        )
        return out
    total = sum(nodes.values())
    listing = ", ".join(f"{n}={c}" for n, c in sorted(nodes.items())) or "no nodes"
    if total:
        out.append(ok("allocatable GPUs", f"nvidia.com/gpu: {listing}"))
    else:
        out.append(
            missing(
                "allocatable GPUs",
                f"no node has allocatable nvidia.com/gpu ({listing})",
                "check the device plugin's logs",
            )
        )
    return out


def _daemonset(apps: Any, selectors: tuple[str, ...], describe: Any) -> Check:
    for selector in selectors:
        try:
            found = apps.list_daemon_set_for_all_namespaces(
                label_selector=selector, _request_timeout=TIMEOUT_S
            )
        except Exception as exc:
            return wrong(
                "device plugin", f"cannot list DaemonSets: {describe(exc)}", "check RBAC: list daemonsets"
            )
        for ds in found.items or []:
            status = ds.status
            want, ready = status.desired_number_scheduled or 0, status.number_ready or 0
            where = f"{ds.metadata.namespace}/{ds.metadata.name}"
            if want and ready == want:
                return ok("device plugin", f"DaemonSet {where} ready on {ready}/{want} node(s)")
            return wrong(
                "device plugin",
                f"DaemonSet {where} ready on {ready}/{want} node(s)",
                f"kubectl -n {ds.metadata.namespace} describe ds {ds.metadata.name}",
            )
    return missing(
        "device plugin",
        "no NVIDIA device plugin DaemonSet (" + " or ".join(selectors) + ")",
        "gpuconform cluster up --kind installs one; see docs/kubernetes.md",
    )
