"""lifecycle.persist through the real engines on the simulated host (issue 11, failure class 14).

``revocable:0`` makes the host's reload event (which the harness triggers itself on a simulated
host: the private dockerd gets a real SIGHUP, the descriptor of GPU 0 is flipped in place) cost
the sandboxes running at that moment GPU 0: the simulated NVML then fails "Failed to initialize
NVML: Unknown Error" (exit 255) in them. The default request gets GPU 0, so lifecycle.persist
turns red naming "after the reload event", and the cases that looked before the reload (or in
sandboxes started after it) stay green. Clean: it passes.

The simulated legacy Docker hook copies the files it injects, but bind-mounts a descriptor marked
revocable, so the flip reaches docker-legacy sandboxes too.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

SIM = ("--sim", "h100x4")
GPU0 = "GPU-3da96f55-cc53-5101-bd02-6246468af388"
CASES = "lifecycle.persist or smi.default or cuda.init"


@pytest.mark.parametrize("driver", ["podman", "docker-cdi", "docker-legacy", "kubernetes"])
def test_revocable_gpu_turns_lifecycle_red_after_the_reload(conformance, driver: str) -> None:  # type: ignore[no-untyped-def]
    run = conformance(
        "--drivers", driver, "--require-driver", driver, *SIM, "--sim-fault", "revocable:0", "-k", CASES
    )
    assert run.exit_code == 1, run.output[-3000:]
    assert run.verdicts(driver) == {"smi.default": "pass", "cuda.init": "pass", "lifecycle.persist": "fail"}
    reason = run.record(driver, "lifecycle.persist")["reason"]
    assert reason.startswith("GPU access lost after the reload event: nvidia-smi -L exited 255 (UNKNOWN)"), (
        reason
    )
    assert "Failed to initialize NVML: Unknown Error" in reason, reason
    assert not run.containers()


@pytest.mark.parametrize("driver", ["podman", "docker-cdi", "docker-legacy", "kubernetes"])
def test_clean_host_keeps_the_gpu_through_the_reload(conformance, driver: str) -> None:  # type: ignore[no-untyped-def]
    run = conformance("--drivers", driver, "--require-driver", driver, *SIM, "-k", CASES)
    assert run.exit_code == 0, run.output[-3000:]
    assert run.verdicts(driver) == {"smi.default": "pass", "cuda.init": "pass", "lifecycle.persist": "pass"}
    reason = run.record(driver, "lifecycle.persist")["reason"]
    assert f"{GPU0} kept at start and after 2 s and after the reload event" in reason, reason
    assert "nvidia-smi and CUDA each time" in reason, reason


@pytest.mark.parametrize("driver", ["qemu", "host"])
def test_no_reload_event_is_declared_out_of_scope(conformance, driver: str) -> None:  # type: ignore[no-untyped-def]
    run = conformance("--drivers", driver, *SIM, "-k", "lifecycle.persist")
    assert run.verdicts(driver) == {"lifecycle.persist": "unsupported"}
