"""The Docker adapter: containers with GPUs through the Docker SDK, on the CDI or the legacy path.

Docker has no GPU allocator, so default and count requests lease free GPUs (drivers.selection)
and name them explicitly; ``count.over`` is refused before anything is created. The engine is
``docker.host`` (option), else ``DOCKER_HOST``, else the default socket; the simulated host
points it at its private dockerd. Container create/start/remove go through testcontainers'
``DockerContainer`` (Ryuk disabled: its image cannot be pulled here and it misbehaves under
xdist; leftovers are reaped by label with ``gc``). Exec uses the low-level API with our own
frame reader, because docker-py's ``exec_run`` has no deadline. Request construction and the
GPU path's wire format live in drivers.docker_payload.

Three names, two columns: ``docker-cdi`` (CDI path), ``docker-legacy`` (hook path) and the alias
``docker`` (= ``docker-legacy``). The class fixes the path; an engine that cannot take it makes
the column unavailable with the reason. Options are read per column (``docker-cdi.host``), then
shared (``docker.host``), so one run can drive two engines.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import Any

import docker
import docker.errors
import requests

from gpuconform.drivers import docker_payload as wire
from gpuconform.drivers import reload
from gpuconform.drivers.base import Adapter, AdapterContext, ExecResult, Launch, Sandbox
from gpuconform.drivers.docker_payload import one_line
from gpuconform.drivers.errors import Deadline, DriverUnavailable, InfrastructureError, RequestRejected
from gpuconform.drivers.inventory import SCHEME_CDI, SCHEME_LEGACY, Inventory, learnt_cdi_inventory
from gpuconform.drivers.labels import LABEL_RUN, LabelledRun, merge_runs
from gpuconform.drivers.profile import Availability, OptionSpec, Profile
from gpuconform.drivers.request import GpuRequest
from gpuconform.drivers.selection import Selection, select_gpus
from gpuconform.fixtures.build.images import ensure_image

KEEPALIVE = ["sleep", "2147483647"]
PING_TIMEOUT_S = 3.0
UNREACHABLE_HINT = "start dockerd, or point docker.host (or docker-cdi.host) / DOCKER_HOST at it"
API_TIMEOUT_S = 60.0
ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


class DockerSandbox(Sandbox):
    adapter: DockerAdapter

    def __init__(self, adapter: DockerAdapter, launch: Launch, container: Any) -> None:
        super().__init__(adapter, launch, container.get_container_id())
        self._container = container  # testcontainers DockerContainer

    def raw_exec(self, argv: Sequence[str], *, timeout: float, stdin: bytes | None = None) -> ExecResult:
        if stdin is not None:  # put_file has its own channel (put_archive); nothing else feeds stdin
            raise InfrastructureError("docker exec with data on stdin is not wired in this adapter")
        start = time.monotonic()
        deadline = Deadline(timeout)
        api = self.adapter.client().api
        try:
            exec_id = api.exec_create(self.id, list(argv), stdout=True, stderr=True, stdin=False)["Id"]
            sock = api.exec_start(exec_id, socket=True)
        except ENGINE_ERRORS as exc:
            raise InfrastructureError(
                f"docker exec {argv[0] if argv else ''} in {self.id[:12]} failed: {one_line(exc)}"
            ) from None
        stdout, stderr, timed_out = wire.read_multiplexed(sock, deadline)
        if timed_out:
            return ExecResult(tuple(argv), None, stdout, stderr, time.monotonic() - start, timed_out=True)
        code = self._exit_code(exec_id, deadline)
        return ExecResult(tuple(argv), code, stdout, stderr, time.monotonic() - start, timed_out=code is None)

    def _exit_code(self, exec_id: str, deadline: Deadline) -> int | None:
        """The exec's exit code; the stream can end a moment before the engine records it."""
        grace = Deadline(deadline.remaining + 2.0)
        while not grace.expired:
            try:
                state = self.adapter.client().api.exec_inspect(exec_id)
            except ENGINE_ERRORS as exc:
                raise InfrastructureError(f"docker exec inspect in {self.id[:12]}: {one_line(exc)}") from None
            if not state.get("Running") and state.get("ExitCode") is not None:
                return int(state["ExitCode"])
            time.sleep(0.05)
        return None

    def put_file(self, path: str, data: bytes, mode: int = 0o755) -> None:
        parent, _, name = path.rstrip("/").rpartition("/")
        parent = parent or "/"
        made = self.exec(["mkdir", "-p", parent], timeout=30)
        if not made.ok:
            raise InfrastructureError(f"mkdir -p {parent} in {self.id[:12]} failed: {made.stderr.strip()}")
        try:
            body = wire.single_file_tar(name, data, mode)
            ok = self.adapter.client().api.put_archive(self.id, parent, body)
        except ENGINE_ERRORS as exc:
            raise InfrastructureError(f"copying {path} into {self.id[:12]}: {one_line(exc)}") from None
        if not ok:
            raise InfrastructureError(f"copying {path} into {self.id[:12]} failed: engine said no")

    def teardown(self) -> None:
        try:
            self.adapter.remove(self.id)
        finally:
            with contextlib.suppress(*ENGINE_ERRORS):
                self._container.get_docker_client().client.close()


