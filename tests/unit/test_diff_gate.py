"""Matrix diff (regressions, improvements, profile changes), waivers and the release gate."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from gpuconform.reports.diff import DriverSelectionError, Waiver, WaiverError, diff, gate, load_waivers
from gpuconform.reports.evidence import Evidence, Verdict
from gpuconform.reports.matrix import Matrix, build_matrix, merge

TODAY = date(2025, 6, 1)


def make_meta(host: str = "gpu-a", simulated: bool = False, podman_cases: dict[str, str] | None = None
              ) -> dict[str, Any]:  # fmt: skip
    return {
        "run_id": "r1",
        "host": {"host": host, "simulated": simulated, "gpu_count": 2},
        "profiles": {
            "docker": {"driver": "docker", "cases": {"count.over": "reject"}, "exclusive": True,
                       "oversubscribe": "reject", "notes": ""},
            "podman": {"driver": "podman", "cases": podman_cases or {}, "exclusive": True,
                       "oversubscribe": "reject", "notes": ""},
        },
        "drivers": {"docker": {"available": True}, "podman": {"available": True}},
    }  # fmt: skip


BASE_ROWS: dict[tuple[str, str], Verdict] = {
    ("docker", "smi.default"): Verdict.PASS, ("docker", "count.1"): Verdict.PASS,
    ("docker", "count.2"): Verdict.SKIP, ("docker", "count.over"): Verdict.REJECTED,
    ("docker", "cuda.init"): Verdict.PASS, ("docker", "cuda.matmul"): Verdict.FAIL,
    ("podman", "smi.default"): Verdict.PASS, ("podman", "count.1"): Verdict.PASS,
    ("podman", "count.over"): Verdict.REJECTED, ("podman", "cuda.init"): Verdict.PASS,
    ("podman", "cuda.matmul"): Verdict.ERROR, ("podman", "cuda.bandwidth"): Verdict.SKIP,
}  # fmt: skip


def make_matrix(changes: dict[tuple[str, str], Verdict | None] | None = None, *, host: str = "gpu-a",
                simulated: bool = False, podman_cases: dict[str, str] | None = None) -> Matrix:  # fmt: skip
    """The baseline rows with ``changes`` applied (``None`` removes the cell)."""
    rows: dict[tuple[str, str], Verdict | None] = {**BASE_ROWS, **(changes or {})}
    records = [
        Evidence(case=c, driver=d, verdict=v, reason=f"{d} {c} {v}", simulated=simulated)
        for (d, c), v in rows.items()
        if v is not None
    ]
    return build_matrix(make_meta(host, simulated, podman_cases), records)


def keys(changes: Any) -> set[tuple[str, str, str]]:
    return {c.key for c in changes}


def test_identical_matrices_have_no_differences_and_pass_the_gate() -> None:
    d = diff(make_matrix(), make_matrix())
    assert (d.regressions, d.improvements, d.changes, d.profile_changes) == ((), (), (), ())
    result = gate(d, [], TODAY)
    assert result.passed
    assert result.summary().startswith("gate: PASSED")


def test_regressions_include_pass_to_fail_rejected_to_error_and_pass_to_missing() -> None:
    current = make_matrix({
        ("docker", "cuda.init"): Verdict.FAIL,
        ("podman", "count.over"): Verdict.ERROR,
        ("podman", "count.1"): None,
        ("docker", "count.1"): Verdict.SKIP,
    })  # fmt: skip
    d = diff(make_matrix(), current)
    assert keys(d.regressions) == {
        ("gpu-a", "docker", "cuda.init"), ("gpu-a", "podman", "count.over"),
        ("gpu-a", "podman", "count.1"), ("gpu-a", "docker", "count.1"),
    }  # fmt: skip
    missing = next(c for c in d.regressions if c.key[1:] == ("podman", "count.1"))
    assert (missing.before, missing.after) == (Verdict.PASS, None)
    assert keys(d.removed_cells) == {("gpu-a", "podman", "count.1")}
    assert "pass -> fail" in d.summary()


def test_improvements_and_other_changes_are_not_regressions() -> None:
    current = make_matrix({
        ("docker", "cuda.matmul"): Verdict.PASS,        # fail -> pass: improvement
        ("podman", "cuda.matmul"): Verdict.REJECTED,    # error -> rejected: improvement
        ("docker", "count.2"): Verdict.PASS,            # skip -> pass: other change
        ("podman", "cuda.bandwidth"): Verdict.FAIL,     # skip -> fail: other change
        ("docker", "smi.default"): Verdict.REJECTED,    # pass -> rejected: both good, a change
        ("docker", "release"): Verdict.PASS,            # new cell
    })  # fmt: skip
    d = diff(make_matrix(), current)
    assert d.regressions == ()
    assert keys(d.improvements) == {("gpu-a", "docker", "cuda.matmul"), ("gpu-a", "podman", "cuda.matmul")}
    assert keys(d.changes) == {("gpu-a", "docker", "count.2"), ("gpu-a", "podman", "cuda.bandwidth"),
                               ("gpu-a", "docker", "smi.default")}  # fmt: skip
    assert keys(d.new_cells) == {("gpu-a", "docker", "release")}
    assert gate(d, [], TODAY).passed


def test_profile_change_lists_each_changed_case_expectation() -> None:
    current = make_matrix(podman_cases={"cuda.*": "unsupported", "count.over": "reject"})
    d = diff(make_matrix(podman_cases={"count.over": "supported"}), current)
    assert len(d.profile_changes) == 1
    change = d.profile_changes[0]
    assert (change.host, change.driver) == ("gpu-a", "podman")
    assert change.changes == ("count.over: supported -> reject", "cuda.*: supported -> unsupported")


def test_waiver_covers_exactly_its_cell_and_not_the_same_case_on_another_driver() -> None:
    current = make_matrix({("docker", "cuda.init"): Verdict.FAIL, ("podman", "cuda.init"): Verdict.FAIL})
    waiver = Waiver(driver="docker", case="cuda.init", reason="bug 123", expires=date(2025, 7, 1))
    result = gate(diff(make_matrix(), current), [waiver], TODAY)
    assert not result.passed
    assert keys(result.blocking) == {("gpu-a", "podman", "cuda.init")}
    assert [(c.key, w) for c, w in result.waived] == [(("gpu-a", "docker", "cuda.init"), waiver)]
    assert "BLOCKING gpu-a/podman/cuda.init: pass -> fail" in result.summary()


def test_waiver_for_another_host_does_not_cover_the_cell() -> None:
    current = make_matrix({("docker", "cuda.init"): Verdict.FAIL})
    waiver = Waiver(host="gpu-b", driver="docker", case="cuda.init", reason="r", expires=date(2025, 7, 1))
    result = gate(diff(make_matrix(), current), [waiver], TODAY)
    assert not result.passed
    assert result.unused_waivers == (waiver,)


def test_waiver_is_valid_through_its_expiry_day_and_expired_after() -> None:
    d = diff(make_matrix(), make_matrix({("docker", "cuda.init"): Verdict.ERROR}))
    waiver = Waiver(driver="docker", case="cuda.init", reason="flaky engine", expires=TODAY)
    assert gate(d, [waiver], TODAY).passed
    late = gate(d, [waiver], date(2025, 6, 2))
    assert not late.passed
    assert late.expired_waivers == (waiver,)
    assert late.waived == ()
    assert "expired waiver */docker/cuda.init" in late.summary()


def test_simulated_current_against_hardware_baseline_is_flagged_and_cannot_pass_for_hardware() -> None:
    d = diff(make_matrix(), make_matrix(simulated=True))
    assert d.mixed_simulation
    assert keys(d.regressions) == {("gpu-a", d_, c) for (d_, c), v in BASE_ROWS.items() if v.good}
    assert all(c.note == "simulated result cannot replace hardware evidence" for c in d.regressions)
    result = gate(d, [], TODAY)
    assert not result.passed
    assert result.mixed_simulation
    assert "simulated results never count as hardware evidence" in result.summary()


def test_simulated_against_simulated_baseline_is_not_mixed() -> None:
    d = diff(make_matrix(simulated=True), make_matrix(simulated=True))
    assert not d.mixed_simulation
    assert gate(d, [], TODAY).passed


def test_host_map_compares_a_renamed_runner_against_its_baseline_host() -> None:
    current = make_matrix({("docker", "cuda.init"): Verdict.FAIL}, host="runner-7f3a")
    d = diff(make_matrix(), current, host_map={"runner-7f3a": "gpu-a"})
    assert keys(d.regressions) == {("gpu-a", "docker", "cuda.init")}
    assert d.new_cells == ()


def test_load_waivers_reads_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "w.yaml").write_text(
        "waivers:\n"
        "  - driver: docker\n    case: cuda.init\n    reason: driver bug 123\n    expires: 2025-07-01\n"
        "  - host: gpu-b\n    driver: podman\n    case: count.1\n    reason: x\n    expires: '2025-08-01'\n",
    )
    (tmp_path / "w.json").write_text(json.dumps([
        {"driver": "docker", "case": "cuda.init", "reason": "driver bug 123", "expires": "2025-07-01"},
    ]))  # fmt: skip
    waivers = load_waivers(tmp_path / "w.yaml")
    assert waivers == [
        Waiver(driver="docker", case="cuda.init", reason="driver bug 123", expires=date(2025, 7, 1)),
        Waiver(host="gpu-b", driver="podman", case="count.1", reason="x", expires=date(2025, 8, 1)),
    ]
    assert load_waivers(tmp_path / "w.json") == waivers[:1]
    (tmp_path / "empty.yaml").write_text("")
    assert load_waivers(tmp_path / "empty.yaml") == []


GOOD = "  - driver: docker\n    case: count.1\n    reason: ok\n    expires: 2025-07-01\n"


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ("  - driver: podman\n    case: count.2\n    expires: 2025-07-01\n",
         r"waiver #2 \(podman/count\.2\): field 'reason' must be a non-empty string"),
        ("  - driver: podman\n    case: count.2\n    reason: x\n",
         r"waiver #2 \(podman/count\.2\): field 'expires' must be a date"),
        ("  - driver: podman\n    case: count.2\n    reason: x\n    expires: next week\n",
         r"field 'expires' must be a date YYYY-MM-DD, saw 'next week'"),
        ("  - driver: podman\n    case: count.2\n    reason: x\n    expiry: 2025-07-01\n",
         r"waiver #2 \(podman/count\.2\): unknown field 'expiry'"),
        ("  - driver: podman\n    case: 'cuda.*'\n    reason: x\n    expires: 2025-07-01\n",
         r"field 'case' must name one cell exactly"),
        ("  - just a string\n", r"waiver #2: expected a mapping"),
        ("  - driver: [\n", r"is not valid YAML"),
    ],
)  # fmt: skip
def test_malformed_waiver_file_gives_one_line_error_naming_entry_and_field(
    tmp_path: Path,
    second: str,
    message: str,
) -> None:
    path = tmp_path / "waivers.yaml"
    path.write_text("waivers:\n" + GOOD + second)
    with pytest.raises(WaiverError, match=message) as info:
        load_waivers(path)
    assert "\n" not in str(info.value)


def test_waiver_file_that_is_not_a_list_or_missing_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "w.yaml").write_text("driver: docker\ncase: count.1\n")
    with pytest.raises(WaiverError, match="expected a list of waivers"):
        load_waivers(tmp_path / "w.yaml")
    with pytest.raises(WaiverError, match="cannot read waiver file"):
        load_waivers(tmp_path / "absent.yaml")


def test_drivers_scope_compares_only_the_named_column_against_a_full_baseline() -> None:
    """A docker-only run gated against the full baseline: podman's absent column is not missing."""
    docker_only = {k: None for k in BASE_ROWS if k[0] == "podman"}
    current = make_matrix({**docker_only, ("docker", "cuda.init"): Verdict.FAIL})
    unscoped = diff(make_matrix(), current)
    assert ("gpu-a", "podman", "count.1") in keys(unscoped.regressions)  # what the scope fixes
    d = diff(make_matrix(), current, drivers=["docker"])
    assert keys(d.regressions) == {("gpu-a", "docker", "cuda.init")}
    assert d.removed_cells == ()
    assert d.profile_changes == ()
    result = gate(d, [], TODAY)
    assert not result.passed
    assert "podman" not in result.summary()


