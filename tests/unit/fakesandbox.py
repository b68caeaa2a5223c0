"""A fake GPU stack for the judges' unit tests: sandboxes that answer from a table, no engine.

The judges (conformance/observe.py, conformance/compute.py, fixtures/cell.py's rejection logic,
fixtures/outcomes.py) only ever see a sandbox through ``exec``: nvidia-smi's output and exit
code, the ``/dev`` listing, the probe's JSON document, or an engine's refusal. ``FakeAdapter``
provisions ``FakeSandbox``es whose answers are built the way the simulated host builds them
(fixtures/sim/simgpu/faults.py: the faults act on which GPUs a request's entries inject), and a
``Shape`` can replace any answer with a field shape from the failure-class survey
(../shared/research/failure-classes.md): NVML errors, a binary that cannot execute, a node leak.

``run_case`` runs the real suite function of a catalogue case on a real ``Cell`` and returns the
verdict and reason exactly as the plugin would record them (CaseOutcome, else exception_verdict).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from gpuconform.conformance import test_compute, test_counts, test_device_ids, test_isolation, test_visibility
from gpuconform.conformance.catalogue import BY_ID
from gpuconform.drivers.base import (
    Adapter,
    AdapterContext,
    Availability,
    Deadline,
    ExecResult,
    InfrastructureError,
    LabelledRun,
    Launch,
    Profile,
    RequestRejected,
    Sandbox,
)
from gpuconform.drivers.inventory import SCHEME_LEGACY, GpuRecord, Inventory
from gpuconform.drivers.leases import GpuLeases, Lease
from gpuconform.drivers.request import GpuRequest
from gpuconform.drivers.selection import Selection
from gpuconform.fixtures.cell import CaseOutcome, Cell
from gpuconform.fixtures.outcomes import exception_verdict
from gpuconform.fixtures.runtime import SandboxCache
from gpuconform.fixtures.sim.simgpu.profiles import foreign_uuid, get_profile
from gpuconform.reports.evidence import Verdict
from gpuconform.workloads.compute_judge import DEFAULT_THRESHOLDS

SUITES = (test_visibility, test_counts, test_device_ids, test_isolation, test_compute)
CASES: dict[str, Callable[[Cell], None]] = {
    fn._gpuconform_case.id: fn
    for suite in SUITES
    for fn in vars(suite).values()
    if callable(fn) and hasattr(fn, "_gpuconform_case")
}
_IDS = itertools.count(1)

# Texts verbatim from the failure-class survey (section E) and nvidia-smi.
NVML_UNKNOWN = "Failed to initialize NVML: Unknown Error"
NVML_MISMATCH = "Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 580.95"
NVML_NO_PERMISSION = "Failed to initialize NVML: Insufficient Permissions"
NOT_FOUND_IN_PATH = (
    'exec: "nvidia-smi": executable file not found in $PATH: unknown'  # runc via podman/docker
)
PERMISSION_DENIED = "exec /usr/bin/nvidia-smi: permission denied"  # present, mode 0644


def inventory(profile: str = "h100x4", *, simulated: bool = True) -> Inventory:
    """The simulated host's own inventory records (same names, UUIDs, minors and ids)."""
    return Inventory(
        host="fakehost",
        gpus=get_profile(profile).records("sim.gpuconform.dev/fake"),
        simulated=simulated,
        source=f"sim:{profile}",
        cdi_kind="sim.gpuconform.dev/fake",
    )


@dataclass(frozen=True)
class Answer:
    """One command's result: what ``exec`` returns for an argv the table matches."""

    exit_code: int | None
    stdout: str = ""
    stderr: str = ""
    killed: bool = False  # no exit status, but not a timeout either (a signal)

    def result(self, argv: Sequence[str]) -> ExecResult:
        timed_out = self.exit_code is None and not self.killed
        return ExecResult(tuple(argv), self.exit_code, self.stdout, self.stderr, 0.0123, timed_out)


@dataclass(frozen=True)
class Shown:
    """What one sandbox shows, before it is turned into answers.

    ``listed`` are (name, uuid) pairs nvidia-smi lists; ``lost`` is set when a visible GPU has
    fallen off the bus (nvidia-smi exits 15 as the simulator's does); ``cuda_dead`` when a visible
    GPU's CUDA is unusable (the probe reports the init error).
    """

    listed: tuple[tuple[str, str], ...]
    rows: tuple[GpuRecord, ...]
    nodes: frozenset[int]
    lost: GpuRecord | None = None
    cuda_dead: bool = False


