"""Markdown, HTML, terminal and JSON renderings of a known matrix, and write_all."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from gpuconform.reports.evidence import Evidence, Verdict
from gpuconform.reports.matrix import Matrix, MatrixError, build_matrix, load_matrix, merge
from gpuconform.reports.render import render, write_all
from gpuconform.reports.render_html import render_html
from gpuconform.reports.render_md import render_markdown
from gpuconform.reports.render_terminal import render_terminal


def expanded(page: str) -> str:
    """The page as a browser without JS shows it: each host's evidence list is in a <noscript>."""
    assert page.count("<noscript class=evs") == page.count("</noscript>") >= 1
    return page


UUID_A = "GPU-11111111-2222-3333-4444-555555555555"
UUID_B = "GPU-66666666-7777-8888-9999-000000000000"


def make_meta(host: str = "gpu-a", simulated: bool = False) -> dict[str, Any]:
    return {
        "run_id": "run-1", "started_at": "2025-05-01T10:00:00Z", "finished_at": "2025-05-01T10:05:00Z",
        "host": {"host": host, "simulated": simulated, "source": "nvidia-smi", "gpu_count": 2,
                 "gpu_names": ["NVIDIA H100", "NVIDIA H100"], "driver_versions": ["550.54.15"]},
        "profiles": {
            "docker": {"driver": "docker", "cases": {"count.over": "reject"}, "exclusive": True,
                       "oversubscribe": "reject", "notes": ""},
            "podman": {"driver": "podman", "cases": {"device.unsupported": "unsupported"},
                       "exclusive": True, "oversubscribe": "reject", "notes": ""},
        },
        "drivers": {"docker": {"available": True, "reason": "", "versions": {"docker": "20.10"}},
                    "podman": {"available": True, "reason": "", "versions": {"podman": "4.3"}}},
    }  # fmt: skip


def make_records(simulated: bool = False) -> list[Evidence]:
    """2 drivers x 8 cases with every verdict kind; podman/smi.none carries hostile output. The run
    ran podman's column first, so the matrix shows it first (columns follow the records)."""
    rows = [
        ("podman", "smi.default", Verdict.PASS, "one GPU, matches host"),
        ("podman", "smi.none", Verdict.FAIL, f"saw {UUID_A}, expected none"),
        ("podman", "count.1", Verdict.ERROR, "podman run timed out after 60 s"),
        ("podman", "count.2", Verdict.PASS, "2 UUIDs"),
        ("podman", "count.over", Verdict.REJECTED, "rejected cleanly"),
        ("podman", "device.unsupported", Verdict.UNSUPPORTED, "out of scope"),
        ("podman", "cuda.init", Verdict.INCONCLUSIVE, "could not parse probe output"),
        ("podman", "cuda.bandwidth", Verdict.SKIP, "simulated host"),
        ("docker", "smi.default", Verdict.PASS, "one GPU, matches host"),
        ("docker", "smi.none", Verdict.PASS, "no GPU visible"),
        ("docker", "count.1", Verdict.PASS, "1 UUID"),
        ("docker", "count.2", Verdict.SKIP, "host has 1 GPU"),
        ("docker", "count.over", Verdict.REJECTED, "rejected: 3 > 2 GPUs"),
        ("docker", "device.invalid", Verdict.REJECTED, "unknown id 'GPU-zz' rejected"),
        ("docker", "cuda.init", Verdict.FAIL, "nvidia-smi works but CUDA fails | cuInit=100"),
        ("docker", "cuda.bandwidth", Verdict.SKIP, "simulated host"),
    ]  # fmt: skip
    out = []
    for d, c, v, reason in rows:
        extra: dict[str, Any] = {}
        if (d, c) == ("podman", "smi.none"):
            extra = {
                "request": {"count": None, "device_ids": []},
                "granted": (), "seen": (UUID_A,),
                "commands": ({"argv": ["nvidia-smi", "-L"], "exit_code": 0, "duration_s": 0.12,
                              "stdout": "GPU 0: H100 <script>alert(1)</script>", "stderr": "warn & more",
                              "timed_out": False},),
                "timings": {"provision": 1.5, "teardown": 0.3},
            }  # fmt: skip
        out.append(Evidence(case=c, driver=d, verdict=v, reason=reason, simulated=simulated, **extra))
    return out


