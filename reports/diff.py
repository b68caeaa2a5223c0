"""Matrix diff, waivers and the release gate (SPEC section 6).

A regression is a cell that was ``pass`` or ``rejected`` and is now anything else, missing
included. A simulated result never stands in for hardware evidence: a good hardware cell whose
current result is simulated is a regression too, and the diff is flagged ``mixed_simulation``.
The gate fails on any regression not covered by an unexpired waiver naming that exact cell.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml

from gpuconform.reports.evidence import Verdict
from gpuconform.reports.matrix import Cell, CellKey, Matrix


@dataclass(frozen=True)
class CellChange:
    """One cell that differs between baseline and current (``None`` means absent)."""

    key: CellKey
    before: Verdict | None
    after: Verdict | None
    reason: str = ""
    note: str = ""

    @property
    def label(self) -> str:
        return "/".join(self.key)

    def describe(self) -> str:
        def v(x: Verdict | None) -> str:
            return x.value if x else "missing"

        text = f"{self.label}: {v(self.before)} -> {v(self.after)}"
        extra = "; ".join(s for s in (self.note, self.reason) if s)
        return f"{text} ({extra})" if extra else text


@dataclass(frozen=True)
class ProfileChange:
    """A driver's declared profile on one host changed; ``changes`` lists each difference."""

    host: str
    driver: str
    changes: tuple[str, ...]


@dataclass(frozen=True)
class MatrixDiff:
    regressions: tuple[CellChange, ...]
    improvements: tuple[CellChange, ...]
    changes: tuple[CellChange, ...]
    profile_changes: tuple[ProfileChange, ...]
    new_cells: tuple[CellChange, ...]
    removed_cells: tuple[CellChange, ...]
    mixed_simulation: bool = False

    def summary(self) -> str:
        lines = [
            f"diff: {len(self.regressions)} regressions, {len(self.improvements)} improvements, "
            f"{len(self.changes)} other changes, {len(self.profile_changes)} profile changes, "
            f"{len(self.new_cells)} new cells, {len(self.removed_cells)} removed cells",
        ]
        if self.mixed_simulation:
            lines.append(f"  note: {MIXED_NOTE}")
        sections: list[tuple[str, Sequence[CellChange]]] = [
            ("REGRESSION", self.regressions), ("improved", self.improvements),
            ("changed", self.changes), ("new", self.new_cells),
        ]  # fmt: skip
        for tag, items in sections:
            lines += [f"  {tag:<10} {c.describe()}" for c in items]
        for p in self.profile_changes:
            lines.append(f"  profile    {p.host}/{p.driver}: {', '.join(p.changes)}")
        return "\n".join(lines)


MIXED_NOTE = (
    "baseline and current differ in simulation (simulated vs hardware GPU host); "
    "simulated results never count as hardware evidence"
)


