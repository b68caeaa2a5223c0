"""Failure classes 2, 3, 7 and 9 of issue 11 through the real engines on the simulated host (H9).

Each fault or option must turn the cells that catch it red, with the defect named in the reason,
and leave the cells of the same column that it does not touch green.

- double-injection: Engine 26's node keeps the nvidia runtime as default, so the legacy hook also
  runs for a CDI container and injects what the image's NVIDIA_VISIBLE_DEVICES asks for. The
  stock busybox image sets none (so the positive cases stay green, rightly); busybox-envall sets
  ``all``, as every CUDA base image does: env.escalation on docker-cdi turns red. The other
  columns are not on that daemon and stay green.
- <column>.privileged=1: a privileged sandbox gets the host's /dev, every GPU: the positive cases
  fail naming the extra GPUs. On Podman the simulated host's /dev reaches only a sandbox that holds
  one of its GPUs (the hooks.d entry finds the host through that GPU), so smi.none stays green
  there; on docker-cdi the daemon knows its host and smi.none turns red too. Engine 20.10
  (docker-legacy) cannot start a privileged container on this VM at all (its bounding set lacks
  CAP_SYS_RESOURCE: "unable to apply caps"), which is an error, never a pass.
- plugin-double-alloc: the device plugin hands two pods the same GPU: exclusive.concurrent red.
- plugin-unhealthy:N: GPU N is lost and the plugin still offers it: smi.default red with
  GPU_IS_LOST, where fallen-off-bus:N alone leaves smi.default green on kubernetes (the default
  request does not get GPU N).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SIM = ("--sim", "h100x4")
# GPU 0 is what a default request gets; the others are what a leak adds (profiles.py h100x4).
GPU0 = "GPU-3da96f55-cc53-5101-bd02-6246468af388"
OTHERS = (
    "GPU-c281c433-5039-56f4-afb6-1a6731406765",
    "GPU-c6a58f69-0ece-52f3-80bf-33bcbcb1017b",
    "GPU-f1a33e9e-5036-56a1-9249-3f9815e3591b",
)


PODMAN_HOOK = Path("/usr/share/containers/oci/hooks.d/gpuconform-sim-privileged.json")


def _run(conformance, driver: str, cases: str, *extra: str):  # type: ignore[no-untyped-def]
    return conformance("--drivers", driver, "--require-driver", driver, *SIM, *extra, "-k", cases)


def test_double_injection_widens_a_cdi_sandbox_by_the_image_env(conformance) -> None:  # type: ignore[no-untyped-def]
    run = _run(
        conformance,
        "docker-cdi",
        "env.escalation or smi.default or smi.none or device.each or count.1",
        "--sim-fault",
        "double-injection",
    )
    assert run.exit_code == 1, run.output[-3000:]
    assert run.verdicts("docker-cdi") == {
        "smi.default": "pass",
        "smi.none": "pass",
        "device.each": "pass",
        "count.1": "pass",
        "env.escalation": "fail",
    }
    reason = run.record("docker-cdi", "env.escalation")["reason"]
    assert "image sets NVIDIA_VISIBLE_DEVICES=all" in reason, reason
    assert "/dev/nvidia[0, 1, 2, 3] present" in reason, reason
    assert not run.containers()


@pytest.mark.parametrize("driver", ["podman", "docker-legacy"])
def test_double_injection_reaches_only_the_cdi_daemon(conformance, driver: str) -> None:  # type: ignore[no-untyped-def]
    run = _run(conformance, driver, "env.escalation or smi.default", "--sim-fault", "double-injection")
    assert run.exit_code == 0, run.output[-3000:]
    assert run.verdicts(driver) == {"smi.default": "pass", "env.escalation": "pass"}


@pytest.mark.parametrize(("driver", "none_verdict"), [("podman", "pass"), ("docker-cdi", "fail")])
def test_privileged_sandboxes_fail_the_positive_cases_naming_the_extra_gpus(  # type: ignore[no-untyped-def]
    conformance, driver: str, none_verdict: str
) -> None:
    if driver == "podman":
        assert PODMAN_HOOK.is_file(), f"{PODMAN_HOOK} missing: run bash .ci/setup.d/45-sim-privileged-hook.sh"
    run = _run(
        conformance,
        driver,
        "smi.default or device.each or smi.nodes or smi.all or smi.none",
        "--driver-opt",
        f"{driver}.privileged=1",
    )
    assert run.exit_code == 1, run.output[-3000:]
    assert run.verdicts(driver) == {
        "smi.default": "fail",
        "device.each": "fail",
        "smi.nodes": "fail",
        "smi.all": "pass",  # asked for every GPU: privileged adds nothing to see
        "smi.none": none_verdict,
    }
    reason = run.record(driver, "smi.default")["reason"]
    assert reason.startswith("sandbox sees the wrong GPUs: extra"), reason
    assert all(uuid in reason for uuid in OTHERS), reason
    nodes = run.record(driver, "smi.nodes")["reason"]
    assert "/dev/nvidia[0, 1, 2, 3] do not match the granted GPU(s) /dev/nvidia[0]" in nodes, nodes
    assert not run.containers()


def test_privileged_on_engine_20_is_an_error_never_a_pass(conformance) -> None:  # type: ignore[no-untyped-def]
    run = _run(conformance, "docker-legacy", "smi.default", "--driver-opt", "docker-legacy.privileged=1")
    assert run.verdicts("docker-legacy") == {"smi.default": "error"}, run.output[-3000:]
    reason = run.record("docker-legacy", "smi.default")["reason"]
    assert "docker could not start a container" in reason, reason
    assert not run.containers()


def test_plugin_double_alloc_turns_exclusive_concurrent_red(conformance) -> None:  # type: ignore[no-untyped-def]
    run = _run(
        conformance,
        "kubernetes",
        "exclusive.concurrent or smi.default or smi.all",
        "--sim-fault",
        "plugin-double-alloc",
    )
    assert run.exit_code == 1, run.output[-3000:]
    assert run.verdicts("kubernetes") == {
        "smi.default": "pass",
        "smi.all": "pass",
        "exclusive.concurrent": "fail",
    }
    reason = run.record("kubernetes", "exclusive.concurrent")["reason"]
    assert reason.startswith(f"two concurrent sandboxes both see {GPU0}"), reason


@pytest.mark.parametrize(
    ("fault", "default_verdict"), [("plugin-unhealthy:2", "fail"), ("fallen-off-bus:2", "pass")]
)
def test_a_lost_gpu_the_plugin_still_offers_turns_smi_default_red(  # type: ignore[no-untyped-def]
    conformance, fault: str, default_verdict: str
) -> None:
    run = _run(conformance, "kubernetes", "smi.default or smi.none", "--sim-fault", fault)
    assert run.verdicts("kubernetes") == {"smi.default": default_verdict, "smi.none": "pass"}, run.output[
        -3000:
    ]
    if default_verdict == "fail":
        reason = run.record("kubernetes", "smi.default")["reason"]
        assert "nvidia-smi exited 15 (GPU_IS_LOST)" in reason, reason
        assert "GPU is lost" in reason
