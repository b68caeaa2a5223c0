"""What CI systems read of a real run with a fault: Allure results, JUnit and the schema'd JSON.

One small ``gpuconform run`` through real Podman against a simulated host with a fault, as a user
would type it (``--allure DIR``), then the files are read back as Allure, a JUnit consumer and a
JSON Schema validator would read them.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from gpuconform.reports.schemas import validate
from tests.integration.conftest import REPO

pytestmark = pytest.mark.integration

FAULT = "extra-gpu:0"  # the simulated CDI spec injects a second GPU: smi.default must fail


def _labels(doc: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for label in doc["labels"]:
        out.setdefault(label["name"], []).append(label["value"])
    return out


@pytest.fixture(scope="module")
def faulty_run(image: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("reports")
    out, allure_dir = base / "out", base / "allure"
    argv = [
        sys.executable, "-m", "gpuconform.conformance.cli",
        "run", "--drivers", "podman", "--require-driver", "podman",
        "--sim", "h100x4", "--sim-fault", FAULT, "-k", "smi.default or count.over", "-n", "0",
        "--out", str(out), "--allure", str(allure_dir), "--", "--lease-dir", str(base / "leases"),
    ]  # fmt: skip
    env = {**os.environ, "GPUCONFORM_RUN_ID": "it" + secrets.token_hex(4)}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    results = json.loads((out / "results.json").read_text())
    allure = [json.loads(p.read_text()) for p in sorted(allure_dir.glob("*-result.json"))]
    return {
        "rc": proc.returncode, "output": proc.stdout + proc.stderr, "out": out, "allure_dir": allure_dir,
        "results": results, "allure": allure, "base": base,
    }  # fmt: skip


def _record(run: dict[str, Any], case: str) -> dict[str, Any]:
    return next(r for r in run["results"]["records"] if r["driver"] == "podman" and r["case"] == case)


def _allure_of(run: dict[str, Any], case: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [d for d in run["allure"] if _labels(d).get("case") == [case]]
    assert len(found) == 1, (case, [d["name"] for d in run["allure"]])
    return found[0]


def test_the_fault_turns_smi_default_red_and_count_over_is_rejected(faulty_run: dict[str, Any]) -> None:
    assert faulty_run["rc"] == 1, faulty_run["output"][-3000:]
    assert _record(faulty_run, "smi.default")["verdict"] == "fail"
    assert _record(faulty_run, "count.over")["verdict"] == "rejected"


def test_allure_failing_cell_carries_driver_label_and_its_evidence(faulty_run: dict[str, Any]) -> None:
    record = _record(faulty_run, "smi.default")
    doc = _allure_of(faulty_run, "smi.default")
    labels = _labels(doc)
    assert doc["name"] == "podman-smi.default"
    assert doc["status"] == "failed"
    assert doc["statusDetails"]["message"] == f"fail: {record['reason']}"
    assert labels["driver"] == ["podman"] and labels["suite"] == ["podman"]
    assert labels["feature"] == ["smi"] and labels["verdict"] == ["fail"]
    attachments = {a["name"]: faulty_run["allure_dir"] / a["source"] for a in doc["attachments"]}
    evidence = json.loads(attachments["evidence"].read_text())
    assert {k: evidence[k] for k in ("driver", "case", "verdict", "reason", "commands")} == {
        k: record[k] for k in ("driver", "case", "verdict", "reason", "commands")
    }
    assert "versions" in attachments
    assert record["commands"], "the fault is caught by reading nvidia-smi inside the sandbox"
    text = attachments["commands (stdout, stderr)"].read_text()  # readable without opening JSON
    for command in record["commands"]:
        assert " ".join(command["argv"]) in text
        assert (command["stdout"] or "")[:200] in text
    assert "expected vs seen" in attachments


def test_allure_rejected_cell_keeps_the_word_rejected(faulty_run: dict[str, Any]) -> None:
    doc = _allure_of(faulty_run, "count.over")
    labels = _labels(doc)
    assert doc["status"] == "passed"  # a clean rejection counts as conformant ...
    assert labels["verdict"] == ["rejected"]  # ... and says what it was
    assert "rejected" in labels["tag"]
    assert doc["statusDetails"]["message"].startswith("rejected: ")


def test_junit_names_are_the_matrix_cell_ids_grouped_by_driver(faulty_run: dict[str, Any]) -> None:
    root = ET.parse(faulty_run["out"] / "junit.xml").getroot()
    matrix = json.loads((faulty_run["out"] / "matrix.json").read_text())
    cell_ids = {f"{d}-{c}" for h in matrix["cells"].values() for d, by_case in h.items() for c in by_case}
    cases = root.findall("./testsuite/testcase")
    assert {c.get("name") for c in cases} == cell_ids == {"podman-smi.default", "podman-count.over"}
    assert [s.get("name") for s in root.findall("testsuite")] == ["podman"]
    assert all(c.get("classname") == "podman" for c in cases)
    failed = next(c for c in cases if c.get("name") == "podman-smi.default")
    props = {p.get("name"): p.get("value") for p in failed.iter("property")}
    assert props["verdict"] == "fail"
    assert props["reason"] == _record(faulty_run, "smi.default")["reason"]
    failure = failed.find("failure")
    assert failure is not None and "expected" in (failure.get("message") or "")
    rejected = next(c for c in cases if c.get("name") == "podman-count.over")
    assert rejected.find("failure") is None
    assert {p.get("name"): p.get("value") for p in rejected.iter("property")}["verdict"] == "rejected"


def test_results_matrix_and_fleet_files_validate_and_a_broken_one_is_refused(
    faulty_run: dict[str, Any],
) -> None:
    out, base = faulty_run["out"], faulty_run["base"]
    validate(faulty_run["results"], "results", "results.json")
    validate(json.loads((out / "matrix.json").read_text()), "matrix", "matrix.json")
    fleet = base / "fleet.json"
    cli = [sys.executable, "-m", "gpuconform.conformance.cli"]
    merged = subprocess.run(
        [*cli, "merge", str(out / "results.json"), "-o", str(fleet)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert merged.returncode == 0, merged.stderr
    validate(json.loads(fleet.read_text()), "matrix", "fleet.json")
    broken = json.loads((out / "matrix.json").read_text())
    broken["cells"]["vm" if "vm" in broken["cells"] else next(iter(broken["cells"]))]["podman"][
        "smi.default"
    ]["verdict"] = "green"
    (base / "broken.json").write_text(json.dumps(broken))
    for command in (["matrix", str(base / "broken.json")], ["gate", str(fleet), str(base / "broken.json")]):
        proc = subprocess.run([*cli, *command], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        assert proc.stderr.startswith("gpuconform: error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert "does not match the matrix schema" in proc.stderr and "hint:" in proc.stderr
