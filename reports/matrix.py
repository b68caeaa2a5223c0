"""The compatibility matrix: one verdict per (host, driver, case) cell (SPEC section 6).

A matrix is built from one run's ``results.json`` (one host), and matrices from several hosts merge
into a fleet matrix. ``matrix.json`` is the stable interchange form that ``diff``/``gate`` read, so
it carries everything they need (profiles, simulation flags) without the bulky evidence records.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuconform.conformance.catalogue import CATALOGUE as CASES
from gpuconform.reports.evidence import Evidence, EvidenceError, Verdict, read_results
from gpuconform.reports.schemas import SchemaError, kind_of, validate

MATRIX_FORMAT = "gpuconform-matrix"
MATRIX_SCHEMA = 1

#: Row order of the matrix: the catalogue the suites run (SPEC order). Unknown ids follow alphabetically.
CATALOGUE: tuple[str, ...] = tuple(case.id for case in CASES)


#: Worst first. When one cell has several records the worst verdict wins, so a duplicate record
#: can never hide a failure: error > inconclusive > fail > skip > unsupported > rejected > pass.
SEVERITY: tuple[Verdict, ...] = (
    Verdict.ERROR, Verdict.INCONCLUSIVE, Verdict.FAIL, Verdict.SKIP,
    Verdict.UNSUPPORTED, Verdict.REJECTED, Verdict.PASS,
)  # fmt: skip

CellKey = tuple[str, str, str]  # (host, driver, case)


class MatrixError(ValueError):
    """A matrix that cannot be built, read or merged."""


@dataclass(frozen=True)
class Cell:
    """One verdict. ``evidence`` is the index of the chosen record in its run's ``records`` list."""

    verdict: Verdict
    reason: str
    simulated: bool
    evidence: int | None = None
    run_id: str = ""


def case_order(cases: Iterable[str]) -> tuple[str, ...]:
    """Catalogue order first, then unknown case ids alphabetically."""
    rank = {c: i for i, c in enumerate(CATALOGUE)}
    return tuple(sorted(set(cases), key=lambda c: (rank.get(c, len(rank)), c)))


def driver_order(drivers: Iterable[str]) -> tuple[str, ...]:
    """Columns in the order they first appear. A run's records come in the order it ran its
    columns (the plugin's: the registry's built-ins, then entry points, or ``--drivers`` as given),
    so the matrix follows the run without knowing the registry (reports read evidence and the
    catalogue only), and a third-party adapter's column sits where its run put it."""
    return tuple(dict.fromkeys(drivers))


def worst(verdicts: Iterable[Verdict]) -> Verdict:
    """The most severe verdict (see ``SEVERITY``)."""
    return min(verdicts, key=SEVERITY.index)


def count_verdicts(cells: Iterable[Cell]) -> dict[str, int]:
    counts = {v.value: 0 for v in reversed(SEVERITY)}
    for c in cells:
        counts[c.verdict.value] += 1
    return counts