@dataclass
class Shape:
    """Overrides of a sandbox's answers: a field shape the simulator does not make.

    Keys of ``answers`` are argv prefixes (joined by spaces); the first match wins over the
    answers built from ``Shown``.
    """

    answers: dict[str, Answer] = field(default_factory=dict)
    extra_nodes: frozenset[int] = frozenset()
    probe: Mapping[str, Any] | str | None = None  # a document, raw stdout, or None for the built one
    bandwidth: float = 1.0  # the sandbox's copy speed as a fraction of the host's


def smi_list(listed: Iterable[tuple[str, str]]) -> str:
    lines = [f"GPU {i}: {name} (UUID: {uuid})" for i, (name, uuid) in enumerate(listed)]
    return "\n".join(lines) + "\n" if lines else "No devices found.\n"


def smi_query(rows: Sequence[GpuRecord], listed: Sequence[tuple[str, str]]) -> str:
    """``--query-gpu`` CSV (noheader, nounits) in QUERY_FIELDS order, UUIDs as nvidia-smi lists them."""
    if not rows:
        return "No devices were found\n"
    out = []
    for i, (gpu, (_, uuid)) in enumerate(zip(rows, listed, strict=True)):
        bus = "0000" + gpu.pci_bus_id.upper()
        out.append(f"{i}, {uuid}, {gpu.name}, {bus}, {gpu.memory_total_mib}, {gpu.driver_version}")
    return "\n".join(out) + "\n"


def ls_dev(minors: Iterable[int]) -> str:
    names = ["console", "null", "nvidia-uvm", "nvidiactl", "shm", "zero"]
    return "\n".join(sorted(names + [f"nvidia{m}" for m in minors])) + "\n"


def probe_doc(
    uuids: Sequence[str],
    *,
    simulated: bool = True,
    cuda_error: str | None = None,
    check_ok: bool = True,
    gbps: float = 50.0,
) -> dict[str, Any]:
    """The compute probe's document (workloads/cuda_probe.py's shape) for these visible GPUs."""
    ok = cuda_error is None

    def figure(v: float) -> dict[str, Any]:
        return {"median": v, "spread": 0.01, "samples": [v]}

    devices = [
        {
            "ordinal": i,
            "uuid": uuid,
            "name": "NVIDIA H100 80GB HBM3",
            "checks": {
                "vectoradd": {
                    "ok": check_ok,
                    "n": 1024,
                    "max_abs_err": 0.0 if check_ok else 2.0,
                    "mismatches": 0 if check_ok else 7,
                    "error": None,
                },
                "matmul": {
                    "ok": check_ok,
                    "n": 512,
                    "max_rel_err": 1e-7 if check_ok else 0.5,
                    "tolerance": 1e-3,
                    "error": None,
                },
            },
            "bandwidth": {
                "error": None,
                "h2d_gbps": figure(gbps),
                "d2h_gbps": figure(gbps),
                "d2d_gbps": figure(gbps * 60),
            },
        }
        for i, uuid in enumerate(uuids)
    ]
    return {
        "probe_version": 1,
        "mode": "simulated" if simulated else "cupy",
        "simulated": simulated,
        "cuda": {"ok": ok, "error": cuda_error, "device_count": len(uuids) if ok else 0},
        "devices": devices if ok else [],
        "errors": [] if ok else [cuda_error],
    }


class FakeSandbox(Sandbox):
    """A sandbox whose ``exec`` answers from a table; an unscripted command is a test bug."""

    adapter: FakeAdapter
    timeout_kill = "self"  # answers from a table: nothing runs inside to kill

    def __init__(self, adapter: FakeAdapter, launch: Launch, table: Sequence[tuple[str, Answer]]) -> None:
        super().__init__(adapter, launch, f"fake-{next(_IDS)}")
        self.versions = {"fake": "1"}
        self.timings["provision_s"] = 0.25
        self.table = list(table)
        self.holds = frozenset(g.uuid for g in launch.selection.lease.gpus)
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, int] = {}
        self.timeouts: list[float] = []
        self.closes = 0

    @property
    def console_log(self) -> str | None:
        return self.adapter.console

    def raw_exec(self, argv: Sequence[str], *, timeout: float, stdin: bytes | None = None) -> ExecResult:
        assert not self.closed, f"exec in closed sandbox {self.id}: {list(argv)}"
        self.timeouts.append(timeout)
        line = " ".join(argv)
        for prefix, answer in self.table:
            if line.startswith(prefix):
                return answer.result(argv)
        raise AssertionError(f"the fake sandbox has no answer for {list(argv)}")

    def put_file(self, path: str, data: bytes, mode: int = 0o755) -> None:
        self.files[path] = data
        self.modes[path] = mode

    def close(self) -> None:
        """Counted; a scripted ``close_error`` fails every close while it is set (a stuck engine)."""
        self.closes += 1
        if self.adapter.close_error:
            raise InfrastructureError(f"{self.id}: {self.adapter.close_error}")
        super().close()
        if self.adapter.teardown_timing:
            self.timings["teardown_s"] = 0.5
        else:
            self.timings.pop("teardown_s", None)

    def teardown(self) -> None:
        if not self.adapter.keep_on_close:
            self.adapter.taken -= self.holds


