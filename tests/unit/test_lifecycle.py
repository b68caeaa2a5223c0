"""lifecycle.persist (issue 11, failure class 14): the case, the reload events, the revocable fault.

The case runs on the table-driven fake stack (tests/unit/fakesandbox.py) whose reload event
rewrites what the sandbox answers afterwards, as a daemon-reload rewrites device rules; the
simulated host's side (descriptor marking, the in-place flip the sandboxes' bind mounts see) runs
on a descriptor directory here. The simulated nvidia-smi's reaction to it runs through the real
engines in tests/integration/test_lifecycle.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gpuconform.conformance import test_lifecycle
from gpuconform.drivers import reload
from gpuconform.drivers.base import Sandbox
from gpuconform.fixtures.sim.simgpu import layout
from gpuconform.fixtures.sim.simgpu.faults import REVOCABLE, Fault, parse_fault, parse_faults
from gpuconform.fixtures.sim.simgpu.host import SimHost
from gpuconform.fixtures.sim.simgpu.plan import descriptor_fields
from gpuconform.fixtures.sim.simgpu.profiles import get_profile
from gpuconform.reports.evidence import Verdict
from tests.unit import fakesandbox
from tests.unit.fakesandbox import NVML_UNKNOWN, Answer, FakeAdapter, inventory, probe_doc

CASE = "lifecycle.persist"


class ReloadingAdapter(FakeAdapter):
    """A fake driver whose reload event makes its sandboxes answer ``after`` from then on."""

    def __init__(self, *, status: str = reload.DONE, after: dict[str, Answer] | None = None) -> None:
        super().__init__(inventory("h100x4"))
        self.status = status
        self.after = dict(after or {})
        self.reloads = 0

    def reload_event(self, sandbox: Sandbox, *, timeout: float) -> tuple[str, str]:
        self.reloads += 1
        for fake in self.provisioned:
            fake.table[:0] = list(self.after.items())
        return self.status, "a fake daemon-reload"


@pytest.fixture(autouse=True)
def _case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(fakesandbox.CASES, CASE, test_lifecycle.test_lifecycle_persist)
    monkeypatch.setattr(test_lifecycle, "INTERVAL_S", 0.0)


def test_a_gpu_kept_through_the_reload_passes_after_three_looks() -> None:
    adapter = ReloadingAdapter()
    outcome = fakesandbox.run_case(CASE, adapter)
    assert outcome.verdict == Verdict.PASS, outcome.reason
    assert adapter.reloads == 1
    smi = [c for c in outcome.cell.commands if c["argv"][:2] == ["nvidia-smi", "-L"]]
    assert len(smi) == 3  # at start, after the interval, after the reload
    assert set(outcome.cell.parsed["moments"]) == {"at start", "after 0 s", "after the reload event"}


def test_nvml_unknown_error_after_the_reload_fails_naming_the_moment() -> None:
    adapter = ReloadingAdapter(after={"nvidia-smi": Answer(255, NVML_UNKNOWN + "\n")})
    outcome = fakesandbox.run_case(CASE, adapter)
    assert outcome.verdict == Verdict.FAIL
    assert "after the reload event" in outcome.reason
    assert "exited 255 (UNKNOWN)" in outcome.reason and "Unknown Error" in outcome.reason


def test_cuda_dead_after_the_reload_fails_although_nvidia_smi_still_lists_the_gpu() -> None:
    dead = probe_doc([], cuda_error="CUDA_ERROR_UNKNOWN (999)")
    adapter = ReloadingAdapter(after={"python3": Answer(0, json.dumps(dead))})
    outcome = fakesandbox.run_case(CASE, adapter)
    assert outcome.verdict == Verdict.FAIL
    assert outcome.reason.startswith("CUDA lost after the reload event")


def test_a_different_gpu_after_the_reload_is_named() -> None:
    other = inventory("h100x4").gpus[3]
    line = f"GPU 0: {other.name} (UUID: {other.uuid})\n"
    adapter = ReloadingAdapter(after={"nvidia-smi -L": Answer(0, line)})
    outcome = fakesandbox.run_case(CASE, adapter)
    assert outcome.verdict == Verdict.FAIL
    assert f"GPU access changed after the reload event: nvidia-smi -L lists {other.uuid}" in outcome.reason


@pytest.mark.parametrize(
    ("status", "verdict"), [(reload.SKIP, Verdict.SKIP), (reload.UNSUPPORTED, Verdict.UNSUPPORTED)]
)
def test_no_reload_here_ends_the_case_with_the_drivers_reason(status: str, verdict: Verdict) -> None:
    outcome = fakesandbox.run_case(CASE, ReloadingAdapter(status=status))
    assert outcome.verdict == verdict
    assert (
        outcome.reason.startswith("a fake daemon-reload (")
        and "kept at start and after 0 s" in outcome.reason
    )


def test_a_driver_without_a_reload_event_is_unsupported() -> None:
    outcome = fakesandbox.run_case(CASE, FakeAdapter(inventory("h100x4")))
    assert outcome.verdict == Verdict.UNSUPPORTED
    assert "fake declares no reload event" in outcome.reason


# -- the simulated host ------------------------------------------------------------------------------


def test_revocable_is_a_per_gpu_fault() -> None:
    assert parse_fault("revocable:1") == Fault(REVOCABLE, 1)
    with pytest.raises(ValueError, match="no GPU index"):
        parse_fault("revocable")
    with pytest.raises(ValueError, match="names GPU 4"):
        parse_faults(["revocable:4"], 4)


def test_only_the_revocable_gpus_descriptor_is_marked() -> None:
    gpus = get_profile("h100x4").gpus
    faults = parse_faults(["revocable:1"], 4)
    assert descriptor_fields(gpus[1], faults)["REVOCABLE"] == 1
    assert "REVOCABLE" not in descriptor_fields(gpus[0], faults)
    assert descriptor_fields(gpus[0], faults) == descriptor_fields(gpus[0], ())  # clean stays as it was


def _descriptors(root: Path, revocable: int) -> None:
    gpus = get_profile("h100x2").gpus
    (root / "gpus").mkdir(parents=True)
    faults = parse_faults([f"revocable:{revocable}"], 2)
    for gpu in gpus:
        (root / "gpus" / str(gpu.minor)).write_text(layout.format_descriptor(descriptor_fields(gpu, faults)))
    (root / "gpus" / "mig-0").write_text("PARENT_MINOR=0\n")


def test_the_reload_flips_revocable_descriptors_in_place(tmp_path: Path) -> None:
    _descriptors(tmp_path, 1)
    before = {p.name: os.stat(p).st_ino for p in (tmp_path / "gpus").iterdir()}
    host = SimHost(tmp_path, {}, inventory("h100x2"), {})
    revoked = host.simulate_reload()
    gpus = get_profile("h100x2").gpus
    assert revoked == [gpus[1].uuid]
    one = layout.parse_descriptor((tmp_path / "gpus" / "1").read_text())
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    assert 0 < float(one["REVOKED_AT"]) <= uptime
    assert one["UUID"] == gpus[1].uuid and one["STATE"] == "ok"
    assert "REVOKED_AT" not in (tmp_path / "gpus" / "0").read_text()
    # the same inode: a sandbox's bind mount of the file sees the new text
    assert {p.name: os.stat(p).st_ino for p in (tmp_path / "gpus").iterdir()} == before


# -- the adapters' events -------------------------------------------------------------------------------


class FakeSim:
    def __init__(self) -> None:
        self.reloads = 0

    def reload_event(self) -> list[str]:
        self.reloads += 1
        return ["GPU-x"]


def test_a_real_host_is_reloaded_only_on_opt_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(reload, "SYSTEMD_RUN_DIR", tmp_path)  # "systemd is the init"
    status, why = reload.node_reload({}, "podman", None, timeout=5)
    assert status == reload.SKIP and "--driver-opt podman.allow_reload=1" in why
    status, why = reload.docker_reload({}, "docker-cdi", "unix:///nonexistent/docker.sock", None, timeout=5)
    assert status == reload.SKIP and "docker-cdi.allow_reload=1" in why
    assert reload.allowed({"docker.allow_reload": "1"}, "docker-cdi", "docker")


def test_podman_without_systemd_has_no_reload_event(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(reload, "SYSTEMD_RUN_DIR", tmp_path / "absent")
    status, why = reload.node_reload({"podman.allow_reload": "1"}, "podman", None, timeout=5)
    assert status == reload.UNSUPPORTED and "systemd" in why


def test_the_simulated_host_is_reloaded_by_the_harness() -> None:
    sim = FakeSim()
    status, what = reload.node_reload({}, "podman", sim, timeout=5)  # type: ignore[arg-type]
    assert (status, sim.reloads) == (reload.DONE, 1)
    assert "GPU-x" in what


def test_a_docker_pidfile_must_name_a_dockerd(tmp_path: Path) -> None:
    (tmp_path / "docker.pid").write_text(f"{os.getpid()}\n")  # this python, not a dockerd
    assert reload.dockerd_pid(f"unix://{tmp_path}/docker.sock") is None
    assert reload.dockerd_pid("tcp://127.0.0.1:2375") is None
    status, why = reload.sighup_dockerd(f"unix://{tmp_path}/docker.sock")
    assert status == reload.UNSUPPORTED and "no local dockerd" in why


def test_every_column_declares_its_event() -> None:
    from gpuconform.drivers.docker import DockerAdapter
    from gpuconform.drivers.host import HostAdapter
    from gpuconform.drivers.kubernetes import KubernetesAdapter
    from gpuconform.drivers.podman import PodmanAdapter
    from gpuconform.drivers.qemu import QemuAdapter

    assert "docker-cdi.allow_reload" in DockerAdapter.OPTIONS
    assert "podman.allow_reload" in PodmanAdapter.OPTIONS
    for cls in (DockerAdapter, PodmanAdapter, KubernetesAdapter):
        assert "reload_event" in vars(cls), cls
    assert "reload_event" not in vars(QemuAdapter) and "reload_event" not in vars(HostAdapter)