def known_matrix(simulated: bool = False) -> Matrix:
    return build_matrix(make_meta(simulated=simulated), make_records(simulated))


def test_markdown_table_has_exact_rows_for_a_known_matrix() -> None:
    md = render_markdown(known_matrix())
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert table[:11] == [
        "| case | podman | docker |",  # the records' order: the run ran podman first
        "| --- | --- | --- |",
        "| `smi.default` | ✅ pass | ✅ pass |",
        "| `smi.none` | ❌ fail | ✅ pass |",
        "| `count.1` | ⚠️ error | ✅ pass |",
        "| `count.2` | ✅ pass | ⏭ skip |",
        "| `count.over` | 🚫 rejected | 🚫 rejected |",
        "| `device.invalid` | · not run | 🚫 rejected |",
        "| `device.unsupported` | — unsupported | · not run |",
        "| `cuda.init` | ❓ inconclusive | ❌ fail |",
        "| `cuda.bandwidth` | ⏭ skip | ⏭ skip |",
    ]
    assert "| docker | yes | docker=20.10 | reject: count.over; exclusive; oversubscribe=reject |" in table
    assert "- **docker**: 3 pass, 2 rejected, 2 skip, 1 fail" in md
    assert "- **podman**: 2 pass, 1 rejected, 1 skip, 1 fail, 1 error, 1 inconclusive, 1 unsupported" in md
    assert "SIMULATED" not in md


def test_markdown_failures_section_lists_each_bad_cell_with_escaped_reason() -> None:
    md = render_markdown(known_matrix())
    failures = md.split("### Failures\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert failures == [
        f"- `podman` / `smi.none`: ❌ fail: saw {UUID_A}, expected none",
        "- `podman` / `count.1`: ⚠️ error: podman run timed out after 60 s",
        "- `podman` / `cuda.init`: ❓ inconclusive: could not parse probe output",
        "- `docker` / `cuda.init`: ❌ fail: nvidia-smi works but CUDA fails \\| cuInit=100",
    ]


def test_markdown_of_simulated_run_carries_a_banner() -> None:
    md = render_markdown(known_matrix(simulated=True))
    assert "> ⚠️ **SIMULATED: results from gpu-a come from the simulated GPU host" in md
    assert "## Host `gpu-a` (SIMULATED)" in md


def test_html_is_self_contained_and_escapes_sandbox_output() -> None:
    raw = render_html(known_matrix(simulated=True), make_records(simulated=True))
    assert raw.count("</script>") == 1 and raw.count("</noscript>") == 1  # no record ends them
    page = expanded(raw)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "<link" not in page
    assert "@import" not in page
    assert "GPU 0: H100 &lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert" not in page
    assert page.count("<script>") == 1  # our own few lines, nothing from a record
    assert "warn &amp; more" in page
    assert "SIMULATED GPU HOST" in page


