"""Benchmark: the qemu column's serial time, this tree against another checkout, alternated.

Not a test (CI times nothing): run it by hand, as root, after setup, on an otherwise idle
machine::

    .venv/bin/python tests/bench/qemu_column.py [--rounds 2] [--drivers qemu] [--other /path/to/checkout]

Each round runs ``gpuconform run --drivers qemu -n 0`` on this tree, then (with ``--other``) on
the other checkout, so a change in the machine's load hits both alike. The other checkout runs
from its own folders through a temporary ``gpuconform/`` view of them (what the editable
install maps), with this environment's dependencies; ``git worktree add /tmp/old <rev>`` makes
one. Prints each run's wall time and verdict counts, then the medians: a faster column that
passes fewer cells shows at once.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("conformance", "fixtures", "drivers", "workloads", "reports")


def view_of(checkout: Path, into: Path) -> Path:
    """A folder whose ``gpuconform/`` maps the checkout's five folders, as the install does."""
    package = into / "gpuconform"
    package.mkdir(parents=True)
    for name in FOLDERS:
        (package / name).symlink_to(checkout / name)
    return into


def run_column(checkout: Path, drivers: str, out: Path, view: Path | None) -> tuple[float, Counter[str]]:
    env = dict(os.environ)
    if view is not None:
        env["PYTHONPATH"] = str(view)
        env["PYTHONNOUSERSITE"] = "1"
    argv = [sys.executable, "-m", "gpuconform.conformance.cli", "run", "--drivers", drivers, "-n", "0"]
    started = time.monotonic()
    subprocess.run(
        [*argv, "--out", str(out)],
        cwd=checkout,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=1800,
        check=False,
    )
    wall = time.monotonic() - started
    try:
        records = json.loads((out / "results.json").read_text())["records"]
    except (OSError, ValueError, KeyError):
        return wall, Counter({"no results": 1})
    return wall, Counter(r["verdict"] for r in records)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--drivers", default="qemu")
    parser.add_argument("--other", type=Path, help="another checkout to alternate with (before/after)")
    args = parser.parse_args()
    walls: dict[str, list[float]] = {"this": [], "other": []}
    with tempfile.TemporaryDirectory(prefix="gpuconform-qemu-column-") as tmp:
        base = Path(tmp)
        view = None
        if args.other is not None:
            if os.path.realpath(sys.executable).startswith(str(REPO)) and (REPO / ".venv").is_dir():
                print("note: the other checkout runs with this venv's dependencies", flush=True)
            view = view_of(args.other.resolve(), base / "view")
        for i in range(args.rounds):
            runs = [("this", REPO, None)] + ([("other", args.other.resolve(), view)] if view else [])
            for label, checkout, v in runs:
                wall, verdicts = run_column(checkout, args.drivers, base / f"{label}-{i}", v)
                walls[label].append(wall)
                shown = ", ".join(f"{k} {n}" for k, n in sorted(verdicts.items()))
                print(f"round {i + 1} {label:>5}: {wall:6.1f} s  {shown}", flush=True)
    for label, values in walls.items():
        if values:
            print(f"{label}: median {statistics.median(values):.1f} s over {len(values)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
