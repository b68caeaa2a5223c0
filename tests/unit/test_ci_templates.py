"""The CI templates validate against their published schemas and have the shape the README promises.

Schemas: check-jsonschema's vendored GitHub Actions workflow and GitLab CI schemas (a dev
dependency). That the command lines in them work is tests/integration/test_ci_templates.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.ci_templates import GITHUB, GITLAB, load


@pytest.mark.parametrize(
    ("path", "schema"), [(GITHUB, "vendor.github-workflows"), (GITLAB, "vendor.gitlab-ci")]
)
def test_template_validates_against_its_published_schema(path: Path, schema: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "No module named check_jsonschema" not in result.stderr, "pip install check-jsonschema (dev extra)"
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok -- validation done" in result.stdout


def test_a_broken_workflow_fails_the_schema_check(tmp_path: Path) -> None:
    """The check is not vacuous: a job without runs-on is refused."""
    broken = tmp_path / "broken.yml"
    broken.write_text(GITHUB.read_text().replace("    runs-on: ubuntu-latest\n", ""))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.github-workflows",
            str(broken),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout


def test_github_workflow_fans_out_over_runner_labels_and_merges_the_fleet() -> None:
    doc = load(GITHUB)
    assert set(doc["on"]["workflow_dispatch"]["inputs"]) >= {"runners", "drivers", "baseline"}
    job = doc["jobs"]["conformance"]
    assert job["strategy"]["matrix"]["runner"] == "${{ fromJSON(inputs.runners) }}"
    assert job["runs-on"] == ["self-hosted", "${{ matrix.runner }}"]
    assert job["env"]["HOST_NAME"] == "${{ matrix.runner }}"
    upload = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact"))
    for name in ("matrix.html", "junit.xml", "results.json"):
        assert f"${{{{ env.OUT }}}}/{name}" in upload["with"]["path"]
    assert any("GITHUB_STEP_SUMMARY" in s.get("run", "") for s in job["steps"])
    fleet = doc["jobs"]["fleet"]
    assert fleet["needs"] == "conformance"
    assert "gpuconform merge" in next(s for s in fleet["steps"] if s.get("id") == "merge")["run"]
    assert "gpuconform gate" in next(s for s in fleet["steps"] if s.get("id") == "fleet-gate")["run"]


def test_gitlab_job_fans_out_over_runner_tags_and_merges_the_fleet() -> None:
    doc = load(GITLAB)
    job = doc["gpuconform"]
    assert "RUNNER_LABEL" in job["parallel"]["matrix"][0]
    assert job["tags"] == ["$RUNNER_LABEL"]
    assert job["variables"]["HOST_NAME"] == "$RUNNER_LABEL"
    assert job["artifacts"]["reports"]["junit"] == "$OUT/junit.xml"
    assert {"$OUT/matrix.html", "$OUT/junit.xml", "$OUT/results.json"} <= set(job["artifacts"]["paths"])
    fleet = doc["gpuconform-fleet"]
    assert fleet["needs"] == [{"job": "gpuconform", "artifacts": True}]
    assert any("gpuconform merge" in line for line in fleet["script"])