def _profile_delta(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list[str]:
    if before is None or after is None:
        return ["profile added" if before is None else "profile removed"]
    out: list[str] = []
    b_cases, a_cases = dict(before.get("cases") or {}), dict(after.get("cases") or {})
    for case in sorted(set(b_cases) | set(a_cases)):
        if b_cases.get(case) != a_cases.get(case):
            out.append(f"{case}: {b_cases.get(case, 'supported')} -> {a_cases.get(case, 'supported')}")
    for key in ("exclusive", "oversubscribe", "notes"):
        if before.get(key) != after.get(key):
            out.append(f"{key}: {before.get(key)!r} -> {after.get(key)!r}")
    return out


class DriverSelectionError(ValueError):
    """``--drivers`` (or ``--hosts``) names a column (a host) that neither matrix has."""


def _select(option: str, what: str, known: set[str], names: Collection[str] | None) -> frozenset[str] | None:
    """``None`` (all) or the named ones, each present in some matrix.

    A name in neither matrix is almost always a typo, and comparing nothing would pass any gate.
    """
    if names is None:
        return None
    wanted = frozenset(d for d in names if d)
    unknown = sorted(wanted - known)
    if not wanted or unknown:
        raise DriverSelectionError(
            f"{option} {','.join(unknown) or '(empty)'}: no such {what} in either matrix "
            f"(hint: {what}s are {', '.join(sorted(known)) or 'none'})"
        )
    return wanted


def select_drivers(
    baseline: Matrix, current: Matrix, drivers: Collection[str] | None
) -> frozenset[str] | None:
    """The columns to compare: ``None`` (all) or the named ones, each present in some matrix."""
    known = set(baseline.drivers) | set(current.drivers)
    known |= {k[1] for k in baseline.cells} | {k[1] for k in current.cells}
    return _select("--drivers", "column", known, drivers)


def select_hosts(baseline: Matrix, current: Matrix, hosts: Collection[str] | None) -> frozenset[str] | None:
    """The hosts to compare (fleet baselines gated one runner at a time): ``None`` means all."""
    known = (
        set(baseline.hosts)
        | set(current.hosts)
        | {k[0] for k in baseline.cells}
        | {k[0] for k in current.cells}
    )
    return _select("--hosts", "host", known, hosts)


def diff(
    baseline: Matrix,
    current: Matrix,
    *,
    host_map: Mapping[str, str] | None = None,
    drivers: Collection[str] | None = None,
    hosts: Collection[str] | None = None,
) -> MatrixDiff:
    """Compare two matrices cell by cell. ``host_map`` renames current hosts to baseline names
    (for ephemeral CI runners whose host name changes every run). ``drivers`` restricts the
    comparison to those columns, so a one-driver run gates against a full baseline: cells and
    profiles of other drivers are neither regressions nor removals. ``hosts`` does the same for
    hosts (after ``host_map``), so one runner's run gates against a fleet baseline."""
    rename = dict(host_map or {})
    scope = select_drivers(baseline, current, drivers)
    host_scope = select_hosts(baseline, _rename_hosts(current, rename), hosts)

    def renamed(key: tuple[str, ...]) -> Any:
        return (rename.get(key[0], key[0]), *key[1:])

    def in_scope(key: tuple[str, ...]) -> bool:
        """``key`` in baseline host names (current keys are renamed first)."""
        return (host_scope is None or key[0] in host_scope) and (scope is None or key[1] in scope)

    baseline = _restrict(baseline, in_scope, host_scope)
    cur_cells: dict[CellKey, Cell] = {renamed(k): c for k, c in current.cells.items() if in_scope(renamed(k))}
    cur_sim = {
        rename.get(h, h): s
        for h, s in current.simulated.items()
        if host_scope is None or rename.get(h, h) in host_scope
    }
    regressions: list[CellChange] = []
    improvements: list[CellChange] = []
    changes: list[CellChange] = []
    new: list[CellChange] = []
    removed: list[CellChange] = []
    mixed = any(h in cur_sim and cur_sim[h] != s for h, s in baseline.simulated.items())
    for key in sorted(set(baseline.cells) | set(cur_cells)):
        b, a = baseline.cells.get(key), cur_cells.get(key)
        if b is None and a is not None:
            new.append(CellChange(key, None, a.verdict, a.reason))
            continue
        assert b is not None
        if a is None:
            change = CellChange(key, b.verdict, None, "no result in current matrix")
            removed.append(change)
            if b.verdict.good:
                regressions.append(change)
            continue
        mixed = mixed or a.simulated != b.simulated
        sim_swap = a.simulated and not b.simulated
        note = "simulated result cannot replace hardware evidence" if sim_swap else ""
        if b.verdict.good and (sim_swap or not a.verdict.good):
            regressions.append(CellChange(key, b.verdict, a.verdict, a.reason, note))
        elif a.verdict == b.verdict:
            continue
        elif b.verdict.bad and a.verdict.good and not sim_swap:
            improvements.append(CellChange(key, b.verdict, a.verdict, a.reason))
        else:
            changes.append(CellChange(key, b.verdict, a.verdict, a.reason, note))
    cur_profiles = {renamed(k): p for k, p in current.profiles.items() if in_scope(renamed(k))}
    profile_changes = []
    for pkey in sorted(set(baseline.profiles) | set(cur_profiles)):
        delta = _profile_delta(baseline.profiles.get(pkey), cur_profiles.get(pkey))
        if delta:
            profile_changes.append(ProfileChange(pkey[0], pkey[1], tuple(delta)))
    return MatrixDiff(
        tuple(regressions), tuple(improvements), tuple(changes), tuple(profile_changes),
        tuple(new), tuple(removed), mixed,
    )  # fmt: skip


def _rename_hosts(matrix: Matrix, rename: Mapping[str, str]) -> Matrix:
    """Only what host selection needs: the host names after ``host_map``."""
    return replace(
        matrix,
        hosts={rename.get(h, h): v for h, v in matrix.hosts.items()},
        cells={(rename.get(k[0], k[0]), k[1], k[2]): c for k, c in matrix.cells.items()},
    )


def _restrict(
    matrix: Matrix, keep: Callable[[tuple[str, ...]], bool], hosts: frozenset[str] | None = None
) -> Matrix:
    """The matrix with only the cells and profiles ``keep`` accepts, and the selected hosts."""
    return replace(
        matrix,
        cells={k: c for k, c in matrix.cells.items() if keep(k)},
        profiles={k: p for k, p in matrix.profiles.items() if keep(k)},
        simulated={h: s for h, s in matrix.simulated.items() if hosts is None or h in hosts},
    )


class WaiverError(ValueError):
    """A waiver file or entry that cannot be used."""


@dataclass(frozen=True, kw_only=True)
class Waiver:
    """Accepts a regression in exactly one cell until ``expires`` (valid through that day)."""

    host: str = "*"
    driver: str
    case: str
    reason: str
    expires: date

    def covers(self, key: CellKey) -> bool:
        return self.host in ("*", key[0]) and (self.driver, self.case) == key[1:]

    def expired(self, today: date) -> bool:
        return today > self.expires

    @property
    def label(self) -> str:
        return f"{self.host}/{self.driver}/{self.case}"


_WAIVER_FIELDS = ("host", "driver", "case", "reason", "expires")


def _parse_waiver(entry: Any, where: str) -> Waiver:
    if not isinstance(entry, Mapping):
        raise WaiverError(f"{where}: expected a mapping with driver, case, reason, expires")
    unknown = sorted(set(entry) - set(_WAIVER_FIELDS))
    if unknown:
        raise WaiverError(f"{where}: unknown field {unknown[0]!r}; allowed: {', '.join(_WAIVER_FIELDS)}")
    values: dict[str, str] = {}
    for name in ("host", "driver", "case", "reason"):
        value = entry.get(name, "*" if name == "host" else None)
        if not isinstance(value, str) or not value.strip():
            raise WaiverError(f"{where}: field {name!r} must be a non-empty string, saw {value!r}")
        if name in ("driver", "case") and any(ch in value for ch in "*?["):
            raise WaiverError(f"{where}: field {name!r} must name one cell exactly, saw {value!r}")
        values[name] = value.strip()
    raw = entry.get("expires")
    expires: date | None = raw if isinstance(raw, date) else None
    if isinstance(raw, datetime):  # YAML reads "2025-01-01 12:00" as a datetime
        expires = raw.date()
    if isinstance(raw, str):
        try:
            expires = date.fromisoformat(raw.strip())
        except ValueError:
            expires = None
    if expires is None:
        raise WaiverError(f"{where}: field 'expires' must be a date YYYY-MM-DD, saw {raw!r}")
    return Waiver(expires=expires, **values)


def load_waivers(path: Path) -> list[Waiver]:
    """Read waivers from YAML or JSON: a list of entries, or ``{"waivers": [...]}``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise WaiverError(f"cannot read waiver file {path}: {exc.strerror}") from None
    try:
        doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise WaiverError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise WaiverError(f"{path} is not valid YAML: {problem}{where}") from None
    if doc is None:
        return []
    if isinstance(doc, Mapping):
        doc = doc.get("waivers", None) if set(doc) == {"waivers"} else None
    if not isinstance(doc, list):
        raise WaiverError(f"{path}: expected a list of waivers (or a 'waivers:' list)")
    out = []
    for i, entry in enumerate(doc, 1):
        where = f"{path}: waiver #{i}"
        if isinstance(entry, Mapping):
            where += f" ({entry.get('driver', '?')}/{entry.get('case', '?')})"
        out.append(_parse_waiver(entry, where))
    return out


@dataclass(frozen=True)
class GateResult:
    passed: bool
    blocking: tuple[CellChange, ...]
    waived: tuple[tuple[CellChange, Waiver], ...]
    expired_waivers: tuple[Waiver, ...]
    unused_waivers: tuple[Waiver, ...]
    mixed_simulation: bool
    diff: MatrixDiff

    def summary(self) -> str:
        head = "gate: PASSED" if self.passed else "gate: FAILED"
        lines = [
            f"{head}: {len(self.blocking)} blocking regressions, {len(self.waived)} waived, "
            f"{len(self.expired_waivers)} expired waivers",
        ]
        if self.mixed_simulation:
            lines.append(f"  note: {MIXED_NOTE}")
        lines += [f"  BLOCKING {c.describe()}" for c in self.blocking]
        lines += [
            f"  waived   {c.describe()} [waiver: {w.reason}; expires {w.expires.isoformat()}]"
            for c, w in self.waived
        ]
        lines += [
            f"  expired waiver {w.label} (expired {w.expires.isoformat()}; covers nothing): {w.reason}"
            for w in self.expired_waivers
        ]
        lines += [f"  unused waiver {w.label}: no regression in that cell" for w in self.unused_waivers]
        return "\n".join(lines)


def gate(d: MatrixDiff, waivers: Sequence[Waiver], today: date) -> GateResult:
    """Pass only if every regression is covered by an unexpired waiver naming its exact cell."""
    live = [w for w in waivers if not w.expired(today)]
    expired = tuple(w for w in waivers if w.expired(today))
    blocking: list[CellChange] = []
    waived: list[tuple[CellChange, Waiver]] = []
    used: set[int] = set()
    for change in d.regressions:
        match = next((i for i, w in enumerate(live) if w.covers(change.key)), None)
        if match is None:
            blocking.append(change)
        else:
            used.add(match)
            waived.append((change, live[match]))
    unused = tuple(w for i, w in enumerate(live) if i not in used)
    return GateResult(
        passed=not blocking,
        blocking=tuple(blocking),
        waived=tuple(waived),
        expired_waivers=expired,
        unused_waivers=unused,
        mixed_simulation=d.mixed_simulation,
        diff=d,
    )
