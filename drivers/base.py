"""The adapter contract: what every driver adapter and sandbox provides, and the shared errors.

An adapter is one small module that provisions and tears down one kind of sandbox. Everything
else (which case runs, what is expected, what the verdict is) lives outside the adapters, so a
third-party adapter registered through the ``gpuconform.adapters`` entry point group runs the
whole catalogue without forking.
"""

from __future__ import annotations

import abc
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from gpuconform.drivers import inside
from gpuconform.drivers.errors import (
    Deadline,
    DeadlineExceeded,
    DriverUnavailable,
    HarnessError,
    InfrastructureError,
    RequestRejected,
)
from gpuconform.drivers.inventory import SCHEME_CDI, SCHEME_PCI, GpuRecord, Inventory
from gpuconform.drivers.labels import (
    LABEL_CASE,
    LABEL_HOST,
    LABEL_OWNER,
    LABEL_PREFIX,
    LABEL_RUN,
    LABEL_WORKER,
    LabelledRun,
    host_label,
    merge_runs,
)
from gpuconform.drivers.leases import GpuLeases, Lease
from gpuconform.drivers.profile import Availability, Expectation, OptionKind, OptionSpec, Profile
from gpuconform.drivers.request import GpuRequest
from gpuconform.drivers.selection import Selection, select_gpus
from gpuconform.drivers.simulated import SimulatedHost

PUT_FILE_TIMEOUT_S = 60.0
# Where the harness copies files into a sandbox (probe scripts); every sandbox accepts put_file
# there (the bare host maps it to a private directory).
SANDBOX_SCRATCH = "/tmp/gpuconform"
TimeoutKill = Literal["wrapper", "self"]

__all__ = [  # the contract's values live in drivers.errors, .labels and .profile; importable from here
    "LABEL_CASE",
    "LABEL_HOST",
    "LABEL_OWNER",
    "LABEL_PREFIX",
    "LABEL_RUN",
    "LABEL_WORKER",
    "PUT_FILE_TIMEOUT_S",
    "SANDBOX_SCRATCH",
    "Adapter",
    "AdapterContext",
    "Availability",
    "Deadline",
    "DeadlineExceeded",
    "DriverUnavailable",
    "ExecResult",
    "Expectation",
    "HarnessError",
    "InfrastructureError",
    "LabelledRun",
    "Launch",
    "OptionKind",
    "OptionSpec",
    "Profile",
    "RequestRejected",
    "Sandbox",
    "TimeoutKill",
    "host_label",
    "merge_runs",
    "put_file_argv",
]


@dataclass(frozen=True)
class ExecResult:
    """One command run inside a sandbox. ``exit_code`` is None when it timed out."""

    argv: tuple[str, ...]
    exit_code: int | None
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def to_json(self, limit: int = 4096) -> dict[str, Any]:
        return {
            "argv": list(self.argv),
            "exit_code": self.exit_code,
            "stdout": _trim(self.stdout, limit),
            "stderr": _trim(self.stderr, limit),
            "duration_s": round(self.duration_s, 3),
            "timed_out": self.timed_out,
        }


