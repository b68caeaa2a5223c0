"""Pick a renderer by name, and write the standard report files next to ``results.json``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from gpuconform.reports.evidence import Evidence
from gpuconform.reports.matrix import Matrix, MatrixError, build_matrix
from gpuconform.reports.render_html import render_html
from gpuconform.reports.render_md import render_markdown
from gpuconform.reports.render_terminal import render_terminal

Format = Literal["md", "html", "json", "terminal"]
FORMATS: tuple[str, ...] = ("md", "html", "json", "terminal")


def render(matrix: Matrix, records: Sequence[Evidence], fmt: Format, *, color: bool = False) -> str:
    """Render ``matrix`` as text. ``records`` feed the HTML evidence panels; others ignore them."""
    if fmt == "md":
        return render_markdown(matrix)
    if fmt == "html":
        return render_html(matrix, records)
    if fmt == "json":
        return json.dumps(matrix.to_json(), indent=2) + "\n"
    if fmt == "terminal":
        return render_terminal(matrix, color)
    raise MatrixError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_all(
    out_dir: Path, meta: Mapping[str, Any], records: Sequence[Evidence], *, check: bool = True
) -> dict[str, Path]:
    """Write ``matrix.json``, ``matrix.md`` and ``matrix.html`` into ``out_dir``; return the paths.

    ``check=False`` writes a matrix.json even when it does not match the shipped schema (to keep
    a run's results for inspection after the check already failed).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    matrix = build_matrix(meta, records)
    paths = {"json": out_dir / "matrix.json", "md": out_dir / "matrix.md", "html": out_dir / "matrix.html"}
    _write(paths["md"], render(matrix, records, "md"))
    _write(paths["html"], render(matrix, records, "html"))
    _write(paths["json"], json.dumps(matrix.to_json(check=check), indent=2) + "\n")
    return paths
