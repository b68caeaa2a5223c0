"""Read the CI templates under docs/ci/ and run their command lines, as the CI system would.

The scripts are taken from the files (never copied into tests): a GitHub Actions step's ``run``
with its workflow, job and step ``env`` resolved for one matrix entry, or a GitLab job's
``script`` with its variables. Only the expressions the templates use are understood; anything
else is an error, so a template change that this reader cannot follow fails loudly.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
GITHUB = REPO / "docs" / "ci" / "github-actions-gpu.yml"
GITLAB = REPO / "docs" / "ci" / "gitlab-ci-gpu.yml"
STEP_TIMEOUT_S = 600

_EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    if True in doc:  # YAML 1.1 reads the key "on" as True
        doc["on"] = doc.pop(True)
    return dict(doc)


@dataclass
class Context:
    """The values GitHub expressions see: inputs, the matrix entry, and step outcomes."""

    inputs: Mapping[str, Any]
    matrix: Mapping[str, str]
    env: dict[str, str]

    def value(self, expr: str) -> Any:
        if expr.startswith("!"):
            return not self.value(expr[1:].strip())
        head, _, name = expr.partition(".")
        if head == "inputs":
            return self.inputs[name]
        if head == "matrix":
            return self.matrix[name]
        if head == "env":
            return self.env[name]
        raise ValueError(f"expression {expr!r} is not one the template reader understands")

    def text(self, template: str) -> str:
        def one(match: re.Match[str]) -> str:
            value = self.value(match.group(1))
            return str(value).lower() if isinstance(value, bool) else str(value)

        return _EXPR.sub(one, str(template))

    def condition(self, expr: str | None) -> bool:
        if expr is None:
            return True
        body = _EXPR.fullmatch(expr.strip())
        inner = body.group(1) if body else expr.strip()
        if inner == "always()" or inner.startswith("always() && steps."):
            return True  # the runs before succeeded or failed; these steps run either way
        return bool(self.value(inner))


def github_inputs(doc: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    declared = doc["on"]["workflow_dispatch"]["inputs"]
    values = {name: spec.get("default") for name, spec in declared.items()}
    unknown = set(overrides) - set(values)
    if unknown:
        raise ValueError(f"no such workflow input: {sorted(unknown)}")
    return {**values, **overrides}


def github_steps(
    doc: Mapping[str, Any], job: str, ctx: Context, ids: tuple[str, ...]
) -> list[tuple[str, str, dict[str, str]]]:
    """(id, script, env) of the steps with these ids whose ``if`` holds, in file order."""
    for key, value in doc.get("env", {}).items():
        ctx.env[key] = ctx.text(value)
    for key, value in doc["jobs"][job].get("env", {}).items():
        ctx.env[key] = ctx.text(value)
    out = []
    for step in doc["jobs"][job]["steps"]:
        if step.get("id") not in ids or not ctx.condition(step.get("if")):
            continue
        if _EXPR.search(step["run"]):
            raise ValueError(f"step {step['id']} uses an expression in its script; pass it through env")
        env = {**ctx.env, **{k: ctx.text(v) for k, v in step.get("env", {}).items()}}
        out.append((step["id"], step["run"], env))
    return out


def gitlab_script(
    doc: Mapping[str, Any], job: str, matrix: Mapping[str, str], overrides: Mapping[str, str]
) -> tuple[str, dict[str, str]]:
    """A job's script as the runner's shell runs it, and its variables: global, then the
    ``parallel:matrix`` entry, then the job's own (which may refer to both), then ``overrides``
    (what a project sets in its CI/CD settings)."""
    env: dict[str, str] = {}
    for key, value in doc.get("variables", {}).items():
        env[key] = _expand(str(value), env)
    env.update(matrix)
    for key, value in doc[job].get("variables", {}).items():
        env[key] = _expand(str(value), env)
    env.update(overrides)
    return "\n".join(doc[job]["script"]), env


def _expand(value: str, env: Mapping[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env[m.group(1)], value)


def bash(script: str, env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """As both CI systems run a script: bash with -e and pipefail."""
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
        check=False,
    )


def github_upload(doc: Mapping[str, Any], job: str, ctx: Context, work: Path, dest_root: Path) -> Path:
    """Do what actions/upload-artifact then download-artifact (into ``dest_root``) do with the
    job's upload step: every listed file, relative to their common folder, under the artifact name."""
    step = next(
        s for s in doc["jobs"][job]["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact")
    )
    files = [work / ctx.text(line.strip()) for line in step["with"]["path"].splitlines() if line.strip()]
    missing = [str(f) for f in files if not f.is_file()]
    if missing and step["with"].get("if-no-files-found") == "error":
        raise FileNotFoundError(f"upload-artifact would fail: {missing}")
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    dest = dest_root / ctx.text(step["with"]["name"])
    for f in files:
        (dest / f.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
        (dest / f.relative_to(root)).write_bytes(f.read_bytes())
    return dest
