"""The adapter contract: what every driver adapter and sandbox provides, and the shared errors.

An adapter is one small module that provisions and tears down one kind of sandbox. Everything
else (which case runs, what is expected, what the verdict is) lives outside the adapters, so a
third-party adapter registered through the ``gpuconform.adapters`` entry point group runs the
whole catalogue without forking.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from gpuconform.drivers.inventory import SCHEME_CDI, SCHEME_PCI, GpuRecord, Inventory
from gpuconform.drivers.request import GpuRequest

if TYPE_CHECKING:
    from gpuconform.drivers.leases import GpuLeases

LABEL_PREFIX = "dev.gpuconform"
LABEL_RUN = f"{LABEL_PREFIX}.run"
LABEL_WORKER = f"{LABEL_PREFIX}.worker"
LABEL_CASE = f"{LABEL_PREFIX}.case"


class HarnessError(Exception):
    """Base of the harness's own errors: a one-line message, and a hint where one helps."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class RequestRejected(HarnessError):
    """The driver or its engine refused the request cleanly; nothing was left behind."""


class DriverUnavailable(HarnessError):
    """The driver cannot run here (engine missing or down); a skip, or an error when required."""


class InfrastructureError(HarnessError):
    """The engine or the harness broke (not the GPU stack under test): verdict ``error``."""


class DeadlineExceeded(InfrastructureError):
    """An external call ran past its deadline."""


class Deadline:
    """A point in monotonic time that every external call is bounded by."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    @property
    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self._end

    def cap(self, seconds: float) -> float:
        """The smaller of ``seconds`` and what is left; at least a sliver so calls fail fast."""
        return max(0.01, min(seconds, self.remaining))

    def check(self, what: str) -> None:
        if self.expired:
            raise DeadlineExceeded(f"{what}: deadline of {self.seconds:.0f}s exceeded")


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


Expectation = Literal["supported", "reject", "unsupported"]


@dataclass(frozen=True)
class Profile:
    """What a driver declares: per case id (or ``family.*``), supported / must reject / out of scope.

    Cases not named are ``supported``. ``exclusive`` says whether concurrent default requests
    must get disjoint GPUs; ``oversubscribe`` what a request beyond the free GPUs does
    (``reject`` or ``shared``).
    """

    driver: str
    cases: Mapping[str, Expectation] = field(default_factory=dict)
    exclusive: bool = True
    oversubscribe: Literal["reject", "shared"] = "reject"
    notes: str = ""

    def expect(self, case_id: str) -> Expectation:
        if case_id in self.cases:
            return self.cases[case_id]
        family = case_id.split(".", 1)[0] + ".*"
        return self.cases.get(family, "supported")

    def to_json(self) -> dict[str, Any]:
        return {
            "driver": self.driver,
            "cases": dict(sorted(self.cases.items())),
            "exclusive": self.exclusive,
            "oversubscribe": self.oversubscribe,
            "notes": self.notes,
        }


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""
    versions: Mapping[str, str] = field(default_factory=dict)


@dataclass
class AdapterContext:
    """What an adapter is handed: the ground truth, the leases, the run's labels and options."""

    inventory: Inventory
    leases: GpuLeases
    run_id: str
    worker: str = "main"
    state_dir: Path = Path("/tmp/gpuconform")
    options: Mapping[str, str] = field(default_factory=dict)

    @property
    def labels(self) -> dict[str, str]:
        return {LABEL_RUN: self.run_id, LABEL_WORKER: self.worker}


OptionKind = Literal["text", "path", "int", "seconds", "flag", "choice"]


@dataclass(frozen=True)
class OptionSpec:
    """One ``--driver-opt KEY=VALUE`` an adapter reads, declared by the adapter itself.

    The front door (fixtures/preflight.py) checks every given option against the declarations
    of the adapters that could read it, so a misspelt key or a value out of range stops the run
    before anything starts, for a third-party adapter exactly as for a built-in one.
    ``removed`` declares a key that is no longer read, with what to do instead.
    """

    help: str = ""
    kind: OptionKind = "text"
    choices: tuple[str, ...] = ()
    removed: str = ""

    def problem(self, value: str) -> str | None:
        """Why ``value`` cannot be used, or None when it can."""
        if self.removed:
            return f"is no longer read: {self.removed}"
        if self.kind == "choice" or self.choices:
            return None if value in self.choices else f"must be one of {', '.join(self.choices)}"
        if self.kind == "int":
            return None if value.strip().isdigit() and int(value) > 0 else "must be a whole number > 0"
        if self.kind == "seconds":
            try:
                ok = float(value) > 0
            except ValueError:
                ok = False
            return None if ok else "must be a number of seconds > 0"
        if self.kind == "flag":
            return None if value in ("0", "1") else "must be 0 or 1"
        if self.kind == "path":
            return None if value.strip() else "must be a path"
        return None


