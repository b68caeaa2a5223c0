"""Matrix build, ordering, worst-verdict-wins, merge and the matrix.json round trip."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from gpuconform.reports.evidence import Evidence, Verdict, write_results
from gpuconform.reports.matrix import (
    CATALOGUE,
    SEVERITY,
    Matrix,
    MatrixError,
    build_matrix,
    case_order,
    load_matrix,
    load_run,
    merge,
)


def make_meta(host: str = "gpu-a", simulated: bool = False) -> dict[str, Any]:
    return {
        "run_id": f"run-{host}",
        "started_at": "2025-05-01T10:00:00Z",
        "finished_at": "2025-05-01T10:05:00Z",
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


def rec(driver: str, case: str, verdict: Verdict, reason: str = "", **kw: Any) -> Evidence:
    return Evidence(case=case, driver=driver, verdict=verdict, reason=reason or f"{case} {verdict}", **kw)


def make_records(simulated: bool = False) -> list[Evidence]:
    """2 drivers x 8 cases covering every verdict kind."""
    rows = [
        ("docker", "smi.default", Verdict.PASS), ("docker", "smi.none", Verdict.PASS),
        ("docker", "count.1", Verdict.PASS), ("docker", "count.2", Verdict.SKIP),
        ("docker", "count.over", Verdict.REJECTED), ("docker", "device.invalid", Verdict.REJECTED),
        ("docker", "cuda.init", Verdict.FAIL), ("docker", "cuda.bandwidth", Verdict.SKIP),
        ("podman", "smi.default", Verdict.PASS), ("podman", "smi.none", Verdict.FAIL),
        ("podman", "count.1", Verdict.ERROR), ("podman", "count.2", Verdict.PASS),
        ("podman", "count.over", Verdict.REJECTED), ("podman", "device.unsupported", Verdict.UNSUPPORTED),
        ("podman", "cuda.init", Verdict.INCONCLUSIVE), ("podman", "cuda.bandwidth", Verdict.SKIP),
    ]  # fmt: skip
    return [rec(d, c, v, simulated=simulated) for d, c, v in rows]


def test_build_matrix_has_one_cell_per_record_with_reason_and_evidence_index() -> None:
    records = make_records()
    m = build_matrix(make_meta(), records)
    assert m.drivers == ("docker", "podman")  # the records' order: the order the run ran its columns
    assert len(m.cells) == 16
    cell = m.cell("gpu-a", "podman", "cuda.init")
    assert cell is not None
    assert cell.verdict is Verdict.INCONCLUSIVE
    assert cell.reason == "cuda.init inconclusive"
    assert records[cell.evidence or 0].cell == ("podman", "cuda.init")
    assert cell.run_id == "run-gpu-a"
    assert m.profiles[("gpu-a", "docker")]["cases"] == {"count.over": "reject"}
    assert m.simulated == {"gpu-a": False}


def test_cases_follow_catalogue_order_then_unknown_ids_alphabetically() -> None:
    cases = ["cuda.bandwidth", "zeta.custom", "smi.none", "alpha.custom", "release", "smi.default"]
    records = [rec("docker", c, Verdict.PASS) for c in cases]
    m = build_matrix(make_meta(), records)
    assert m.cases == ("smi.default", "smi.none", "release", "cuda.bandwidth", "alpha.custom", "zeta.custom")
    assert case_order(reversed(CATALOGUE)) == CATALOGUE


def test_driver_columns_follow_the_order_the_run_recorded() -> None:
    """The plugin writes records column by column in the order it ran them (the registry's
    built-ins, then entry points, or ``--drivers`` as given); the matrix keeps that order, so a
    run of ``--drivers zz-custom,qemu,docker,host`` reads left to right as it was asked."""
    records = [rec(d, "smi.default", Verdict.PASS) for d in ("zz-custom", "qemu", "docker", "host")]
    meta = make_meta() | {"profiles": {}, "drivers": {}}
    assert build_matrix(meta, records).drivers == ("zz-custom", "qemu", "docker", "host")


def test_driver_columns_keep_first_appearance_through_matrix_json_and_merge() -> None:
    drivers = ("zz-custom", "docker-cdi", "aa-custom", "docker-legacy", "podman", "docker", "host")
    records = [rec(d, c, Verdict.PASS) for d in drivers for c in ("smi.default", "count.1")]
    meta = make_meta() | {"profiles": {}, "drivers": {}}
    columns = build_matrix(meta, records).drivers
    assert columns == drivers
    fleet = Matrix.from_json(merge([build_matrix(meta, records)]).to_json())
    assert fleet.drivers == columns
    other = build_matrix(
        make_meta("gpu-b") | {"profiles": {}, "drivers": {}},
        [rec("host", "count.1", Verdict.PASS), rec("kata", "count.1", Verdict.PASS)],
    )
    assert merge([build_matrix(meta, records), other]).drivers == (*drivers, "kata")


def test_a_driver_known_only_from_the_metadata_comes_after_the_recorded_columns() -> None:
    """A column with a profile but no record (its cells all deselected) still shows, last."""
    records = [rec("podman", "smi.default", Verdict.PASS)]
    assert build_matrix(make_meta(), records).drivers == ("podman", "docker")


def test_reports_never_consult_the_driver_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reports read evidence and the catalogue only: a registry in another order (or none of the
    run's drivers registered here, as on a laptop rendering a GPU runner's results) changes nothing."""
    from gpuconform.drivers import registry

    records = [rec(d, "smi.default", Verdict.PASS) for d in ("podman", "firecracker", "host")]
    before = build_matrix(make_meta(), records).drivers
    monkeypatch.setattr(registry, "BUILTIN", {"firecracker": "x:Y", "host": registry.BUILTIN["host"]})
    monkeypatch.setattr(registry, "ALIASES", {})
    assert build_matrix(make_meta(), records).drivers == before == ("podman", "firecracker", "host", "docker")


