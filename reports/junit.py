"""JUnit XML from the evidence records: one test per cell, named by its cell id, grouped by driver.

pytest's own junitxml names a test after its pytest item (``test_count_over[podman-count.over]``,
plus xdist's ``@podman`` group suffix) and groups it by Python module, so CI dashboards showed
cells by file. This file is written from the records instead: ``name`` is the matrix's cell id
(``podman-count.over``), ``classname`` and the ``testsuite`` are the driver, the verdict and
reason are properties, and a failure's message says what was expected and what was seen.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any

from gpuconform.reports.evidence import Evidence, Verdict
from gpuconform.reports.matrix import case_order, driver_order

# XML 1.0 cannot carry most control characters; sandbox output may contain them.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_TEXT_LIMIT = 2000


def cell_id(record: Evidence) -> str:
    """The cell id the matrix, the evidence files and the JUnit names share: ``driver-case``."""
    return f"{record.driver}-{record.case}"


def _clean(value: Any, limit: int = _TEXT_LIMIT) -> str:
    text = _NOT_XML.sub("?", value if isinstance(value, str) else json.dumps(value, default=str))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def expected_vs_seen(record: Evidence) -> str:
    """``expected X; seen Y`` from what the case recorded, or from the granted and seen UUIDs."""
    parsed = record.parsed or {}
    if "expected" in parsed or "seen" in parsed:
        return f"expected {_clean(parsed.get('expected'), 300)}; seen {_clean(parsed.get('seen'), 300)}"
    if record.granted is not None or record.seen is not None:
        granted = sorted(record.granted or ())
        seen = sorted(record.seen or ())
        return f"expected GPUs {_clean(granted, 300)}; seen {_clean(seen, 300)}"
    return "expected a conformant result; seen the reason above"


def _duration(record: Evidence) -> float:
    total = sum(float(c.get("duration_s") or 0) for c in record.commands)
    return round(total + float(record.timings.get("provision_s") or 0), 3)


def _commands_text(record: Evidence) -> str:
    lines = []
    for c in record.commands:
        argv = c.get("argv") or []
        lines.append(f"$ {' '.join(map(str, argv))}  (exit {c.get('exit_code')})")
        for stream in ("stdout", "stderr"):
            if c.get(stream):
                lines.append(f"[{stream}]\n{c[stream]}")
    return _clean("\n".join(lines), 8000)


def _testcase(suite: ET.Element, r: Evidence) -> None:
    case = ET.SubElement(suite, "testcase", classname=r.driver, name=cell_id(r), time=str(_duration(r)))
    props = ET.SubElement(case, "properties")
    for name, value in (
        ("verdict", r.verdict.value),
        ("reason", r.reason),
        ("driver", r.driver),
        ("case", r.case),
        ("expectation", r.expectation),
        ("simulated", "true" if r.simulated else "false"),
    ):
        ET.SubElement(props, "property", name=name, value=_clean(value))
    message = f"{r.verdict.value}: {_clean(r.reason, 500)}"
    if r.verdict is Verdict.FAIL:
        detail = expected_vs_seen(r)
        ET.SubElement(case, "failure", message=f"{message} ({detail})", type="fail").text = detail
    elif r.verdict.bad:  # error, inconclusive: the harness could not judge the cell
        ET.SubElement(case, "error", message=message, type=r.verdict.value).text = expected_vs_seen(r)
    elif r.verdict in (Verdict.SKIP, Verdict.UNSUPPORTED):
        ET.SubElement(case, "skipped", message=message)
    commands = _commands_text(r)
    if commands:
        ET.SubElement(case, "system-out").text = commands


def render_junit(records: Sequence[Evidence], meta: Mapping[str, Any]) -> str:
    """The JUnit XML document of one run: a ``testsuite`` per driver, a ``testcase`` per cell."""
    host = meta.get("host") if isinstance(meta.get("host"), Mapping) else {}
    hostname = str((host or {}).get("host") or "unknown-host")
    root = ET.Element("testsuites", name="gpuconform")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    rank = {c: i for i, c in enumerate(case_order(r.case for r in records))}
    for driver in driver_order(r.driver for r in records):
        mine = sorted((r for r in records if r.driver == driver), key=lambda r: rank[r.case])
        counts = {
            "tests": len(mine),
            "failures": sum(r.verdict is Verdict.FAIL for r in mine),
            "errors": sum(r.verdict in (Verdict.ERROR, Verdict.INCONCLUSIVE) for r in mine),
            "skipped": sum(r.verdict in (Verdict.SKIP, Verdict.UNSUPPORTED) for r in mine),
        }
        attrib = {
            "name": driver,
            "hostname": hostname,
            "timestamp": str(meta.get("started_at", "")),
            "time": str(round(sum(_duration(r) for r in mine), 3)),
            **{k: str(v) for k, v in counts.items()},
        }
        suite = ET.SubElement(root, "testsuite", attrib)
        props = ET.SubElement(suite, "properties")
        simulated = "true" if meta.get("simulated") else "false"
        for name, value in (("run_id", str(meta.get("run_id", ""))), ("simulated", simulated)):
            ET.SubElement(props, "property", name=name, value=_clean(value))
        for r in mine:
            _testcase(suite, r)
        for k, v in counts.items():
            totals[k] += v
    for k, v in totals.items():
        root.set(k, str(v))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
