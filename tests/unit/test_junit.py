"""junit.xml from the evidence records: names are cell ids, a suite per driver, verdicts kept."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from gpuconform.reports.evidence import Evidence, Verdict
from gpuconform.reports.junit import render_junit
from gpuconform.reports.matrix import build_matrix
from tests.unit.test_render import make_meta, make_records


def _parse(records: list[Evidence]) -> ET.Element:
    return ET.fromstring(render_junit(records, make_meta()).split("\n", 1)[1])


def _props(case: ET.Element) -> dict[str, str | None]:
    return {p.get("name") or "": p.get("value") for p in case.iter("property")}


def test_names_equal_the_matrix_cell_ids_and_suites_are_drivers() -> None:
    records = make_records()
    root = _parse(records)
    matrix = build_matrix(make_meta(), records)
    names = [c.get("name") or "" for c in root.iter("testcase")]
    assert sorted(names) == sorted(f"{d}-{c}" for _, d, c in matrix.cells)
    assert not any("@" in n or "[" in n for n in names)  # no xdist group, no item id
    assert [s.get("name") for s in root.findall("testsuite")] == list(matrix.drivers)
    for suite in root.findall("testsuite"):
        assert {c.get("classname") for c in suite.iter("testcase")} == {suite.get("name")}


def test_verdicts_map_to_junit_outcomes_with_verdict_and_reason_properties() -> None:
    root = _parse(make_records())
    cases = {c.get("name"): c for c in root.iter("testcase")}
    expected = {
        "docker-cuda.init": ("failure", "fail"),
        "podman-count.1": ("error", "error"),
        "podman-cuda.init": ("error", "inconclusive"),
        "podman-device.unsupported": ("skipped", "unsupported"),
        "docker-count.2": ("skipped", "skip"),
        "docker-count.over": (None, "rejected"),
        "docker-smi.default": (None, "pass"),
    }
    for name, (element, verdict) in expected.items():
        case = cases[name]
        outcomes = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        assert outcomes == ([element] if element else []), name
        assert _props(case)["verdict"] == verdict
        assert _props(case)["reason"]
        if element:
            message = case.find(element).get("message")  # type: ignore[union-attr]
            assert message is not None and message.startswith(f"{verdict}: ")
    assert root.get("tests") == "16" and root.get("failures") == "2" and root.get("errors") == "2"


def test_failure_message_says_expected_vs_seen() -> None:
    record = Evidence(
        case="count.1", driver="podman", verdict=Verdict.FAIL, reason="sandbox sees 2 GPU(s), expected 1",
        parsed={"expected": 1, "seen": ["GPU-a", "GPU-b"]},
        commands=({"argv": ["nvidia-smi", "-L"], "exit_code": 0, "stdout": "GPU 0\x00", "stderr": ""},),
    )  # fmt: skip
    case = next(_parse([record]).iter("testcase"))
    failure = case.find("failure")
    assert failure is not None
    assert failure.get("message") == (
        'fail: sandbox sees 2 GPU(s), expected 1 (expected 1; seen ["GPU-a", "GPU-b"])'
    )
    out = case.find("system-out")
    assert out is not None and "$ nvidia-smi -L  (exit 0)" in (out.text or "")
    assert "\x00" not in (out.text or "")  # control characters XML cannot carry are replaced


def test_failure_without_recorded_values_falls_back_to_granted_vs_seen() -> None:
    record = Evidence(case="smi.default", driver="docker-cdi", verdict=Verdict.FAIL, reason="wrong GPU",
                      granted=("GPU-a",), seen=("GPU-b",))  # fmt: skip
    failure = next(_parse([record]).iter("testcase")).find("failure")
    assert failure is not None and 'expected GPUs ["GPU-a"]; seen ["GPU-b"]' in (failure.get("message") or "")