class DockerAdapter(Adapter):
    """The ``docker`` column: an alias of ``docker-legacy`` (see drivers.docker_payload)."""

    name = "docker"
    # ``<column>.<key>`` for each column, and ``docker.<key>`` for all of them (column_option).
    OPTIONS = {
        f"{column}.{key}": spec
        for column in ("docker", "docker-legacy", "docker-cdi")
        for key, spec in {
            "host": OptionSpec("the engine's URL, e.g. unix:///run/docker.sock"),
            "timeout": OptionSpec("seconds for one Engine API call", "seconds"),
            "legacy_hook": OptionSpec("path of nvidia-container-runtime-hook", "path"),
            "gpu_path": OptionSpec(removed="the column fixes the path: run docker-cdi or docker-legacy"),
            "privileged": OptionSpec("1: run every sandbox privileged (the GPU cases must fail)", "flag"),
            reload.ALLOW: reload.ALLOW_SPEC,
        }.items()
    }
    id_scheme = SCHEME_CDI
    gpu_path = wire.GPU_PATH_LEGACY

    def __init__(self, ctx: AdapterContext) -> None:
        super().__init__(ctx)
        self._client: docker.DockerClient | None = None
        self._ready: Availability | None = None
        self._cdi_learnt: Inventory | None = None

    # Engine ---------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return wire.engine_url(self.ctx.options, self.name)

    @property
    def api_timeout(self) -> float:
        return float(wire.column_option(self.ctx.options, self.name, "timeout") or API_TIMEOUT_S)

    def _unreachable(self, exc: BaseException) -> str:
        return f"docker engine not reachable at {self.base_url}: {one_line(exc)}"

    def client(self) -> docker.DockerClient:
        """The SDK client, created on first use (never at import)."""
        if self._client is None:
            try:
                self._client = docker.DockerClient(base_url=self.base_url, timeout=self.api_timeout)
            except ENGINE_ERRORS as exc:
                raise DriverUnavailable(self._unreachable(exc), hint=UNREACHABLE_HINT) from None
        return self._client

    @property
    def profile(self) -> Profile:
        return wire.profile_for(self.name, self.gpu_path)

    def _legacy_hook(self) -> str | None:
        """Where the engine finds nvidia-container-runtime-hook: the ``legacy_hook`` option (the
        private daemon's PATH), else this machine's PATH (a local engine shares it)."""
        return wire.column_option(self.ctx.options, self.name, "legacy_hook") or shutil.which(wire.HOOK_NAME)

    def _judge(self, version: Mapping[str, Any], info: Mapping[str, Any]) -> Availability:
        """Whether this engine can take this column's path; the versions for the evidence."""
        if wire.column_option(self.ctx.options, self.name, "gpu_path"):
            return Availability(
                False,
                f"the docker.gpu_path option is gone: the column fixes the path ({self.name} is "
                f"{self.gpu_path}); run the docker-cdi or docker-legacy column instead",
            )
        ok, why = wire.path_support(self.gpu_path, version, info, hook=self._legacy_hook())
        versions = wire.engine_versions(version, info, self.gpu_path, why)
        if not ok:
            return Availability(False, f"{self.name}: {why}", versions=versions)
        if self.gpu_path == wire.GPU_PATH_CDI:
            refusal = self._judge_cdi_specs(info, versions)
            if refusal:
                return Availability(False, refusal, versions=versions)
        return Availability(True, versions=versions)

    def _judge_cdi_specs(self, info: Mapping[str, Any], versions: dict[str, str]) -> str:
        """Whether the engine's spec dirs name this host's GPUs (a reason if not), and which
        names: on a local engine they are learnt from its spec dirs (drivers.inventory), as
        Podman's are, so a spec that names GPUs otherwise than ``kind=<index>`` still works."""
        kind, dirs = self.ctx.inventory.cdi_kind, wire.cdi_spec_dirs(info)
        if self.base_url.startswith("unix://"):
            options = {**self.ctx.options, "cdi.dirs": ",".join(dirs)}
            self._cdi_learnt, versions["cdi"] = learnt_cdi_inventory(self.ctx.inventory, options)
            if not any(g.ids(SCHEME_CDI) for g in self._cdi_learnt.gpus):
                return (
                    f"{self.name}: no CDI spec of kind {kind} in the engine's spec dirs "
                    f"{', '.join(dirs)} names a GPU of this host ({versions['cdi']})"
                )
            spec = wire.cdi_spec_for_kind(dirs, kind, info)
            versions["cdi_spec_file"], versions["cdi_spec_version"] = spec or ("?", "?")
        elif wire.discovered_cdi_devices(info):  # a remote engine that lists its devices
            listed = wire.cdi_spec_for_kind([], kind, info)
            if listed is None:
                return f"{self.name}: no CDI spec of kind {kind} among the engine's devices"
            versions["cdi_spec_file"], versions["cdi_spec_version"] = listed
        else:
            versions["cdi_spec_file"] = f"not checked: the spec dirs of {self.base_url} are not local"
        return ""

    def _cdi_names(self) -> Inventory | None:
        """The inventory with learnt CDI names (CDI column, local engine); None where the
        inventory's own names are used (the legacy column, a remote engine)."""
        if self.gpu_path != wire.GPU_PATH_CDI:
            return None
        if self._ready is None:
            self.available()
        return self._cdi_learnt

    def id_inventory(self) -> Inventory:
        learnt = self._cdi_names()
        return self.ctx.inventory if learnt is None else learnt

    def available(self) -> Availability:
        try:
            probe = docker.DockerClient(base_url=self.base_url, timeout=PING_TIMEOUT_S)
        except ENGINE_ERRORS as exc:
            return Availability(False, self._unreachable(exc))
        try:
            probe.ping()
            facts = (probe.api.version(), probe.api.info())
        except ENGINE_ERRORS as exc:
            return Availability(False, self._unreachable(exc))
        finally:
            probe.close()
        self._ready = self._judge(*facts)
        self.versions = dict(self._ready.versions)
        return self._ready

    def _require_ready(self) -> None:
        """Provision only on an engine that takes this column's path (never the other one)."""
        ready = self._ready if self._ready is not None else self.available()
        if not ready.ok:
            raise DriverUnavailable(ready.reason, hint=UNREACHABLE_HINT)

    def all_ids(self) -> list[str] | None:
        learnt = self._cdi_names()
        if learnt is None:
            return [self.ctx.inventory.cdi_all]  # the legacy column maps it to --gpus all
        return [learnt.cdi_all_id] if learnt.cdi_all_id else None  # the spec's, when it has one

    def local_image(self, kind: str, deadline: Deadline) -> str:
        """The locally built image of ``kind``, in this column's engine (its own image store)."""
        return ensure_image("docker", kind, docker_host=self.base_url, deadline=deadline)

    # Provision ------------------------------------------------------------------------------
    def select(self, req: GpuRequest, deadline: Deadline) -> Selection:
        """Only on an engine that takes this column's path; count.over is refused here, before
        any create. The legacy column names GPUs by index or UUID (unknown ids refused, named)."""
        self._require_ready()
        if self.gpu_path == wire.GPU_PATH_CDI:
            return super().select(req, deadline)
        legacy = wire.legacy_ids(req, self.ctx.inventory)
        return select_gpus(self.ctx, legacy, SCHEME_LEGACY, deadline, all_id=wire.LEGACY_ALL)

    def start(self, launch: Launch) -> Sandbox:
        return DockerSandbox(self, launch, self._start(launch))

    def _start(self, launch: Launch) -> Any:
        from testcontainers.core.config import testcontainers_config
        from testcontainers.core.container import DockerContainer

        testcontainers_config.ryuk_disabled = True  # no reaper image here; gc reaps by label
        image, ids = launch.image, launch.selection.ids
        self._require_image(image)  # testcontainers would try to pull a missing one
        container = None
        try:
            container = (
                DockerContainer(
                    image,
                    env=dict(launch.env),
                    docker_client_kw={
                        "environment": {"DOCKER_HOST": self.base_url},
                        "timeout": launch.deadline.cap(self.api_timeout),
                    },
                )
                .with_command(list(KEEPALIVE))
                .with_name(launch.name)
                .with_kwargs(
                    labels=dict(launch.labels),
                    network="none",  # sandboxes need no network; keeps testcontainers from guessing one
                    device_requests=wire.device_requests(self.gpu_path, ids),
                    # every host device node: what the GPU cases must catch (failure class 2)
                    privileged=wire.column_option(self.ctx.options, self.name, "privileged") == "1",
                )
            )
            container.start()
            return container
        except BaseException as exc:
            if container is not None:
                self._discard(container)
            why = one_line(exc)
            if isinstance(exc, docker.errors.APIError) and launch.request.gpu and wire.is_device_refusal(why):
                raise RequestRejected(f"docker refused GPU request {list(ids)}: {why}") from None
            if isinstance(exc, ENGINE_ERRORS):
                raise InfrastructureError(f"docker could not start a container of {image}: {why}") from None
            raise

    def _require_image(self, image: str) -> None:
        try:
            self.client().images.get(image)
        except docker.errors.ImageNotFound:
            raise InfrastructureError(
                f"image {image} is not in the engine at {self.base_url}",
                hint="gpuconform images build, or pass --image",
            ) from None
        except ENGINE_ERRORS as exc:
            raise InfrastructureError(f"docker image lookup of {image} failed: {one_line(exc)}") from None

    def _discard(self, container: Any) -> None:
        """Undo a half-way start: remove what was created, close the per-container client."""
        from testcontainers.core.exceptions import ContainerStartException

        try:
            self.remove(container.get_wrapped_container().id)
        except ContainerStartException:
            pass  # nothing was created
        finally:
            with contextlib.suppress(*ENGINE_ERRORS):
                container.get_docker_client().client.close()

    # Cleanup --------------------------------------------------------------------------------
    def remove(self, container_id: str) -> None:
        try:
            self.client().api.remove_container(container_id, force=True, v=True)
        except docker.errors.NotFound:
            return
        except ENGINE_ERRORS as exc:
            raise InfrastructureError(f"docker rm -f {container_id[:12]} failed: {one_line(exc)}") from None

    def _labelled(self, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        filters = {"label": [f"{k}={v}" if v else k for k, v in labels.items()]}
        try:
            return list(self.client().api.containers(all=True, filters=filters))
        except requests.exceptions.ConnectionError as exc:
            if isinstance(exc, requests.exceptions.Timeout):  # there, but frozen: a failure
                raise InfrastructureError(
                    f"docker ps at {self.base_url} timed out: {one_line(exc)}"
                ) from None
            raise DriverUnavailable(self._unreachable(exc), hint=UNREACHABLE_HINT) from None
        except ENGINE_ERRORS as exc:
            raise InfrastructureError(f"docker ps at {self.base_url} failed: {one_line(exc)}") from None

    def reload_event(self, sandbox: Sandbox, *, timeout: float) -> tuple[str, str]:
        """lifecycle.persist: daemon-reload where systemd manages dockerd, else its SIGHUP."""
        return reload.docker_reload(self.ctx.options, self.name, self.base_url, self.ctx.sim, timeout=timeout)

    def leftovers(self, labels: Mapping[str, str]) -> list[str]:
        return [wire.container_label(c) for c in self._labelled(labels)]

    def labelled_runs(self) -> list[LabelledRun]:
        return merge_runs(
            (c.get("Labels") or {}, float(c.get("Created") or 0)) for c in self._labelled({LABEL_RUN: ""})
        )

    def gc(self, run_id: str | None = None) -> list[str]:
        entries = self._labelled({LABEL_RUN: run_id or ""})
        for entry in entries:
            self.remove(entry["Id"])
        return [wire.container_label(c) for c in entries]


class DockerLegacyAdapter(DockerAdapter):
    """The ``docker-legacy`` column: ``--gpus``-style requests, the NVIDIA hook or runtime."""

    name = "docker-legacy"
    gpu_path = wire.GPU_PATH_LEGACY


class DockerCdiAdapter(DockerAdapter):
    """The ``docker-cdi`` column: CDI names in ``DeviceRequest(driver="cdi")`` (``--device``)."""

    name = "docker-cdi"
    gpu_path = wire.GPU_PATH_CDI
