"""Benchmark: the full clean matrix serially and in parallel, on one simulated host, in one session.

Not a test (CI times nothing): run it by hand on an otherwise idle machine, as root, after setup::

    .venv/bin/python tests/bench/parallel_matrix.py [--workers 2] [--sim h100x4] [-- extra run args]

It runs ``gpuconform run`` twice on the same tree (``-n 0``, then ``-n WORKERS``), every column
sharing one simulated host's GPUs as on a real machine, and prints: both wall times and their
ratio; per column the sum and the maximum of ``lease_wait_s``; the provisions against the shapes
they serve (``shared``: sandboxes that cells of one request shape share, against the number of
such shapes, which must be equal; ``own``: sandboxes a case starts for itself, which it needs by
definition); and the verdict counts, so a change that makes the matrix faster by skipping or
failing cells shows at once. ``--keep DIR`` keeps both runs' results for a closer look.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from gpuconform.conformance.catalogue import BY_ID


def run_matrix(workers: int, sim: str, extra: list[str], out: Path) -> float:
    argv = [
        sys.executable,
        "-m",
        "gpuconform.conformance.cli",
        "run",
        "--sim",
        sim,
        "-n",
        str(workers),
        "--out",
        str(out),
    ]
    started = time.monotonic()
    subprocess.run(
        [*argv, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=3600, check=False
    )
    return time.monotonic() - started


def columns(results: Path) -> dict[str, dict[str, Any]]:
    records = json.loads(results.read_text())["records"]
    out: dict[str, dict[str, Any]] = defaultdict(
        lambda: {
            "cells": 0,
            "waits": [],
            "shared": set(),
            "shapes": set(),
            "own": set(),
            "verdicts": Counter(),
        }
    )
    for rec in records:
        col = out[rec["driver"]]
        col["cells"] += 1
        timings = rec.get("timings", {})
        col["waits"].append(float(timings.get("lease_wait_s", 0.0)))
        sandboxes = [c["sandbox"] for c in rec.get("commands", []) if c.get("sandbox")]
        info = BY_ID.get(rec["case"])
        if sandboxes and info is not None and info.shares and timings.get("shared_sandbox") == 1.0:
            # The first sandbox is the shared one; any other (cuda.bandwidth's bare-host
            # reference) is the cell's own.
            col["shapes"].add(f"{info.shares}:{info.image}")
            col["shared"].add(sandboxes[0])
            sandboxes = sandboxes[1:]
        col["own"].update(sandboxes)
        col["verdicts"][rec["verdict"]] += 1
    return out


def report(label: str, wall: float, cols: dict[str, dict[str, Any]]) -> None:
    print(f"\n{label}: {wall:.0f} s")
    head = f"  {'column':<14}{'cells':>6}{'shared/shapes':>14}{'own':>5}{'wait sum s':>11}{'wait max s':>11}"
    print(f"{head}  verdicts")
    for name, col in cols.items():
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(col["verdicts"].items()))
        shared = f"{len(col['shared'])}/{len(col['shapes'])}"
        print(
            f"  {name:<14}{col['cells']:>6}{shared:>14}{len(col['own']):>5}"
            f"{sum(col['waits']):>11.1f}{max(col['waits'], default=0):>11.1f}  {verdicts}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sim", default="h100x4")
    parser.add_argument("--keep", type=Path, help="keep both runs' results here (serial/, parallel/)")
    parser.add_argument("extra", nargs="*", help="more `gpuconform run` arguments (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpuconform-bench-") as tmp:
        base = args.keep or Path(tmp)
        serial_out, parallel_out = base / "serial", base / "parallel"
        serial = run_matrix(0, args.sim, args.extra, serial_out)
        parallel = run_matrix(args.workers, args.sim, args.extra, parallel_out)
        report("-n 0", serial, columns(serial_out / "results.json"))
        report(f"-n {args.workers}", parallel, columns(parallel_out / "results.json"))
    print(f"\nspeed-up -n 0 / -n {args.workers}: {serial / parallel:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
