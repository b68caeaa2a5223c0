"""The plugin end to end on a tiny suite: item ids, verdict words, results.json, cleanup.

The suite holds validation-only cases (no sandbox is started) and runs on the ``host`` driver
against the ``single`` simulated host, which the run brings up under /run/gpuconform/sim and
removes again; it needs root for that.
"""

from __future__ import annotations

import json
import os
import secrets
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]
SIM_BASE = Path("/run/gpuconform/sim")

SUITE = """
from gpuconform.conformance.catalogue import case
from gpuconform.drivers.request import GpuRequest


@case("count.zero")
def test_count_zero(cell):
    cell.expect_rejection(GpuRequest.of_count(0), validation=True, must_name="greater than 0")


@case("device.empty")
def test_device_empty(cell):
    cell.expect_rejection(GpuRequest.of_ids([""]), validation=True, must_name="non-empty")


@case("count.over")
def test_count_over(cell):
    raise AssertionError("the host profile declares count.* unsupported; this must not run")
"""


def _plugin_args() -> list[str]:
    installed = any(ep.name == "gpuconform" for ep in entry_points(group="pytest11"))
    return (
        [] if installed else ["-p", "gpuconform.fixtures.plugin", "-p", "gpuconform.reports.pytest_reports"]
    )


class Run:
    """Where one subprocess run keeps its state, results and simulated host."""

    def __init__(self, pytester: pytest.Pytester, tmp_path: Path) -> None:
        self.pytester = pytester
        self.run_id = "ut" + secrets.token_hex(4)
        self.state = tmp_path / "state"
        self.out = tmp_path / "out"
        self.cdi = tmp_path / "cdi"

    def __call__(self, *args: str) -> pytest.RunResult:
        return self.pytester.runpytest_subprocess(
            *_plugin_args(), "-p", "no:cacheprovider",
            "--gpuconform-drivers", "host", "--gpuconform-sim", "single",
            "--gpuconform-out", str(self.out), "--gpuconform-cdi-dir", str(self.cdi),
            "--gpuconform-lease-dir", str(self.state / "leases"),
            *args, timeout=120,
        )  # fmt: skip


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Run:
    runner = Run(pytester, tmp_path)
    monkeypatch.setenv("GPUCONFORM_STATE", str(runner.state))
    monkeypatch.setenv("GPUCONFORM_RUN_ID", runner.run_id)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    pytester.makepyfile(test_suite=SUITE)
    return runner


@pytest.mark.skipif(os.geteuid() != 0, reason="the simulated host lives under /run/gpuconform (root only)")
def test_suite_runs_one_item_per_case_with_verdict_words_and_results(run: Run) -> None:
    result = run("-v")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.OK, out + result.stderr.str()
    for line in (
        r"test_suite\.py::test_count_zero\[host-count\.zero\] REJECTED\b.*",
        r"test_suite\.py::test_device_empty\[host-device\.empty\] REJECTED\b.*",
        r"test_suite\.py::test_count_over\[host-count\.over\] UNSUPPORTED\b.*",
    ):
        result.stdout.re_match_lines([line])
    assert "count::zero" not in out and "device::empty" not in out
    assert "gpuconform matrix" in out

    results = json.loads((run.out / "results.json").read_text())
    records = {(r["driver"], r["case"]): r for r in results["records"]}
    assert len(results["records"]) == 3
    assert set(records) == {("host", "count.zero"), ("host", "device.empty"), ("host", "count.over")}
    zero = records["host", "count.zero"]
    assert zero["verdict"] == "rejected"
    assert zero["reason"] == "rejected by validation: gpu count must be greater than 0"
    assert zero["request"] == {"gpu": True, "count": 0, "device_ids": []}
    assert zero["simulated"] is True
    assert records["host", "device.empty"]["verdict"] == "rejected"
    assert records["host", "count.over"]["verdict"] == "unsupported"

    # The run removed what it brought up: its simulated host, its CDI spec, its run directory.
    assert not (SIM_BASE / f"r{run.run_id}").exists()
    assert not run.cdi.exists() or not any(run.cdi.iterdir())
    assert not (run.state / "runs" / run.run_id).exists()


