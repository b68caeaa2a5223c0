"""The compact table printed at the end of a run.

Plain ASCII words, not emoji, because emoji widths differ between terminals and break the
alignment; bad verdicts are upper-case so they stand out in a log without colour.
"""

from __future__ import annotations

from collections.abc import Mapping

from gpuconform.reports.evidence import Verdict
from gpuconform.reports.matrix import Cell, Matrix
from gpuconform.reports.render_md import simulated_banner, summary_text

_ANSI: Mapping[Verdict, str] = {
    Verdict.PASS: "32",
    Verdict.REJECTED: "36",
    Verdict.FAIL: "1;31",
    Verdict.ERROR: "1;35",
    Verdict.INCONCLUSIVE: "1;33",
    Verdict.SKIP: "2",
    Verdict.UNSUPPORTED: "2",
}
_RESET = "\x1b[0m"


def _word(cell: Cell | None) -> str:
    if cell is None:
        return "-"
    return cell.verdict.value.upper() if cell.verdict.bad else cell.verdict.value


def _paint(text: str, code: str, color: bool) -> str:
    return f"\x1b[{code}m{text}{_RESET}" if color else text


def render_terminal(m: Matrix, color: bool) -> str:
    """One aligned table per host, then ``driver: N pass, N rejected, N skip, N fail`` lines."""
    out: list[str] = []
    banner = simulated_banner(m)
    if banner:
        out.append(_paint(banner, "1;33", color))
    for host in m.hosts:
        drivers = [d for d in m.drivers if any(k[0] == host and k[1] == d for k in m.cells)]
        cases = [c for c in m.cases if any((host, d, c) in m.cells for d in drivers)]
        if len(m.hosts) > 1 or not drivers:
            out.append(_paint(f"host {host}", "1", color))
        if not drivers:
            out.append("  (no results)")
            continue
        first = max(len("case"), *(len(c) for c in cases))
        widths = [max(len(d), *(len(_word(m.cell(host, d, c))) for c in cases)) for d in drivers]
        header = "  ".join(["case".ljust(first), *(d.ljust(w) for d, w in zip(drivers, widths, strict=True))])
        out.append(_paint(header.rstrip(), "1", color))
        for case in cases:
            row = [case.ljust(first)]
            for d, w in zip(drivers, widths, strict=True):
                cell = m.cell(host, d, case)
                word = _word(cell)
                painted = _paint(word, _ANSI[cell.verdict], color) if cell else word
                row.append(painted + " " * (w - len(word)))
            out.append("  ".join(row).rstrip())
        for d in drivers:
            counts = m.counts(d, host)
            bad = sum(counts[v.value] for v in Verdict if v.bad)
            line = f"{d}: {summary_text(counts)}"
            out.append(_paint(line, "1;31" if bad else "32", color))
    return "\n".join(out) + "\n"
