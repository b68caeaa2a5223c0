"""The probe's CUDA driver API path (ctypes into libcuda.so.1) against a fake libcuda built here.

The fake (tests/fakes/libcuda.c) has the real entry points, signatures and CUresult codes; its
UUIDs come from FAKE_CUDA_UUIDS and may hold zero bytes, which is what cupy's
``getDeviceProperties()["uuid"]`` loses and the driver API keeps.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gpuconform.workloads import compute_judge, cuda_probe
from tests.fakes import libcuda
from tests.fakes.cupy_twin import FakeCupy

PROBE = Path(cuda_probe.__file__)
SMALL = ["--sizes", "vector=1000,matmul=32,reduction=4096,copy_mib=1,bench_matmul=32", "--repeats", "2"]
# The second and third hold zero bytes: in the middle (cupy would keep 5 bytes) and at the end.
ZERO_MID = "GPU-8932f937-d700-4106-c12f-20bd9faed9f6"
ZERO_END = "GPU-1b2c3d4e-5f60-7182-93a4-b5c6d7e8f900"
PLAIN = "GPU-a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf"
CUDA_H = Path("/usr/local/cuda/include/cuda.h")


@pytest.fixture(scope="session")
def fake_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return libcuda.build(tmp_path_factory.mktemp("libcuda"))


@pytest.fixture(scope="session")
def fake_lib_v1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return libcuda.build(tmp_path_factory.mktemp("libcuda-v1"), uuid_v2=False)


def fake_env(monkeypatch: pytest.MonkeyPatch, *uuids: str, **extra: str) -> None:
    for key in ("FAKE_CUDA_INIT_ERROR", "FAKE_CUDA_CTX_ERROR", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("FAKE_CUDA_UUIDS", ",".join(libcuda.hex_uuid(u) for u in uuids))
    for key, value in extra.items():
        monkeypatch.setenv(key, value)


def run_probe(lib: Path, tmp_path: Path, *uuids: str, **extra: str) -> dict[str, Any]:
    """The probe as a sandbox runs it: its own process, libcuda found by the dynamic loader."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKE_CUDA", "CUDA_VISIBLE"))}
    env.update(
        LD_LIBRARY_PATH=str(lib.parent),
        FAKE_CUDA_UUIDS=",".join(libcuda.hex_uuid(u) for u in uuids),
        SIMGPU_DESC_DIR=str(tmp_path / "no-simulated-host"),
    )
    env.update(extra)
    argv = [sys.executable, str(PROBE), *SMALL, "--no-cupy"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def test_uuids_with_zero_bytes_come_back_whole(fake_lib: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_env(monkeypatch, PLAIN, ZERO_MID, ZERO_END)
    driver = cuda_probe.read_driver(str(fake_lib))
    assert (driver["ok"], driver["error"], driver["device_count"]) == (True, None, 3)
    assert [d["uuid"] for d in driver["devices"]] == [PLAIN, ZERO_MID, ZERO_END]
    assert {d["uuid_source"] for d in driver["devices"]} == {"cuDeviceGetUuid_v2"}
    dev = driver["devices"][1]
    assert (dev["name"], dev["memory_total_mib"], dev["compute_capability"], dev["pci_bus_id"]) == (
        "Fake GPU 1",
        81559,
        "9.0",
        "0000:19:00.0",
    )
    assert driver["driver_version"] == 13000


def test_a_driver_without_uuid_v2_is_read_through_cu_device_get_uuid(
    fake_lib_v1: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_env(monkeypatch, ZERO_MID)
    driver = cuda_probe.read_driver(str(fake_lib_v1))
    assert [(d["uuid"], d["uuid_source"]) for d in driver["devices"]] == [(ZERO_MID, "cuDeviceGetUuid")]


def test_cupy_path_takes_uuids_from_the_driver_api_not_from_truncated_properties(
    fake_lib: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The twin's device 0 UUID ends in a zero byte, so its properties UUID is cut as cupy cuts it.
    twin_uuids = [cuda_probe.format_uuid(bytes(range(0xA0, 0xAF)) + bytes([i])) for i in (0, 1)]
    sizes = {"vector": 1000, "matmul": 16, "reduction": 4096, "copy_mib": 1, "bench_matmul": 16}
    alone = cuda_probe.probe_cupy(FakeCupy(count=2), sizes, repeats=1, timed=False)
    assert [d["uuid"] for d in alone["devices"]] == [None, twin_uuids[1]]
    assert "expected 16" in alone["errors"][0]  # refused, never reported as a different GPU
    fake_env(monkeypatch, *twin_uuids)
    driver = cuda_probe.read_driver(str(fake_lib))
    doc = cuda_probe.probe_cupy(FakeCupy(count=2), sizes, repeats=1, timed=False, driver=driver)
    assert [d["uuid"] for d in doc["devices"]] == twin_uuids
    assert [d["uuid_source"] for d in doc["devices"]] == ["cuDeviceGetUuid_v2"] * 2
    assert doc["errors"] == []
    verdict = compute_judge.judge_uuid(doc, frozenset(twin_uuids), 2)
    assert (verdict.verdict, verdict.reason) == ("pass", "CUDA sees exactly the 2 granted UUID(s)")


def test_driver_and_cupy_counts_disagreeing_is_said_and_cupy_identities_used(
    fake_lib: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_env(monkeypatch, PLAIN)
    driver = cuda_probe.read_driver(str(fake_lib))
    sizes = {"vector": 10, "matmul": 4, "reduction": 16, "copy_mib": 1, "bench_matmul": 4}
    doc = cuda_probe.probe_cupy(FakeCupy(count=2), sizes, repeats=1, timed=False, driver=driver)
    assert "the driver API counts 1 device(s), cupy 2" in doc["errors"][0]
    assert doc["devices"][1]["uuid_source"] == "cudaDeviceProp"


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (100, "CUDA_ERROR_NO_DEVICE"),
        (999, "CUDA_ERROR_UNKNOWN"),
        (803, "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH"),
        (804, "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE"),
        (46, "CUDA_ERROR_DEVICE_UNAVAILABLE"),  # the fake's cuGetErrorName does not know it
        (12345, "CUresult 12345"),
    ],
)
def test_cu_init_error_reaches_the_probe_document_with_its_name(
    fake_lib: Path, tmp_path: Path, code: int, name: str
) -> None:
    doc = run_probe(fake_lib, tmp_path, PLAIN, FAKE_CUDA_INIT_ERROR=str(code))
    assert (doc["mode"], doc["simulated"], doc["devices"]) == ("driver", False, [])
    assert doc["cuda"]["ok"] is False
    assert doc["cuda"]["error"].startswith(f"{name} ({code}) from cuInit")
    assert (doc["driver_api"]["error_name"], doc["driver_api"]["error_code"]) == (name, code)
    assert doc["stack"]["libcuda"]["loaded"] is True
    # libcuda is there and refuses: CUDA itself is broken in this sandbox, which is the driver's to answer.
    verdict = compute_judge.judge_init(doc, frozenset([PLAIN]), 1)
    assert verdict.verdict == "fail"
    assert f"CUDA failed to initialise: {name} ({code}) from cuInit" in verdict.reason


def test_context_creation_failure_is_reported_with_its_call(fake_lib: Path, tmp_path: Path) -> None:
    doc = run_probe(fake_lib, tmp_path, PLAIN, FAKE_CUDA_CTX_ERROR="802")
    assert doc["cuda"]["error"] == (
        "CUDA_ERROR_SYSTEM_NOT_READY (802) from cuDevicePrimaryCtxRetain: system not yet initialized"
    )


def test_without_cupy_the_driver_api_still_answers_init_and_identity(fake_lib: Path, tmp_path: Path) -> None:
    doc = run_probe(fake_lib, tmp_path, PLAIN, ZERO_MID, CUDA_VISIBLE_DEVICES=ZERO_MID)
    assert (doc["mode"], doc["cuda"]["ok"], doc["cuda"]["device_count"]) == ("driver", True, 1)
    assert [d["uuid"] for d in doc["devices"]] == [ZERO_MID]
    assert doc["devices"][0]["checks"] is None
    assert doc["stack"]["cupy"]["present"] is False
    assert doc["stack"]["python"] == sys.executable
    assert compute_judge.judge_init(doc, frozenset([ZERO_MID]), 1).verdict == "pass"
    assert compute_judge.judge_uuid(doc, frozenset([ZERO_MID]), 1).verdict == "pass"


def test_missing_libcuda_is_said_in_the_stack(tmp_path: Path) -> None:
    driver = cuda_probe.read_driver(str(tmp_path / "libcuda.so.1"))
    assert (driver["loaded"], driver["ok"]) == (False, False)
    assert "could not be loaded" in driver["error"]


def test_fallback_error_names_match_cuda_h() -> None:
    if not CUDA_H.exists():
        pytest.skip(f"no CUDA toolkit header at {CUDA_H} to compare the names with")
    pairs = re.findall(r"^\s*(CUDA_ERROR_\w+)\s*=\s*(\d+)", CUDA_H.read_text(), re.M)
    declared = {int(v): k for k, v in pairs}
    assert {code: declared.get(code) for code in cuda_probe.CU_ERROR_NAMES} == cuda_probe.CU_ERROR_NAMES


def test_a_working_libcuda_wins_over_a_simulated_host_and_a_failing_one_yields(
    fake_lib: Path, tmp_path: Path
) -> None:
    desc, dev = tmp_path / "gpus", tmp_path / "dev"
    desc.mkdir()
    dev.mkdir()
    (dev / "nvidia0").write_text("")
    (desc / "0").write_text("UUID=GPU-51111111-2222-3333-4444-555555555555\nPCI=00000000:18:00.0\n")
    where = {"SIMGPU_DESC_DIR": str(desc), "SIMGPU_DEV_DIR": str(dev)}
    real = run_probe(fake_lib, tmp_path, PLAIN, **where)
    assert (real["mode"], [d["uuid"] for d in real["devices"]]) == ("driver", [PLAIN])
    failing = run_probe(fake_lib, tmp_path, PLAIN, FAKE_CUDA_INIT_ERROR="100", **where)
    assert failing["mode"] == "simulated"
    assert any(e.startswith("driver: CUDA_ERROR_NO_DEVICE (100) from cuInit") for e in failing["errors"])
