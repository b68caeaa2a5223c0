"""Allure results that read as a conformance matrix: one test per cell, labelled and with evidence.

Without this, allure-pytest names a cell after its pytest item, groups it by Python module,
reports a ``rejected`` cell as a plain pass and attaches nothing. ``annotate_cell`` runs while the
cell's test is open (the plugin calls it when it writes the evidence record) and uses
allure-pytest's public API only: the title is the cell id, suite = driver, feature = case family,
story = case, labels ``driver``/``case``/``verdict``, and the evidence attached (commands with
stdout/stderr, parsed values, expected vs seen, timings, versions, the whole record).

allure-pytest derives a test's status from pytest's outcome, which only knows passed, failed and
skipped; ``error`` and ``inconclusive`` must read as *broken* (the harness could not judge), so
``finish_allure_results`` sets each cell's status from its evidence record once the run is over,
in the allure-results files themselves (their JSON format is Allure's documented interchange).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gpuconform.reports.evidence import Evidence, Verdict

#: Allure status per verdict. The verdict word itself is kept in the ``verdict`` label, a tag and
#: the status message, so ``rejected`` is never just "passed" to a reader.
ALLURE_STATUS: Mapping[Verdict, str] = {
    Verdict.PASS: "passed",
    Verdict.REJECTED: "passed",
    Verdict.FAIL: "failed",
    Verdict.ERROR: "broken",
    Verdict.INCONCLUSIVE: "broken",
    Verdict.SKIP: "skipped",
    Verdict.UNSUPPORTED: "skipped",
}


def _allure_dir(config: Any) -> str | None:
    option = getattr(config, "option", None)
    return getattr(option, "allure_report_dir", None) or None


def family(case: str) -> str:
    """The case family Allure shows as the feature: ``count`` for ``count.over``."""
    return case.split(".", 1)[0]


def expected_vs_seen(record: Evidence) -> str:
    """What the case expected and what it saw, as the case recorded it (or granted vs seen GPUs)."""
    parsed = record.parsed or {}
    lines = []
    if "expected" in parsed or "seen" in parsed:
        lines.append(f"expected: {json.dumps(parsed.get('expected'), default=str)}")
        lines.append(f"seen:     {json.dumps(parsed.get('seen'), default=str)}")
    if record.granted is not None or record.seen is not None:
        lines.append(f"granted GPUs: {', '.join(sorted(record.granted or ())) or 'none'}")
        lines.append(f"seen GPUs:    {', '.join(sorted(record.seen or ())) or 'none'}")
    return "\n".join(lines)


def commands_text(record: Evidence) -> str:
    """Every command the cell ran, with its exit status, duration, stdout and stderr."""
    out = []
    for c in record.commands:
        argv = " ".join(str(a) for a in c.get("argv") or [])
        status = "timed out" if c.get("timed_out") else f"exit {c.get('exit_code')}"
        out.append(f"$ {argv}\n  ({status}, {c.get('duration_s')} s, sandbox {c.get('sandbox', '-')})")
        for stream in ("stdout", "stderr"):
            out.append(f"--- {stream} ---\n{c.get(stream) or ''}")
    return "\n".join(out)


def annotate_cell(config: Any, record: Evidence) -> None:
    """Label the running test as its cell and attach the evidence; a no-op unless ``--alluredir``."""
    if _allure_dir(config) is None:
        return
    try:
        import allure
    except ImportError:  # --alluredir without allure-pytest cannot be given; stay harmless anyway
        return
    cell_id, verdict = f"{record.driver}-{record.case}", record.verdict.value
    dyn = allure.dynamic
    dyn.title(cell_id)
    dyn.parent_suite("gpuconform")
    dyn.suite(record.driver)
    dyn.sub_suite(family(record.case))
    dyn.feature(family(record.case))
    dyn.story(record.case)
    dyn.label("driver", record.driver)
    dyn.label("case", record.case)
    dyn.label("verdict", verdict)
    dyn.tag(verdict)
    dyn.parameter("driver", record.driver)
    dyn.parameter("case", record.case)
    # Excluded from Allure's history id: a verdict that changes must not make a new test.
    dyn.parameter("verdict", verdict, excluded=True)
    dyn.description(f"**{verdict}**: {record.reason}\n\nexpectation: {record.expectation}")
    text, as_json = allure.attachment_type.TEXT, allure.attachment_type.JSON
    if record.commands:
        allure.attach(commands_text(record), name="commands (stdout, stderr)", attachment_type=text)
    seen = expected_vs_seen(record)
    if seen:
        allure.attach(seen, name="expected vs seen", attachment_type=text)
    for name, data in (
        ("parsed values", record.parsed),
        ("timings", record.timings),
        ("versions", record.versions),
    ):
        if data:
            allure.attach(json.dumps(data, indent=2, default=str), name=name, attachment_type=as_json)
    allure.attach(
        json.dumps(record.to_json(), indent=2, default=str), name="evidence", attachment_type=as_json
    )


def _labels(doc: Mapping[str, Any]) -> dict[str, str]:
    return {
        str(lab.get("name")): str(lab.get("value"))
        for lab in doc.get("labels") or ()
        if isinstance(lab, dict)
    }


def finish_allure_results(folder: Path, records: Iterable[Evidence]) -> int:
    """Give each cell's Allure result the status of its verdict and a message naming the verdict.

    Only results labelled by ``annotate_cell`` whose (driver, case) has a record of this run are
    touched; returns how many were rewritten.
    """
    by_cell = {(r.driver, r.case): r for r in records}
    changed = 0
    for path in sorted(Path(folder).glob("*-result.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        labels = _labels(doc)
        record = by_cell.get((labels.get("driver", ""), labels.get("case", "")))
        if record is None or labels.get("verdict") != record.verdict.value:
            continue
        verdict = record.verdict
        details = dict(doc.get("statusDetails") or {})
        details["message"] = f"{verdict.value}: {record.reason}"
        # A cell judged while its fixture was set up (unsupported, driver unavailable) had its
        # title overwritten by allure-pytest after setup; its evidence shows under "Set up".
        name = f"{record.driver}-{record.case}"
        new = {**doc, "name": name, "status": ALLURE_STATUS[verdict], "statusDetails": details}
        if new != doc:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(new))
            tmp.replace(path)
            changed += 1
    return changed
