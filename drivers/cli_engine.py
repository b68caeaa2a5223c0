"""A container engine driven through its command line (podman, nerdctl, docker's CLI).

Such engines share one shape: ``run -d --name --label --device --env IMAGE sleep``, ``exec -i``,
``rm -f``, ``ps -a --filter label=... --format {{.Names}}``, and CDI device names they resolve
from the spec directories themselves. ``CliEngineAdapter`` holds that shape once, so an adapter
for another CLI engine writes its ``name``, its ``profile`` and its ``available`` (versions),
and overrides a verb only where its CLI differs (drivers/podman.py is the model).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import ClassVar

from gpuconform.drivers.base import Adapter, AdapterContext, ExecResult, Launch, Sandbox
from gpuconform.drivers.errors import DriverUnavailable, InfrastructureError, RequestRejected
from gpuconform.drivers.inventory import SCHEME_CDI, Inventory, learnt_cdi_inventory
from gpuconform.drivers.labels import LABEL_RUN, LabelledRun, merge_runs
from gpuconform.drivers.orphans import kill_orphans
from gpuconform.drivers.subproc import run_command

KEEPALIVE = ("sleep", "2147483647")
CDI_HINT = "nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml, or --driver-opt cdi.dirs=DIR"


def raise_for_start(result: ExecResult, engine: str, rejection_markers: Sequence[str] = ()) -> None:
    """Turn a failed engine command into the harness's error: a timeout or any other failure is
    the engine's (InfrastructureError), a missing binary makes the driver unavailable, and only
    a refusal the engine names (one of ``rejection_markers`` in stderr) rejects the request."""
    if result.ok:
        return
    lines = (result.stderr or result.stdout).strip().splitlines()
    text = lines[-1] if lines else f"exit {result.exit_code}"
    if result.timed_out:
        raise InfrastructureError(f"{engine} run timed out after {result.duration_s:.0f}s")
    if result.exit_code == 127:
        raise DriverUnavailable(f"{engine} is not installed")
    if any(marker in result.stderr for marker in rejection_markers):
        raise RequestRejected(f"{engine} refused the devices: {text}")
    raise InfrastructureError(f"{engine} run failed (exit {result.exit_code}): {text}")


def _labels(value: object) -> dict[str, str]:
    """Labels as ``ps --format json`` gives them: an object, or docker's ``k=v,k=v`` string."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, str):
        return dict(part.split("=", 1) for part in value.split(",") if "=" in part)
    return {}


def _created(value: object) -> float:
    """Creation time in epoch seconds where ``ps`` gives a number (podman); 0.0 where it does not."""
    return float(value) if isinstance(value, (int, float)) else 0.0


class CliSandbox(Sandbox):
    """One container of a CLI engine, named ``launch.name``."""

    adapter: CliEngineAdapter

    def raw_exec(self, argv: Sequence[str], *, timeout: float, stdin: bytes | None = None) -> ExecResult:
        interactive = ["-i"] if stdin is not None else []
        return self.adapter.cli(["exec", *interactive, self.id, *argv], timeout=timeout, input_data=stdin)

    def teardown(self) -> None:
        self.adapter.remove(self.id)


