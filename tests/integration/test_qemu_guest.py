"""A real guest under QEMU (TCG here) on the simulated host, reached over real SSH.

Boots three VMs in all: a two-GPU VM (what the guest sees, and that teardown leaves nothing),
a VM whose owner is SIGKILLed (``gc`` must kill QEMU and give the GPU back), and a Python VM
on a host with a wrong-GPU fault (the fault reaches the guest; numpy runs there).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuconform.drivers import qemu_vm as vm
from gpuconform.drivers.base import AdapterContext, Deadline
from gpuconform.drivers.leases import GpuLeases
from gpuconform.drivers.qemu import QemuAdapter, QemuSandbox
from gpuconform.drivers.request import GpuRequest
from gpuconform.fixtures.build.guestimage import build_guest_image
from gpuconform.fixtures.sim.fakesysfs import FakeSysfs
from gpuconform.fixtures.sim.offer import simulated_host
from gpuconform.fixtures.sim.simgpu.host import SimHost
from gpuconform.workloads.nvidia_smi import parse_list

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BOOT_DEADLINE_S = 180


@pytest.fixture(scope="module")
def guest_image() -> None:
    if not Path("/usr/bin/qemu-system-x86_64").exists():
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    build_guest_image(deadline=Deadline(900))  # cached; `gpuconform images build --guest` makes it


def _sim(tmp_path: Path, faults: tuple[str, ...] = ()) -> Iterator[SimHost]:
    sim = SimHost.up(
        "h100x4",
        faults=faults,
        instance=f"t{secrets.token_hex(4)}",
        base=tmp_path / "sim",
        cdi_dir=tmp_path / "cdi",
    )
    try:
        yield sim
    finally:
        sim.down()


@pytest.fixture
def sim(tmp_path: Path, guest_image: None) -> Iterator[SimHost]:
    yield from _sim(tmp_path)


def _ctx(sim: SimHost, tmp_path: Path, run_id: str) -> AdapterContext:
    return AdapterContext(
        sim.inventory,
        GpuLeases(tmp_path / "leases"),
        run_id=run_id,
        state_dir=tmp_path / "state",
        options={"sim.root": str(sim.root)},
        sim=simulated_host({"sim.root": str(sim.root)}, sim.inventory),
    )


def _fake_sysfs(ctx: AdapterContext) -> FakeSysfs:
    return FakeSysfs.load(Path(ctx.state_dir) / "qemu" / "fake-sysfs")


def test_vm_with_two_gpus_sees_exactly_them_and_teardown_leaves_nothing(sim: SimHost, tmp_path: Path) -> None:
    run_id = f"it{secrets.token_hex(3)}"
    adapter = QemuAdapter(_ctx(sim, tmp_path, run_id))
    assert adapter.available().ok
    before = _fake_sysfs(adapter.ctx).snapshot()
    sandbox = adapter.provision(
        GpuRequest.of_count(2), image="busybox", labels={}, deadline=Deadline(BOOT_DEADLINE_S)
    )
    try:
        assert isinstance(sandbox, QemuSandbox)
        print(
            f"\nqemu boot to first exec: {sandbox.timings['provision_s']:.1f}s ({adapter.versions['accel']})"
        )
        listed = sandbox.exec(["nvidia-smi", "-L"], timeout=30)
        assert listed.ok, listed
        assert sandbox.granted is not None
        assert {g.uuid for g in parse_list(listed.stdout)} == sandbox.granted
        assert len(sandbox.granted) == 2 and sandbox.granted <= sim.inventory.uuids
        nodes = sandbox.exec(["ls", "/dev"], timeout=30).stdout.split()
        minors = {g.minor for g in sim.inventory.gpus if g.uuid in sandbox.granted}
        assert {n for n in nodes if n.startswith("nvidia") and n[6:].isdigit()} == {
            f"nvidia{m}" for m in minors
        }
        bound = _fake_sysfs(adapter.ctx).snapshot()
        assert {bdf for bdf, (drv, _) in bound.items() if drv == "vfio-pci"} == {
            f"{g.pci_bus_id[:-1]}{fn}" for g in sandbox.gpus for fn in "01"
        }
    finally:
        sandbox.close()
        sandbox.close()  # idempotent
    assert vm.vm_processes(sandbox.id) == {}
    assert not sandbox.dir.exists()
    assert "starting sshd" in (sandbox.console_log or "")  # kept for the evidence after the directory went
    assert adapter.release_problems(sandbox) == []
    assert _fake_sysfs(adapter.ctx).snapshot() == before
    adapter.ctx.leases.acquire_exact(sandbox.gpus, Deadline(1)).release()  # the lease is free again


CHILD = """
import sys, time
from pathlib import Path
from gpuconform.drivers.base import AdapterContext, Deadline
from gpuconform.drivers.leases import GpuLeases
from gpuconform.drivers.qemu import QemuAdapter
from gpuconform.drivers.request import GpuRequest
from gpuconform.fixtures.sim.offer import simulated_host
from gpuconform.fixtures.sim.simgpu.host import SimHost
sim_root, tmp, run_id = sys.argv[1:4]
sim = SimHost.load(Path(sim_root))
ctx = AdapterContext(sim.inventory, GpuLeases(Path(tmp) / "leases"), run_id=run_id,
                     state_dir=Path(tmp) / "state", options={"sim.root": sim_root},
                     sim=simulated_host({"sim.root": sim_root}, sim.inventory))