class Sandbox(abc.ABC):
    """A running container, pod or VM with an exec channel.

    ``granted`` is the set of UUIDs the request should yield, when the harness knows it before
    looking (it chose or named the GPUs); None when the driver chose (kubernetes), in which case
    cases judge by count and inventory membership.
    """

    id: str
    driver: str
    request: GpuRequest
    granted: frozenset[str] | None
    versions: dict[str, str]
    timings: dict[str, float]

    @abc.abstractmethod
    def exec(self, argv: Sequence[str], *, timeout: float) -> ExecResult: ...

    @abc.abstractmethod
    def put_file(self, path: str, data: bytes, mode: int = 0o755) -> None: ...

    @abc.abstractmethod
    def close(self) -> None:
        """Tear down; idempotent, and safe to call from a reaper after a failure."""

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Adapter(abc.ABC):
    """One kind of sandbox. Subclasses set ``name`` and implement the abstract methods."""

    name: str = ""
    id_scheme: str = ""
    # Image kinds the adapter runs: "busybox" for nvidia-smi cases, "python" for compute.
    default_images: Mapping[str, str] = {}
    # Whether /dev/nvidiaN inside is the host's node (containers bind the host's nodes). A VM's
    # guest driver numbers its own, so smi.nodes can only hold it to the count.
    node_minors_follow_host: bool = True
    # The ``--driver-opt`` keys this adapter reads (full keys, ``"<driver>.<key>"``), each with
    # what it accepts; a key given for this driver and not declared here is refused before the
    # run starts. ``image.<kind>`` and ``sim.*`` belong to the harness, not to an adapter.
    OPTIONS: ClassVar[Mapping[str, OptionSpec]] = {}

    def __init__(self, ctx: AdapterContext) -> None:
        self.ctx = ctx

    @property
    @abc.abstractmethod
    def profile(self) -> Profile: ...

    @abc.abstractmethod
    def available(self) -> Availability: ...

    def native_ids(self, gpu: GpuRecord) -> list[str]:
        """The ids this driver selects ``gpu`` with, taken from the inventory (never hard-coded)."""
        return list(gpu.ids(self.id_scheme))

    def all_ids(self) -> list[str] | None:
        """The driver's single "all GPUs" id (CDI ``=all``), or None where it has none."""
        return None

    @abc.abstractmethod
    def provision(
        self,
        req: GpuRequest,
        *,
        image: str,
        labels: Mapping[str, str],
        deadline: Deadline,
        env: Mapping[str, str] | None = None,
    ) -> Sandbox:
        """Start a sandbox for ``req``; raise RequestRejected when the driver refuses it.

        A start that fails half-way undoes what it did before raising.
        """

    def unknown_id(self) -> str:
        """A well-formed native id that names no GPU of this host (for ``device.invalid``)."""
        beyond = len(self.ctx.inventory.gpus) + 7
        if self.id_scheme == SCHEME_CDI:
            return f"{self.ctx.inventory.cdi_kind}={beyond}"
        if self.id_scheme == SCHEME_PCI:
            return "0000:ff:1f.7"
        return str(beyond)

    def ground_truth(self, *, image: str = "", deadline: Deadline | None = None) -> Inventory | None:
        """The inventory this column is judged against when it is not the run's own (a cluster's
        GPU nodes are not the runner's GPUs); None, the default, means the run's inventory."""
        return None

    def leftovers(self, labels: Mapping[str, str]) -> list[str]:
        """Resources carrying all of ``labels`` that still exist (``count.over`` checks none are).

        Part of the contract: an adapter that creates anything (a container, a pod, a VM process,
        a VFIO binding) lists here what of it still exists, one line each, so that "nothing left
        behind" is checked on every column. Only an adapter that creates nothing may keep this
        empty default.
        """
        return []

    def gc(self, run_id: str | None = None) -> list[str]:
        """Remove resources labelled by the harness (one run's, or all); return what went."""
        return []

    def image_for(self, kind: str) -> str:
        return self.ctx.options.get(f"image.{kind}") or self.default_images.get(kind, "")
