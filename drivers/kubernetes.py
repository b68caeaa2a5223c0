"""The kubernetes adapter: sandboxes are pods that ask the NVIDIA device plugin for ``nvidia.com/gpu``.

Pods request GPUs by count only (``resources.limits``), with no runtimeClassName unless asked:
with the device plugin's ``deviceListStrategy: cdi-cri`` the kubelet passes CDI device names to
the runtime and no NVIDIA runtime class is needed on GPU pods (seeds/002). The scheduler picks the
GPUs, so ``granted`` is learnt after the start, from the container's ``allocatedResourcesStatus``
where the kubelet reports it (ResourceHealthStatus, Kubernetes 1.31+; None elsewhere), and the
ground truth per node comes from a probe pod that takes all of a node's GPUs (``node_gpu_uuids``).

MIG under the device plugin's ``mixed`` strategy: a MIG device is a unit of the resource
``nvidia.com/mig-<profile>``, and that resource name is this adapter's native id for it (scheme
``k8s-resource``): a request with device id ``nvidia.com/mig-3g.40gb`` becomes a pod with
``limits: {nvidia.com/mig-3g.40gb: 1}``, and the plugin picks which unit. GPUs have no native id
(``device.*`` is rejected), and a MIG-enabled GPU is never ``nvidia.com/gpu`` under mixed, so it
cannot be had whole (``mig.parent`` unsupported). Pods and the wait for Running are in kube_pods, pod-state
reading in kube_diag, exec in kube_exec, cluster-wide calls (versions, nodes, gc) in kube_cluster.

The client is created on first use from ``kubernetes.kubeconfig`` / ``kubernetes.context`` (or
the default kubeconfig, or in-cluster config). Every API call carries ``_request_timeout``.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from gpuconform.drivers import kube_cluster as cluster
from gpuconform.drivers import kube_truth as truth
from gpuconform.drivers import reload
from gpuconform.drivers.base import Adapter, AdapterContext, Launch, Sandbox
from gpuconform.drivers.errors import (
    Deadline,
    DriverUnavailable,
    HarnessError,
    InfrastructureError,
    RequestRejected,
)
from gpuconform.drivers.inventory import Inventory
from gpuconform.drivers.kube_diag import api_error_message, collect_diagnostics, list_events
from gpuconform.drivers.kube_pods import (
    DELETE_WAIT_S,
    PodSandbox,
    StartJudge,
    build_pod_manifest,
    dns_label,
    granted_from_status,
    label_value,
    run_namespace,
    wait_running,
)
from gpuconform.drivers.labels import LABEL_CASE, LABEL_OWNER, LABEL_RUN, LabelledRun, merge_runs
from gpuconform.drivers.leases import Lease
from gpuconform.drivers.profile import Availability, OptionSpec, Profile
from gpuconform.drivers.request import GpuRequest
from gpuconform.drivers.selection import Selection
from gpuconform.fixtures.build.images import ensure_image, image_ref
from gpuconform.workloads.nvidia_smi import query_argv

OPT_KUBECONFIG = "kubernetes.kubeconfig"
OPT_CONTEXT = "kubernetes.context"
OPT_NAMESPACE = "kubernetes.namespace"
OPT_RUNTIME_CLASS = "kubernetes.runtime_class"
OPT_PULL_POLICY = "kubernetes.image_pull_policy"
OPT_UNSCHEDULABLE_WAIT = "kubernetes.unschedulable_wait"
OPT_CLUSTER_RECORD = "kubernetes.cluster_record"
OPT_REGISTRY = "kubernetes.registry"
LOCAL_PREFIX = "localhost/"
OPT_GROUND_TRUTH = "kubernetes.ground_truth"  # "cluster" or "host"; default: cluster on real GPUs
# How long a pod that fits the node's allocatable GPUs may stay unschedulable (waiting for other
# pods to release theirs) before the request is rejected. A count above every node's allocatable
# is rejected as soon as the scheduler reports it.
DEFAULT_UNSCHEDULABLE_WAIT_S = 20.0
DEVICE_IDS_UNSUPPORTED = "kubernetes selects GPUs by count only; device ids are not supported"
# A MIG device's native id: the mixed strategy's resource name it is a unit of.
SCHEME_K8S_RESOURCE = "k8s-resource"

PROFILE = Profile(
    driver="kubernetes",
    # mig.each: a pod asks for one nvidia.com/mig-<profile> unit (the device plugin's mixed
    # strategy). mig.parent: under mixed a MIG-enabled GPU is never advertised as nvidia.com/gpu,
    # so no pod can ask for it whole: out of scope, not a refusal to judge.
    cases={"device.*": "reject", "mig.parent": "unsupported"},
    exclusive=True,
    oversubscribe="reject",
    notes=(
        "pods request nvidia.com/gpu by count (device plugin, cdi-cri); the scheduler picks the GPUs; "
        "MIG devices as nvidia.com/mig-<profile> units (mixed strategy)"
    ),
)


class KubernetesAdapter(Adapter):
    name = "kubernetes"
    OPTIONS = {
        OPT_KUBECONFIG: OptionSpec("the kubeconfig file", "path"),
        OPT_CONTEXT: OptionSpec("the kubeconfig context"),
        OPT_NAMESPACE: OptionSpec("an existing namespace to use instead of a per-run one"),
        OPT_RUNTIME_CLASS: OptionSpec("the pods' runtimeClassName"),
        OPT_PULL_POLICY: OptionSpec("imagePullPolicy", "choice", ("Always", "IfNotPresent", "Never")),
        OPT_UNSCHEDULABLE_WAIT: OptionSpec("seconds a fitting pod may stay unschedulable", "seconds"),
        OPT_CLUSTER_RECORD: OptionSpec("the cluster record written by gpuconform cluster up", "path"),
        OPT_GROUND_TRUTH: OptionSpec("where the inventory comes from", "choice", ("cluster", "host")),
        OPT_REGISTRY: OptionSpec("registry the cluster's nodes pull the sandbox images from"),
    }
    id_scheme = SCHEME_K8S_RESOURCE  # GPUs have none (counts); a MIG device: its profile's resource
    # The cluster's device plugin picks the GPUs; the harness leases none (the scheduler of a
    # parallel run then never holds a worker back for a pod's GPUs).
    leases_gpus = False

    def __init__(self, ctx: AdapterContext) -> None:
        super().__init__(ctx)
        self._configuration: Any = None
        self._core: Any = None
        self._seq = itertools.count(1)
        self._namespace_ready = False
        self._ground_truth: Inventory | None = None
        self._mig_truth: Inventory | None = None

    @property
    def profile(self) -> Profile:
        return PROFILE

    @property
    def namespace(self) -> str:
        return self.ctx.options.get(OPT_NAMESPACE) or run_namespace(self.ctx.run_id)

    @property
    def owns_namespace(self) -> bool:
        return not self.ctx.options.get(OPT_NAMESPACE)

    # -- client -------------------------------------------------------------------------------
    def configuration(self) -> Any:
        """The client Configuration, loaded on first use (never at import).

        Which cluster: ``kubernetes.kubeconfig``, else $KUBECONFIG, else the one
        ``gpuconform cluster up`` recorded, else ~/.kube/config, else in-cluster."""
        if self._configuration is None:
            kubeconfig = self.ctx.options.get(OPT_KUBECONFIG) or None
            context = self.ctx.options.get(OPT_CONTEXT) or None
            if kubeconfig is None and not os.environ.get("KUBECONFIG"):
                record = Path(self.ctx.options.get(OPT_CLUSTER_RECORD) or cluster.CLUSTER_RECORD)
                recorded = cluster.recorded_cluster(record)
                if recorded is not None:
                    kubeconfig, context = recorded[0], context or recorded[1]
                    self.versions["kubeconfig"] = f"{kubeconfig} (recorded by gpuconform cluster up)"
            self._configuration = cluster.load_configuration(kubeconfig, context)
        return self._configuration

    def core(self) -> Any:
        if self._core is None:
            from kubernetes import client

            self._core = client.CoreV1Api(client.ApiClient(self.configuration()))
        return self._core

    # -- discovery ----------------------------------------------------------------------------
    def available(self) -> Availability:
        try:
            core = self.core()
            versions = cluster.server_versions(core.api_client)
        except DriverUnavailable as exc:
            return Availability(False, str(exc))
        except Exception as exc:
            return Availability(
                False,
                f"Kubernetes API not reachable within {cluster.VERSION_TIMEOUT_S:.0f}s: "
                f"{api_error_message(exc)}",
            )
        try:
            nodes = self.gpu_nodes()
        except Exception as exc:
            return Availability(False, f"cannot list nodes: {api_error_message(exc)}", versions)
        versions[cluster.GPU_RESOURCE] = ",".join(f"{n}={c}" for n, c in sorted(nodes.items())) or "none"
        self.versions = {**self.versions, **versions}
        if not any(nodes.values()):
            return Availability(
                False,
                f"no node has allocatable {cluster.GPU_RESOURCE} (is the NVIDIA device plugin running?)",
                versions,
            )
        return Availability(True, "", dict(self.versions))

    def gpu_nodes(self) -> dict[str, int]:
        """Allocatable ``nvidia.com/gpu`` per node (nodes without any are listed with 0)."""
        return cluster.gpu_nodes(self.core())

    # -- provisioning -------------------------------------------------------------------------
    def select(self, req: GpuRequest, deadline: Deadline) -> Selection:
        """Pods ask for a count, or for MIG units by resource name; the scheduler and the device
        plugin pick the devices (nothing leased; the grant is learnt once the pod runs)."""
        if not req.device_ids:
            return Selection((), None, Lease(()))  # the scheduler chooses
        if not all(i.startswith(cluster.MIG_RESOURCE_PREFIX) for i in req.device_ids):
            named = ", ".join(repr(i) for i in req.device_ids)
            raise RequestRejected(
                f"{DEVICE_IDS_UNSUPPORTED} (got {named})",
                hint="request a count (limits nvidia.com/gpu: N), or a MIG unit by nvidia.com/mig-<profile>",
            )
        offered = {r for units in cluster.mig_nodes(self.core()).values() for r in units}
        missing = [i for i in req.device_ids if i not in offered]
        if missing:
            raise RequestRejected(
                f"no node advertises {', '.join(missing)} (MIG resources offered: "
                f"{', '.join(sorted(offered)) or 'none'})",
                hint="the device plugin's mixed MIG strategy advertises nvidia.com/mig-<profile> per profile",
            )
        return Selection(tuple(req.device_ids), None, Lease(()))

    def start(self, launch: Launch) -> PodSandbox:
        return self.start_pod(launch)

    def local_image(self, kind: str, deadline: Deadline) -> str:
        """What the cluster's nodes can get: the harness's image pushed to ``kubernetes.registry``;
        against the API double (pods run as local Podman containers) the local Podman image, built
        on first use; on a real cluster otherwise the local reference (``gpuconform cluster up``
        loads it into kind; any other cluster then fails with ErrImagePull naming it)."""
        registry = self.ctx.options.get(OPT_REGISTRY)
        if registry:
            return f"{registry.rstrip('/')}/{image_ref(kind).removeprefix(LOCAL_PREFIX)}"
        if self.ctx.inventory.simulated:
            return ensure_image("podman", kind, deadline=deadline)
        return image_ref(kind)

    def start_pod(
        self, launch: Launch, node: str | None = None, units: Mapping[str, int] | None = None
    ) -> PodSandbox:
        """Create a pod for ``launch`` (optionally pinned to ``node``) and wait until it runs.

        A request by MIG resource names asks one unit of each (no ``nvidia.com/gpu``); ``units``
        adds resources by count (the MIG ground-truth probe). Any failure after the create deletes
        the pod again; the raised error carries ``diagnostics`` (describe, events, logs) when the
        pod existed.
        """
        req, image, deadline = launch.request, launch.image, launch.deadline
        if not image:
            raise InfrastructureError(
                "no image for the kubernetes sandbox",
                hint="pass --image busybox=<ref> (the image must be pullable by the nodes)",
            )
        start = time.monotonic()
        core = self.core()
        self._ensure_namespace()
        name = f"gpuconform-{dns_label(self.ctx.worker, 12)}-{next(self._seq)}-{secrets.token_hex(3)}"
        mig_units = {i: 1 for i in launch.selection.ids if i.startswith(cluster.MIG_RESOURCE_PREFIX)}
        gpus = 0 if mig_units else req.wanted
        manifest = build_pod_manifest(
            name,
            self.namespace,
            image=image,
            gpus=gpus,
            units={**mig_units, **(units or {})},
            labels=launch.labels,
            env=launch.env,
            runtime_class=self.ctx.options.get(OPT_RUNTIME_CLASS, ""),
            pull_policy=self.ctx.options.get(OPT_PULL_POLICY) or "IfNotPresent",
            node=node,
        )
        try:
            core.create_namespaced_pod(
                self.namespace, manifest, _request_timeout=deadline.cap(cluster.API_TIMEOUT_S)
            )
        except Exception as exc:
            raise InfrastructureError(
                f"creating pod {self.namespace}/{name} failed: {api_error_message(exc)}"
            ) from None
        bound = float(self.ctx.options.get(OPT_UNSCHEDULABLE_WAIT) or DEFAULT_UNSCHEDULABLE_WAIT_S)
        judge = StartJudge(
            f"{self.namespace}/{name}",
            gpus,
            bound,
            largest_node=lambda: max(self.gpu_nodes().values(), default=0),
            events=lambda: list_events(core, self.namespace, name, deadline.cap(cluster.API_TIMEOUT_S)),
        )
        try:
            pod = wait_running(core, self.namespace, name, judge, deadline)
        except BaseException as exc:
            diagnostics = collect_diagnostics(core, self.namespace, name)
            try:
                self.delete_pod(name, Deadline(DELETE_WAIT_S))
            except HarnessError as cleanup:
                diagnostics["cleanup"] = str(cleanup)
            if isinstance(exc, HarnessError):
                exc.diagnostics.update(diagnostics)
                raise
            if not isinstance(exc, Exception):
                raise
            why = f"waiting for pod {self.namespace}/{name}: {api_error_message(exc)}"
            raise InfrastructureError(why, diagnostics=diagnostics) from None
        sandbox = PodSandbox(self, launch, self.namespace, name, (pod.get("spec") or {}).get("nodeName"))
        learnt = granted_from_status(pod)
        if learnt is not None:  # what the device plugin handed the pod, as the kubelet reports it
            sandbox.granted = learnt
        sandbox.timings["provision_s"] = round(time.monotonic() - start, 3)
        return sandbox

    def _ensure_namespace(self) -> None:
        if not self._namespace_ready:
            labels = {LABEL_RUN: label_value(self.ctx.run_id), **cluster.MANAGED_BY}
            cluster.ensure_namespace(self.core(), self.namespace, labels if self.owns_namespace else None)
            self._namespace_ready = True

    # -- teardown -----------------------------------------------------------------------------
    def delete_pod(self, name: str, deadline: Deadline, namespace: str | None = None) -> None:
        """Delete with grace 0 and wait until the pod is gone (its GPUs are free only then)."""
        cluster.delete_and_wait(self.core(), namespace or self.namespace, name, deadline)

    def reload_event(self, sandbox: Sandbox, *, timeout: float) -> tuple[str, str]:
        """lifecycle.persist: the GPU node's systemd daemon-reload. The simulated node's is triggered
        here; a real cluster's node is out of the harness's reach (no node shell): skip, saying so."""
        if self.ctx.sim is not None:
            return reload.simulated(self.ctx.sim, "a simulated daemon-reload of the node")
        return (
            reload.SKIP,
            "the reload event is a systemctl daemon-reload on the GPU node, which the harness cannot reach "
            "from the cluster API (run the case on a simulated host, or reload the node by hand)",
        )

    def leftovers(self, labels: Mapping[str, str]) -> list[str]:
        selector = ",".join(f"{k}={label_value(v)}" for k, v in sorted(labels.items()))
        pods = cluster.answering(
            "listing pods", lambda: cluster.labelled_pods(self.core(), selector, self.namespace)
        )
        return [f"pod/{ns}/{n}" for ns, n in pods]

    def gc(self, run_id: str | None = None) -> list[str]:
        selector = f"{LABEL_RUN}={label_value(run_id)}" if run_id else LABEL_RUN
        return cluster.answering("gc", lambda: cluster.gc(self.core(), selector, Deadline(DELETE_WAIT_S)))

    def labelled_runs(self) -> list[LabelledRun]:
        found = cluster.answering(
            "listing labelled pods", lambda: cluster.labelled_objects(self.core(), LABEL_RUN)
        )
        return merge_runs(found)

    # -- ground truth and release -------------------------------------------------------------
    def node_gpu_uuids(
        self, *, image: str = "", deadline: Deadline | None = None
    ) -> dict[str, frozenset[str]]:
        """Per GPU node: the UUIDs a probe pod taking all of its allocatable GPUs sees.

        Run while the nodes are idle; a busy node is an InfrastructureError, not a guess.
        """
        found = self._probe_nodes(
            ["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"], image, deadline
        )
        return {
            node: frozenset(
                line.strip() for line in stdout.splitlines() if line.strip().startswith(("GPU-", "MIG-"))
            )
            for node, stdout in found.items()
        }

    def ground_truth(self, *, image: str = "", deadline: Deadline | None = None) -> Inventory | None:
        """The inventory this column is judged against, or None for the run's own inventory.

        On a real cluster the runner's GPUs are not the pods' GPUs: the truth is the cluster's GPU
        nodes, read by a probe pod per node that takes all of its allocatable GPUs and runs
        ``nvidia-smi --query-gpu``. What that does not prove: the probe sees GPUs through the
        same device plugin and runtime under test, so a stack that consistently injects the wrong
        GPUs, or a GPU the plugin never advertises, is invisible to it (compare with the node's own
        ``nvidia-smi`` where you can). Against the API double the run's simulated inventory is
        the truth by construction (``kubernetes.ground_truth=cluster`` probes there too)."""
        # On a simulated MIG host the double advertises only the whole GPUs as nvidia.com/gpu (the
        # device plugin's mixed strategy), so the cluster, not the host, is the truth there too.
        mode = self.ctx.options.get(OPT_GROUND_TRUTH) or (
            "host" if self.ctx.inventory.simulated and not self.ctx.inventory.migs else "cluster"
        )
        if mode not in ("host", "cluster"):
            raise InfrastructureError(
                f"{OPT_GROUND_TRUTH}={mode!r}", hint="expected 'cluster' (GPU nodes) or 'host' (this runner)"
            )
        if mode == "host":
            return None
        if self._ground_truth is None:
            whole = self._cluster_inventory(image, deadline)
            # Both or neither: a failed MIG probe must not leave MIG cases judged by the runner.
            self._mig_truth = self._cluster_mig_inventory(image, deadline, len(whole.gpus))
            self._ground_truth = whole
        return self._ground_truth

    def id_inventory(self) -> Inventory:
        """The MIG devices a pod can be handed, each named by its ``nvidia.com/mig-<profile>``
        resource (``k8s-resource`` ids; GPUs keep none). Their source: the cluster's MIG probe
        when the column is judged against the cluster (its whole-GPU truth has no MIG parents),
        otherwise the run's inventory."""
        base = self._mig_truth if self._mig_truth is not None else self.ctx.inventory
        migs = tuple(
            replace(
                m, native_ids={**dict(m.native_ids), SCHEME_K8S_RESOURCE: (cluster.mig_resource(m.profile),)}
            )
            for m in base.migs
        )
        return replace(base, migs=migs)

    def _cluster_inventory(self, image: str, deadline: Deadline | None) -> Inventory:
        found = self._probe_nodes(query_argv(truth.PROBE_FIELDS), image, deadline)
        return truth.inventory_from_probes(found, simulated=self.ctx.inventory.simulated)

    def _cluster_mig_inventory(self, image: str, deadline: Deadline | None, first: int) -> Inventory | None:
        """The MIG devices of the nodes that advertise ``nvidia.com/mig-*`` (None: no node does),
        from a probe pod per such node that takes all of its MIG units."""
        nodes = cluster.mig_nodes(self.core())
        if not nodes:
            return None
        deadline = deadline or Deadline(180)
        image = image or self.image("busybox", deadline=deadline)
        found: dict[str, tuple[str, str]] = {}
        for node, units in sorted(nodes.items()):
            outputs = self._probe(
                node, units, [query_argv(truth.PROBE_FIELDS), ["nvidia-smi", "-L"]], image, deadline
            )
            found[node] = (outputs[0], outputs[1])
        return truth.mig_inventory_from_probes(
            found, simulated=self.ctx.inventory.simulated, first_index=first
        )

    def _probe_nodes(self, argv: list[str], image: str, deadline: Deadline | None) -> dict[str, str]:
        """``argv``'s stdout in a probe pod on each GPU node that takes all of its GPUs."""
        deadline = deadline or Deadline(180)
        image = image or self.image("busybox", deadline=deadline)
        out: dict[str, str] = {}
        for node, count in sorted(self.gpu_nodes().items()):
            if count > 0:
                out[node] = self._probe(node, {cluster.GPU_RESOURCE: count}, [argv], image, deadline)[0]
        return out

    def _probe(
        self, node: str, units: Mapping[str, int], argvs: list[list[str]], image: str, deadline: Deadline
    ) -> list[str]:
        """The stdout of each of ``argvs`` in one probe pod on ``node`` holding ``units``."""
        what = ", ".join(f"{n} x {r}" for r, n in sorted(units.items()))
        try:
            labels = {**self.ctx.labels, LABEL_CASE: "ground-truth", LABEL_OWNER: "gpuconform"}
            nothing = Selection((), None, Lease(()))
            gpus = units.get(cluster.GPU_RESOURCE, 0)
            req = GpuRequest.of_count(gpus) if gpus else GpuRequest.none()
            launch = Launch(req, image, labels, {}, deadline, nothing, "")
            others = {r: n for r, n in units.items() if r != cluster.GPU_RESOURCE}
            sandbox = self.start_pod(launch, node=node, units=others)
        except RequestRejected as exc:
            raise InfrastructureError(
                f"node {node} is not idle: a probe pod for its {what} was not scheduled ({exc.message})"
            ) from None
        outputs = []
        with sandbox:
            for argv in argvs:
                result = sandbox.exec(argv, timeout=deadline.cap(60.0))
                if not result.ok:
                    raise InfrastructureError(
                        f"{' '.join(argv[:2])} in the probe pod on {node} ({what}) failed "
                        f"(exit {result.exit_code}): {result.stderr.strip()[:200]}"
                    )
                outputs.append(result.stdout)
        return outputs
