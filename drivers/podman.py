"""The Podman adapter: containers with CDI device injection, through the podman CLI.

Podman resolves CDI names itself (``--device nvidia.com/gpu=1``) from /etc/cdi and /var/run/cdi.
Every podman call has a timeout; every container carries the run's labels, so ``gc`` can remove
what a killed run left behind.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping, Sequence

from gpuconform.drivers.base import (
    LABEL_PREFIX,
    LABEL_RUN,
    Adapter,
    AdapterContext,
    Availability,
    Deadline,
    DriverUnavailable,
    ExecResult,
    InfrastructureError,
    OptionSpec,
    Profile,
    RequestRejected,
    Sandbox,
)
from gpuconform.drivers.inventory import SCHEME_CDI, GpuRecord, Inventory, learnt_cdi_inventory
from gpuconform.drivers.orphans import kill_orphans
from gpuconform.drivers.request import GpuRequest
from gpuconform.drivers.selection import Selection, select_gpus
from gpuconform.drivers.subproc import run_command

KEEPALIVE = ("sleep", "2147483647")
REJECTION_MARKERS = ("unresolvable CDI devices", "failed to inject devices", "unknown CDI device")


class PodmanSandbox(Sandbox):
    def __init__(self, adapter: PodmanAdapter, container: str, req: GpuRequest, selection: Selection) -> None:
        self.adapter = adapter
        self.id = container
        self.driver = "podman"
        self.request = req
        self.granted = selection.granted
        self.versions = dict(adapter.versions)
        self.timings: dict[str, float] = {}
        self._selection = selection
        self._closed = False

    def exec(self, argv: Sequence[str], *, timeout: float) -> ExecResult:
        result = self.adapter.podman(["exec", self.id, *argv], timeout=timeout)
        return ExecResult(
            tuple(argv), result.exit_code, result.stdout, result.stderr, result.duration_s, result.timed_out
        )

    def put_file(self, path: str, data: bytes, mode: int = 0o755) -> None:
        parent = path.rsplit("/", 1)[0] or "/"
        script = f'mkdir -p "{parent}" && cat > "{path}" && chmod {mode:o} "{path}"'
        result = self.adapter.podman(["exec", "-i", self.id, "sh", "-c", script], timeout=30, input_data=data)
        if not result.ok:
            raise InfrastructureError(f"copying {path} into {self.id} failed: {result.stderr.strip()}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        start = time.monotonic()
        try:
            self.adapter.remove(self.id)
        finally:
            self._selection.release()
            self.timings["teardown_s"] = round(time.monotonic() - start, 3)


class PodmanAdapter(Adapter):
    name = "podman"
    OPTIONS = {
        "podman.binary": OptionSpec("the podman executable", "path"),
        "cdi.dirs": OptionSpec("comma-separated CDI spec directories podman resolves names from"),
    }
    id_scheme = SCHEME_CDI

    def __init__(self, ctx: AdapterContext) -> None:
        super().__init__(ctx)
        self.binary = ctx.options.get("podman.binary", "podman")
        self.versions: dict[str, str] = {}
        self._learnt: Inventory | None = None

    @property
    def cdi_inventory(self) -> Inventory:
        """The host's GPUs with the CDI names the specs give them (read once per adapter)."""
        if self._learnt is None:
            self._learnt, self.versions["cdi"] = learnt_cdi_inventory(self.ctx.inventory, self.ctx.options)
        return self._learnt

    @property
    def profile(self) -> Profile:
        return Profile(
            driver="podman",
            cases={"device.unsupported": "unsupported"},
            exclusive=True,
            oversubscribe="reject",
            notes="CDI device names; the harness leases GPUs for default and count requests",
        )

    def podman(self, args: Sequence[str], *, timeout: float, input_data: bytes | None = None) -> ExecResult:
        return run_command([self.binary, *args], timeout=timeout, input_data=input_data)

    def available(self) -> Availability:
        result = self.podman(["version", "--format", "json"], timeout=15)
        if result.exit_code == 127:
            return Availability(False, "podman is not installed (podman not on PATH)")
        if not result.ok:
            why = "timed out" if result.timed_out else result.stderr.strip().splitlines()[-1:]
            return Availability(False, f"podman is not usable: {why}")
        try:
            client = json.loads(result.stdout).get("Client", {})
        except json.JSONDecodeError:
            return Availability(False, "podman version printed something that is not JSON")
        self.versions = {
            "engine": f"podman {client.get('Version', '?')}",
            "api": str(client.get("APIVersion", "")),
        }
        info = self.podman(
            ["info", "--format", "{{.Host.OCIRuntime.Name}} {{.Host.OCIRuntime.Version}}"], timeout=15
        )
        if info.ok:
            self.versions["runtime"] = info.stdout.strip().splitlines()[0] if info.stdout.strip() else ""
        learnt = self.cdi_inventory
        if not any(g.ids(SCHEME_CDI) for g in learnt.gpus):
            return Availability(
                False,
                f"no CDI spec of kind {learnt.cdi_kind} names a GPU of this host ({self.versions['cdi']}) "
                "(hint: nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml, or --driver-opt cdi.dirs=DIR)",
                versions=dict(self.versions),
            )
        return Availability(True, versions=dict(self.versions))

    def native_ids(self, gpu: GpuRecord) -> list[str]:
        """The names the CDI specs on the machine give ``gpu``; none when no spec names it."""
        learnt = self.cdi_inventory.by_uuid(gpu.uuid)
        return list(learnt.ids(SCHEME_CDI)) if learnt is not None else []

    def all_ids(self) -> list[str] | None:
        """The spec's ``all`` device when it has one that injects every GPU; else no all form."""
        all_id = self.cdi_inventory.cdi_all_id
        return [all_id] if all_id else None

    def provision(
        self,
        req: GpuRequest,
        *,
        image: str,
        labels: Mapping[str, str],
        deadline: Deadline,
        env: Mapping[str, str] | None = None,
    ) -> Sandbox:
        req.validate()
        start = time.monotonic()
        learnt = self.cdi_inventory
        selection = select_gpus(
            self.ctx, req, SCHEME_CDI, deadline, all_id=learnt.cdi_all_id, inventory=learnt
        )
        name = f"gpuconform-{self.ctx.run_id}-{secrets.token_hex(3)}"
        argv = ["run", "-d", "--name", name]
        for key, value in {**labels, f"{LABEL_PREFIX}.owner": "gpuconform"}.items():
            argv += ["--label", f"{key}={value}"]
        for device_id in selection.ids:
            argv += ["--device", device_id]
        for key, value in (env or {}).items():
            argv += ["--env", f"{key}={value}"]
        argv += [image, *KEEPALIVE]
        result = self.podman(argv, timeout=deadline.cap(120))
        if not result.ok:
            self.remove(name)
            selection.release()
            message = (result.stderr or result.stdout).strip().splitlines()
            text = message[-1] if message else f"exit {result.exit_code}"
            if result.timed_out:
                raise InfrastructureError(f"podman run timed out after {deadline.cap(120):.0f}s")
            if result.exit_code == 127:
                raise DriverUnavailable("podman is not installed")
            if any(marker in result.stderr for marker in REJECTION_MARKERS):
                raise RequestRejected(f"podman refused the devices: {text}")
            raise InfrastructureError(f"podman run failed (exit {result.exit_code}): {text}")
        sandbox = PodmanSandbox(self, name, req, selection)
        sandbox.timings["provision_s"] = round(time.monotonic() - start, 3)
        return sandbox

    def remove(self, container: str) -> None:
        result = self.podman(["rm", "-f", "-t", "0", container], timeout=60)
        if not result.ok and "no such container" not in result.stderr.lower():
            raise InfrastructureError(f"podman rm {container} failed: {result.stderr.strip()}")

    def _labelled(self, filters: Mapping[str, str]) -> list[str]:
        argv = ["ps", "-a", "--format", "{{.Names}}"]
        for key, value in filters.items():
            argv += ["--filter", f"label={key}={value}" if value else f"label={key}"]
        result = self.podman(argv, timeout=30)
        if not result.ok:
            raise InfrastructureError(f"podman ps failed: {result.stderr.strip()}")
        return [line for line in result.stdout.splitlines() if line.strip()]

    def leftovers(self, labels: Mapping[str, str]) -> list[str]:
        return self._labelled(labels)

    def gc(self, run_id: str | None = None) -> list[str]:
        names = self._labelled({LABEL_RUN: run_id or ""})
        for name in names:
            self.remove(name)
        if run_id:
            # A `podman run` killed half-way can leave conmon and the container's init process
            # behind with no container in podman's store for `rm` to find.
            names += [f"{what} (killed)" for what in kill_orphans(f"gpuconform-{run_id}-")]
        return names
