"""The host adapter's compute probe on a (fake) real GPU host: which interpreter runs it, and how a
host without cupy is judged (a named missing piece, never a failure of the driver).

The GPUs come from the fake libcuda (tests/fakes/libcuda.c) found through LD_LIBRARY_PATH, so
the probe takes its real ctypes path and CUDA_VISIBLE_DEVICES is honoured as CUDA honours it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from gpuconform.conformance.compute import PROBE_PATH
from gpuconform.drivers.base import AdapterContext, Deadline
from gpuconform.drivers.host import OPT_PYTHON, HostAdapter
from gpuconform.drivers.inventory import REAL_CDI_KIND, GpuRecord, Inventory, default_native_ids
from gpuconform.drivers.leases import GpuLeases
from gpuconform.drivers.request import GpuRequest
from gpuconform.workloads import compute_judge, cuda_probe
from tests.fakes import libcuda

UUIDS = ("GPU-a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf", "GPU-8932f937-d700-4106-c12f-20bd9faed9f6")
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("cupy") is not None, reason="cupy is importable here: not a host without cupy"
)


@pytest.fixture(scope="module")
def fake_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return libcuda.build(tmp_path_factory.mktemp("libcuda-host"))


def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lib: Path, **options: str) -> HostAdapter:
    monkeypatch.setenv("LD_LIBRARY_PATH", str(lib.parent))
    monkeypatch.setenv("FAKE_CUDA_UUIDS", ",".join(libcuda.hex_uuid(u) for u in UUIDS))
    monkeypatch.setenv("SIMGPU_DESC_DIR", str(tmp_path / "no-simulated-host"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus = tuple(
        GpuRecord(i, u, "Fake GPU", f"0000:{0x18 + i:02x}:00.0", 81559, "580.1", i, native_ids=ids)
        for i, u in enumerate(UUIDS)
        for ids in [default_native_ids(i, u, f"0000:{0x18 + i:02x}:00.0", REAL_CDI_KIND)]
    )
    inventory = Inventory(host="h", gpus=gpus, simulated=False, source="test")
    ctx = AdapterContext(inventory, GpuLeases(tmp_path / "leases"), run_id="t", options=options)
    return HostAdapter(ctx)


def probe_on(adapter: HostAdapter, req: GpuRequest) -> dict[str, object]:
    sandbox = adapter.provision(req, image="python", labels={}, deadline=Deadline(30))
    try:
        sandbox.put_file(PROBE_PATH, Path(cuda_probe.__file__).read_bytes(), 0o755)
        result = sandbox.exec(["python3", PROBE_PATH, "--skip-bandwidth"], timeout=120)
    finally:
        sandbox.close()
    assert result.exit_code == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_host_probe_runs_with_the_harness_interpreter_and_judges_without_cupy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_lib: Path
) -> None:
    doc = probe_on(host(tmp_path, monkeypatch, fake_lib), GpuRequest.of_ids([UUIDS[1]]))
    stack = doc["stack"]
    assert isinstance(stack, dict)
    assert stack["python"] == sys.executable
    assert doc["mode"] == "driver"
    assert [d["uuid"] for d in doc["devices"]] == [UUIDS[1]]  # type: ignore[attr-defined]
    granted = frozenset([UUIDS[1]])
    # cuda.init / cuda.uuid need only the driver API: judged, and they pass.
    assert compute_judge.environment_gap(doc, needs_cupy=False, simulated_host=False) is None
    assert compute_judge.judge_uuid(doc, granted, 1).verdict == "pass"
    # The checks need cupy: a skip that names the missing piece and the remedy, never a fail.
    gap = compute_judge.environment_gap(
        doc, needs_cupy=True, simulated_host=False, remedy=compute_judge.HOST_REMEDY
    )
    assert gap is not None
    assert gap.verdict == "skip"
    assert f"(python {sys.executable}) has no cupy" in gap.reason
    assert "--driver-opt host.python=PATH" in gap.reason
    # Without the gap check the same document would have failed the driver: the check matters.
    assert compute_judge.judge_vectoradd(doc, granted, 1).verdict == "fail"


def test_host_python_option_names_the_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_lib: Path
) -> None:
    # A wrapper, not a symlink: a symlink to a venv's python outside the venv loses the venv
    # (pyvenv.cfg is looked up beside the link) and would pass only where the base has numpy.
    link = tmp_path / "bin" / "python3"
    link.parent.mkdir()
    used = tmp_path / "used"
    link.write_text(f'#!/bin/sh\necho "$0" >> {used}\nexec {sys.executable} "$@"\n')
    link.chmod(0o755)
    adapter = host(tmp_path, monkeypatch, fake_lib, **{OPT_PYTHON: str(link)})
    doc = probe_on(adapter, GpuRequest.default())
    assert used.read_text().split() == [str(link)]  # the probe ran through the named interpreter
    assert doc["stack"]["python"] == sys.executable  # type: ignore[index]


def test_host_python_that_is_not_there_is_a_one_line_reason_with_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_lib: Path
) -> None:
    adapter = host(tmp_path, monkeypatch, fake_lib, **{OPT_PYTHON: str(tmp_path / "nope")})
    availability = adapter.available()
    assert availability.ok is False
    assert availability.reason == (
        f"host.python={tmp_path / 'nope'} is not an executable file "
        "(hint: --driver-opt host.python=/path/to/bin/python3 with numpy and cupy)"
    )
