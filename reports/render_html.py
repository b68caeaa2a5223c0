"""One self-contained HTML page: the matrix, colour-coded, with every cell's evidence one click away.

No external assets (CI artefact viewers are often offline or sandboxed) and no framework; a few
lines of vanilla JS open the evidence panel of the clicked cell and apply the "failing cells only"
filter. Verdict marks are CSS shapes, not emoji: a stock headless Chromium on Debian has no emoji
font and drew them as empty boxes. Everything taken from a record is HTML-escaped: stdout of a
sandbox is untrusted input. tests/browser/ drives this page in a real Chromium.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from gpuconform.reports.evidence import Evidence, Verdict
from gpuconform.reports.matrix import Cell, CellKey, Matrix
from gpuconform.reports.render_md import (
    NOT_RUN,
    SUMMARY_ORDER,
    availability,
    host_line,
    join_values,
    profile_text,
)

_CSS = """
:root{--fg:#1f2328;--muted:#59636e;--bg:#fff;--panel:#f6f8fa;--line:#d1d9e0}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--muted:#9198a1;--bg:#0d1117;--panel:#151b23;
 --line:#3d444d}}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);background:var(--bg);
 margin:0 auto;padding:24px;max-width:1400px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 4px}h3{font-size:15px;margin:20px 0 8px}
