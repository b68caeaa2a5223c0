"""The reports' pytest plugin: turns the records the gpuconform plugin hands over into reports.

It implements the hooks that ``gpuconform.fixtures.hookspecs`` declares, so the plugin (a lower
layer) never imports the reports: per cell, the Allure labels and evidence attachments while the
cell's test is open; per run, the matrix files, our own junit.xml and the Allure statuses. It is
loaded as the ``gpuconform-reports`` pytest11 entry point (``gpuconform run`` names it with
``-p``). Its hooks are optional: in a session where the gpuconform plugin is not loaded they are
never called, and this module does nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gpuconform.reports.allure_cells import annotate_cell, finish_allure_results
from gpuconform.reports.evidence import Evidence
from gpuconform.reports.junit import render_junit
from gpuconform.reports.matrix import build_matrix
from gpuconform.reports.render import render, write_all
from gpuconform.reports.schemas import SchemaError


@pytest.hookimpl(optionalhook=True)
def pytest_gpuconform_cell_recorded(config: pytest.Config, record: Evidence) -> None:
    annotate_cell(config, record)  # Allure: title, driver/case/verdict labels, evidence


@pytest.hookimpl(optionalhook=True)
def pytest_gpuconform_publish(
    config: pytest.Config, out_dir: Path, meta: dict[str, Any], records: list[Evidence]
) -> tuple[str, list[str]]:
    problems: list[str] = []
    try:
        write_all(out_dir, meta, records)
    except SchemaError as exc:  # written, but not in the shipped format: the run must not pass
        problems.append(f"{exc}")
        write_all(out_dir, meta, records, check=False)
    # Our own JUnit (cell ids as names, a suite per driver), not pytest's item names.
    junit = out_dir / "junit.xml"
    junit.with_name("junit.xml.tmp").write_text(render_junit(records, meta), encoding="utf-8")
    junit.with_name("junit.xml.tmp").replace(junit)
    allure_dir = getattr(config.option, "allure_report_dir", None)
    if allure_dir and Path(allure_dir).is_dir():
        finish_allure_results(Path(allure_dir), records)
    color = config.get_terminal_writer().hasmarkup if hasattr(config, "get_terminal_writer") else False
    return render(build_matrix(meta, records), records, "terminal", color=color), problems
