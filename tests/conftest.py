"""Shared fixtures of the harness's own tests.

Under CI (CI=true) an integration test that skips is turned into a failure: the engines are
installed there, so a skip means the setup broke and the suite would otherwise pass without
exercising anything real.

Tests that need root (mknod, /run/gpuconform, chroot, the engines) carry the ``root`` marker.
Without root they are skipped with a reason that says so, and the summary counts and names them,
so a contributor's laptop never runs a smaller suite than CI silently; under CI=true (root) a
root-marked test that skips for any reason fails. A test still written as
``skipif(os.geteuid() != 0, reason=...)`` is given the marker here from its reason's words, so it
is counted the same way.

The five folders are installed as ``gpuconform.*``; in a checkout the repository root is on
sys.path, so a bare ``reports.x`` import or ``resources.files("reports")`` works here and breaks in
every install. The finder below refuses those names for the whole test session (pytest itself
imports ``conformance/__init__.py`` under its bare name when collecting the suites: that one
package alone is let through).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import re
import sys
from collections.abc import Sequence
from types import ModuleType

import pytest

_BARE = ("conformance", "workloads", "fixtures", "drivers", "reports")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _NoBareNames(importlib.abc.MetaPathFinder):
    """Refuse our folders' bare import names (they exist only in a checkout)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        top = fullname.partition(".")[0]
        if top not in _BARE or fullname == "conformance":
            return None
        if path is None and not os.path.isdir(os.path.join(_REPO, top)):
            return None  # a package of that name from elsewhere (PyPI's fixtures, say)
        if path is not None and not any(os.path.abspath(p).startswith(_REPO) for p in path):
            return None
        raise ImportError(f"{fullname!r} is a checkout-only name: import gpuconform.{fullname}")


sys.meta_path.insert(0, _NoBareNames())

ROOT_MARKER = "root: needs root (mknod, /run/gpuconform, chroot, engines); never skipped under CI"
_ROOT_REASON = re.compile(r"\broot\b|\bmknod\b", re.IGNORECASE)
_LACKS_ROOT: pytest.StashKey[list[str]] = pytest.StashKey()
_CONFIG: list[pytest.Config] = []  # pytest_runtest_logreport is not handed the config


def _is_root() -> bool:
    return os.geteuid() == 0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", ROOT_MARKER)
    config.stash[_LACKS_ROOT] = []
    _CONFIG[:] = [config]


def _needs_root(item: pytest.Item) -> bool:
    if item.get_closest_marker("root") is not None:
        return True
    for mark in item.iter_markers("skipif"):
        condition = mark.args[0] if mark.args else mark.kwargs.get("condition")
        # the geteuid() != 0 form: evaluated at import, so True exactly where root is missing
        if _ROOT_REASON.search(str(mark.kwargs.get("reason", ""))) and isinstance(condition, bool):
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _needs_root(item) and item.get_closest_marker("root") is None:
            item.add_marker(pytest.mark.root)


def pytest_runtest_setup(item: pytest.Item) -> None:
    mark = item.get_closest_marker("root")
    if mark is None or _is_root():
        return
    reason = mark.kwargs.get("reason") or (mark.args[0] if mark.args else "this test")
    if os.environ.get("CI") == "true":
        pytest.fail(f"root-marked test run without root under CI=true: {reason}", pytrace=False)
    pytest.skip(f"needs root: {reason}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if not report.skipped or hasattr(report, "wasxfail"):
        return report
    root = item.get_closest_marker("root") is not None
    if os.environ.get("CI") == "true" and (root or item.get_closest_marker("integration") is not None):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        kind = "root-marked" if root else "integration"
        report.longrepr = f"{kind} test skipped under CI=true (setup is broken?): {reason}"
    elif root and not _is_root():
        report.user_properties.append(("lacks_root", True))  # travels from xdist workers too
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and ("lacks_root", True) in report.user_properties:
        _CONFIG[0].stash[_LACKS_ROOT].append(report.nodeid)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    lacking = config.stash.get(_LACKS_ROOT, [])
    if not lacking:
        return
    terminalreporter.section("skipped for lack of root", sep="-", yellow=True)
    terminalreporter.line(f"{len(lacking)} test(s) need root and were skipped (CI runs them as root):")
    for nodeid in lacking:
        terminalreporter.line(f"  {nodeid}")