def _trim(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n...[trimmed {len(text) - limit} of {len(text)} chars]"


@dataclass
class AdapterContext:
    """What an adapter is handed: the ground truth, the leases, the run's labels and options,
    and what a simulated host offers (None on a real host)."""

    inventory: Inventory
    leases: GpuLeases
    run_id: str
    worker: str = "main"
    state_dir: Path = Path("/tmp/gpuconform")
    options: Mapping[str, str] = field(default_factory=dict)
    # What a simulated host offers (fixtures/sim fills it when the inventory is simulated).
    sim: SimulatedHost | None = None
    # This machine as a label value (``host_label()``); "" leaves the host label off.
    host: str = field(default_factory=lambda: host_label())

    @property
    def labels(self) -> dict[str, str]:
        labels = {LABEL_RUN: self.run_id, LABEL_WORKER: self.worker}
        return {**labels, LABEL_HOST: self.host} if self.host else labels


@dataclass(frozen=True)
class Launch:
    """One provision, as the base hands it to an adapter's ``start``: everything already decided.

    ``labels`` are the run's, the cell's and the owner label together (put them on whatever the
    start creates); ``selection`` holds the native ids to hand the engine, the UUIDs they should
    yield and the lease (released by the base when ``start`` raises, and by ``Sandbox.close``);
    ``name`` is a fresh sandbox name that carries the run id (containers use it as their name).
    """

    request: GpuRequest
    image: str
    labels: Mapping[str, str]
    env: Mapping[str, str]
    deadline: Deadline
    selection: Selection
    name: str


def put_file_argv(path: str, size: int, mode: int) -> list[str]:
    """A command that writes exactly ``size`` bytes of stdin to ``path`` (the path is an argument,
    never part of the script). ``head -c`` stops after ``size`` bytes, so it needs no end of file
    on stdin (a Kubernetes v4 exec channel cannot send one)."""
    script = 'mkdir -p "$(dirname "$1")" && head -c "$2" > "$1" && chmod "$3" "$1"'
    return ["sh", "-c", script, "sh", path, str(size), format(mode, "o")]


class Sandbox(abc.ABC):
    """A running container, pod or VM with an exec channel.

    The base owns what every sandbox shares: its identity (``id``, ``driver``, ``request``,
    ``granted``, ``labels``, ``versions``, ``timings``), the ExecResult of a command named by the
    caller's argv, ``put_file`` (through the exec channel, data on stdin), and an idempotent
    ``close`` that runs the subclass's ``teardown`` once, then releases the lease and records
    ``teardown_s``, even when the teardown raises (so a reaper can call it after any failure).
    A subclass writes ``raw_exec`` and ``teardown``, and overrides ``put_file`` only where the
    engine has a better channel (an archive upload, SFTP).

    ``granted`` is the set of UUIDs the request should yield, when the harness knows it before
    looking (it chose or named the GPUs); None when the driver chose (kubernetes), in which case
    cases judge by count and inventory membership.
    """

    # How a command that times out is stopped inside. "wrapper": ``exec`` runs it under a shell
    # wrapper that records its pid in the scratch dir and, on timeout, runs a second short command
    # that kills that pid with its whole tree (drivers/inside.py; needs a POSIX sh and /proc, as
    # ``put_file`` needs sh). "self": ``raw_exec`` kills everything it started by itself on timeout
    # (the bare host's process group), or starts nothing (a table-driven test double).
    timeout_kill: ClassVar[TimeoutKill] = "wrapper"
    # Set when a kill got no answer in time (a frozen engine): later timeouts in this sandbox do
    # not wait for another kill that cannot be answered either.
    _kill_unanswered: bool = False

    def __init__(self, adapter: Adapter, launch: Launch, sandbox_id: str = "") -> None:
        self.adapter = adapter
        self.id = sandbox_id or launch.name
        self.driver = adapter.name
        self.request = launch.request
        self.granted: frozenset[str] | None = launch.selection.granted
        self.labels: dict[str, str] = dict(launch.labels)
        self.versions: dict[str, str] = dict(adapter.versions)
        self.timings: dict[str, float] = {}
        self._lease: Lease = launch.selection.lease
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @abc.abstractmethod
    def raw_exec(self, argv: Sequence[str], *, timeout: float, stdin: bytes | None = None) -> ExecResult:
        """Run ``argv`` inside by the engine's own means (``stdin`` fed to it when given); the
        result may name the engine's wrapper command, ``exec`` renames it."""

    @abc.abstractmethod
    def teardown(self) -> None:
        """Remove what ``start`` created (called once, by ``close``); raise when something stays."""

    def exec(self, argv: Sequence[str], *, timeout: float) -> ExecResult:
        """Run ``argv`` inside, under ``timeout``. A command that times out is killed inside too,
        with everything it started (``timeout_kill``); the result says what the kill found."""
        if self.timeout_kill != "wrapper" or not argv:
            raw = self.raw_exec(argv, timeout=timeout)
            return ExecResult(
                tuple(argv), raw.exit_code, raw.stdout, raw.stderr, raw.duration_s, raw.timed_out
            )
        pidfile = inside.pid_file(SANDBOX_SCRATCH)
        raw = self.raw_exec(inside.wrapped(argv, pidfile), timeout=timeout)
        stderr = raw.stderr
        if raw.timed_out:
            note = self._kill_inside(pidfile).note
            stderr = f"{stderr.rstrip()}\n{note}" if stderr.strip() else note
        return ExecResult(tuple(argv), raw.exit_code, raw.stdout, stderr, raw.duration_s, raw.timed_out)

    def _kill_inside(self, pidfile: str) -> inside.KillReport:
        """Kill what the wrapper recorded in ``pidfile``, under its own short deadline. Best
        effort: an engine that fails now (frozen, gone) is reported, never raised over the
        timed-out result the caller is waiting for."""
        if self._kill_unanswered:
            return inside.KillReport(problem="not tried: an earlier kill in this sandbox got no answer")
        try:
            kill = self.raw_exec(inside.killer(pidfile), timeout=inside.KILL_TIMEOUT_S)
        except Exception as exc:  # any engine's failure: the report names it
            return inside.KillReport(problem=f"the kill command could not run: {exc}"[:300])
        self._kill_unanswered = kill.timed_out
        return inside.read_report(kill.exit_code, kill.stdout, kill.stderr, kill.timed_out)

    def put_file(self, path: str, data: bytes, mode: int = 0o755) -> None:
        """Write ``data`` to ``path`` inside (parents made), through the exec channel's stdin."""
        argv = put_file_argv(path, len(data), mode)
        result = self.raw_exec(argv, timeout=PUT_FILE_TIMEOUT_S, stdin=data)
        if not result.ok:
            raise InfrastructureError(
                f"copying {len(data)} bytes to {path} in {self.driver} sandbox {self.id} failed "
                f"(exit {result.exit_code}, timed out: {result.timed_out}): {result.stderr.strip()[:200]}",
                hint="the image needs sh, head, mkdir and chmod",
            )

    def close(self) -> None:
        """Tear down once; idempotent, and safe to call from a reaper after a failure."""
        if self._closed:
            return
        self._closed = True
        start = time.monotonic()
        try:
            self.teardown()
        finally:
            self._lease.release()
            self.timings["teardown_s"] = round(time.monotonic() - start, 3)

    @property
    def console_log(self) -> str | None:
        """The sandbox's console (a VM's serial console), kept after close; None: it has none."""
        return None

    def diagnostics(self) -> dict[str, Any]:
        """What the engine can say about this sandbox when a case on it fails (a pod's events and
        logs); empty where it has nothing beyond the commands' own output."""
        return {}

    def reload_event(self, *, timeout: float) -> tuple[str, str]:
        """Trigger the driver's "reload" event while this sandbox runs (lifecycle.persist: a
        systemd daemon-reload that rewrites running containers' device rules, failure class 14).
        ``(status, text)``: ``done`` (what ran), ``skip`` (why not here, e.g. a real host without
        ``<driver>.allow_reload=1``) or ``unsupported``; drivers/reload.py holds the helpers."""
        return self.adapter.reload_event(self, timeout=timeout)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Adapter(abc.ABC):
    """One kind of sandbox. A subclass sets ``name`` (and ``id_scheme``), and writes ``profile``,
    ``available``, ``start``, ``leftovers`` and ``gc``; the rest has defaults it may override.

    ``provision`` is written once, here: it selects GPUs (``select``: leases, native ids), hands
    the subclass's ``start`` a ``Launch``, releases the lease when the start raises, and records
    ``provision_s``. Requests arrive validated (the cell validates them before asking).
    """

    name: str = ""
    id_scheme: str = ""
    # Whether the harness leases the GPUs it selects (disjoint sandboxes). Only an observer that
    # isolates nothing (the bare host) sets it False: it must see GPUs other sandboxes hold.
    leases_gpus: bool = True
    # What one provision costs next to a container's (a scheduling hint for parallel runs: the
    # heavy units start first, so a run does not end waiting on one worker's VM boots).
    provision_weight: float = 1.0
    # Whether ``provision`` may run in several threads at once, so a case that needs several
    # sandboxes starts them together (Cell.own_all). Worth it where a start is slow (a VM boot)
    # and safe only where the adapter's shared state is guarded by locks; off by default.
    concurrent_starts: bool = False
    # Whether /dev/nvidiaN inside is the host's node (containers bind the host's nodes). A VM's
    # guest driver numbers its own, so smi.nodes can only hold it to the count.
    node_minors_follow_host: bool = True
    # The ``--driver-opt`` keys this adapter reads (full keys, ``"<driver>.<key>"``), each with
    # what it accepts; a key given for this driver and not declared here is refused before the
    # run starts. ``image.<kind>`` and ``sim.*`` belong to the harness, not to an adapter.
    OPTIONS: ClassVar[Mapping[str, OptionSpec]] = {}

    def __init__(self, ctx: AdapterContext) -> None:
        self.ctx = ctx
        self.versions: dict[str, str] = {}  # filled by ``available``; each sandbox copies it

    # -- what a subclass writes ---------------------------------------------------------------
    @property
    @abc.abstractmethod
    def profile(self) -> Profile: ...

    @abc.abstractmethod
    def available(self) -> Availability: ...

    @abc.abstractmethod
    def start(self, launch: Launch) -> Sandbox:
        """Create and start the sandbox of ``launch``; raise RequestRejected when the engine
        refuses the request. A start that fails half-way undoes what it created before raising
        (the base then releases the lease)."""

    @abc.abstractmethod
    def leftovers(self, labels: Mapping[str, str]) -> list[str]:
        """Resources carrying all of ``labels`` that still exist, one line each (``count.over``
        and every rejection check that nothing was left behind). An adapter that creates nothing
        returns [] and says so in its docstring."""

    @abc.abstractmethod
    def gc(self, run_id: str | None = None) -> list[str]:
        """Remove resources labelled by the harness (one run's, or every run's); return what went.
        The reaper calls it for every registered adapter, with a context holding no GPUs. Raise
        DriverUnavailable when nothing answers at the engine's address (nothing to collect), any
        other error when the engine answers with one or times out (a removal that failed)."""

    @abc.abstractmethod
    def labelled_runs(self) -> list[LabelledRun]:
        """Every run that has resources on this adapter's engine (containers, pods, VM processes),
        read from their ``dev.gpuconform.run`` / ``.host`` labels (``merge_runs``), so that
        ``gpuconform gc`` can reap runs whose run folder is gone. Raise DriverUnavailable when
        the engine is not here, as ``gc``."""

    # -- the one provision preamble -----------------------------------------------------------
    def provision(
        self,
        req: GpuRequest,
        *,
        image: str,
        labels: Mapping[str, str],
        deadline: Deadline,
        env: Mapping[str, str] | None = None,
    ) -> Sandbox:
        """Start a sandbox for ``req``; RequestRejected when the driver refuses it."""
        start = time.monotonic()
        selection = self.select(req, deadline)
        launch = Launch(
            request=req,
            image=image,
            labels={**self.ctx.labels, **labels, LABEL_OWNER: "gpuconform"},
            env=dict(env or {}),
            deadline=deadline,
            selection=selection,
            name=self.sandbox_name(),
        )
        try:
            sandbox = self.start(launch)
        except BaseException:
            selection.release()
            raise
        sandbox.timings.setdefault("provision_s", round(time.monotonic() - start, 3))
        return sandbox

    def select(self, req: GpuRequest, deadline: Deadline) -> Selection:
        """Which GPUs ``req`` gets and under which native ids: leased free GPUs (lowest index
        first) for a default or count request, the request's own ids passed through for the
        engine to judge (and leased when the inventory knows them). RequestRejected for a count
        beyond the host. Override for an engine with its own allocator or id forms."""
        all_ids = self.all_ids()
        return select_gpus(
            self.ctx,
            req,
            self.id_scheme,
            deadline,
            all_id=all_ids[0] if all_ids else None,
            leased=self.leases_gpus,
            inventory=self.id_inventory(),
        )

    def sandbox_name(self) -> str:
        """A fresh name carrying the run id (a valid container name: ``[a-zA-Z0-9][a-zA-Z0-9_.-]*``)."""
        safe = re.sub(r"[^a-zA-Z0-9_.-]", "-", self.ctx.run_id).strip("-_.") or "run"
        return f"gpuconform-{safe[:40]}-{secrets.token_hex(3)}"

    # -- native ids ---------------------------------------------------------------------------
    def id_inventory(self) -> Inventory:
        """The host's GPUs under the native ids this adapter uses: the run's inventory, or one
        whose ids were learnt from the engine's own configuration (CDI specs)."""
        return self.ctx.inventory

    def native_ids(self, gpu: GpuRecord) -> list[str]:
        """The ids this driver selects ``gpu`` with, taken from the inventory (never hard-coded);
        none when the adapter's id inventory does not name it."""
        named = self.id_inventory().by_uuid(gpu.uuid)
        return list(named.ids(self.id_scheme)) if named is not None else []

    def all_ids(self) -> list[str] | None:
        """The driver's single "all GPUs" id (CDI ``=all``), or None where it has none."""
        return None

    def unknown_id(self) -> str:
        """A well-formed native id that names no GPU of this host (for ``device.invalid``)."""
        beyond = len(self.ctx.inventory.gpus) + 7
        if self.id_scheme == SCHEME_CDI:
            return f"{self.ctx.inventory.cdi_kind}={beyond}"
        if self.id_scheme == SCHEME_PCI:
            return "0000:ff:1f.7"
        return str(beyond)

    # -- optional hooks, with defaults that hide nothing --------------------------------------
    def image(self, kind: str, *, deadline: Deadline) -> str:
        """The image reference this adapter runs for image kind ``kind`` (``busybox``,
        ``python``, ...): an ``image.<kind>`` option, else the adapter's own (``local_image``)."""
        return self.ctx.options.get(f"image.{kind}") or self.local_image(kind, deadline)

    def local_image(self, kind: str, deadline: Deadline) -> str:
        """The adapter's own image for ``kind`` (built or named). The default has none: an adapter
        that runs images says which, so no driver is handed a guessed name."""
        raise InfrastructureError(
            f"the {self.name} adapter names no image for {kind!r}",
            hint=f"pass --image {kind}=REF, or give the adapter a local_image",
        )

    def ground_truth(self, *, image: str = "", deadline: Deadline | None = None) -> Inventory | None:
        """The inventory this column is judged against when it is not the run's own (a cluster's
        GPU nodes are not the runner's GPUs); None, the default, means the run's inventory."""
        return None

    def reload_event(self, sandbox: Sandbox, *, timeout: float) -> tuple[str, str]:
        """The driver's reload event (drivers/reload.py); default: none declared."""
        return ("unsupported", f"{self.name} declares no reload event that could revoke a sandbox's GPU")

    def release_problems(self, sandbox: Sandbox) -> list[str]:
        """What the closed ``sandbox`` left behind (``release``): by default, whatever still
        carries its labels. An adapter whose sandboxes hold more than labelled resources (VFIO
        bindings) adds those."""
        return self.leftovers(sandbox.labels)

    def diagnostics(self, error: BaseException, sandboxes: Sequence[Sandbox] = ()) -> dict[str, Any]:
        """What to keep in the evidence about a failed cell: what the error carries (an engine's
        dump taken when it failed) and each sandbox's own ``diagnostics``."""
        found: dict[str, Any] = dict(error.diagnostics) if isinstance(error, HarnessError) else {}
        for sandbox in sandboxes:
            more = sandbox.diagnostics()
            if more:
                found[sandbox.id] = more
        return found