.muted{color:var(--muted)}code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace}
.banner{background:repeating-linear-gradient(45deg,#fff3cd,#fff3cd 12px,#ffe8a1 12px,#ffe8a1 24px);
 color:#5c4300;border:1px solid #e0b400;border-radius:8px;padding:10px 14px;font-weight:600;margin:12px 0}
.chips{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.chip{background:var(--panel);border:1px solid var(--line);border-radius:8px;padding:6px 10px}
.chip b{margin-right:6px}.n{display:inline-block;border-radius:10px;padding:0 7px;margin:0 2px;font-size:12px}
table.m{border-collapse:separate;border-spacing:3px}
table.m th{position:sticky;top:0;background:var(--bg);text-align:left;padding:4px 8px}
td.v,details.ev{scroll-margin-top:40px}
table.m td.case{font-family:ui-monospace,monospace;font-size:12px;padding-right:14px;white-space:nowrap}
tr.fam td{color:var(--muted);font-size:11px;text-transform:uppercase;letter-spacing:.06em;padding-top:10px}
td.v{padding:0;border-radius:6px;min-width:110px}td.v a{display:block;padding:4px 8px;color:inherit;
 text-decoration:none}td.v:hover{outline:2px solid #0969da}
.pass{background:#dafbe1;color:#116329}.rejected{background:#ddf4ff;color:#0550ae}
.fail{background:#ffebe9;color:#a40e26}.error{background:#fff1e5;color:#953800}
.inconclusive{background:#fbefff;color:#6e40c9}.skip{background:#eaeef2;color:#424a53}
.unsupported{background:transparent;color:var(--muted);border:1px dashed var(--line)}
.missing{color:var(--muted)}
.mk{display:inline-block;box-sizing:border-box;width:11px;height:11px;margin-right:6px;vertical-align:-1px}
.mk-pass{border-radius:50%;background:currentColor}
.mk-rejected{border-radius:50%;border:2px solid currentColor;
 background:linear-gradient(135deg,transparent 40%,currentColor 40% 60%,transparent 60%)}
.mk-fail{background:linear-gradient(45deg,transparent 38%,currentColor 38% 62%,transparent 62%),
 linear-gradient(-45deg,transparent 38%,currentColor 38% 62%,transparent 62%)}
.mk-error{width:12px;background:currentColor;clip-path:polygon(50% 0,100% 100%,0 100%)}
.mk-inconclusive{border-radius:50%;border:2px dashed currentColor}
.mk-skip{border:2px solid currentColor;border-radius:2px}
.mk-unsupported{height:3px;vertical-align:3px;background:currentColor}
.filter{margin:8px 0;display:inline-block;cursor:pointer}
body.only-failing tr.row:not(.has-failing),body.only-failing tr.fam:not(.has-failing),
body.only-failing details.ev:not(.failing){display:none}
body.only-failing td.v:not(.failing){visibility:hidden}
details.ev{border:1px solid var(--line);border-radius:8px;margin:6px 0;background:var(--panel)}
details.ev[open]{box-shadow:0 0 0 2px #0969da55}
details.ev summary{cursor:pointer;padding:6px 10px}details.ev .body{padding:4px 14px 12px}
table.kv td{padding:1px 12px 1px 0;vertical-align:top}
table.uuids td{padding:1px 10px 1px 0}.ok{color:#1a7f37}.bad{color:#cf222e;font-weight:600}
pre{background:var(--bg);border:1px solid var(--line);border-radius:6px;padding:8px;overflow:auto;
 max-height:320px;white-space:pre-wrap}.cmd{margin:10px 0}.rc{border-radius:4px;padding:0 6px}
"""

# Each host's evidence list sits in a <noscript>: a browser without JS shows it as it is, and one
# with JS keeps it as one inert text until it is needed (a click on one of the host's cells, the
# filter, or idle time after the load event), so a 10-host x 8-driver page builds only its matrix
# before it is usable, in well under 2 s, instead of 2000 evidence panels.
_JS = """
function evs(ns){if(ns&&ns.parentNode){ns.insertAdjacentHTML('afterend',ns.textContent);ns.remove();}}
function evsAll(){document.querySelectorAll('noscript.evs').forEach(evs);}
function openEv(id){var d=document.getElementById(id);
 if(!d){var a=document.querySelector('a[data-ev="'+id+'"]');
  if(a)evs(document.getElementById('evs-'+a.closest('section').dataset.host));d=document.getElementById(id);}
 if(d){d.open=true;d.scrollIntoView({block:'nearest'});}}
document.addEventListener('click',function(e){
 var a=e.target.closest('a[data-ev]');if(a)openEv(a.dataset.ev);});
if(location.hash)openEv(location.hash.slice(1));
var f=document.getElementById('only-failing');
function applyFilter(){if(f.checked)evsAll();document.body.classList.toggle('only-failing',f.checked);}
f.addEventListener('change',applyFilter);applyFilter();
var idle=window.requestIdleCallback||function(fn){return setTimeout(fn,50);};
window.addEventListener('load',function(){var left=[...document.querySelectorAll('noscript.evs')];
 (function next(){var ns=left.shift();if(ns){evs(ns);idle(next);}})();});
"""

#: Verdicts the "failing cells only" filter keeps: the ones that need a person's attention.
FAILING: frozenset[Verdict] = frozenset({Verdict.FAIL, Verdict.ERROR, Verdict.INCONCLUSIVE})


def mark(verdict: Verdict) -> str:
    """The verdict's mark: a CSS shape (no font needed), beside the verdict word that says it."""
    return f"<i class='mk mk-{verdict.value}' aria-hidden=true></i>"


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _record_index(m: Matrix, records: Sequence[Evidence]) -> dict[CellKey, Evidence]:
    """Find each cell's record: by its index when that record is the cell's own (same host, driver
    and case), else by key. Records without a host name only match a single-host matrix."""
    sole = next(iter(m.hosts)) if len(m.hosts) == 1 else ""

    def key_of(r: Evidence) -> CellKey:
        return (str(r.host.get("host") or sole), r.driver, r.case)

    by_key: dict[CellKey, list[Evidence]] = {}
    for r in records:
        by_key.setdefault(key_of(r), []).append(r)
    out: dict[CellKey, Evidence] = {}
    for key, cell in m.cells.items():
        i = cell.evidence
        if i is not None and 0 <= i < len(records) and key_of(records[i]) == key:
            out[key] = records[i]
        elif key in by_key:
            same = [r for r in by_key[key] if r.verdict is cell.verdict]
            out[key] = (same or by_key[key])[0]
    return out


def _kv(rows: Mapping[str, Any]) -> str:
    shown = {k: v for k, v in rows.items() if v not in ("", None)}
    body = "".join(f"<tr><td class=muted>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in shown.items())
    return f"<table class=kv>{body}</table>"


def _uuids(r: Evidence) -> str:
    granted, seen = set(r.granted or ()), set(r.seen or ())
    rows = []
    for u in sorted(granted | seen):
        g, s = u in granted, u in seen
        status = "ok" if g and s else ("missing inside" if g else "extra: not granted")
        cls = "ok" if g and s else "bad"
        rows.append(
            f"<tr><td><code>{_e(u)}</code></td><td>{'granted' if g else '—'}</td>"
            f"<td>{'seen' if s else '—'}</td><td class={cls}>{_e(status)}</td></tr>",
        )
    if r.granted is None and r.seen is None:
        return ""
    table = "".join(rows) or "<tr><td>none</td></tr>"
    return f"<h4>Granted vs seen UUIDs</h4><table class=uuids>{table}</table>"


def _command(c: Mapping[str, Any]) -> str:
    argv = c.get("argv") or c.get("cmd") or c.get("command") or []
    line = shlex.join(str(a) for a in argv) if isinstance(argv, list | tuple) else str(argv)
    rc = c.get("exit_code")
    rc_text = "timed out" if c.get("timed_out") else f"exit {rc}"
    rc_cls = "pass" if rc == 0 and not c.get("timed_out") else "fail"
    parts = [f"<div class=cmd><code>$ {_e(line)}</code> <span class='rc {rc_cls}'>{_e(rc_text)}</span>"]
    if c.get("duration_s") is not None:
        parts.append(f" <span class=muted>{_e(c['duration_s'])} s</span>")
    for stream in ("stdout", "stderr"):
        if c.get(stream):
            parts.append(f"<div class=muted>{stream}</div><pre>{_e(c[stream])}</pre>")
    return "".join(parts) + "</div>"


def _evidence(anchor: str, key: CellKey, cell: Cell, r: Evidence | None) -> str:
    v = cell.verdict.value
    head = (
        f"<summary><span class='n {v}'>{mark(cell.verdict)}{v}</span> "
        f"<code>{_e(key[1])} / {_e(key[2])}</code> <span class=muted>{_e(cell.reason)}</span></summary>"
    )
    if r is None:
        body = ["no evidence record (this matrix was loaded without its results.json)"]
    else:
        body = _evidence_body(r)
    failing = " failing" if cell.verdict in FAILING else ""
    return (
        f"<details class='ev{failing}' id={anchor} data-verdict={v}>{head}"
        f"<div class=body>{''.join(body)}</div></details>"
    )


def _evidence_body(r: Evidence) -> list[str]:
    request = json.dumps(r.request, indent=2, sort_keys=True, default=str)
    body = [
        _kv({
            "expectation": r.expectation, "simulated": "yes" if r.simulated else "no", "run": r.run_id,
            "worker": r.worker, "started": r.started_at,
        }),
        "<h4>Request</h4>",
        f"<pre>{_e(request)}</pre>" if r.request else "<p>none</p>",
        _uuids(r),
    ]  # fmt: skip
    if r.commands:
        body += ["<h4>Commands</h4>", *(_command(c) for c in r.commands)]
    if r.timings:
        body += ["<h4>Timings (s)</h4>", _kv(r.timings)]
    if r.versions:
        body += ["<h4>Versions</h4>", _kv(r.versions)]
    for title, data in (("Parsed values", r.parsed), ("Details", r.details)):
        if data:
            text = json.dumps(data, indent=2, sort_keys=True, default=str)
            body.append(f"<h4>{title}</h4><pre>{_e(text)}</pre>")
    return body


def _host_section(m: Matrix, host: str, hi: int, found: Mapping[CellKey, Evidence]) -> str:
    drivers = [d for d in m.drivers if any(k[0] == host and k[1] == d for k in m.cells)]
    out = [f"<section data-host={hi}>"]
    out.append(f"<h2>Host <code>{_e(host)}</code>{' — SIMULATED' if m.simulated.get(host) else ''}</h2>")
    out.append(f"<div class=muted>{_e(host_line(m, host))}</div><div class=chips>")
    for d in drivers:
        counts = m.counts(d, host)
        nums = "".join(f"<span class='n {k}'>{counts[k]} {k}</span>" for k in SUMMARY_ORDER if counts[k])
        out.append(f"<div class=chip><b>{_e(d)}</b>{nums}</div>")
    out.append("</div><table class=m><tr><th>case</th>")
    out += [f"<th>{_e(d)}</th>" for d in drivers]
    out.append("</tr>")
    anchors: dict[CellKey, str] = {}
    families: dict[str, bool] = {}  # family -> has a failing cell (its heading stays under the filter)
    for case in m.cases:
        cells = [m.cell(host, d, case) for d in drivers]
        if any(cells):
            fam = case.split(".")[0]
            families[fam] = families.get(fam, False) or any(
                c is not None and c.verdict in FAILING for c in cells
            )
    family: str | None = None
    for ci, case in enumerate(m.cases):
        if not any((host, d, case) in m.cells for d in drivers):
            continue
        if case.split(".")[0] != family:
            family = case.split(".")[0]
            has_failing = " has-failing" if families.get(family) else ""
            out.append(f"<tr class='fam{has_failing}'><td colspan={len(drivers) + 1}>{_e(family)}</td></tr>")
        row_failing = any((c := m.cell(host, d, case)) is not None and c.verdict in FAILING for d in drivers)
        out.append(f"<tr class='row{' has-failing' if row_failing else ''}'><td class=case>{_e(case)}</td>")
        for di, d in enumerate(drivers):
            cell = m.cell(host, d, case)
            if cell is None:
                out.append(f"<td class='v missing'>{_e(NOT_RUN)}</td>")
                continue
            anchor = anchors[(host, d, case)] = f"ev-{hi}-{di}-{ci}"
            v = cell.verdict.value
            failing = " failing" if cell.verdict in FAILING else ""
            out.append(
                f"<td class='v {v}{failing}' title='{_e(cell.reason)}' data-cell='{_e(d)}-{_e(case)}'>"
                f"<a href='#{anchor}' data-ev='{anchor}'>{mark(cell.verdict)}{_e(v)}</a></td>",
            )
        out.append("</tr>")
    out.append(f"</table><h3>Evidence</h3><noscript class=evs id=evs-{hi}>")
    # Everything in here is escaped (``_e``), so nothing from a record can end the noscript.
    out += [_evidence(a, k, m.cells[k], found.get(k)) for k, a in anchors.items()]
    out.append("</noscript>")
    out.append("<h3>Drivers</h3><table class=kv><tr><th>driver</th><th>available</th>"
               "<th>versions</th><th>profile</th></tr>")  # fmt: skip
    for d in m.drivers:
        info, prof = m.driver_info.get((host, d)), m.profiles.get((host, d))
        if info is None and prof is None:
            continue
        cols = (d, availability(info or {}), join_values((info or {}).get("versions")), profile_text(prof))
        out.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cols) + "</tr>")
    out.append("</table>")
    out.append("</section>")
    return "".join(out)


def render_html(m: Matrix, records: Sequence[Evidence]) -> str:
    found = _record_index(m, records)
    sim = [h for h in m.hosts if m.simulated.get(h)]
    banner = (
        f"<div class=banner>{mark(Verdict.ERROR)}SIMULATED GPU HOST ({_e(', '.join(sim))}): these "
        f"results exercise the harness against a simulated host and are not hardware evidence.</div>"
        if sim else ""
    )  # fmt: skip
    legend = " ".join(f"<span class='n {v.value}'>{mark(v)}{v.value}</span>" for v in Verdict)
    failing = sum(c.verdict in FAILING for c in m.cells.values())
    toggle = (
        f"<label class=filter><input type=checkbox id=only-failing> show failing cells only "
        f"(fail, error, inconclusive: {failing})</label>"
    )
    hosts = "".join(_host_section(m, h, i, found) for i, h in enumerate(m.hosts))
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>gpuconform matrix</title><style>{_CSS}</style></head><body>"
        f"<h1>GPU conformance matrix</h1><div class=muted>{len(m.hosts)} host(s) · "
        f"{len(m.drivers)} driver(s) · {len(m.cases)} case(s) · click a cell for its evidence</div>"
        f"{banner}<div class=chips>{legend}</div>{toggle}{hosts}<script>{_JS}</script></body></html>\n"
    )