def test_drivers_scope_still_reports_a_missing_cell_of_the_named_column() -> None:
    current = make_matrix({("docker", "count.1"): None})
    d = diff(make_matrix(), current, drivers=["docker"])
    assert keys(d.regressions) == {("gpu-a", "docker", "count.1")}


def test_drivers_scope_naming_no_column_of_either_matrix_is_an_error() -> None:
    with pytest.raises(
        DriverSelectionError, match=r"--drivers dcoker: no such column .*hint: columns are docker, podman"
    ):
        diff(make_matrix(), make_matrix(), drivers=["docker", "dcoker"])


def test_hosts_scope_gates_one_runner_against_a_fleet_baseline() -> None:
    fleet = merge([make_matrix(host="runner-a"), make_matrix(host="runner-b")])
    current = make_matrix({("docker", "cuda.init"): Verdict.FAIL}, host="runner-a")
    assert ("runner-b", "docker", "count.1") in keys(diff(fleet, current).regressions)
    d = diff(fleet, current, hosts=["runner-a"])
    assert keys(d.regressions) == {("runner-a", "docker", "cuda.init")}
    assert d.removed_cells == ()
    both = diff(fleet, current, hosts=["runner-a"], drivers=["podman"])
    assert both.regressions == ()


def test_hosts_scope_naming_an_unknown_host_is_an_error() -> None:
    with pytest.raises(DriverSelectionError, match=r"--hosts runner-z: no such host .*hint: hosts are gpu-a"):
        diff(make_matrix(), make_matrix(), hosts=["runner-z"])
