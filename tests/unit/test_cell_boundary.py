"""Suites talk only to their Cell (issue 13).

A suite that provisions through the adapter, edits the cell's private lists or imports a driver
module bypasses what the Cell does for every sandbox (validation, labels, lease-wait timing,
the profile's must-reject judgement, closing at the end of the case). This reads every suite
module's source (conformance/test_*.py and the helpers they share) and names each bypass.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gpuconform.conformance

SUITES = Path(gpuconform.conformance.__file__).resolve().parent
# The suites and the helpers that act for them on a Cell.
SUITE_FILES = sorted([*SUITES.glob("test_*.py"), SUITES / "observe.py", SUITES / "compute.py"])
# What a suite may import from below the Cell: the contract's types and errors, the request
# model and the inventory. Never an adapter, the plugin, the runtime or the simulator.
ALLOWED = {
    "gpuconform.drivers.base",
    "gpuconform.drivers.errors",
    "gpuconform.drivers.request",
    "gpuconform.drivers.inventory",
    "gpuconform.fixtures.cell",
}
GUARDED = ("gpuconform.drivers", "gpuconform.fixtures")
# Attributes that reach past the Cell: the adapter and the runtime it holds, and provisioning.
REACHING = {"adapter", "runtime", "provision"}


def bypasses(source: str) -> list[str]:
    """Each place in ``source`` that goes around the Cell, as ``line: what``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            if node.attr in REACHING:
                found.append(f"{node.lineno}: .{node.attr}")
            elif node.attr.startswith("_") and not node.attr.startswith("__"):
                found.append(f"{node.lineno}: private .{node.attr}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [
                f"{node.lineno}: imports {m}" for m in modules if m.startswith(GUARDED) and m not in ALLOWED
            ]
    return found


@pytest.mark.parametrize("path", SUITE_FILES, ids=lambda p: p.name)
def test_suite_talks_only_to_its_cell(path: Path) -> None:
    assert bypasses(path.read_text()) == []


def test_the_suites_are_found() -> None:
    names = {p.name for p in SUITE_FILES}
    assert {"test_isolation.py", "test_compute.py", "test_counts.py", "observe.py"} <= names


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("third = cell.adapter.provision(req)", ["1: .provision", "1: .adapter"]),
        ("cell._own.append(third)", ["1: private ._own"]),
        ("host = cell.runtime.adapter('host')", ["1: .adapter", "1: .runtime"]),
        ("from gpuconform.drivers.podman import PodmanAdapter", ["1: imports gpuconform.drivers.podman"]),
        ("import gpuconform.fixtures.runtime", ["1: imports gpuconform.fixtures.runtime"]),
        (
            "from gpuconform.fixtures.sim.simgpu.layout import X",
            ["1: imports gpuconform.fixtures.sim.simgpu.layout"],
        ),
        ("from gpuconform.drivers.base import Sandbox\nsandbox = cell.own(req)\nx.__class__", []),
    ],
)
def test_each_bypass_is_named(source: str, expected: list[str]) -> None:
    assert sorted(bypasses(source)) == sorted(expected)
