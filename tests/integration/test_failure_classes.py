"""Failure classes 4, 19 and 10/12/13 of issue 11 through the real engines on the simulated host.

Each fault must turn the cell that catches it red, with the defect named in its reason, and leave
the cells of the same column that it does not touch green.

- smi-creates-nodes:N: nvidia-smi (the simulated libnvidia-ml, as NVML with
  NVreg_ModifyDeviceFiles=1) creates /dev/nvidiaN in a sandbox that may mknod. Docker keeps
  CAP_MKNOD in its default capabilities, so both Docker columns leak; Podman 4 dropped MKNOD from
  its defaults, so there NVML cannot create the node and smi.nodes rightly passes.
- node-mode-000:N: the CDI spec gives GPU N's node fileMode 000; Podman and Engine 26 apply it,
  the simulated NVML cannot open it and nvidia-smi exits 4. The legacy hook (docker-legacy)
  creates its own nodes and does not read CDI fileMode, so it is not a column this fault reaches.
- no-uvm / cuda-mismatch / no-fabric-manager: NVML works, cuInit fails with 999 / 803 / 802.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

SIM = ("--sim", "h100x4")


def _faults(kind: str, gpus: range | tuple[int, ...]) -> list[str]:
    return [arg for gpu in gpus for arg in ("--sim-fault", f"{kind}:{gpu}")]


@pytest.mark.parametrize("driver", ["docker-legacy", "docker-cdi"])
def test_nodes_nvidia_smi_creates_turn_smi_nodes_red(conformance, driver: str) -> None:  # type: ignore[no-untyped-def]
    run = conformance(
        "--drivers",
        driver,
        "--require-driver",
        driver,
        *SIM,
        "--sim-fault",
        "smi-creates-nodes:3",
        "-k",
        "smi.nodes or smi.none or smi.all",
    )
    assert run.exit_code == 1, run.output[-3000:]
    assert run.verdicts(driver) == {"smi.nodes": "fail", "smi.none": "pass", "smi.all": "pass"}
    record = run.record(driver, "smi.nodes")
    assert "/dev/nvidia3 appeared after nvidia-smi ran" in record["reason"], record["reason"]
    assert "ModifyDeviceFiles" in record["reason"]
    assert record["parsed"]["device_nodes"] == [0]
    assert 3 in record["parsed"]["device_nodes_after_smi"]
    assert [c["argv"] for c in record["commands"]][-2:] == [["nvidia-smi", "-L"], ["ls", "-1", "/dev"]]
    assert not run.containers()


def test_podman_without_cap_mknod_cannot_leak_nodes_through_nvml(conformance) -> None:  # type: ignore[no-untyped-def]
    run = conformance(
        "--drivers",
        "podman",
        "--require-driver",
        "podman",
        *SIM,
        "--sim-fault",
        "smi-creates-nodes:3",
        "-k",
        "smi.nodes",
    )
    assert run.exit_code == 0, run.output[-3000:]
    record = run.record("podman", "smi.nodes")
    assert record["verdict"] == "pass", record["reason"]
    assert record["parsed"]["device_nodes_after_smi"] == [0]


@pytest.mark.parametrize("driver", ["podman", "docker-cdi"])
def test_a_node_nvml_may_not_open_is_insufficient_permissions(conformance, driver: str) -> None:  # type: ignore[no-untyped-def]
    run = conformance(
        "--drivers",
        driver,
        "--require-driver",
        driver,
        *SIM,
        "--sim-fault",
        "node-mode-000:3",
        "-k",
        "smi.default or smi.all or smi.none or count.1",
    )
    assert run.exit_code == 1, run.output[-3000:]
    verdicts = run.verdicts(driver)
    assert verdicts == {"smi.default": "pass", "smi.all": "fail", "smi.none": "pass", "count.1": "pass"}, (
        verdicts
    )
    reason = run.record(driver, "smi.all")["reason"]
    assert "exited 4 (NO_PERMISSION)" in reason, reason
    assert "Failed to initialize NVML: Insufficient Permissions" in reason
    assert not run.containers()


CUDA_FAULTS = [
    ("no-uvm", "CUDA_ERROR_UNKNOWN (999)", "/dev/nvidia-uvm"),
    ("cuda-mismatch", "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH (803)", "does not match the kernel driver"),
    ("no-fabric-manager", "CUDA_ERROR_SYSTEM_NOT_READY (802)", "nvidia-fabricmanager is not running"),
]


def _cuda_init_red_smi_green(conformance, driver: str, kind: str, code: str, cause: str) -> None:  # type: ignore[no-untyped-def]
    # On every GPU: whichever one the default request gets (the fabric manager is host-wide anyway).
    run = conformance(
        "--drivers",
        driver,
        "--require-driver",
        driver,
        *SIM,
        *_faults(kind, range(4)),
        "-k",
        "smi.default or cuda.init",
    )
    verdicts = run.verdicts(driver)
    assert verdicts == {"smi.default": "pass", "cuda.init": "fail"}, run.output[-3000:]
    reason = run.record(driver, "cuda.init")["reason"]
    assert reason.startswith(f"CUDA failed to initialise: {code} from cuInit"), reason
    assert cause in reason
    assert run.record(driver, "cuda.init")["parsed"]["cuda_error_code"] == int(code[-4:-1])
    assert not run.containers()


@pytest.mark.parametrize(("kind", "code", "cause"), CUDA_FAULTS)
def test_nvml_works_cuda_does_not_and_the_reason_names_the_curesult(  # type: ignore[no-untyped-def]
    conformance, kind: str, code: str, cause: str
) -> None:
    _cuda_init_red_smi_green(conformance, "podman", kind, code, cause)


@pytest.mark.parametrize("driver", ["docker-legacy", "docker-cdi"])
def test_both_docker_paths_carry_the_cuda_failure(conformance, driver: str) -> None:  # type: ignore[no-untyped-def]
    kind, code, cause = CUDA_FAULTS[2]
    _cuda_init_red_smi_green(conformance, driver, kind, code, cause)