Fault = tuple[str, int]


class FakeAdapter(Adapter):
    """A driver that injects GPUs the way the simulated host does, faults included.

    Selection: a default or count request takes the lowest free GPUs; ids are the legacy scheme's
    (index or UUID); a request beyond the free GPUs is refused with RequestRejected. ``faults``
    are the simulator's (``("wrong-gpu", 1)``), acting on the GPUs a request selects; ``shape``
    overrides answers for every sandbox (``shape_for`` per request shape).
    """

    name = "fake"
    id_scheme = SCHEME_LEGACY

    def __init__(
        self,
        inv: Inventory,
        *,
        faults: Sequence[Fault] = (),
        shape: Shape | None = None,
        shape_for: Mapping[str, Shape] | None = None,
        profile: Profile | None = None,
        accept_everything: bool = False,
        left_behind: Sequence[str] = (),
        refusal: Callable[[GpuRequest], str] | None = None,
        always_hook: bool = False,
        granted_known: bool = True,
        python: bool = True,
        share_gpus: bool = False,
        refuse_ids: bool = False,
        keep_on_close: bool = False,
        all_ids: list[str] | None = None,
        console: str | None = None,
        close_error: str | None = None,
        teardown_timing: bool = True,
    ) -> None:
        super().__init__(
            AdapterContext(
                inventory=inv, leases=GpuLeases(Path("/nonexistent/leases")), run_id="unit", host=""
            )
        )
        self.inv = inv
        self.faults = list(faults)
        self.shape = shape or Shape()
        self.shape_for = dict(shape_for or {})
        self._profile = profile or Profile("fake")
        self.accept_everything = accept_everything
        self.left_behind = list(left_behind)
        self.refusal = refusal
        self.always_hook = always_hook
        self.granted_known = granted_known
        self.python = python
        self.share_gpus = share_gpus
        self.refuse_ids = refuse_ids
        self.keep_on_close = keep_on_close
        self._all_ids = all_ids
        self.console = console
        self.close_error = close_error
        self.teardown_timing = teardown_timing
        self.leftover_queries: list[dict[str, str]] = []
        self.provisions: list[dict[str, Any]] = []
        self.taken: frozenset[str] = frozenset()
        self.provisioned: list[FakeSandbox] = []

    @property
    def profile(self) -> Profile:
        return self._profile

    def available(self) -> Availability:
        return Availability(True)

    def all_ids(self) -> list[str] | None:
        return self._all_ids

    def leftovers(self, labels: Mapping[str, str]) -> list[str]:
        self.leftover_queries.append(dict(labels))
        return list(self.left_behind)

    def gc(self, run_id: str | None = None) -> list[str]:
        return []  # creates nothing outside this process

    def labelled_runs(self) -> list[LabelledRun]:
        return []

    # -- selection -----------------------------------------------------------------------------

    def _chosen(self, req: GpuRequest) -> list[GpuRecord]:
        gpus = list(self.inv.gpus)
        if req.device_ids:
            if self.refuse_ids:
                raise RequestRejected(f"{self.name} has no device ids; use a count")
            if self._all_ids and list(req.device_ids) == self._all_ids:
                return gpus
            chosen = []
            for native in req.device_ids:
                gpu = self.inv.resolve(SCHEME_LEGACY, native)
                if gpu is None and self.accept_everything:
                    gpu = gpus[0]
                if gpu is None:
                    message = self.refusal(req) if self.refusal else f"unknown device {native!r}"
                    raise RequestRejected(message)
                if gpu.uuid in self.taken and not self.share_gpus:
                    raise RequestRejected(f"GPU {native} is in use by another sandbox")
                chosen.append(gpu)
            return chosen
        free = [g for g in gpus if self.share_gpus or g.uuid not in self.taken]
        if req.wanted > len(free) and not self.accept_everything:
            raise RequestRejected(
                self.refusal(req) if self.refusal else f"{req.wanted} GPU(s) requested, {len(free)} free"
            )
        return free[: req.wanted]

    def _inject(self, chosen: Sequence[GpuRecord]) -> tuple[list[GpuRecord], dict[str, str], set[int]]:
        """What the entries selecting ``chosen`` inject: GPUs, UUID rewrites, extra nodes."""
        by_index = {g.index: g for g in self.inv.gpus}
        n = len(self.inv.gpus)
        injected: list[GpuRecord] = []
        rewrites: dict[str, str] = {}
        extra_nodes: set[int] = set()
        for gpu in chosen:
            kinds = {kind for kind, index in self.faults if index == gpu.index}
            following = by_index[(gpu.index + 1) % n]
            if "missing-gpu" in kinds:
                continue
            if "wrong-gpu" in kinds:
                injected.append(following)
                continue
            injected.append(gpu)
            if "extra-gpu" in kinds:
                injected.append(following)
            if "extra-node" in kinds:
                extra_nodes.add(following.minor)
        for gpu in injected:
            if ("uuid-mismatch", gpu.index) in self.faults:
                rewrites[gpu.uuid] = foreign_uuid(gpu.uuid)
        unique = list({g.uuid: g for g in sorted(injected, key=lambda g: g.index)}.values())
        return unique, rewrites, extra_nodes

    def shown(self, chosen: Sequence[GpuRecord]) -> tuple[Shown, set[int]]:
        injected, rewrites, extra_nodes = self._inject(chosen)
        listed = tuple((g.name, rewrites.get(g.uuid, g.uuid)) for g in injected)
        lost = next((g for g in injected if ("fallen-off-bus", g.index) in self.faults), None)
        dead = any(("cuda-unusable", g.index) in self.faults for g in injected)
        return Shown(listed, tuple(injected), frozenset(g.minor for g in injected), lost, dead), extra_nodes

    def table(self, shown: Shown, extra_nodes: set[int], shape: Shape) -> list[tuple[str, Answer]]:
        listed = shown.listed
        if shown.lost is not None:
            bus = shown.lost.pci_bus_id.upper()
            lost = Answer(
                15,
                "",
                f"Unable to determine the device handle for GPU{bus}: {bus}: GPU is lost.  "
                "Reboot the system to recover this GPU\n",
            )
            smi_l: Answer = lost
            smi_q: Answer = lost
        else:
            smi_l = Answer(0, smi_list(listed))
            smi_q = Answer(0, smi_query(shown.rows, listed))
        uuids = [uuid for _, uuid in listed]
        if isinstance(shape.probe, str):
            probe = Answer(0, shape.probe)
        else:
            document = shape.probe or probe_doc(
                uuids,
                simulated=self.inv.simulated,
                cuda_error="cudaErrorNoDevice: no CUDA-capable device is detected"
                if not uuids
                else ("CUDA_ERROR_UNKNOWN (999)" if shown.cuda_dead else None),
                gbps=50.0 * shape.bandwidth,
            )
            probe = Answer(0, json.dumps(document))
        if not self.python:
            probe = Answer(127, "", 'exec: "python3": executable file not found in $PATH')
        nodes = set(shown.nodes) | extra_nodes | set(shape.extra_nodes)
        return [
            *shape.answers.items(),
            ("nvidia-smi -L", smi_l),
            ("nvidia-smi --query-gpu", smi_q),
            ("ls -1 /dev", Answer(0, ls_dev(sorted(nodes)))),
            ("sh -c command -v nvidia-smi", Answer(0, "/usr/bin/nvidia-smi\n")),
            ("python3 ", probe),
        ]

    def provision(self, req: GpuRequest, **how: Any) -> Sandbox:
        """The base's provision, with what it was asked recorded for the tests."""
        asked = {"image": how["image"], "labels": dict(how["labels"]), "env": dict(how.get("env") or {})}
        self.provisions.append(
            {"request": req.shape, **asked, "deadline": isinstance(how["deadline"], Deadline)}
        )
        return super().provision(req, **how)

    def select(self, req: GpuRequest, deadline: Deadline) -> Selection:
        chosen = self._chosen(req)
        holds = frozenset(g.uuid for g in chosen)
        granted = holds if self.granted_known else None
        return Selection(tuple(req.device_ids), granted, Lease(tuple(chosen)))

    def start(self, launch: Launch) -> Sandbox:
        chosen = list(launch.selection.lease.gpus)
        if self.always_hook and "busybox-envall" in launch.image:  # class 1: the hook honours the image env
            chosen = list(self.inv.gpus)
        shown, extra_nodes = self.shown(chosen)
        shape = self.shape_for.get(launch.request.shape, self.shape)
        sandbox = FakeSandbox(self, launch, self.table(shown, extra_nodes, shape))
        self.taken |= sandbox.holds
        self.provisioned.append(sandbox)
        return sandbox


