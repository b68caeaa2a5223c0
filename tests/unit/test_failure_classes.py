"""Failure classes 4, 10/12/13 and 19 of the research catalogue, below the engines (issue 11).

- smi-creates-nodes:N (class 4): NVML creates missing device nodes once nvidia-smi runs; smi.nodes
  lists the nodes again after nvidia-smi and names those that appeared.
- node-mode-000:N (class 19): the CDI spec gives GPU N's node fileMode 000; the simulated NVML
  opens nodes as NVML does and nvidia-smi fails "Insufficient Permissions", exit 4.
- no-uvm:N, cuda-mismatch:N, no-fabric-manager:N (classes 10, 13, 12): NVML works, cuInit fails
  with the CUresult real hardware gives for that cause; the probe reports code and name, and the
  cuda.init reason names them and the cause.

The engines' part (podman and both Docker columns) is tests/integration/test_failure_classes.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gpuconform.drivers.base import ExecResult
from gpuconform.fixtures.sim.simgpu.cdi import cdi_spec
from gpuconform.fixtures.sim.simgpu.faults import FaultError, parse_faults
from gpuconform.fixtures.sim.simgpu.layout import ENV_DESC_DIR, ENV_DEV_DIR, format_descriptor
from gpuconform.fixtures.sim.simgpu.plan import build_plan, descriptor_fields
from gpuconform.fixtures.sim.simgpu.profiles import get_profile
from gpuconform.fixtures.sim.simgpu.smi_build import SmiBuild, ensure_built
from gpuconform.workloads import compute_judge, cuda_probe
from tests.unit.fakesandbox import FakeSandbox, Shape, ls_dev, run_case, world

GPUS = get_profile("h100x4").gpus
PROBE = Path(cuda_probe.__file__)
SMALL = ["--sizes", "vector=1000,matmul=32,reduction=4096,copy_mib=1,bench_matmul=32", "--repeats", "2"]


# ---- fault names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["smi-creates-nodes:1", "node-mode-000:2", "no-uvm:0", "cuda-mismatch:3", "no-fabric-manager:1"]
)
def test_each_new_fault_parses_and_names_itself(name: str) -> None:
    (fault,) = parse_faults([name], 4)
    assert str(fault) == name


def test_two_cuda_faults_on_one_gpu_are_refused_with_a_hint() -> None:
    with pytest.raises(FaultError, match="both decide how CUDA fails on GPU 1.*hint"):
        parse_faults(["no-uvm:1", "cuda-unusable:1"], 4)
    assert len(parse_faults(["no-uvm:1", "no-fabric-manager:2"], 4)) == 2


@pytest.mark.parametrize(
    ("fault", "state"),
    [
        ("cuda-unusable:1", "unusable"),
        ("no-uvm:1", "no-uvm"),
        ("cuda-mismatch:1", "driver-mismatch"),
        ("no-fabric-manager:1", "no-fabric-manager"),
    ],
)
def test_cuda_faults_reach_only_their_gpus_descriptor(fault: str, state: str) -> None:
    faults = parse_faults([fault], 4)
    assert descriptor_fields(GPUS[1], faults)["CUDA"] == state
    assert descriptor_fields(GPUS[0], faults)["CUDA"] == "ok"


def test_a_clean_host_descriptor_and_spec_carry_none_of_the_new_keys(tmp_path: Path) -> None:
    """Default profile byte-for-byte as before: no NVML_CREATES_NODES, no fileMode anywhere."""
    fields = descriptor_fields(GPUS[0], ())
    assert list(fields) == ["MINOR", "UUID", "NAME", "PCI", "MEMORY_MIB", "DRIVER", "CUDA", "STATE"]
    spec = json.dumps(cdi_spec(build_plan("gpu", GPUS, (), tmp_path)))
    assert "fileMode" not in spec


def test_smi_creates_nodes_tells_every_descriptor_which_nodes_nvml_creates() -> None:
    faults = parse_faults(["smi-creates-nodes:3", "smi-creates-nodes:1"], 4)
    for gpu in GPUS:  # a driver-wide setting: whichever GPU a sandbox holds carries it
        assert descriptor_fields(gpu, faults)["NVML_CREATES_NODES"] == "1,3"


def test_node_mode_000_restricts_that_gpus_node_in_every_entry_and_the_spec(tmp_path: Path) -> None:
    plan = build_plan("gpu", GPUS, parse_faults(["node-mode-000:2"], 4), tmp_path)
    for selector in ("2", GPUS[2].uuid, "all"):
        (node,) = [n for n in plan["devices"][selector]["nodes"] if n["path"] == "/dev/nvidia2"]
        assert node["fileMode"] == 0
    assert all("fileMode" not in n for n in plan["devices"]["0"]["nodes"])
    spec = cdi_spec(plan)
    modes = {
        (d["name"], n["path"]): n.get("fileMode")
        for d in spec["devices"]
        for n in d["containerEdits"].get("deviceNodes", [])
    }
    assert modes[("2", "/dev/nvidia2")] == 0
    assert modes[("0", "/dev/nvidia0")] is None
    assert all("fileMode" not in n for n in spec["containerEdits"]["deviceNodes"])


# ---- the simulated NVML opens nodes as NVML does -------------------------------------------------


@pytest.fixture(scope="module")
def smi(tmp_path_factory: pytest.TempPathFactory) -> SmiBuild:
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.fail("no C compiler: the simulated nvidia-smi cannot be built (apt-get install gcc libc6-dev)")
    return ensure_built(tmp_path_factory.mktemp("smi-cache"))


def _sandbox(tmp: Path, faults: Sequence[str] = (), minors: Sequence[int] = (0,)) -> tuple[Path, Path]:
    dev, desc = tmp / "dev", tmp / "gpus"
    dev.mkdir()
    desc.mkdir()
    (dev / "nvidiactl").write_text("")
    (dev / "nvidiactl").chmod(0o666)
    parsed = parse_faults(faults, len(GPUS))
    for minor in minors:
        (dev / f"nvidia{minor}").write_text("")
        (dev / f"nvidia{minor}").chmod(0o666)
        (desc / str(minor)).write_text(format_descriptor(descriptor_fields(GPUS[minor], parsed)))
    return dev, desc


def _smi(smi: SmiBuild, dev: Path, desc: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, ENV_DEV_DIR: str(dev), ENV_DESC_DIR: str(desc)}
    return subprocess.run([str(smi.binary), *args], env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("node", ["nvidia0", "nvidiactl"])
def test_a_node_without_read_write_permission_is_insufficient_permissions_exit_4(
    smi: SmiBuild, tmp_path: Path, node: str
) -> None:
    dev, desc = _sandbox(tmp_path)
    assert _smi(smi, dev, desc, "-L").returncode == 0
    (dev / node).chmod(0o000)
    result = _smi(smi, dev, desc, "-L")
    assert result.returncode == 4, result
    assert result.stdout == "Failed to initialize NVML: Insufficient Permissions\n"
    (dev / node).chmod(0o400)  # read is not enough: NVML opens O_RDWR
    assert _smi(smi, dev, desc, "-L").returncode == 4


def test_owner_read_write_is_enough_for_the_owner(smi: SmiBuild, tmp_path: Path) -> None:
    dev, desc = _sandbox(tmp_path)
    (dev / "nvidia0").chmod(0o600)  # owned by whoever runs the test, as root owns a root sandbox's node
    result = _smi(smi, dev, desc, "--query-gpu=uuid", "--format=csv,noheader")
    assert (result.returncode, result.stdout) == (0, f"{GPUS[0].uuid}\n")


def test_nvml_never_creates_nodes_outside_a_sandbox(smi: SmiBuild, tmp_path: Path) -> None:
    """With SIMGPU_DEV_DIR set (the host adapter) the driver's ModifyDeviceFiles is never acted on."""
    dev, desc = _sandbox(tmp_path, ["smi-creates-nodes:1"])
    assert _smi(smi, dev, desc, "-L").returncode == 0
    assert sorted(p.name for p in dev.iterdir()) == ["nvidia0", "nvidiactl"]


