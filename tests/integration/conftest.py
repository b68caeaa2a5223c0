"""Running the conformance suites for real (pytest in a subprocess) and reading what they wrote."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gpuconform.drivers.base import Deadline
from gpuconform.fixtures.build.images import ensure_image
from gpuconform.fixtures.settings import prefixed_argv
from gpuconform.fixtures.sim.simgpu.podman_config import (
    PodmanConfigError,
    ensure_containers_conf,
    podman_info_ok,
)

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    exit_code: int
    output: str
    out_dir: Path
    run_id: str

    def containers(self) -> list[str]:
        """This run's containers that still exist (other runs on the machine are not ours to judge)."""
        return podman_containers(f"dev.gpuconform.run={self.run_id}")

    @property
    def results(self) -> dict[str, Any]:
        doc = json.loads((self.out_dir / "results.json").read_text())
        assert isinstance(doc, dict), "results.json is not a JSON object"
        return doc

    def verdicts(self, driver: str) -> dict[str, str]:
        return {r["case"]: r["verdict"] for r in self.results["records"] if r["driver"] == driver}

    def record(self, driver: str, case: str) -> dict[str, Any]:
        return next(r for r in self.results["records"] if r["driver"] == driver and r["case"] == case)


def conformance_argv(out_dir: Path, *args: str) -> list[str]:
    """The ``pytest conformance`` command line a user would type, writing to ``out_dir``.

    ``args`` name the plugin's options as ``gpuconform run`` does (``--drivers podman``); pytest
    gets them as a user types them there, under the prefix (``--gpuconform-drivers podman``).
    """
    return [
        sys.executable,
        "-m",
        "pytest",
        str(REPO / "conformance"),
        "-p",
        "no:cacheprovider",
        "-q",
        "--rootdir",
        str(REPO),
        "--gpuconform-out",
        str(out_dir),
        # The simulated hosts of all runs share UUIDs; private leases keep another run on this
        # machine from taking "GPU 0" away from a test that injects a fault into GPU 0.
        "--gpuconform-lease-dir",
        str(out_dir.parent / "leases"),
        *prefixed_argv(list(args)),
    ]


def run_conformance(
    out_dir: Path, *args: str, timeout: float = 900, env: dict[str, str] | None = None
) -> Run:
    """``pytest conformance`` in a subprocess, under a known run id."""
    run_id = "it" + secrets.token_hex(4)
    argv = conformance_argv(out_dir, *args)
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "GPUCONFORM_RUN_ID": run_id, **(env or {})},
    )
    return Run(proc.returncode, proc.stdout + proc.stderr, out_dir, run_id)


@pytest.fixture
def conformance(tmp_path: Path):  # type: ignore[no-untyped-def]
    def _run(*args: str, **kwargs: Any) -> Run:
        return run_conformance(tmp_path / "out", *args, **kwargs)

    return _run


def podman_containers(label: str = "dev.gpuconform.run") -> list[str]:
    proc = subprocess.run(
        ["podman", "ps", "-a", "--filter", f"label={label}", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return proc.stdout.split()


@pytest.fixture(scope="session")
def image() -> str:
    """The busybox image in Podman, with Podman configured; a skip (a failure under CI) otherwise."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (apt-get install -y podman)")
    if os.geteuid() != 0:
        pytest.skip("the simulated host needs root (mknod) and rootful podman")
    ok, detail = podman_info_ok()
    if not ok:
        try:
            ensure_containers_conf()
        except PodmanConfigError as exc:
            pytest.fail(f"podman does not work ({detail}) and its config cannot be fixed: {exc}")
        ok, detail = podman_info_ok()
        assert ok, detail
    return ensure_image("podman", "busybox", deadline=Deadline(300))
