"""The compute probe: as a subprocess against a fake simulated sandbox, and its cupy path on a
numpy twin of cupy (no GPU here), including kernels deliberately broken to prove checks can fail."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpuconform.fixtures.sim.simgpu import layout
from gpuconform.workloads import compute_judge, cuda_probe
from tests.fakes.cupy_twin import FakeCupy

PROBE = Path(cuda_probe.__file__)
SMALL = ["--sizes", "vector=1000,matmul=32,reduction=4096,copy_mib=1,bench_matmul=32", "--repeats", "2"]
UUIDS = {
    0: "GPU-a0111111-2222-3333-4444-000000000000",
    1: "GPU-b1111111-2222-3333-4444-000000000001",
    2: "GPU-b2111111-2222-3333-4444-000000000002",
}
# Minor order differs from PCI order on purpose: CUDA orders by PCI bus id here.
PCI = {0: "00000000:3B:00.0", 1: "00000000:18:00.0", 2: "00000000:86:00.0"}


class FakeSandbox:
    """A sandbox's /dev and descriptor directory in temp dirs, written through the layout contract."""

    def __init__(self, root: Path) -> None:
        self.dev = root / "dev"
        self.desc = root / "gpus"
        self.dev.mkdir()
        self.desc.mkdir()

    def add_gpu(self, minor: int, *, node: bool = True, cuda: str = "ok", state: str = "ok") -> None:
        if node:
            (self.dev / f"nvidia{minor}").write_text("")
        fields: dict[str, str | int] = {
            "MINOR": minor,
            "UUID": UUIDS[minor],
            "NAME": "NVIDIA H100 80GB HBM3",
            "PCI": PCI[minor],
            "MEMORY_MIB": 81559,
            "DRIVER": "580.105.08",
            "CUDA": cuda,
            "STATE": state,
        }
        (self.desc / str(minor)).write_text(layout.format_descriptor(fields))

    def run(self, *args: str, visible: str | None = None, no_cupy: bool = True) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
        env.update({layout.ENV_DESC_DIR: str(self.desc), layout.ENV_DEV_DIR: str(self.dev)})
        if visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible
        argv = [sys.executable, str(PROBE), *SMALL, *args, *(["--no-cupy"] if no_cupy else [])]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count("\n") == 1, proc.stdout
        doc = json.loads(proc.stdout)
        assert isinstance(doc, dict), proc.stdout
        return doc


@pytest.fixture
def sandbox(tmp_path: Path) -> FakeSandbox:
    return FakeSandbox(tmp_path)


def test_two_simulated_gpus_pass_every_check_in_pci_order(sandbox: FakeSandbox) -> None:
    sandbox.add_gpu(0)
    sandbox.add_gpu(1)
    doc = sandbox.run()
    assert (doc["probe_version"], doc["mode"], doc["simulated"]) == (1, "simulated", True)
    assert doc["cuda"]["ok"] is True
    assert doc["cuda"]["device_count"] == 2
    assert [d["uuid"] for d in doc["devices"]] == [UUIDS[1], UUIDS[0]]
    for dev in doc["devices"]:
        assert dev["simulated"] is True
        assert dev["memory_total_mib"] == 81559
        assert all(check["ok"] for check in dev["checks"].values()), dev["checks"]
        assert dev["bandwidth"]["judged"] is False
        assert dev["bandwidth"]["h2d_gbps"]["median"] > 0
        assert len(dev["bandwidth"]["d2d_gbps"]["samples"]) == 2
    assert (
        compute_judge.judge_init(compute_judge.parse_probe_output(json.dumps(doc)), None, 2).verdict == "pass"
    )


def test_cuda_visible_devices_index_selects_within_pci_order(sandbox: FakeSandbox) -> None:
    sandbox.add_gpu(0)
    sandbox.add_gpu(1)
    doc = sandbox.run(visible="1")
    assert [d["uuid"] for d in doc["devices"]] == [UUIDS[0]]
    assert doc["devices"][0]["ordinal"] == 0