# ---- smi.nodes looks again after nvidia-smi ------------------------------------------------------


def _creating_nodes(monkeypatch: pytest.MonkeyPatch, created: frozenset[int]) -> None:
    """Fake sandboxes whose nvidia-smi creates ``created`` in /dev, as NVML does under the fault."""
    original = FakeSandbox.raw_exec
    ran: set[str] = set()

    def raw_exec(
        self: FakeSandbox, argv: Sequence[str], *, timeout: float, stdin: bytes | None = None
    ) -> Any:
        result: ExecResult = original(self, argv, timeout=timeout, stdin=stdin)
        if argv and argv[0] == "nvidia-smi":
            ran.add(self.id)
        elif list(argv) == ["ls", "-1", "/dev"] and self.id in ran:
            nodes = {int(n[6:]) for n in result.stdout.split() if n.startswith("nvidia") and n[6:].isdigit()}
            return ExecResult(result.argv, 0, ls_dev(sorted(nodes | created)), "", result.duration_s)
        return result

    monkeypatch.setattr(FakeSandbox, "raw_exec", raw_exec)


def test_smi_nodes_names_the_nodes_nvidia_smi_created(monkeypatch: pytest.MonkeyPatch) -> None:
    _creating_nodes(monkeypatch, frozenset({1, 3}))
    outcome = run_case("smi.nodes", world())
    assert outcome.verdict.value == "fail", outcome.reason
    assert "/dev/nvidia1, /dev/nvidia3 appeared after nvidia-smi ran" in outcome.reason
    assert "ModifyDeviceFiles" in outcome.reason
    argvs = [c["argv"] for c in outcome.cell.commands]
    assert argvs == [["ls", "-1", "/dev"], ["nvidia-smi", "-L"], ["ls", "-1", "/dev"]]
    assert outcome.cell.parsed["device_nodes_after_smi"] == [0, 1, 3]


