"""`gpuconform run` on a GPU host whose nvidia-smi fails: an error, never a simulated run.

The whole command line runs against a fake sysfs with two NVIDIA GPUs on the nvidia driver, a
fake /dev/nvidiactl, and an ``nvidia-smi`` first on PATH that fails as a driver/library mismatch
does (exit 18). Before this was fixed the run brought up the simulated host and came out green.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gpuconform.fixtures.sim.environment import ROOT_VARIABLES
from gpuconform.fixtures.sim.fakesysfs import FakeSysfs
from gpuconform.fixtures.sim.simgpu.host import SimHost

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_run_on_a_gpu_host_with_a_failing_nvidia_smi_errors_every_cell_and_simulates_nothing(
    tmp_path: Path,
) -> None:
    tree = FakeSysfs.for_gpus(tmp_path / "sys", ["0000:18:00.0", "0000:2a:00.0"])
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "nvidiactl").touch()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    smi = bindir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'Failed to initialize NVML: Driver/library version mismatch'\nexit 18\n")
    smi.chmod(0o755)
    run_id = f"refuse{secrets.token_hex(3)}"
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "GPUCONFORM_RUN_ID": run_id,
        ROOT_VARIABLES[0]: str(tree.root),
        ROOT_VARIABLES[1]: str(dev),
    }
    argv = [sys.executable, "-m", "gpuconform.conformance.cli", "run", "--drivers", "host,podman"]
    proc = subprocess.run(
        [*argv, "-k", "smi.default or smi.none", "--out", str(out), "-n", "0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert SimHost.find(f"r{run_id}") is None
    assert "SIMULATED" not in proc.stdout
    junit = ET.parse(out / "junit.xml").getroot()
    verdicts = {
        case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
        for case in junit.iter("testcase")
    }
    assert sorted(str(name) for name in verdicts) == [
        "host-smi.default",
        "host-smi.none",
        "podman-smi.default",
        "podman-smi.none",
    ]
    for name, props in verdicts.items():
        assert (props["verdict"], props["simulated"]) == ("error", "false"), name
        assert "exited 18 (LIB_RM_VERSION_MISMATCH)" in str(props["reason"]), (name, props["reason"])
    results = (out / "results.json").read_text()
    assert '"simulated": true' not in results and '"verdict": "pass"' not in results