def test_cuda_visible_devices_uuid_and_unique_prefix_select_that_gpu(sandbox: FakeSandbox) -> None:
    for minor in (0, 1, 2):
        sandbox.add_gpu(minor)
    assert [d["uuid"] for d in sandbox.run(visible=UUIDS[2])["devices"]] == [UUIDS[2]]
    assert [d["uuid"] for d in sandbox.run(visible="GPU-b2")["devices"]] == [UUIDS[2]]
    # An ambiguous prefix is an invalid entry: CUDA sees nothing from there on.
    assert sandbox.run(visible="GPU-b")["cuda"]["device_count"] == 0


def test_cuda_visible_devices_invalid_entry_truncates_and_empty_hides_all(sandbox: FakeSandbox) -> None:
    sandbox.add_gpu(0)
    sandbox.add_gpu(1)
    assert [d["uuid"] for d in sandbox.run(visible="1,7,0")["devices"]] == [UUIDS[0]]
    assert [d["uuid"] for d in sandbox.run(visible="1,1,0")["devices"]] == [UUIDS[0]]
    empty = sandbox.run(visible="")
    assert empty["cuda"]["ok"] is False
    assert empty["cuda"]["device_count"] == 0
    assert "cudaErrorNoDevice" in empty["cuda"]["error"]


def test_cuda_unusable_descriptor_fails_initialisation_for_the_process(sandbox: FakeSandbox) -> None:
    sandbox.add_gpu(0)
    sandbox.add_gpu(1, cuda="unusable")
    doc = sandbox.run()
    assert doc["mode"] == "simulated"
    assert doc["cuda"]["ok"] is False
    assert doc["devices"] == []
    assert "CUDA=unusable" in doc["cuda"]["error"]
    assert "simulated" in doc["cuda"]["error"]
    verdict = compute_judge.judge_init(doc, frozenset(UUIDS[m] for m in (0, 1)), 2)
    assert verdict.verdict == "fail"
    assert verdict.reason.startswith("CUDA failed to initialise: ")


def test_unusable_gpu_hidden_by_cuda_visible_devices_does_not_break_the_others(sandbox: FakeSandbox) -> None:
    sandbox.add_gpu(0)
    sandbox.add_gpu(1, cuda="unusable")
    doc = sandbox.run(visible=UUIDS[0])
    assert doc["cuda"]["ok"] is True
    assert [d["uuid"] for d in doc["devices"]] == [UUIDS[0]]


def test_gpu_fallen_off_the_bus_fails_initialisation(sandbox: FakeSandbox) -> None:
    sandbox.add_gpu(0, state="lost")
    doc = sandbox.run()
    assert doc["cuda"]["ok"] is False
    assert "STATE=lost" in doc["cuda"]["error"]


def test_no_simulated_host_and_no_cupy_is_none_mode(tmp_path: Path) -> None:
    sandbox = FakeSandbox(tmp_path)
    sandbox.desc.rmdir()
    doc = sandbox.run()
    assert (doc["mode"], doc["simulated"], doc["devices"]) == ("none", False, [])
    assert doc["cuda"]["ok"] is False
    assert doc["cuda"]["device_count"] == 0
    assert doc["cuda"]["error"].startswith("no CUDA device")


def test_descriptor_without_device_node_is_not_counted(sandbox: FakeSandbox) -> None:
    sandbox.add_gpu(0)
    sandbox.add_gpu(1, node=False)
    doc = sandbox.run()
    assert doc["cuda"]["device_count"] == 1
    assert [d["uuid"] for d in doc["devices"]] == [UUIDS[0]]


def test_skip_bandwidth_reports_no_timed_figures(sandbox: FakeSandbox) -> None:
    sandbox.add_gpu(0)
    dev = sandbox.run("--skip-bandwidth")["devices"][0]
    assert dev["bandwidth"] is None
    assert dev["matmul_tflops"] is None
    assert dev["checks"]["vectoradd"]["ok"]