class FakeRuntime:
    """The parts of fixtures.runtime.Runtime a Cell uses: the shared-sandbox cache, images, deadlines."""

    def __init__(self, adapter: FakeAdapter, host: FakeAdapter | None = None) -> None:
        self.sandboxes = SandboxCache()
        self.settings = SimpleNamespace(required=(), thresholds=dict(DEFAULT_THRESHOLDS))
        if host is None:  # the bare host: the same GPUs, healthy, with its own bookkeeping
            host = FakeAdapter(adapter.inv)
            host.name = "host"
        self._adapters = {adapter.name: adapter, "host": host}

    def image(self, driver: str, kind: str) -> str:
        return f"localhost/gpuconform-{driver}-{kind}:unit"

    def deadline(self) -> Deadline:
        return Deadline(30)

    def adapter(self, driver: str) -> Adapter:
        return self._adapters[driver]


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    reason: str
    cell: Cell


def make_cell(
    case_id: str, adapter: FakeAdapter, host: FakeAdapter | None = None, runtime: FakeRuntime | None = None
) -> Cell:
    info = BY_ID[case_id]
    expectation = adapter.profile.expect(case_id, info.default_expectation)
    the_runtime: Any = runtime or FakeRuntime(adapter, host)
    return Cell(adapter.name, adapter, info, expectation, the_runtime, adapter.inv)