class CliEngineAdapter(Adapter):
    """Containers with CDI device names through an engine's CLI; every call has a timeout and
    every container carries the launch's labels, so ``leftovers`` and ``gc`` find them."""

    id_scheme = SCHEME_CDI
    default_binary: ClassVar[str] = ""  # the executable; ``<name>.binary`` overrides it
    rejection_markers: ClassVar[tuple[str, ...]] = ()  # stderr texts that mean "refused the devices"
    remove_args: ClassVar[tuple[str, ...]] = ("rm", "-f")
    not_found_marker: ClassVar[str] = "no such container"

    def __init__(self, ctx: AdapterContext) -> None:
        super().__init__(ctx)
        self.binary = ctx.options.get(f"{self.name}.binary") or self.default_binary or self.name
        self._learnt: Inventory | None = None
        self._cdi_summary = ""

    def cli(self, args: Sequence[str], *, timeout: float, input_data: bytes | None = None) -> ExecResult:
        return run_command([self.binary, *args], timeout=timeout, input_data=input_data)

    # -- CDI names ------------------------------------------------------------------------------
    def id_inventory(self) -> Inventory:
        """The host's GPUs with the CDI names the specs give them (read once per adapter)."""
        if self._learnt is None:
            self._learnt, self._cdi_summary = learnt_cdi_inventory(self.ctx.inventory, self.ctx.options)
        self.versions["cdi"] = self._cdi_summary  # kept when ``available`` sets the versions anew
        return self._learnt

    def all_ids(self) -> list[str] | None:
        """The spec's ``all`` device when it has one that injects every GPU; else no all form."""
        all_id = self.id_inventory().cdi_all_id
        return [all_id] if all_id else None

    def cdi_problem(self) -> str:
        """Why no GPU of this host can be named (a reason for ``available``), or ''."""
        learnt = self.id_inventory()
        if any(g.ids(SCHEME_CDI) for g in learnt.gpus):
            return ""
        return (
            f"no CDI spec of kind {learnt.cdi_kind} names a GPU of this host "
            f"({self.versions['cdi']}) (hint: {CDI_HINT})"
        )

    # -- containers -----------------------------------------------------------------------------
    def start(self, launch: Launch) -> Sandbox:
        argv = ["run", "-d", "--name", launch.name]
        for key, value in launch.labels.items():
            argv += ["--label", f"{key}={value}"]
        for device_id in launch.selection.ids:
            argv += ["--device", device_id]
        for key, value in launch.env.items():
            argv += ["--env", f"{key}={value}"]
        if self.ctx.options.get(f"{self.name}.privileged") == "1":
            # A privileged sandbox gets every host device node: what the GPU cases must catch (the
            # option exists to prove they do; failure class 2 of research/failure-classes.md).
            argv.append("--privileged")
        result = self.cli([*argv, launch.image, *KEEPALIVE], timeout=launch.deadline.cap(120))
        if not result.ok:
            self.remove(launch.name)
            raise_for_start(result, self.name, self.rejection_markers)
        return CliSandbox(self, launch)

    def remove(self, container: str) -> None:
        result = self.cli([*self.remove_args, container], timeout=60)
        if result.exit_code == 127:
            raise DriverUnavailable(f"{self.binary} is not installed")
        if not result.ok and self.not_found_marker not in result.stderr.lower():
            raise InfrastructureError(f"{self.name} rm {container} failed: {result.stderr.strip()}")

    def labelled(self, filters: Mapping[str, str]) -> list[str]:
        """Names of the containers carrying every label of ``filters`` (an empty value: any)."""
        argv = ["ps", "-a", "--format", "{{.Names}}"]
        for key, value in filters.items():
            argv += ["--filter", f"label={key}={value}" if value else f"label={key}"]
        return [line for line in self._ps(argv).stdout.splitlines() if line.strip()]

    def _ps(self, argv: Sequence[str]) -> ExecResult:
        result = self.cli(argv, timeout=30)
        if result.exit_code == 127:
            raise DriverUnavailable(f"{self.binary} is not installed")
        if not result.ok:
            raise InfrastructureError(f"{self.name} ps failed: {result.stderr.strip()}")
        return result

    def leftovers(self, labels: Mapping[str, str]) -> list[str]:
        return self.labelled(labels)

    def labelled_runs(self) -> list[LabelledRun]:
        result = self._ps(["ps", "-a", "--filter", f"label={LABEL_RUN}", "--format", "json"])
        text = result.stdout.strip()
        try:  # podman prints one array, nerdctl and docker one object a line
            entries = json.loads(text) if text.startswith("[") else [json.loads(x) for x in text.splitlines()]
        except ValueError:
            raise InfrastructureError(
                f"{self.name} ps --format json printed something that is not JSON"
            ) from None
        return merge_runs((_labels(e.get("Labels")), _created(e.get("Created"))) for e in entries)

    def gc(self, run_id: str | None = None) -> list[str]:
        names = self.labelled({LABEL_RUN: run_id or ""})
        for name in names:
            self.remove(name)
        if run_id:
            # A `run` killed half-way can leave its monitor (podman's conmon) and the container's
            # init process behind with no container in the store for `rm` to find.
            names += [f"{what} (killed)" for what in kill_orphans(f"gpuconform-{run_id}-")]
        return names