def test_k_selects_items_by_driver_and_case_id(run: Run) -> None:
    result = run("--collect-only", "-q", "-k", "host and zero")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    ids = [line for line in result.stdout.lines if line.startswith("test_suite.py::")]
    assert ids == ["test_suite.py::test_count_zero[host-count.zero]"]
    assert not (run.state / "runs" / run.run_id).exists()


def test_one_item_per_driver_and_case(run: Run) -> None:
    result = run("--collect-only", "-q", "--gpuconform-drivers", "podman")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    ids = sorted(line for line in result.stdout.lines if line.startswith("test_suite.py::"))
    assert ids == sorted(
        f"test_suite.py::test_{case.replace('.', '_')}[{driver}-{case}]"
        for driver in ("host", "podman")
        for case in ("count.zero", "device.empty", "count.over")
    )


def test_k_selects_one_driver_and_one_dotted_case(run: Run) -> None:
    result = run(
        "--collect-only", "-q", "--gpuconform-drivers", "host,podman", "-k", "podman and device.empty"
    )
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    ids = [line for line in result.stdout.lines if line.startswith("test_suite.py::")]
    assert ids == ["test_suite.py::test_device_empty[podman-device.empty]"]


DROP_ONE = """
def pytest_runtest_protocol(item, nextitem):
    # What a scheduler that loses an item looks like: the cell never runs, nothing is reported.
    return True if item.name.endswith("[host-device.empty]") else None
"""

CLAIM_TWICE = """

@case("count.zero")
def test_count_zero_again(cell):
    cell.expect_rejection(GpuRequest.of_count(0), validation=True, must_name="greater than 0")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the simulated host lives under /run/gpuconform (root only)")
def test_a_cell_that_never_runs_fails_the_run_naming_it(run: Run) -> None:
    run.pytester.makeconftest(DROP_ONE)
    result = run()
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out
    result.stdout.fnmatch_lines(
        ["*INCOMPLETE RUN*", "error: cell host-device.empty was selected but produced no*"]
    )
    records = {r["case"]: r for r in json.loads((run.out / "results.json").read_text())["records"]}
    assert records["device.empty"]["verdict"] == "error"
    assert records["count.zero"]["verdict"] == "rejected"


@pytest.mark.skipif(os.geteuid() != 0, reason="the simulated host lives under /run/gpuconform (root only)")
def test_two_items_claiming_one_cell_fail_the_run_naming_it(run: Run) -> None:
    run.pytester.makepyfile(test_suite=SUITE + CLAIM_TWICE)
    result = run()
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out
    result.stdout.fnmatch_lines(
        ["error: cell host-count.zero produced 2 evidence records (rejected, rejected)*"]
    )
    records = json.loads((run.out / "results.json").read_text())["records"]
    assert [r["verdict"] for r in records if r["case"] == "count.zero"] == ["error"]


def test_default_columns_leave_vm_passthrough_out_on_a_real_gpu_host(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuconform.fixtures import plugin
    from gpuconform.fixtures.hostgpus import NvidiaPresence, PciNvidia
    from gpuconform.fixtures.settings import Settings
    from gpuconform.fixtures.sim import environment

    gpu = NvidiaPresence(functions=(PciNvidia("0000:18:00.0", 0x030200, "nvidia"),), control_node=True)
    monkeypatch.setattr(environment, "detect_nvidia", lambda *roots: gpu)
    real = plugin._drivers(Settings())
    assert "qemu" not in real and "qemu-single" not in real and "podman" in real
    assert "qemu" in plugin._drivers(Settings(drivers=("qemu",)))  # asked for by name: it runs
    assert "qemu" in plugin._drivers(Settings(sim="h100x4"))  # an explicit simulated host keeps it
    nothing = NvidiaPresence(functions=(), control_node=False)
    monkeypatch.setattr(environment, "detect_nvidia", lambda *roots: nothing)
    assert "qemu" in plugin._drivers(Settings())
