"""Markdown rendering of a matrix (GitHub-flavoured), for PR comments and job summaries.

The symbols and summary wording defined here are shared by the terminal and HTML renderers, so
all three say the same thing in the same words.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gpuconform.reports.evidence import Verdict
from gpuconform.reports.matrix import Cell, Matrix

SYMBOLS: Mapping[Verdict, str] = {
    Verdict.PASS: "✅",
    Verdict.REJECTED: "🚫",
    Verdict.FAIL: "❌",
    Verdict.ERROR: "⚠️",
    Verdict.INCONCLUSIVE: "❓",
    Verdict.SKIP: "⏭",
    Verdict.UNSUPPORTED: "—",
}
NOT_RUN = "· not run"
ALWAYS_COUNTED = ("pass", "rejected", "skip", "fail")
SUMMARY_ORDER = (*ALWAYS_COUNTED, "error", "inconclusive", "unsupported")


def cell_label(cell: Cell | None) -> str:
    return f"{SYMBOLS[cell.verdict]} {cell.verdict.value}" if cell else NOT_RUN


def summary_text(counts: Mapping[str, int]) -> str:
    """``14 pass, 5 rejected, 2 skip, 0 fail`` plus any other verdict that occurred."""
    shown = [k for k in SUMMARY_ORDER if k in ALWAYS_COUNTED or counts.get(k)]
    return ", ".join(f"{counts.get(k, 0)} {k}" for k in shown)


def simulated_banner(m: Matrix) -> str:
    hosts = [h for h in m.hosts if m.simulated.get(h)]
    if not hosts:
        return ""
    named = ", ".join(hosts)
    return (
        f"SIMULATED: results from {named} come from the simulated GPU host; they are not hardware evidence."
    )


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def join_values(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list | tuple | set):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)


def host_line(m: Matrix, host: str) -> str:
    """``2 GPU(s): names · driver 550.54 · run r1 (start → finish)`` from the host identity."""
    ident, run = m.hosts.get(host, {}), m.runs.get(host, {})
    parts = []
    if ident.get("gpu_count") is not None:
        parts.append(f"{ident['gpu_count']} GPU(s): {join_values(ident.get('gpu_names')) or '?'}")
    if ident.get("driver_versions"):
        parts.append(f"driver {join_values(ident['driver_versions'])}")
    if ident.get("source"):
        parts.append(f"inventory from {ident['source']}")
    if run.get("run_id"):
        span = f"{run.get('started_at') or '?'} → {run.get('finished_at') or '?'}"
        parts.append(f"run {run['run_id']} ({span})")
    return " · ".join(parts)


def profile_text(profile: Mapping[str, Any] | None) -> str:
    """Only what differs from the default (every case supported), so the table stays short."""
    if not profile:
        return "no profile"
    by_kind: dict[str, list[str]] = {}
    for case, expectation in sorted((profile.get("cases") or {}).items()):
        if expectation != "supported":
            by_kind.setdefault(str(expectation), []).append(case)
    parts = [f"{k}: {', '.join(v)}" for k, v in sorted(by_kind.items())]
    parts.append("exclusive" if profile.get("exclusive", True) else "shared")
    parts.append(f"oversubscribe={profile.get('oversubscribe', 'reject')}")
    if profile.get("notes"):
        parts.append(one_line(profile["notes"]))
    return "; ".join(parts)


def availability(info: Mapping[str, Any]) -> str:
    if not info:
        return "?"
    if info.get("available"):
        return "yes"
    return f"no: {info['reason']}" if info.get("reason") else "no"


def _md(text: str) -> str:
    """Neutralise the characters that would break a table cell or inject markup."""
    return one_line(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _row(values: Iterable[str]) -> str:
    return "| " + " | ".join(values) + " |"


def render_markdown(m: Matrix) -> str:
    out = ["# GPU conformance matrix", ""]
    banner = simulated_banner(m)
    if banner:
        out += [f"> ⚠️ **{banner}**", ""]
    for host in m.hosts:
        drivers = [d for d in m.drivers if any(k[0] == host and k[1] == d for k in m.cells)]
        title = f"## Host `{host}`" + (" (SIMULATED)" if m.simulated.get(host) else "")
        out += [title, ""]
        if host_line(m, host):
            out += [host_line(m, host), ""]
        out.append(_row(["case", *drivers]))
        out.append(_row(["---"] * (len(drivers) + 1)))
        for case in m.cases:
            cells = [m.cell(host, d, case) for d in drivers]
            if any(cells):
                out.append(_row([f"`{case}`", *(cell_label(c) for c in cells)]))
        out.append("")
        out += [f"- **{d}**: {summary_text(m.counts(d, host))}" for d in drivers]
        out.append("")
        sections = (("Failures", lambda v: v.bad), ("Skipped", lambda v: v is Verdict.SKIP))
        for heading, wanted in sections:
            items = [
                f"- `{d}` / `{c}`: {cell_label(cell)}: {_md(cell.reason) or '(no reason given)'}"
                for c in m.cases
                for d in drivers
                if (cell := m.cell(host, d, c)) and wanted(cell.verdict)
            ]
            if items:
                out += [f"### {heading}", "", *items, ""]
        out += ["### Drivers", "", _row(["driver", "available", "versions", "profile"])]
        out.append(_row(["---"] * 4))
        for d in m.drivers:
            info, prof = m.driver_info.get((host, d)), m.profiles.get((host, d))
            if info is None and prof is None:
                continue
            info = info or {}
            avail = availability(info)
            out.append(_row([d, _md(avail), _md(join_values(info.get("versions"))), _md(profile_text(prof))]))
        out.append("")
    return "\n".join(out)