@dataclass(frozen=True)
class Matrix:
    """Hosts x drivers x cases, with the profiles and host identities the verdicts were judged by."""

    hosts: Mapping[str, Mapping[str, Any]]
    drivers: tuple[str, ...]
    cases: tuple[str, ...]
    cells: Mapping[CellKey, Cell]
    profiles: Mapping[tuple[str, str], Mapping[str, Any]]
    simulated: Mapping[str, bool]
    driver_info: Mapping[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)
    runs: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def cell(self, host: str, driver: str, case: str) -> Cell | None:
        return self.cells.get((host, driver, case))

    def counts(self, driver: str, host: str | None = None) -> dict[str, int]:
        """Verdict counts for one driver column, on one host or across the fleet."""
        return count_verdicts(
            c for (h, d, _), c in self.cells.items() if d == driver and (host is None or h == host)
        )

    def summary(self) -> dict[str, Any]:
        return {
            "drivers": {d: self.counts(d) for d in self.drivers},
            "hosts": {h: {d: self.counts(d, h) for d in self.drivers} for h in self.hosts},
        }

    def to_json(self, *, check: bool = True) -> dict[str, Any]:
        """The ``matrix.json`` document (cells nested host -> driver -> case).

        ``check`` validates it against the shipped schema (``SchemaError`` when it does not match).
        """
        cells: dict[str, dict[str, dict[str, Any]]] = {}
        for (h, d, c), cell in sorted(self.cells.items(), key=lambda kv: self._sort_key(kv[0])):
            cells.setdefault(h, {}).setdefault(d, {})[c] = {
                "verdict": cell.verdict.value,
                "reason": cell.reason,
                "simulated": cell.simulated,
                "evidence": cell.evidence,
                "run_id": cell.run_id,
            }
        doc: dict[str, Any] = {
            "format": MATRIX_FORMAT,
            "schema": MATRIX_SCHEMA,
            "hosts": {h: dict(v) for h, v in self.hosts.items()},
            "simulated": dict(self.simulated),
            "runs": {h: dict(v) for h, v in self.runs.items()},
            "drivers": list(self.drivers),
            "cases": list(self.cases),
            "profiles": _nest(self.profiles),
            "driver_info": _nest(self.driver_info),
            "cells": cells,
            "summary": self.summary(),
        }
        # Every matrix.json and fleet file is written from here: check it against the shipped
        # schema, so a writer bug fails where it happens instead of in someone else's reader.
        if check:
            validate(doc, "matrix", "the matrix being written")
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Matrix:
        if doc.get("format") != MATRIX_FORMAT:
            raise MatrixError(f"expected a {MATRIX_FORMAT} document, saw format={doc.get('format')!r}")
        if int(doc.get("schema", 0)) > MATRIX_SCHEMA:
            raise MatrixError(
                f"matrix schema {doc['schema']} is newer than this gpuconform understands "
                f"({MATRIX_SCHEMA}); hint: upgrade gpuconform",
            )
        try:
            cells = {
                (h, d, c): Cell(
                    verdict=Verdict(v["verdict"]),
                    reason=str(v.get("reason", "")),
                    simulated=bool(v.get("simulated", False)),
                    evidence=v.get("evidence"),
                    run_id=str(v.get("run_id", "")),
                )
                for h, by_driver in doc["cells"].items()
                for d, by_case in by_driver.items()
                for c, v in by_case.items()
            }
            return cls(
                hosts={h: dict(v) for h, v in doc["hosts"].items()},
                drivers=driver_order([*doc.get("drivers", ()), *(k[1] for k in cells)]),
                cases=case_order([*doc.get("cases", ()), *(k[2] for k in cells)]),
                cells=cells,
                profiles=_flatten(doc.get("profiles", {})),
                simulated={h: bool(v) for h, v in doc.get("simulated", {}).items()},
                driver_info=_flatten(doc.get("driver_info", {})),
                runs={h: dict(v) for h, v in doc.get("runs", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MatrixError(f"malformed matrix document ({type(exc).__name__}: {exc})") from None

    def _sort_key(self, key: CellKey) -> tuple[str, int, int]:
        h, d, c = key
        return (h, self.drivers.index(d), self.cases.index(c))


def _nest(flat: Mapping[tuple[str, str], Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for (h, d), v in flat.items():
        out.setdefault(h, {})[d] = dict(v)
    return out


def _flatten(nested: Mapping[str, Mapping[str, Any]]) -> dict[tuple[str, str], Mapping[str, Any]]:
    return {(h, d): dict(v) for h, by_driver in nested.items() for d, v in by_driver.items()}


def host_name(meta: Mapping[str, Any]) -> str:
    host = meta.get("host")
    name = host.get("host") if isinstance(host, Mapping) else None
    return str(name) if name else "unknown-host"


def build_matrix(meta: Mapping[str, Any], records: Sequence[Evidence]) -> Matrix:
    """Aggregate one run (one host). Several records for one cell: the worst verdict wins."""
    host = host_name(meta)
    identity = dict(meta.get("host") or {"host": host})
    by_cell: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(records):
        by_cell.setdefault(r.cell, []).append(i)
    cells: dict[CellKey, Cell] = {}
    host_simulated = bool(identity.get("simulated", False))
    for (driver, case), idx in by_cell.items():
        chosen = min(idx, key=lambda i: SEVERITY.index(records[i].verdict))
        rec = records[chosen]
        reason = rec.reason if len(idx) == 1 else f"{rec.reason} (worst of {len(idx)} records)"
        cells[(host, driver, case)] = Cell(
            verdict=rec.verdict,
            reason=reason,
            simulated=rec.simulated or host_simulated,
            evidence=chosen,
            run_id=rec.run_id or str(meta.get("run_id", "")),
        )
    profiles = {(host, d): dict(p) for d, p in (meta.get("profiles") or {}).items()}
    info = {(host, d): dict(v) for d, v in (meta.get("drivers") or {}).items()}
    # The records' order first (the run's); then drivers known only from the metadata (no cell).
    drivers = driver_order([*(k[1] for k in cells), *(d for _, d in profiles), *(d for _, d in info)])
    return Matrix(
        hosts={host: identity},
        drivers=drivers,
        cases=case_order(k[2] for k in cells),
        cells=cells,
        profiles=profiles,
        simulated={host: host_simulated or any(c.simulated for c in cells.values())},
        driver_info=info,
        runs={host: {k: str(meta.get(k, "")) for k in ("run_id", "started_at", "finished_at")}},
    )


def merge(matrices: Sequence[Matrix]) -> Matrix:
    """Merge per-host matrices into a fleet matrix.

    Merging is for different hosts. The same host may appear twice only if both inputs agree on
    every cell and profile they share; any disagreement raises ``MatrixError`` naming the cell,
    because silently picking one would make the fleet matrix depend on argument order.
    """
    hosts: dict[str, Mapping[str, Any]] = {}
    cells: dict[CellKey, Cell] = {}
    profiles: dict[tuple[str, str], Mapping[str, Any]] = {}
    info: dict[tuple[str, str], Mapping[str, Any]] = {}
    simulated: dict[str, bool] = {}
    runs: dict[str, Mapping[str, str]] = {}
    for m in matrices:
        for key, cell in m.cells.items():
            if key in cells and cells[key] != cell:
                raise MatrixError(
                    f"cannot merge: cell {'/'.join(key)} is {cells[key].verdict.value} in one input "
                    f"and {cell.verdict.value} in another; hint: merge matrices from different hosts",
                )
            cells[key] = cell
        for pkey, prof in m.profiles.items():
            if pkey in profiles and dict(profiles[pkey]) != dict(prof):
                raise MatrixError(
                    f"cannot merge: profile of {pkey[1]} on host {pkey[0]} differs between inputs",
                )
            profiles[pkey] = prof
        for h, ident in m.hosts.items():
            hosts.setdefault(h, ident)
            simulated[h] = simulated.get(h, False) or m.simulated.get(h, False)
            runs.setdefault(h, m.runs.get(h, {}))
        for ikey, value in m.driver_info.items():
            info.setdefault(ikey, value)
    return Matrix(
        hosts=dict(sorted(hosts.items())),
        drivers=driver_order(d for m in matrices for d in m.drivers),
        cases=case_order(c for m in matrices for c in m.cases),
        cells=cells,
        profiles=profiles,
        simulated=simulated,
        driver_info=info,
        runs=runs,
    )


def load_run(path: Path) -> tuple[Matrix, list[Evidence]]:
    """Read a ``results.json`` (matrix + its records) or a ``matrix.json`` (matrix, no records)."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MatrixError(f"no such file: {path}") from None
    except json.JSONDecodeError as exc:
        raise MatrixError(f"{path} is not JSON ({exc.msg} at line {exc.lineno})") from None
    kind = kind_of(doc)
    if kind is not None:
        try:
            validate(doc, kind, str(path))  # a file that does not match is refused, in one line
        except SchemaError as exc:
            raise MatrixError(str(exc)) from None
    if kind == "matrix":
        try:
            return Matrix.from_json(doc), []
        except MatrixError as exc:
            raise MatrixError(f"{path}: {exc}") from None
    if kind == "results":
        try:
            meta, records = read_results(Path(path))
        except EvidenceError as exc:
            raise MatrixError(str(exc)) from None
        return build_matrix(meta, records), records
    raise MatrixError(
        f"{path} is neither a results.json (no 'records' list) nor a matrix.json "
        f"(format != {MATRIX_FORMAT!r})",
    )


def load_matrix(path: Path) -> Matrix:
    """A matrix from either a ``results.json`` or a ``matrix.json``."""
    return load_run(path)[0]
