"""The shipped JSON Schemas: what the harness writes validates, and what does not is refused.

Writers check their output at the source (``write_results``, ``Matrix.to_json``), so every
results.json, matrix.json and fleet file any test writes is checked; these tests pin that down and
check the readers' refusals through the command line, as a user meets them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gpuconform.conformance import cli
from gpuconform.reports.evidence import Evidence, Verdict, write_results
from gpuconform.reports.matrix import build_matrix
from gpuconform.reports.render import write_all
from gpuconform.reports.schemas import SUPPORTED, SchemaError, schema_text, validate
from tests.unit.test_render import make_meta, make_records


def _results(tmp_path: Path, host: str = "gpu-a") -> Path:
    path = tmp_path / host / "results.json"
    write_results(path, make_records(simulated=True), make_meta(host, simulated=True))
    return path


def test_schemas_ship_in_the_package_and_name_every_verdict() -> None:
    for kind in SUPPORTED:
        schema = json.loads(schema_text(kind))
        assert schema["$defs"]["verdict"]["enum"] == [v.value for v in Verdict]
        assert schema["properties"]["schema"] == {"const": SUPPORTED[kind][0]}
        assert schema["properties"]["partial"]["type"] == "boolean"  # room for cut-short runs


def test_files_the_harness_writes_validate(tmp_path: Path) -> None:
    results = _results(tmp_path)
    validate(json.loads(results.read_text()), "results", str(results))
    paths = write_all(tmp_path / "gpu-a", make_meta(), make_records())
    validate(json.loads(paths["json"].read_text()), "matrix", "matrix.json")
    fleet = tmp_path / "fleet.json"
    code = cli.main(["merge", str(results), str(_results(tmp_path, "gpu-b")), "-o", str(fleet)])
    assert code == 0
    doc = json.loads(fleet.read_text())
    validate(doc, "matrix", "fleet.json")
    assert sorted(doc["hosts"]) == ["gpu-a", "gpu-b"]


def test_partial_results_with_missing_cells_are_valid_today() -> None:
    doc = json.loads(json.dumps(build_matrix(make_meta(), make_records()).to_json()))
    validate(doc | {"partial": True, "missing": ["podman-count.2", {"driver": "qemu", "case": "smi.all"}]},
             "matrix")  # fmt: skip
    results: dict[str, Any] = {"schema": 1, "records": [], "partial": True, "missing": ["podman-count.2"]}
    validate(results, "results")
    with pytest.raises(SchemaError, match="at partial"):
        validate(results | {"partial": "yes"}, "results")


def test_a_writer_that_breaks_the_format_fails_where_it_writes(tmp_path: Path) -> None:
    bad = Evidence(case="count.1", driver="podman", verdict=Verdict.PASS, reason="ok", timings={"x": "slow"})  # type: ignore[dict-item]
    with pytest.raises(SchemaError, match=r"records/0/timings/x: 'slow' is not of type"):
        write_results(tmp_path / "results.json", [bad], make_meta())
    assert (tmp_path / "results.json").exists()  # kept for a look


def _tamper(path: Path, change: Any) -> Path:
    doc = json.loads(path.read_text())
    change(doc)
    out = path.with_name("tampered.json")
    out.write_text(json.dumps(doc))
    return out


def _set_verdict(doc: dict[str, Any]) -> None:
    doc["cells"]["gpu-a"]["podman"]["count.1"]["verdict"] = "green"


def _drop_reason(doc: dict[str, Any]) -> None:
    del doc["records"][0]["reason"]


CASES = [
    ("matrix", _set_verdict, "does not match the matrix schema at cells/gpu-a/podman/count.1/verdict"),
    ("matrix", lambda d: d.update(schema=2), "matrix schema version 2 is not one this gpuconform reads"),
    ("results", _drop_reason, "does not match the results schema at records/0: 'reason' is a required"),
    ("results", lambda d: d.update(schema=9), "results schema version 9 is not one this gpuconform reads"),
]


@pytest.mark.parametrize("command", ["matrix", "merge", "diff", "gate"])
@pytest.mark.parametrize(("kind", "change", "message"), CASES)
def test_readers_refuse_a_file_that_does_not_match_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, kind: str, change: Any, message: str
) -> None:
    good = _results(tmp_path)
    source = write_all(tmp_path / "gpu-a", make_meta(simulated=True), make_records(True))["json"]
    bad = _tamper(source if kind == "matrix" else good, change)
    argv = {
        "matrix": ["matrix", str(bad)],
        "merge": ["merge", str(good), str(bad), "-o", str(tmp_path / "fleet.json")],
        "diff": ["diff", str(good), str(bad)],
        "gate": ["gate", str(bad), str(good)],
    }[command]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpuconform: error: ") and err.count("\n") == 1, err
    assert message in err and "(hint: " in err, err
    assert not (tmp_path / "fleet.json").exists()