def test_bad_sizes_are_a_one_line_usage_error_with_nothing_on_stdout() -> None:
    argv = [sys.executable, str(PROBE), "--sizes", "matmul=0"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "bad size 'matmul=0'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="cupy is importable here")
def test_auto_mode_without_cupy_falls_back_to_the_simulated_host(sandbox: FakeSandbox) -> None:
    sandbox.add_gpu(0)
    doc = sandbox.run(no_cupy=False)
    assert doc["mode"] == "simulated"
    assert any("cupy not usable" in e for e in doc["errors"])


def test_probe_imports_only_stdlib_numpy_and_lazily_cupy() -> None:
    tree = ast.parse(PROBE.read_text())
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert top - set(sys.stdlib_module_names) == {"numpy"}
    nested = {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) and n not in tree.body for a in n.names
    }
    assert nested == {"cupy"}


def test_probe_mirrors_the_simulated_layout_contract() -> None:
    assert cuda_probe.DEFAULT_DESC_DIR == layout.SANDBOX_DESC_DIR
    assert cuda_probe.DEFAULT_DEV_DIR == layout.SANDBOX_DEV_DIR
    assert (cuda_probe.ENV_DESC_DIR, cuda_probe.ENV_DEV_DIR) == (layout.ENV_DESC_DIR, layout.ENV_DEV_DIR)
    text = "MINOR=3\nUUID=GPU-x\n junk\nCUDA = unusable\n=nokey\n"
    assert cuda_probe.parse_descriptor(text) == layout.parse_descriptor(text)


# ---- the cupy path on a numpy twin -------------------------------------------------------------


SIZES = {"vector": 1000, "matmul": 48, "reduction": 4096, "copy_mib": 1, "bench_matmul": 16}


def test_cupy_path_on_numpy_twin_reports_identity_checks_and_event_timed_figures() -> None:
    cp = FakeCupy(count=2)
    doc = cuda_probe.probe_cupy(cp, SIZES, repeats=3, timed=True)
    assert (doc["mode"], doc["simulated"], doc["cuda"]["ok"], doc["cuda"]["device_count"]) == (
        "cupy",
        False,
        True,
        2,
    )
    assert (doc["cuda"]["driver_version"], doc["cuda"]["runtime_version"]) == (12080, 12060)
    dev = doc["devices"][1]
    assert dev["uuid"] == "GPU-a0a1a2a3-a4a5-a6a7-a8a9-aaabacadae01"
    assert (dev["name"], dev["compute_capability"], dev["memory_total_mib"]) == (
        "NVIDIA H100 80GB HBM3",
        "9.0",
        81559,
    )
    assert all(c["ok"] for c in dev["checks"].values()), dev["checks"]
    assert cp.launches[0] == ((4,), (256,))  # 1000 elements, 256 threads per block
    bw = dev["bandwidth"]
    assert bw["judged"] is True
    assert bw["bytes"] == 1 << 20
    # Each span is 1 ms by the fake events: 2^20 bytes / 1 ms; device-local copies count bytes twice.
    assert bw["h2d_gbps"]["median"] == pytest.approx(1.048576)
    assert bw["h2d_gbps"]["spread"] == 0
    assert bw["d2d_gbps"]["median"] == pytest.approx(2 * 1.048576)
    assert dev["matmul_tflops"]["median"] == pytest.approx(2 * 16**3 / 1e12 / 1e-3)


def test_cupy_path_detects_an_off_by_one_kernel() -> None:
    doc = cuda_probe.probe_cupy(FakeCupy(count=1, offset=1.0), SIZES, repeats=1, timed=False)
    check = doc["devices"][0]["checks"]["vectoradd"]
    assert check["ok"] is False
    assert check["mismatches"] == 1000
    assert check["max_abs_err"] == 1.0
    verdict = compute_judge.judge_vectoradd(doc, None, 1)
    assert verdict.verdict == "fail"
    assert "1000 of 1000 elements wrong" in verdict.reason


