"""After a run: doctor's missing and wrong lines for each driver the run found unavailable.

A skipped column says only "not available: <reason>"; what to install or fix is doctor's job, so
``gpuconform run`` prints these lines under its matrix instead of leaving the operator to guess.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from gpuconform.conformance.doctor.runner import DoctorOptions, run_doctor
from gpuconform.drivers.base import HarnessError


def unavailable_drivers(results: Path) -> list[str]:
    """The drivers a run's results.json records as not available (empty when unreadable)."""
    try:
        doc = json.loads(Path(results).read_text())
    except (OSError, ValueError):
        return []
    drivers = doc.get("drivers") if isinstance(doc, dict) else None
    if not isinstance(drivers, dict):
        return []
    return sorted(
        n for n, info in drivers.items() if isinstance(info, dict) and info.get("available") is False
    )


def unavailable_hints(
    results: Path,
    *,
    sim: str = "auto",
    sim_instance: str | None = None,
    driver_options: Mapping[str, str] | None = None,
) -> list[str]:
    """One line per missing or wrong prerequisite of each unavailable driver, ``driver: line``."""
    down = unavailable_drivers(results)
    if not down:
        return []
    try:
        opts = DoctorOptions(
            drivers=tuple(down), sim=sim, sim_instance=sim_instance, driver_options=dict(driver_options or {})
        )
        report = run_doctor(opts)
    except HarnessError as exc:  # the run's own exit status must not change because of a hint
        return [f"gpuconform doctor could not check {', '.join(down)}: {exc}"]
    lines = [f"  {c.line()}" for c in report.host if c.status.blocking]
    for driver in report.drivers:
        lines += [f"  {driver.driver}: {c.line()}" for c in driver.problems if c.what != "host"]
    if lines:
        lines.insert(0, f"gpuconform doctor on the unavailable driver(s) {', '.join(down)}:")
    return lines
