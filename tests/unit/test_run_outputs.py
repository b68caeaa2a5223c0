"""What a run leaves in --out, through the plugin end to end on a tiny validation-only suite.

A finished run replaces the previous results as a whole; an interrupted one leaves --out as it
was and its finished cells beside it as a partial results.json (that matrix labels and gate
refuses); a bad option stops plain pytest with its usage status and creates nothing; an adapter
that cannot be imported yields records like any unavailable driver. The runs use the ``host``
driver on the ``single`` simulated host, brought up under /run/gpuconform (root only).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

import pytest

from gpuconform.conformance import cli

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]

SUITE = """
from gpuconform.conformance.catalogue import case
from gpuconform.drivers.request import GpuRequest


@case("count.zero")
def test_count_zero(cell):
    cell.expect_rejection(GpuRequest.of_count(0), validation=True, must_name="greater than 0")


@case("device.empty")
def test_device_empty(cell):
    if cell.driver == "host" and __import__("os").environ.get("UT_INTERRUPT"):
        raise KeyboardInterrupt
    cell.expect_rejection(GpuRequest.of_ids([""]), validation=True, must_name="non-empty")
"""

# Registers a driver whose module does not exist: what a third-party adapter without its extra is.
BROKEN_CONFTEST = """
from gpuconform.drivers import registry

registry.BUILTIN["broken"] = "gpuconform_no_such_module:Adapter"
"""


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


class Run:
    def __init__(self, pytester: pytest.Pytester, tmp_path: Path) -> None:
        self.pytester = pytester
        self.run_id = "ut" + secrets.token_hex(4)
        self.state = tmp_path / "state"
        self.out = tmp_path / "out"
        self.cdi = tmp_path / "cdi"
        self.out.mkdir()
        (self.out / "results.json").write_text(json.dumps({"schema": 1, "run_id": "previous", "records": []}))
        (self.out / "only-in-the-previous-run.txt").write_text("previous\n")

    @property
    def staging(self) -> Path:
        return self.out.parent / f"out.partial-{self.run_id}"

    def __call__(self, *args: str, drivers: str = "host") -> pytest.RunResult:
        return self.pytester.runpytest_subprocess(
            "-p", "gpuconform.fixtures.plugin", "-p", "gpuconform.reports.pytest_reports",
            "-p", "no:cacheprovider",
            "--gpuconform-drivers", drivers, "--gpuconform-sim", "single",
            "--gpuconform-out", str(self.out), "--gpuconform-cdi-dir", str(self.cdi),
            "--gpuconform-lease-dir", str(self.state / "leases"),
            *args, timeout=120,
        )  # fmt: skip


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Run:
    runner = Run(pytester, tmp_path)
    monkeypatch.setenv("GPUCONFORM_STATE", str(runner.state))
    monkeypatch.setenv("GPUCONFORM_RUN_ID", runner.run_id)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    pytester.makepyfile(test_suite=SUITE)
    return runner


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the simulated host lives under /run (root only)")


@root_only
def test_a_finished_run_replaces_the_previous_results_as_a_whole(run: Run) -> None:
    result = run()
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    doc = json.loads((run.out / "results.json").read_text())
    assert doc["run_id"] == run.run_id and "partial" not in doc
    assert {(r["driver"], r["case"]) for r in doc["records"]} == {
        ("host", "count.zero"),
        ("host", "device.empty"),
    }
    assert not (run.out / "only-in-the-previous-run.txt").exists()
    assert (run.out / "junit.xml").is_file() and (run.out / "matrix.json").is_file()
    assert [p.name for p in run.out.parent.iterdir() if p.name.startswith(("out.", ".out."))] == []


@root_only
def test_an_interrupted_run_keeps_out_and_leaves_a_partial_file(
    run: Run, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(run.out)
    monkeypatch.setenv("UT_INTERRUPT", "1")
    result = run()
    assert result.ret == pytest.ExitCode.INTERRUPTED, result.stdout.str()
    assert _snapshot(run.out) == before, "an interrupted run changed --out"
    partial = json.loads((run.staging / "results.json").read_text())
    assert partial["partial"] is True
    assert [(r["driver"], r["case"]) for r in partial["records"]] == [("host", "count.zero")]
    assert partial["missing"] == ["host-device.empty"]

    assert cli.main(["matrix", str(run.staging / "results.json"), "--format", "md"]) == 0
    captured = capsys.readouterr()
    assert "PARTIAL RUN" in captured.out and "host-device.empty" in captured.out
    assert cli.main(["gate", str(run.out / "results.json"), str(run.staging / "results.json")]) == 2
    assert "PARTIAL RUN" in capsys.readouterr().err


@root_only
def test_a_bad_option_stops_plain_pytest_with_its_usage_status_and_creates_nothing(run: Run) -> None:
    before = _snapshot(run.out.parent)
    result = run("--gpuconform-sim-fault", "wrong-gpu:5")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    lines = [line for line in result.stderr.lines if line.strip()]
    assert lines == [
        "ERROR: --gpuconform-sim-fault: fault wrong-gpu:5 names GPU 5, but the host has 1 "
        "(hint: use an index in 0)"
    ], result.stderr.str()
    assert _snapshot(run.out.parent) == before
    assert not (run.state / "runs" / run.run_id).exists()


@root_only
@pytest.mark.parametrize(("required", "verdict", "code"), [(False, "skip", 0), (True, "error", 1)])
def test_an_adapter_that_cannot_be_loaded_gets_records(
    run: Run, required: bool, verdict: str, code: int
) -> None:
    run.pytester.makeconftest(BROKEN_CONFTEST)
    result = run(*(["--gpuconform-require-driver", "broken"] if required else []), drivers="host,broken")
    assert result.ret == code, result.stdout.str() + result.stderr.str()
    doc = json.loads((run.out / "results.json").read_text())
    broken = [r for r in doc["records"] if r["driver"] == "broken"]
    assert {r["case"] for r in broken} == {"count.zero", "device.empty"}
    for record in broken:
        assert record["verdict"] == verdict
        assert "driver broken cannot be loaded" in record["reason"]
        assert "gpuconform_no_such_module" in record["reason"]
