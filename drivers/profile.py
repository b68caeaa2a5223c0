"""What an adapter declares about itself: its profile of expectations, whether it is available,
and the ``--driver-opt`` keys it reads. Plain values, read by the plugin, preflight and reports."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

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

    def expect(self, case_id: str, default: Expectation = "supported") -> Expectation:
        """What the profile declares for ``case_id``: the case itself, else its ``family.*``, else
        ``default`` (the catalogue's expectation for a case a profile does not name)."""
        if case_id in self.cases:
            return self.cases[case_id]
        return self.cases.get(case_id.split(".", 1)[0] + ".*", default)

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
