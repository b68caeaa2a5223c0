"""What ``gpuconform doctor`` reports: one line per prerequisite, grouped by driver.

A line is ``ok``, ``missing`` (not there: install or start it), ``wrong`` (there but unusable as
it is) or ``note`` (worth knowing, never a failure). A driver is ready when none of its lines is
missing or wrong; doctor exits 0 only when every requested driver is ready.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    OK = "ok"
    MISSING = "missing"
    WRONG = "wrong"
    NOTE = "note"

    @property
    def blocking(self) -> bool:
        return self in (Status.MISSING, Status.WRONG)


@dataclass(frozen=True)
class Check:
    """One prerequisite: what was checked, what was found, and what to do about it."""

    status: Status
    what: str
    detail: str
    hint: str = ""

    def line(self) -> str:
        text = f"{self.status.value:<8}{self.what}: {self.detail}"
        return f"{text} (hint: {self.hint})" if self.hint and self.status != Status.OK else text

    def to_json(self) -> dict[str, str]:
        return {"status": self.status.value, "what": self.what, "detail": self.detail, "hint": self.hint}


def ok(what: str, detail: str) -> Check:
    return Check(Status.OK, what, detail)


def missing(what: str, detail: str, hint: str) -> Check:
    return Check(Status.MISSING, what, detail, hint)


def wrong(what: str, detail: str, hint: str) -> Check:
    return Check(Status.WRONG, what, detail, hint)


def note(what: str, detail: str, hint: str = "") -> Check:
    return Check(Status.NOTE, what, detail, hint)


@dataclass(frozen=True)
class DriverReport:
    driver: str
    checks: tuple[Check, ...]

    @property
    def ready(self) -> bool:
        return not any(c.status.blocking for c in self.checks)

    @property
    def problems(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status.blocking)


@dataclass(frozen=True)
class DoctorReport:
    """Everything doctor found: the host's lines, then each requested driver's."""

    host: tuple[Check, ...]
    drivers: tuple[DriverReport, ...]
    simulated: bool = False
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return all(d.ready for d in self.drivers)

    @property
    def exit_code(self) -> int:
        return 0 if self.ready else 1

    def render(self) -> str:
        lines = ["host"] + [f"  {c.line()}" for c in self.host]
        for d in self.drivers:
            lines.append(f"{d.driver}: {'ready' if d.ready else 'NOT READY'}")
            lines += [f"  {c.line()}" for c in d.checks]
        ready = [d.driver for d in self.drivers if d.ready]
        not_ready = [d.driver for d in self.drivers if not d.ready]
        verdict = "doctor: ready" if self.ready else f"doctor: NOT READY: {', '.join(not_ready)}"
        if ready and not_ready:
            verdict += f" (ready: {', '.join(ready)})"
        if self.simulated:
            verdict += " [simulated GPU host: never hardware evidence]"
        return "\n".join([*lines, verdict])

    def to_json(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "simulated": self.simulated,
            "facts": self.facts,
            "host": [c.to_json() for c in self.host],
            "drivers": {
                d.driver: {"ready": d.ready, "checks": [c.to_json() for c in d.checks]} for d in self.drivers
            },
        }


def merge_checks(*groups: Sequence[Check]) -> tuple[Check, ...]:
    return tuple(c for group in groups for c in group)