def run_case(
    case_id: str, adapter: FakeAdapter, host: FakeAdapter | None = None, *, runtime: FakeRuntime | None = None
) -> Outcome:
    """Run the catalogue case's suite function as the plugin does and return its verdict.

    Each call starts afresh (sandbox ids, the probe's cache, the shared sandbox) unless it is
    handed the ``runtime`` of an earlier case, as the cases of one pytest process share theirs.
    """
    from gpuconform.conformance import compute

    global _IDS
    if runtime is None:
        _IDS = itertools.count(1)  # per case, so a case's record does not depend on test order
        compute._CACHE.clear()
    cell = make_cell(case_id, adapter, host, runtime)
    try:
        CASES[case_id](cell)
        verdict, reason = Verdict.ERROR, "the case ended without a verdict (harness bug)"
    except CaseOutcome as outcome:
        verdict, reason = outcome.verdict, outcome.reason
    except Exception as exc:
        verdict, reason = exception_verdict(exc, cell)
    try:
        cell.close_own()
    except Exception as exc:  # as the plugin: a failed teardown spoils only a good verdict
        if verdict.good:
            verdict, reason = Verdict.ERROR, str(exc)
    finally:
        adapter.close_error = None
        if runtime is None:
            cell.runtime.sandboxes.close()
    return Outcome(verdict, reason, cell)


def run_cases(case_ids: Sequence[str], adapter: FakeAdapter) -> list[Outcome]:
    """Run cases one after another in one process's runtime (sharing its sandbox), then close it."""
    from gpuconform.conformance import compute

    global _IDS
    _IDS = itertools.count(1)
    compute._CACHE.clear()
    runtime = FakeRuntime(adapter)
    try:
        return [run_case(case_id, adapter, runtime=runtime) for case_id in case_ids]
    finally:
        runtime.sandboxes.close()


def world(gpus: str = "h100x4", *, simulated: bool = True, **kwargs: Any) -> FakeAdapter:
    """A fake driver on a host of simulator profile ``gpus`` (h100x4, h100x2, single)."""
    return FakeAdapter(inventory(gpus, simulated=simulated), **kwargs)


def engine_error(message: str) -> Callable[..., Sandbox]:
    """A provision that fails inside the engine (a broken daemon): InfrastructureError."""

    def provision(*args: Any, **kwargs: Any) -> Sandbox:
        raise InfrastructureError(message)

    return provision
