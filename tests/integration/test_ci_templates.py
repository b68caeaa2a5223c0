"""The CI templates' own command lines on two simulated "runners" merged into one fleet.

The scripts come from docs/ci/ (tests/ci_templates.py reads them); the only difference from a
GPU runner is GPUCONFORM_SIM (a simulated host instead of --sim none), which the templates expose
for exactly that. Round one bootstraps (no baseline yet) with the GitHub workflow and commits the
fleet matrix as the baseline, as the README's first day says; round two runs the GitLab job
against that baseline; then one cell regresses on one runner and both gates must say which.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.ci_templates import (
    GITHUB,
    GITLAB,
    Context,
    bash,
    github_inputs,
    github_steps,
    github_upload,
    gitlab_script,
    load,
)

pytestmark = pytest.mark.integration

LABELS = ("runner-a", "runner-b")
SIM = {"GPUCONFORM_SIM": "h100x4"}
DRIVERS, CASES = "podman", "smi.default or count.1"
BASELINE = ".gpuconform/baseline.json"


@pytest.fixture
def repo(tmp_path: Path, image: str) -> tuple[Path, dict[str, str]]:
    """A checkout to run in, and ``gpuconform`` on PATH as the installed console script would be."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "gpuconform"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m gpuconform.conformance.cli "$@"\n')
    shim.chmod(0o755)
    work = tmp_path / "repo"
    work.mkdir()
    return work, {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def _ok(step: str, result: Any) -> str:
    assert result.returncode == 0, f"{step} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return str(result.stdout)


def _github(
    doc: dict[str, Any],
    repo: tuple[Path, dict[str, str]],
    job: str,
    label: str,
    ids: tuple[str, ...],
    **inputs: Any,
) -> dict[str, Any]:
    """Run the steps ``ids`` of ``job`` for one runner label; each step's result by id."""
    work, path_env = repo
    values = github_inputs(
        doc, runners=json.dumps(list(LABELS)), drivers=DRIVERS, cases=CASES, baseline=BASELINE, **inputs
    )
    ctx = Context(values, {"runner": label}, {})
    files = {"GITHUB_OUTPUT": f"{work}/out-{label}", "GITHUB_STEP_SUMMARY": f"{work}/summary-{label}.md"}
    return {
        step_id: bash(script, {**env, **SIM, **path_env, **files}, work)
        for step_id, script, env in github_steps(doc, job, ctx, ids)
    }


def _regress(results: Path, case: str) -> None:
    doc = json.loads(results.read_text())
    for record in doc["records"]:
        if record["case"] == case:
            record["verdict"], record["reason"] = "fail", "injected regression"
    results.write_text(json.dumps(doc))


def test_ci_templates_on_two_simulated_runners_merged_into_one_fleet(
    repo: tuple[Path, dict[str, str]],
) -> None:
    work, path_env = repo
    gh = load(GITHUB)

    # Round one, GitHub Actions, bootstrap: doctor, run, summary on each runner; no gate yet.
    for label in LABELS:
        steps = _github(gh, repo, "conformance", label, ("doctor", "run", "summary", "gate"),
                        bootstrap=True)  # fmt: skip
        assert list(steps) == ["doctor", "run", "summary"]  # bootstrap skips the gate
        assert "doctor: ready" in _ok("doctor", steps["doctor"])
        _ok("run", steps["run"])
        _ok("summary", steps["summary"])
        assert (work / f"out-{label}").read_text() == "exit=0\n"
        summary = (work / f"summary-{label}.md").read_text()
        assert "podman" in summary and "doctor: ready" in summary
        results = json.loads((work / "results" / label / "results.json").read_text())
        assert results["host"]["host"] == label  # keyed by the runner label, not the hostname
        assert {(r["case"], r["verdict"]) for r in results["records"]} == {
            ("smi.default", "pass"),
            ("count.1", "pass"),
        }
    for label in LABELS:  # upload-artifact on each runner, download-artifact in the fleet job
        ctx = Context(github_inputs(gh), {"runner": label}, {})
        github_steps(gh, "conformance", ctx, ())  # resolves the job's env into ctx
        github_upload(gh, "conformance", ctx, work, work / "runs")
    fleet = _github(gh, repo, "fleet", "", ("merge", "fleet-gate"), bootstrap=True)
    assert list(fleet) == ["merge"]
    _ok("merge", fleet["merge"])
    merged = json.loads((work / "fleet" / "matrix.json").read_text())
    assert sorted(merged["hosts"]) == list(LABELS)
    assert (work / "fleet" / "matrix.html").stat().st_size > 0
    (work / BASELINE).parent.mkdir()
    shutil.copy(work / "fleet" / "matrix.json", work / BASELINE)  # the README: commit it

    # The GitHub gates against that baseline pass, per runner and for the fleet.
    for label in LABELS:
        gate = _github(gh, repo, "conformance", label, ("gate",), bootstrap=False)["gate"]
        assert "gate: PASSED: 0 blocking regressions" in _ok("gate", gate)
    assert "gate: PASSED" in _ok("fleet-gate", _github(gh, repo, "fleet", "", ("fleet-gate",))["fleet-gate"])

    # Round two, GitLab CI against the committed baseline: each runner job, then the fleet job.
    gl = load(GITLAB)
    shutil.rmtree(work / "results")
    shutil.rmtree(work / "fleet")
    settings = {**SIM, **path_env, "DRIVERS": DRIVERS, "CASES": CASES, "BASELINE": BASELINE}
    for label in LABELS:
        script, env = gitlab_script(gl, "gpuconform", {"RUNNER_LABEL": label}, settings)
        out = _ok(f"gitlab {label}", bash(script, env, work))
        assert "doctor: ready" in out and "gate: PASSED: 0 blocking regressions" in out
    script, env = gitlab_script(gl, "gpuconform-fleet", {}, settings)
    assert "gate: PASSED" in _ok("gitlab fleet", bash(script, env, work))

    # One cell regresses on runner-b: its gate and the fleet's name it; runner-a still passes.
    _regress(work / "results" / "runner-b" / "results.json", "count.1")
    blocking = "BLOCKING runner-b/podman/count.1: pass -> fail (injected regression)"
    for label, code in (("runner-a", 0), ("runner-b", 1)):
        gate = _github(gh, repo, "conformance", label, ("gate",), bootstrap=False)["gate"]
        assert gate.returncode == code, gate.stdout + gate.stderr
        assert (blocking in gate.stdout) == (code == 1)
    script, env = gitlab_script(gl, "gpuconform-fleet", {}, settings)
    fleet_run = bash(script, env, work)
    assert fleet_run.returncode == 1, fleet_run.stdout + fleet_run.stderr
    assert blocking in fleet_run.stdout