def test_html_cells_are_colour_coded_with_reason_tooltip_and_linked_evidence() -> None:
    m = known_matrix()
    page = expanded(render_html(m, make_records()))
    tooltip = "title='nvidia-smi works but CUDA fails | cuInit=100'"
    assert f"<td class='v fail failing' {tooltip} data-cell='docker-cuda.init'>" in page
    assert "<td class='v pass' title='one GPU, matches host' data-cell='docker-smi.default'>" in page
    anchors = re.findall(r"data-ev='(ev-[0-9-]+)'", page)
    assert len(anchors) == len(m.cells) == 16
    for anchor in anchors:
        assert re.search(f"<details class='ev( failing)?' id={anchor} data-verdict=", page)
    # marks are CSS shapes: no emoji a stock headless Chromium would draw as empty boxes
    assert not re.search("[\U0001f300-\U0001faff\u2600-\u27bf\u23e9-\u23fa\u2753\ufe0f]", page)
    assert page.count("<i class='mk mk-inconclusive'") == 3  # the legend, the cell, its evidence
    evidence = page.split("podman / smi.none", 1)[1].split("</details>", 1)[0]
    assert f"<code>{UUID_A}</code></td><td>—</td><td>seen</td><td class=bad>extra: not granted" in evidence
    assert "<code>$ nvidia-smi -L</code> <span class='rc pass'>exit 0</span>" in evidence
    assert "provision" in evidence
    assert "&quot;device_ids&quot;: []" in evidence


def test_html_without_records_still_renders_every_cell() -> None:
    page = expanded(render_html(known_matrix(), []))
    assert page.count("no evidence record") == 16


def test_html_finds_records_of_a_merged_fleet_matrix_by_host() -> None:
    a = build_matrix(make_meta("gpu-a"), make_records())
    b_records = [
        Evidence(case=r.case, driver=r.driver, verdict=r.verdict, reason=r.reason, host={"host": "gpu-b"},
                 commands=({"argv": ["probe", r.case], "exit_code": 0, "stdout": "", "stderr": ""},))
        for r in make_records()
    ]  # fmt: skip
    fleet = merge([a, build_matrix(make_meta("gpu-b"), b_records)])
    page = expanded(render_html(fleet, [*b_records]))
    assert page.count("<code>$ probe ") == 16
    assert page.count("no evidence record") == 16  # gpu-a's records were not passed in


def test_terminal_table_without_colour_is_aligned_and_summarised() -> None:
    text = render_terminal(known_matrix(), color=False)
    assert "\x1b" not in text
    lines = text.splitlines()
    assert lines[0] == "case                podman        docker"
    assert lines[2] == "smi.none            FAIL          pass"
    assert lines[8] == "cuda.init           INCONCLUSIVE  FAIL"
    assert all(line[34:].rstrip() in {"docker", "pass", "skip", "rejected", "FAIL", "-"}
               for line in lines[:10])  # fmt: skip
    assert lines[-2:] == [
        "podman: 2 pass, 1 rejected, 1 skip, 1 fail, 1 error, 1 inconclusive, 1 unsupported",
        "docker: 3 pass, 2 rejected, 2 skip, 1 fail",
    ]


def test_terminal_table_with_colour_only_adds_ansi_codes() -> None:
    m = known_matrix(simulated=True)
    coloured = render_terminal(m, color=True)
    assert "\x1b[1;31mFAIL" in coloured
    assert "\x1b[32mpass" in coloured
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == render_terminal(m, color=False)
    assert render_terminal(m, color=False).startswith("SIMULATED: results from gpu-a")


def test_render_dispatches_by_format_and_json_round_trips() -> None:
    m = known_matrix()
    assert Matrix.from_json(json.loads(render(m, [], "json"))) == m
    assert render(m, [], "md") == render_markdown(m)
    assert render(m, [], "terminal") == render_terminal(m, False)
    with pytest.raises(MatrixError, match="unknown format 'pdf'"):
        render(m, [], "pdf")  # type: ignore[arg-type]


def test_write_all_writes_json_markdown_and_html_next_to_results(tmp_path: Path) -> None:
    paths = write_all(tmp_path / "out", make_meta(), make_records())
    assert {k: p.name for k, p in paths.items()} == {"json": "matrix.json", "md": "matrix.md",
                                                     "html": "matrix.html"}  # fmt: skip
    assert load_matrix(paths["json"]) == known_matrix()
    assert paths["md"].read_text(encoding="utf-8") == render_markdown(known_matrix())
    assert "&lt;script&gt;" in expanded(paths["html"].read_text(encoding="utf-8"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["matrix.html", "matrix.json", "matrix.md"]
