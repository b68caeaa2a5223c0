"""Verdicts and the evidence record every case writes (SPEC sections 5 and 6)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
OUTPUT_LIMIT = 4096  # characters of stdout/stderr kept per command


class Verdict(StrEnum):
    PASS = "pass"
    REJECTED = "rejected"
    FAIL = "fail"
    UNSUPPORTED = "unsupported"
    SKIP = "skip"
    ERROR = "error"
    INCONCLUSIVE = "inconclusive"

    @property
    def good(self) -> bool:
        """Whether the cell counts as conformant (pass, or a clean rejection that was expected)."""
        return self in (Verdict.PASS, Verdict.REJECTED)

    @property
    def bad(self) -> bool:
        return self in (Verdict.FAIL, Verdict.ERROR, Verdict.INCONCLUSIVE)


class EvidenceError(ValueError):
    """A results file or record that cannot be read."""


@dataclass(frozen=True)
class Evidence:
    """One (driver, case) cell: what was asked, what ran, what was seen, and the verdict."""

    case: str
    driver: str
    verdict: Verdict
    reason: str
    request: Mapping[str, Any] | None = None
    host: Mapping[str, Any] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    granted: tuple[str, ...] | None = None
    seen: tuple[str, ...] | None = None
    commands: tuple[Mapping[str, Any], ...] = ()
    parsed: Mapping[str, Any] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)
    simulated: bool = False
    expectation: str = "supported"
    details: tuple[Mapping[str, Any], ...] = ()
    run_id: str = ""
    worker: str = ""
    started_at: str = ""
    schema: int = SCHEMA_VERSION

    @property
    def cell(self) -> tuple[str, str]:
        return (self.driver, self.case)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Verdict):
                value = value.value
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Evidence:
        try:
            if int(data.get("schema", SCHEMA_VERSION)) > SCHEMA_VERSION:
                raise EvidenceError(
                    f"evidence schema {data['schema']} is newer than this gpuconform "
                    f"understands ({SCHEMA_VERSION})",
                )
            known = {f.name for f in fields(cls)}
            kwargs = {k: v for k, v in data.items() if k in known}
            kwargs["verdict"] = Verdict(data["verdict"])
            for name in ("granted", "seen"):
                if kwargs.get(name) is not None:
                    kwargs[name] = tuple(kwargs[name])
            for name in ("commands", "details"):
                kwargs[name] = tuple(kwargs.get(name) or ())
            return cls(**kwargs)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, EvidenceError):
                raise
            raise EvidenceError(f"bad evidence record ({exc}): {json.dumps(dict(data))[:200]}") from None


def write_results(
    path: Path, records: list[Evidence], meta: Mapping[str, Any], *, check: bool = True
) -> None:
    """Write ``results.json``: run metadata, driver profiles, and one record per case.

    ``check`` validates the file against the shipped schema (``SchemaError``, file kept). It costs
    about 1 ms per record, so a writer that rewrites the file after every cell may leave it off
    and let the final write check.
    """
    from gpuconform.reports.schemas import validate

    doc = {"schema": SCHEMA_VERSION, **meta, "records": [r.to_json() for r in records]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
    tmp.replace(path)
    # Checked after writing, so the evidence is kept for a look even when the check fails.
    if check:
        validate(json.loads(path.read_text()), "results", str(path))


def read_results(path: Path) -> tuple[dict[str, Any], list[Evidence]]:
    """Read a results file; return its metadata and its records."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise EvidenceError(f"no results file at {path}") from None
    except json.JSONDecodeError as exc:
        raise EvidenceError(f"{path} is not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("records"), list):
        raise EvidenceError(f"{path} is not a gpuconform results file (no 'records' list)")
    meta = {k: v for k, v in doc.items() if k != "records"}
    return meta, [Evidence.from_json(r) for r in doc["records"]]