def test_cupy_path_detects_a_wrong_matmul_and_a_wrong_reduction() -> None:
    doc = cuda_probe.probe_cupy(FakeCupy(count=1, skew=1e-2, sum_error=1.0), SIZES, repeats=1, timed=False)
    checks = doc["devices"][0]["checks"]
    assert checks["matmul"]["ok"] is False
    assert checks["matmul"]["max_rel_err"] == pytest.approx(1e-2, rel=1e-3)
    assert checks["reduction"]["ok"] is False
    assert checks["reduction"]["value"] == checks["reduction"]["expected"] + 1
    assert checks["vectoradd"]["ok"] is True
    assert compute_judge.judge_matmul(doc, None, 1).verdict == "fail"


@pytest.mark.parametrize("fail_at", ["count", "context"])
def test_cupy_init_failure_is_reported_not_raised(fail_at: str) -> None:
    doc = cuda_probe.probe_cupy(FakeCupy(fail_at=fail_at), SIZES, repeats=1, timed=False)
    cuda = doc["cuda"]
    assert (cuda["ok"], cuda["device_count"]) == (False, 0)
    assert cuda["error"] == "cudaErrorSystemNotReady: system not yet initialized"
    assert (doc["mode"], doc["devices"]) == ("cupy", [])


def test_cupy_bad_uuid_is_recorded_and_the_checks_still_run() -> None:
    doc = cuda_probe.probe_cupy(FakeCupy(count=1, uuid_bytes=b"short"), SIZES, repeats=1, timed=False)
    assert doc["devices"][0]["uuid"] is None
    assert "expected 16" in doc["errors"][0]
    assert doc["devices"][0]["checks"]["vectoradd"]["ok"] is True


def test_mode_selection_working_cupy_wins_and_broken_cupy_yields_to_a_simulated_host(
    sandbox: FakeSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox.add_gpu(0)
    env = {layout.ENV_DESC_DIR: str(sandbox.desc), layout.ENV_DEV_DIR: str(sandbox.dev)}
    monkeypatch.setitem(sys.modules, "cupy", FakeCupy(count=1))
    assert cuda_probe.probe(env, SIZES, 1, False, use_cupy=True)["mode"] == "cupy"
    monkeypatch.setitem(sys.modules, "cupy", FakeCupy(fail_at="count"))
    assert cuda_probe.probe(env, SIZES, 1, False, use_cupy=True)["mode"] == "simulated"
    env[layout.ENV_DESC_DIR] = str(sandbox.desc / "absent")
    broken = cuda_probe.probe(env, SIZES, 1, False, use_cupy=True)
    assert broken["mode"] == "cupy"
    assert broken["cuda"]["error"].startswith("cudaErrorSystemNotReady")


def test_rate_stats_median_and_relative_spread() -> None:
    stats = cuda_probe.rate_stats([1.0, 2.0, 4.0, 0.0], 8.0)
    assert stats == {"median": 4.0, "spread": 1.5, "samples": [8.0, 4.0, 2.0]}
    assert cuda_probe.rate_stats([], 1.0)["median"] is None


def test_clean_makes_strict_json() -> None:
    doc = {"a": np.float32(1.5), "b": [float("nan"), np.int64(3)], "c": (float("inf"),)}
    assert json.dumps(cuda_probe.clean(doc), allow_nan=False) == '{"a": 1.5, "b": [null, 3], "c": [null]}'


def test_format_uuid_matches_nvidia_smi_form() -> None:
    raw = bytes.fromhex("8932f937d72c4106c12f20bd9faed9f6")
    assert cuda_probe.format_uuid(raw) == "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6"
    with pytest.raises(ValueError, match="expected 16"):
        cuda_probe.format_uuid(b"\x00" * 15)