def test_smi_nodes_where_the_driver_chose_reuses_its_nvidia_smi_run(monkeypatch: pytest.MonkeyPatch) -> None:
    _creating_nodes(monkeypatch, frozenset({2}))
    outcome = run_case("smi.nodes", world(granted_known=False))
    assert outcome.verdict.value == "fail", outcome.reason
    assert "/dev/nvidia2 appeared after nvidia-smi ran" in outcome.reason
    assert [c["argv"][0] for c in outcome.cell.commands] == ["ls", "nvidia-smi", "ls"]


def test_smi_nodes_passes_when_nvidia_smi_creates_nothing() -> None:
    outcome = run_case("smi.nodes", world())
    assert outcome.verdict.value == "pass", outcome.reason
    assert "before and after nvidia-smi ran" in outcome.reason


def test_a_node_the_stack_injected_is_not_blamed_on_nvidia_smi() -> None:
    outcome = run_case("smi.nodes", world(shape=Shape(extra_nodes=frozenset({3}))))
    assert outcome.verdict.value == "fail"
    assert "appeared after nvidia-smi" not in outcome.reason


# ---- NVML works, CUDA does not, for a named reason -----------------------------------------------


def _probe(tmp_path: Path, fault: str) -> dict[str, Any]:
    dev, desc = _sandbox(tmp_path, [fault], minors=(0, 1))
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update({ENV_DESC_DIR: str(desc), ENV_DEV_DIR: str(dev)})
    argv = [sys.executable, str(PROBE), *SMALL, "--no-cupy"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize(
    ("fault", "code", "name", "cause"),
    [
        ("no-uvm:1", 999, "CUDA_ERROR_UNKNOWN", "/dev/nvidia-uvm is missing"),
        ("cuda-mismatch:1", 803, "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH", "does not match the kernel driver"),
        ("no-fabric-manager:1", 802, "CUDA_ERROR_SYSTEM_NOT_READY", "nvidia-fabricmanager is not running"),
    ],
)
def test_the_probe_reports_the_curesult_and_the_judge_names_it(
    tmp_path: Path, fault: str, code: int, name: str, cause: str
) -> None:
    doc = _probe(tmp_path, fault)
    cuda = doc["cuda"]
    assert (doc["mode"], cuda["ok"], cuda["error_code"], cuda["error_name"]) == (
        "simulated",
        False,
        code,
        name,
    )
    assert cuda["error"].startswith(f"{name} ({code}) from cuInit: ")
    assert cause in cuda["error"] and GPUS[1].uuid in cuda["error"]
    judged = compute_judge.judge_init(doc, frozenset(g.uuid for g in GPUS[:2]), 2, smi_count=2)
    assert judged.verdict == "fail"
    assert judged.reason.startswith(
        f"nvidia-smi lists 2 GPU(s) but CUDA failed to initialise: {name} ({code})"
    )
    assert compute_judge.CUDA_INIT_CAUSES[code] in judged.reason
    assert judged.parsed["cuda_error_code"] == code


def test_a_cuda_fault_on_a_gpu_not_granted_leaves_cuda_working(tmp_path: Path) -> None:
    dev, desc = _sandbox(tmp_path, ["no-fabric-manager:1"], minors=(0,))
    env = {**os.environ, ENV_DESC_DIR: str(desc), ENV_DEV_DIR: str(dev)}
    argv = [sys.executable, str(PROBE), *SMALL, "--no-cupy", "--skip-bandwidth"]
    doc = json.loads(subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120).stdout)
    assert doc["cuda"]["ok"] is True and "error_code" not in doc["cuda"]


def test_the_driver_api_path_carries_the_curesult_too() -> None:
    driver = {
        "ok": False,
        "error": "CUDA_ERROR_SYSTEM_NOT_READY (802) from cuInit: system not yet initialized",
    }
    doc = cuda_probe.probe_driver(
        {**driver, "error_code": 802, "error_name": "CUDA_ERROR_SYSTEM_NOT_READY"}, {}
    )
    assert (doc["cuda"]["error_code"], doc["cuda"]["error_name"]) == (802, "CUDA_ERROR_SYSTEM_NOT_READY")
    judged = compute_judge.judge_init(doc, frozenset({GPUS[0].uuid}), 1)
    assert "nvidia-fabricmanager" in judged.reason


def test_a_document_without_a_code_keeps_its_reason_as_before() -> None:
    doc = {"mode": "simulated", "simulated": True, "cuda": {"ok": False, "device_count": 0, "error": "X"}}
    doc.update(devices=[], errors=[])
    judged = compute_judge.judge_init(doc, frozenset({GPUS[0].uuid}), 1)
    assert judged.reason == "CUDA failed to initialise: X"
    assert "cuda_error_code" not in judged.parsed