box = QemuAdapter(ctx).provision(GpuRequest.default(), image="busybox", labels={}, deadline=Deadline(180))
print(box.id, flush=True)
time.sleep(600)
"""


def test_gc_after_sigkill_of_the_owner_kills_qemu_and_gives_the_gpu_back(
    sim: SimHost, tmp_path: Path
) -> None:
    run_id = f"it{secrets.token_hex(3)}"
    adapter = QemuAdapter(_ctx(sim, tmp_path, run_id))
    adapter.vfio_site()  # builds the fake tree before the child binds in it
    before = _fake_sysfs(adapter.ctx).snapshot()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(sim.root), str(tmp_path), run_id],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert child.stdout is not None
        name = child.stdout.readline().strip()
        assert name.startswith(f"gpuconform-{run_id}-"), f"child did not report a VM (exit {child.poll()})"
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert len(vm.vm_processes(name)) == 1  # QEMU outlives its owner (its own session)
        assert _fake_sysfs(adapter.ctx).snapshot() != before
        removed = adapter.gc(run_id)
        print("\ngc:", json.dumps(removed))
        assert vm.vm_processes(name) == {}
        assert not (tmp_path / "state" / "qemu" / "vms" / run_id).exists()
        assert _fake_sysfs(adapter.ctx).snapshot() == before
        assert any(line.startswith("restored ") for line in removed)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        adapter.gc(run_id)


@pytest.fixture
def faulty_sim(tmp_path: Path, guest_image: None) -> Iterator[SimHost]:
    yield from _sim(tmp_path, ("wrong-gpu:1",))


def test_python_vm_runs_numpy_and_shows_an_injected_fault(faulty_sim: SimHost, tmp_path: Path) -> None:
    adapter = QemuAdapter(_ctx(faulty_sim, tmp_path, f"it{secrets.token_hex(3)}"))
    start = time.monotonic()
    sandbox = adapter.provision(
        GpuRequest.of_ids(["1"]), image="python", labels={}, deadline=Deadline(BOOT_DEADLINE_S)
    )
    try:
        boot = sandbox.timings["provision_s"]
        print(f"\npython VM up in {time.monotonic() - start:.1f}s (boot to first exec {boot}s)")
        seen = {g.uuid for g in parse_list(sandbox.exec(["nvidia-smi", "-L"], timeout=30).stdout)}
        gpu2 = next(g.uuid for g in faulty_sim.inventory.gpus if g.index == 2)
        gpu1 = next(g.uuid for g in faulty_sim.inventory.gpus if g.index == 1)
        assert sandbox.granted == frozenset({gpu1})
        assert seen == {gpu2}  # the fault reaches the guest, so the harness can catch it
        result = sandbox.exec(
            ["python3", "-c", "import numpy; print(int(numpy.arange(10).sum()))"], timeout=120
        )
        assert result.ok and result.stdout.strip() == "45", result
        sandbox.put_file("/tmp/gpuconform/x.txt", b"hello", 0o644)
        assert sandbox.exec(["cat", "/tmp/gpuconform/x.txt"], timeout=30).stdout == "hello"
    finally:
        sandbox.close()
    assert adapter.release_problems(sandbox) == []
