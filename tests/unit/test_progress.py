"""Per-column progress lines: node id parsing, counting, when a line is due, and the hooks under xdist."""

from __future__ import annotations

import re

import pytest

from gpuconform.fixtures.progress import ColumnProgress, cell_of_nodeid

pytest_plugins = ["pytester"]

DRIVERS = ["qemu", "qemu-single", "docker"]


def test_node_ids_map_to_the_longest_matching_driver() -> None:
    assert cell_of_nodeid("t.py::test_c[qemu-single-count.2]", DRIVERS) == ("qemu-single", "count.2")
    assert cell_of_nodeid("t.py::test_c[qemu-count.2]", DRIVERS) == ("qemu", "count.2")
    assert cell_of_nodeid("t.py::test_c[docker-smi.all]", DRIVERS) == ("docker", "smi.all")
    assert cell_of_nodeid("t.py::test_c[podman-count.2]", DRIVERS) is None  # not in this run
    assert cell_of_nodeid("t.py::test_plain", DRIVERS) is None
    assert cell_of_nodeid("t.py::test_c[qemu-]", DRIVERS) is None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _finish(progress: ColumnProgress, nodeid: str, seconds: float) -> str | None:
    """One cell's three reports, as pytest sends them."""
    assert progress.record(nodeid, "setup", seconds / 2) is None
    assert progress.record(nodeid, "call", seconds / 2) is None
    return progress.record(nodeid, "teardown", 0.0)


def test_counts_per_column_and_the_slowest_cell() -> None:
    clock = Clock()
    progress = ColumnProgress(DRIVERS, clock=clock, period_s=30)
    ids = [f"t.py::test[{d}-{c}]" for d in ("docker", "qemu") for c in ("a.1", "b.2")]
    progress.set_totals([*ids, "t.py::test_other"])
    progress.set_totals(ids[:1])  # a second worker's collection changes nothing
    assert progress.line() == "gpuconform progress: qemu 0/2 | docker 0/2"  # the run's column order

    clock.now = 5
    assert _finish(progress, "t.py::test[qemu-a.1]", 12.0) is None  # neither complete nor due
    clock.now = 10
    line = _finish(progress, "t.py::test[qemu-b.2]", 3.0)  # the column is complete: printed at once
    assert line == "gpuconform progress: qemu 2/2 (slowest a.1 12.0s) | docker 0/2"
    clock.now = 20
    assert _finish(progress, "t.py::test[docker-a.1]", 1.0) is None  # 10 s since the last line
    clock.now = 41
    assert _finish(progress, "t.py::test[docker-b.2]", 2.5) is not None
    assert progress.columns["docker"].slowest == ("b.2", 2.5)


def test_a_line_is_due_after_the_period_without_a_completed_column() -> None:
    clock = Clock()
    progress = ColumnProgress(["podman"], clock=clock, period_s=30)
    progress.set_totals([f"t.py::t[podman-c.{i}]" for i in range(3)])
    clock.now = 29
    assert _finish(progress, "t.py::t[podman-c.0]", 1.0) is None
    clock.now = 31
    line = _finish(progress, "t.py::t[podman-c.1]", 1.0)
    assert line == "gpuconform progress: podman 2/3 (slowest c.0 1.0s)"
    clock.now = 32
    assert _finish(progress, "t.py::t[podman-c.2]", 0.5) is not None  # complete


CONFTEST = """
import pytest
from gpuconform.fixtures.progress import ColumnProgress

def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # as fixtures/plugin.py: the controller only
        config.pluginmanager.register(ColumnProgress(["qemu", "qemu-single"], period_s=3600), "progress")
"""

SUITE = """
import time
import pytest

@pytest.mark.parametrize("n", [
    pytest.param(0.0, id="qemu-fast.1"),
    pytest.param(0.4, id="qemu-slow.2"),
    pytest.param(0.0, id="qemu-single-fast.1"),
])
def test_cell(n):
    time.sleep(n)
"""


@pytest.mark.parametrize("workers", [[], ["-p", "xdist.plugin", "-n", "2"]], ids=["serial", "xdist"])
def test_the_controller_prints_each_completed_column(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, workers: list[str]
) -> None:
    """Under xdist the cells run in workers; the line must still come, from the controller."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # as `gpuconform run`: plugins by -p
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_cells=SUITE)
    result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider", *workers)
    result.assert_outcomes(passed=3)
    lines = [line for line in result.outlines if "gpuconform progress" in line]
    assert len(lines) == 2, result.outlines  # one per completed column, none per plain cell
    final = lines[-1]
    assert re.search(r"qemu 2/2 \(slowest slow\.2 0\.[4-9]\d*s\)", final), final
    assert "qemu-single 1/1 (slowest fast.1" in final
