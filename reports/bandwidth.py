"""The bandwidth-parity benchmark's table: sandbox/host ratios per adapter and metric.

Read from the ``cuda.bandwidth`` evidence records (their ``parsed.ratios`` or the judge's
``parsed.ratios``/``sandbox``/``host`` figures). On a simulated host the ratios compare numpy
copies inside and outside the sandbox: the harness's own overhead, never a verdict.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gpuconform.reports.evidence import Evidence

METRICS = ("h2d_gbps", "d2h_gbps", "d2d_gbps")


def _ratio_rows(parsed: Mapping[str, Any]) -> Iterable[tuple[str, str, float | None]]:
    ratios = parsed.get("ratios") or {}
    for uuid, per_metric in sorted(ratios.items()):
        for metric in METRICS:
            value = per_metric.get(metric)
            if isinstance(value, Mapping):  # informational form: {"sandbox", "host", "ratio"}
                value = value.get("ratio")
            yield uuid, metric, float(value) if isinstance(value, int | float) else None


def bandwidth_table(records: Sequence[Evidence]) -> str:
    """One line per (driver, GPU) with each metric's ratio, and the verdict it got."""
    lines = [f"{'driver':<14}{'gpu':<42}" + "".join(f"{m:>10}" for m in METRICS) + "  verdict"]
    found = False
    for record in sorted(records, key=lambda r: r.driver):
        if record.case != "cuda.bandwidth":
            continue
        rows: dict[str, dict[str, float | None]] = {}
        for uuid, metric, value in _ratio_rows(record.parsed):
            rows.setdefault(uuid, {})[metric] = value
        if not rows:
            lines.append(
                f"{record.driver:<14}{'-':<42}"
                + f"{'-':>10}" * len(METRICS)
                + f"  {record.verdict.value}: {record.reason}"
            )
            continue
        found = True
        for uuid, values in rows.items():
            cells = "".join(
                f"{values[m]:>10.2f}" if values.get(m) is not None else f"{'-':>10}" for m in METRICS
            )
            note = " (simulated: not judged)" if record.simulated else ""
            lines.append(f"{record.driver:<14}{uuid:<42}{cells}  {record.verdict.value}{note}")
    if not found:
        lines.append("no bandwidth figures in these results (run: gpuconform bench)")
    return "\n".join(lines)