@pytest.mark.parametrize(("worse", "better"), list(itertools.combinations(SEVERITY, 2)))
def test_worst_verdict_wins_whatever_the_record_order(worse: Verdict, better: Verdict) -> None:
    for order in ([worse, better], [better, worse]):
        records = [rec("docker", "count.1", v, reason=f"because {v}") for v in order]
        cell = build_matrix(make_meta(), records).cell("gpu-a", "docker", "count.1")
        assert cell is not None
        assert cell.verdict is worse
        assert cell.reason == f"because {worse} (worst of 2 records)"
        assert records[cell.evidence or 0].verdict is worse


def test_simulated_record_marks_cell_and_host_as_simulated() -> None:
    m = build_matrix(make_meta(simulated=False), [rec("docker", "smi.default", Verdict.PASS, simulated=True)])
    assert m.simulated["gpu-a"] is True
    assert m.cells[("gpu-a", "docker", "smi.default")].simulated is True


def test_merge_two_hosts_gives_fleet_matrix_host_by_driver_by_case() -> None:
    a = build_matrix(make_meta("gpu-a"), make_records())
    b = build_matrix(make_meta("gpu-b", simulated=True), make_records(simulated=True)[:3])
    fleet = merge([b, a])
    assert list(fleet.hosts) == ["gpu-a", "gpu-b"]
    assert len(fleet.cells) == 16 + 3
    assert fleet.simulated == {"gpu-a": False, "gpu-b": True}
    assert fleet.cell("gpu-b", "docker", "count.1") is not None
    assert fleet.cell("gpu-b", "podman", "count.1") is None
    assert fleet.profiles.keys() == {("gpu-a", "docker"), ("gpu-a", "podman"),
                                     ("gpu-b", "docker"), ("gpu-b", "podman")}  # fmt: skip
    assert fleet.summary()["drivers"]["docker"]["pass"] == 3 + 3


def test_merge_of_identical_inputs_for_one_host_is_accepted() -> None:
    a = build_matrix(make_meta(), make_records())
    assert merge([a, a]).cells == a.cells


def test_merge_raises_naming_the_cell_when_inputs_disagree_for_the_same_host() -> None:
    a = build_matrix(make_meta(), make_records())
    changed = [r if r.cell != ("docker", "cuda.init") else rec("docker", "cuda.init", Verdict.PASS)
               for r in make_records()]  # fmt: skip
    b = build_matrix(make_meta(), changed)
    with pytest.raises(MatrixError, match=r"gpu-a/docker/cuda\.init is fail in one input and pass"):
        merge([a, b])


def test_merge_raises_when_profiles_disagree_for_the_same_host_and_driver() -> None:
    meta = make_meta()
    other = json.loads(json.dumps(meta))
    other["profiles"]["docker"]["cases"] = {"count.over": "unsupported"}
    with pytest.raises(MatrixError, match="profile of docker on host gpu-a"):
        merge([build_matrix(meta, make_records()), build_matrix(other, make_records())])


def test_matrix_json_round_trips_and_carries_a_summary_per_driver() -> None:
    fleet = merge([build_matrix(make_meta("gpu-a"), make_records()),
                   build_matrix(make_meta("gpu-b", True), make_records(True))])  # fmt: skip
    doc = json.loads(json.dumps(fleet.to_json()))
    assert Matrix.from_json(doc) == fleet
    assert doc["summary"]["drivers"]["podman"] == {
        "pass": 4, "rejected": 2, "unsupported": 2, "skip": 2, "fail": 2, "inconclusive": 2, "error": 2,
    }  # fmt: skip
    assert doc["summary"]["hosts"]["gpu-a"]["docker"]["fail"] == 1


def test_from_json_rejects_other_documents_with_one_line_errors() -> None:
    with pytest.raises(MatrixError, match="expected a gpuconform-matrix document"):
        Matrix.from_json({"records": []})
    with pytest.raises(MatrixError, match="malformed matrix document"):
        Matrix.from_json({"format": "gpuconform-matrix", "hosts": {}, "cells": {"h": {"d": {"c": {}}}}})
    with pytest.raises(MatrixError, match="newer than this gpuconform"):
        Matrix.from_json({"format": "gpuconform-matrix", "schema": 99})


def test_load_matrix_accepts_results_json_and_matrix_json(tmp_path: Path) -> None:
    records = make_records()
    write_results(tmp_path / "results.json", records, make_meta())
    from_results, loaded_records = load_run(tmp_path / "results.json")
    assert loaded_records == records
    (tmp_path / "matrix.json").write_text(json.dumps(from_results.to_json()))
    assert load_matrix(tmp_path / "matrix.json") == from_results
    assert from_results == build_matrix(make_meta(), records)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "is not JSON"),
        ('{"something": 1}', "neither a results.json"),
        ('{"records": [{"case": "x"}]}', "results schema version none is not one this gpuconform reads"),
        ('{"schema": 1, "records": [{"case": "x"}]}', "does not match the results schema at records/0"),
        ('{"schema": 7, "records": []}', "results schema version 7 .*hint: upgrade gpuconform"),
        ('{"format": "gpuconform-matrix", "schema": 2}', "matrix schema version 2 is not one"),
    ],
)
def test_load_matrix_reports_unreadable_files_in_one_line(tmp_path: Path, content: str | None,
                                                         message: str) -> None:  # fmt: skip
    path = tmp_path / "in.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(MatrixError, match=message) as info:
        load_matrix(path)
    assert "\n" not in str(info.value)
