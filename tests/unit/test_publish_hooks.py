"""The plugin hands records to the reports through hooks (fixtures/hookspecs.py) that the reports
plugin implements (reports/pytest_reports.py): every hook is implemented and really called by
pytest, the publishing hook writes every report file, and a run without the reports plugin stops
before it starts instead of finishing without a matrix."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from gpuconform.fixtures import hookspecs
from gpuconform.reports import pytest_reports
from gpuconform.reports.evidence import Evidence, Verdict

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]


def _hook_names(module: object) -> set[str]:
    return {
        name
        for name, _ in inspect.getmembers(module, inspect.isfunction)
        if name.startswith("pytest_gpuconform_")
    }


def test_every_declared_hook_is_implemented_and_pytest_collects_both_sides() -> None:
    """pytest only takes hooks named ``pytest_*``: a hook spelled otherwise is silently ignored,
    and the run would finish without its reports."""
    declared = _hook_names(hookspecs)
    assert declared == {"pytest_gpuconform_cell_recorded", "pytest_gpuconform_publish"}
    pm = pytest.PytestPluginManager()
    pm.add_hookspecs(hookspecs)
    pm.register(pytest_reports, "gpuconform-reports")
    for name in declared:
        impls = getattr(pm.hook, name).get_hookimpls()
        assert [impl.plugin_name for impl in impls] == ["gpuconform-reports"], name
    pm.check_pending()  # no implementation without its spec


def test_the_reports_plugin_is_inert_in_a_session_without_the_gpuconform_plugin() -> None:
    pm = pytest.PytestPluginManager()
    pm.register(pytest_reports, "gpuconform-reports")  # its hooks are optional: no spec, no error
    pm.check_pending()


def _records() -> list[Evidence]:
    return [
        Evidence(case="count.1", driver="podman", verdict=Verdict.PASS, reason="1 UUID"),
        Evidence(case="count.1", driver="host", verdict=Verdict.FAIL, reason="saw 2 GPUs"),
        Evidence(case="count.over", driver="podman", verdict=Verdict.REJECTED, reason="refused"),
    ]


def test_publishing_writes_the_matrix_files_and_junit_and_returns_the_terminal_matrix(tmp_path: Path) -> None:
    meta: dict[str, Any] = {"run_id": "r1", "host": {"host": "gpu-a"}, "profiles": {}, "drivers": {}}
    config = cast(pytest.Config, SimpleNamespace(option=SimpleNamespace(allure_report_dir=None)))
    summary, problems = pytest_reports.pytest_gpuconform_publish(
        config=config, out_dir=tmp_path, meta=meta, records=_records()
    )
    assert problems == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "junit.xml",
        "matrix.html",
        "matrix.json",
        "matrix.md",
    ]
    assert json.loads((tmp_path / "matrix.json").read_text())["drivers"] == ["podman", "host"]
    assert 'name="podman-count.1"' in (tmp_path / "junit.xml").read_text()
    assert "podman" in summary and "host" in summary


def test_an_active_run_without_the_reports_plugin_stops_at_configuration(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    result = pytester.runpytest_subprocess(
        "-p", "gpuconform.fixtures.plugin", "-p", "no:cacheprovider", "--co", "-q",
        str(REPO / "conformance"), "--rootdir", str(REPO), timeout=60,
    )  # fmt: skip
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    plugin = "gpuconform.reports.pytest_reports"
    result.stderr.fnmatch_lines([f"*the reports plugin {plugin} is not loaded*-p {plugin}*"])
