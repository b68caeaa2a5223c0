"""Allure by cell through allure-pytest itself: a tiny pytest session annotates cells, as the plugin
does, and the allure-results files it writes are read back after ``finish_allure_results``.

No engine is needed: the session's tests end with each verdict the way ``fixtures/plugin._finish``
ends a cell (pytest.fail / pytest.skip / return), so every Allure status mapping is exercised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gpuconform.reports.allure_cells import ALLURE_STATUS, finish_allure_results
from gpuconform.reports.evidence import Evidence, Verdict

pytest.importorskip("allure_pytest")

REPO = Path(__file__).resolve().parents[2]

SESSION = """
import pytest
from gpuconform.reports.allure_cells import annotate_cell
from gpuconform.reports.evidence import Evidence, Verdict

def record(verdict):
    return Evidence(case="count.over", driver="podman-" + verdict, verdict=Verdict(verdict),
                    reason="because " + verdict, granted=("GPU-a",), seen=("GPU-a", "GPU-b"),
                    parsed={"expected": 1, "seen": 2}, timings={"provision_s": 0.5},
                    versions={"engine": "podman 4.3"},
                    commands=({"argv": ["nvidia-smi", "-L"], "exit_code": 0,
                               "stdout": "GPU 0: H100 (UUID: GPU-a)", "stderr": "warn"},))

@pytest.fixture
def cell(request):
    # the plugin judges some cells while their fixture is set up (unsupported, unavailable)
    if request.node.callspec.params["verdict"] == "unsupported":
        r = record("unsupported")
        annotate_cell(request.config, r)
        pytest.skip(f"unsupported: {r.reason}")

@pytest.mark.parametrize("verdict", [v.value for v in Verdict])
def test_cell(request, verdict, cell):
    r = record(verdict)
    annotate_cell(request.config, r)
    message = f"{verdict}: {r.reason}"
    if r.verdict in (Verdict.SKIP, Verdict.UNSUPPORTED):
        pytest.skip(message)
    if r.verdict.bad:
        pytest.fail(message, pytrace=False)
"""


def _labels(doc: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for label in doc["labels"]:
        out.setdefault(label["name"], []).append(label["value"])
    return out


@pytest.fixture(scope="module")
def allure_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("allure")
    (base / "test_session.py").write_text(textwrap.dedent(SESSION))
    out = base / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:gpuconform",
         "--rootdir", str(base), f"--alluredir={out}", str(base / "test_session.py")],
        capture_output=True, text=True, timeout=120, cwd=base, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the bad verdicts fail the session
    records = [
        Evidence(case="count.over", driver=f"podman-{v.value}", verdict=v, reason=f"because {v.value}")
        for v in Verdict
    ]
    changed = finish_allure_results(out, records)
    docs = {}
    for path in out.glob("*-result.json"):
        doc = json.loads(path.read_text())
        docs[_labels(doc)["verdict"][0]] = doc
    return {"docs": docs, "dir": out, "changed": changed}


def test_each_cell_is_a_test_named_by_cell_id_with_driver_case_verdict_labels(
    allure_results: dict[str, Any],
) -> None:
    docs = allure_results["docs"]
    assert set(docs) == {v.value for v in Verdict}
    for verdict, doc in docs.items():
        labels = _labels(doc)
        assert doc["name"] == f"podman-{verdict}-count.over"
        assert labels["suite"] == [f"podman-{verdict}"] and labels["driver"] == [f"podman-{verdict}"]
        assert labels["feature"] == ["count"] and labels["story"] == ["count.over"]
        assert labels["case"] == ["count.over"] and verdict in labels["tag"]


def test_statuses_follow_the_verdict_and_keep_its_word(allure_results: dict[str, Any]) -> None:
    docs = allure_results["docs"]
    for verdict, doc in docs.items():
        assert doc["status"] == ALLURE_STATUS[Verdict(verdict)], verdict
        assert doc["statusDetails"]["message"] == f"{verdict}: because {verdict}"
    assert docs["rejected"]["status"] == "passed"
    assert docs["error"]["status"] == docs["inconclusive"]["status"] == "broken"  # pytest said failed
    assert allure_results["changed"] == len(Verdict)
    assert finish_allure_results(allure_results["dir"], []) == 0  # other runs' results are left alone


def test_the_evidence_is_attached(allure_results: dict[str, Any]) -> None:
    doc = allure_results["docs"]["fail"]
    files = {a["name"]: allure_results["dir"] / a["source"] for a in doc["attachments"]}
    assert set(files) == {"commands (stdout, stderr)", "expected vs seen", "parsed values", "timings",
                          "versions", "evidence"}  # fmt: skip
    commands = files["commands (stdout, stderr)"].read_text()
    assert "$ nvidia-smi -L" in commands and "GPU 0: H100 (UUID: GPU-a)" in commands and "warn" in commands
    seen = files["expected vs seen"].read_text()
    assert "expected: 1" in seen and "seen GPUs:    GPU-a, GPU-b" in seen
    evidence = json.loads(files["evidence"].read_text())
    assert evidence["verdict"] == "fail" and evidence["commands"][0]["argv"] == ["nvidia-smi", "-L"]
    assert json.loads(files["versions"].read_text()) == {"engine": "podman 4.3"}
