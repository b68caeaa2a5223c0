"""gpuconform.drivers.vfio against a fake sysfs tree whose FakeKernel applies the kernel's write semantics.

Every bind test compares the tree's final driver links and overrides with the snapshot taken
before, so a missing rollback or restore fails the test rather than passing silently.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from gpuconform.drivers import vfio
from gpuconform.drivers.base import Deadline, DeadlineExceeded
from gpuconform.drivers.vfio import BindingState, VfioError, VfioTimeout
from gpuconform.fixtures.sim.fakesysfs import (
    CLASS_VGA,
    FakeKernel,
    FakePciDevice,
    FakeSysfs,
    intel_nic,
    nvidia_audio,
    nvidia_gpu,
    pci_bridge,
)

REPO = Path(__file__).resolve().parents[2]
GPU = "0000:18:00.0"
AUDIO = "0000:18:00.1"
GPU2 = "0000:2d:00.0"


@pytest.fixture
def tree(tmp_path: Path) -> FakeSysfs:
    return FakeSysfs.for_gpus(tmp_path / "sys", [GPU, GPU2])


@pytest.fixture
def kernel(tree: FakeSysfs) -> FakeKernel:
    return FakeKernel(tree)


@pytest.fixture
def state(tmp_path: Path) -> BindingState:
    return BindingState(tmp_path / "state" / "vfio-bindings.json")


def do_bind(
    tree: FakeSysfs,
    kernel: FakeKernel,
    state: BindingState,
    bdf: str = GPU,
    *,
    seconds: float = 5.0,
    run_id: str = "",
    pid: int | None = None,
) -> vfio.Binding:
    return vfio.bind(
        bdf,
        sysfs_root=tree.root,
        state=state,
        deadline=Deadline(seconds),
        run_id=run_id,
        writer=kernel,
        sleep=kernel.sleep,
        poll_s=0.005,
        pid=pid,
    )


def do_release(tree: FakeSysfs, kernel: FakeKernel, state: BindingState, binding: vfio.Binding) -> None:
    vfio.release(binding, sysfs_root=tree.root, state=state, writer=kernel, sleep=kernel.sleep, poll_s=0.005)


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    assert proc.wait(timeout=30) == 0
    return proc.pid


def test_discover_lists_nvidia_gpus_with_group_driver_and_companions(tmp_path: Path) -> None:
    tree = FakeSysfs.create(
        tmp_path / "sys",
        [
            nvidia_gpu(GPU, 3),
            nvidia_audio(AUDIO, 3),
            pci_bridge("0000:00:01.0", 3),
            replace(nvidia_gpu("0000:65:00.0", 7, driver=None), pci_class=CLASS_VGA),
            intel_nic("0000:04:00.0", 9),
        ],
    )
    gpus = vfio.discover(tree.root)
    assert [g.bdf for g in gpus] == [GPU, "0000:65:00.0"]
    first, second = gpus
    assert (first.iommu_group, first.driver, first.function.pci_class) == ("3", "nvidia", 0x030200)
    assert [(c.bdf, c.driver, c.is_bridge) for c in first.companions] == [
        ("0000:00:01.0", "pcieport", True),
        (AUDIO, "snd_hda_intel", False),
    ]
    assert (second.driver, second.function.pci_class, second.companions) == (None, 0x030000, ())


def test_discover_on_a_root_without_pci_returns_nothing(tmp_path: Path) -> None:
    assert vfio.discover(tmp_path) == []


def test_bind_moves_gpu_and_audio_to_vfio_then_release_restores_drivers(
    tree: FakeSysfs, kernel: FakeKernel, state: BindingState
) -> None:
    before = tree.snapshot()
    binding = do_bind(tree, kernel, state, run_id="r1")
    assert tree.driver_of(AUDIO) == tree.driver_of(GPU) == "vfio-pci"
    assert tree.override_of(GPU) == "vfio-pci"
    assert tree.snapshot()[GPU2] == before[GPU2]  # the other GPU is untouched
    assert binding.bdfs == (AUDIO, GPU)  # companions first
    originals = [(d.bdf, d.original_driver) for d in binding.devices]
    assert originals == [(AUDIO, "snd_hda_intel"), (GPU, "nvidia")]
    assert binding.vfio_device == Path("/dev/vfio/10")
    [entry] = state.entries()
    assert (entry.id, entry.run_id, entry.pid) == (binding.id, "r1", os.getpid())
    do_release(tree, kernel, state, binding)
    assert tree.snapshot() == before
    assert tree.driver_of(GPU) == "nvidia"
    assert tree.driver_of(AUDIO) == "snd_hda_intel"
    assert state.entries() == []


def test_release_clears_driver_override_with_a_newline(
    tree: FakeSysfs, kernel: FakeKernel, state: BindingState
) -> None:
    binding = do_bind(tree, kernel, state)
    kernel.writes.clear()
    do_release(tree, kernel, state, binding)
    assert (f"bus/pci/devices/{GPU}/driver_override", "\n") in kernel.writes
    assert (f"bus/pci/devices/{AUDIO}/driver_override", "\n") in kernel.writes
    assert tree.override_of(GPU) is None
    assert tree.override_of(AUDIO) is None
    do_release(tree, kernel, state, binding)  # idempotent
    assert tree.driver_of(GPU) == "nvidia"


def test_state_entry_is_written_before_the_first_sysfs_write(
    tree: FakeSysfs, kernel: FakeKernel, state: BindingState
) -> None:
    seen: list[int] = []

    def writer(path: Path, data: str, *, timeout: float) -> None:
        seen.append(len(state.entries()))
        kernel(path, data, timeout=timeout)

    vfio.bind(GPU, sysfs_root=tree.root, state=state, deadline=Deadline(5), writer=writer, sleep=kernel.sleep)
    assert seen
    assert all(n == 1 for n in seen)
    data = json.loads(state.path.read_text())
    assert data["schema"] == 1
    entry = data["bindings"][0]
    assert {"id", "run_id", "pid", "created", "devices"} <= entry.keys()
    assert entry["devices"][1] == {"bdf": GPU, "original_driver": "nvidia", "original_override": None}


def test_companion_that_fails_to_bind_is_rolled_back_and_leaves_no_state(
    tree: FakeSysfs, kernel: FakeKernel, state: BindingState
) -> None:
    before = tree.snapshot()
    kernel.fail(AUDIO, "probe", errno.EBUSY)
    with pytest.raises(VfioError, match=r"binding 0000:18:00.0 to vfio-pci failed, rolled back.*busy"):
        do_bind(tree, kernel, state)
    assert ("bus/pci/drivers/snd_hda_intel/unbind", AUDIO) in kernel.writes  # it had moved
    assert ("bus/pci/drivers/snd_hda_intel/bind", AUDIO) in kernel.writes  # and was put back
    assert tree.snapshot() == before
    assert state.entries() == []


def test_gpu_that_never_appears_on_vfio_pci_hits_the_deadline_and_rolls_back(
    tree: FakeSysfs, kernel: FakeKernel, state: BindingState
) -> None:
    before = tree.snapshot()
    kernel.refuse(GPU, "vfio-pci")
    with pytest.raises(VfioTimeout, match=r"0000:18:00.0 did not bind to vfio-pci within") as info:
        do_bind(tree, kernel, state, seconds=0.3)
    assert isinstance(info.value, DeadlineExceeded)
    assert tree.snapshot() == before  # the audio companion, already on vfio-pci, went back too
    assert state.entries() == []


def test_slow_bind_that_appears_after_some_polls_succeeds(
    tree: FakeSysfs, kernel: FakeKernel, state: BindingState
) -> None:
    kernel.delay(GPU, 5)
    do_bind(tree, kernel, state)
    assert tree.driver_of(GPU) == "vfio-pci"
    assert kernel.polls >= 5


def test_group_with_a_foreign_device_is_refused_before_any_write(tmp_path: Path, state: BindingState) -> None:
    tree = FakeSysfs.create(
        tmp_path / "sys", [nvidia_gpu(GPU, 4), nvidia_audio(AUDIO, 4), intel_nic("0000:19:00.0", 4)]
    )
    kernel = FakeKernel(tree)
    before = tree.snapshot()
    with pytest.raises(VfioError, match=r"group 4 also holds 0000:19:00.0 \[8086:1533\].*igb") as info:
        do_bind(tree, kernel, state)
    assert info.value.hint
    assert kernel.writes == []
    assert tree.snapshot() == before
    assert state.entries() == []


def test_bridge_in_the_group_is_allowed_and_left_on_its_driver(tmp_path: Path, state: BindingState) -> None:
    tree = FakeSysfs.create(tmp_path / "sys", [pci_bridge("0000:17:00.0", 4), nvidia_gpu(GPU, 4)])
    kernel = FakeKernel(tree)
    binding = do_bind(tree, kernel, state)
    assert binding.bdfs == (GPU,)
    assert tree.driver_of("0000:17:00.0") == "pcieport"


@pytest.mark.parametrize(
    ("devices", "target", "message"),
    [
        ([nvidia_gpu(GPU, 1), nvidia_audio(AUDIO, 1)], AUDIO, "not an NVIDIA display or 3D controller"),
        ([nvidia_gpu(GPU, None)], GPU, "no IOMMU group"),
        ([nvidia_gpu(GPU, 1)], "0000:99:00.0", "no PCI device 0000:99:00.0"),
        ([nvidia_gpu(GPU, 1)], "not-a-bdf", "not a PCI bus id"),
    ],
)
def test_bind_refuses_unsuitable_targets_without_writing(
    tmp_path: Path, state: BindingState, devices: list[FakePciDevice], target: str, message: str
) -> None:
    tree = FakeSysfs.create(tmp_path / "sys", devices)
    kernel = FakeKernel(tree)
    with pytest.raises(VfioError, match=message):
        do_bind(tree, kernel, state, bdf=target)
    assert kernel.writes == []


def test_bind_refuses_when_vfio_pci_is_not_loaded(tmp_path: Path, state: BindingState) -> None:
    tree = FakeSysfs.create(tmp_path / "sys", [nvidia_gpu(GPU, 1)], drivers=("nvidia",))
    with pytest.raises(VfioError, match="vfio-pci driver is not loaded") as info:
        do_bind(tree, FakeKernel(tree), state)
    assert info.value.hint == "modprobe vfio-pci"


def test_bind_accepts_the_nvidia_smi_bus_id_form(
    tree: FakeSysfs, kernel: FakeKernel, state: BindingState
) -> None:
    binding = do_bind(tree, kernel, state, bdf="00000000:18:00.0")
    assert binding.gpu_bdf == GPU
    assert tree.driver_of(GPU) == "vfio-pci"


def test_second_bind_of_a_held_gpu_is_refused_without_writing(
    tree: FakeSysfs, kernel: FakeKernel, state: BindingState
) -> None:
    do_bind(tree, kernel, state, run_id="first")
    kernel.writes.clear()
    with pytest.raises(VfioError, match=r"already bound to vfio-pci for 0000:18:00.0 .*run first"):
        do_bind(tree, kernel, state, run_id="second")
    assert kernel.writes == []
    assert len(state.entries()) == 1


def test_failed_rollback_keeps_the_state_entry_for_gc(
    tree: FakeSysfs, kernel: FakeKernel, state: BindingState
) -> None:
    kernel.fail(AUDIO, "probe")
    kernel.fail(AUDIO, "bind")
    with pytest.raises(VfioError, match="rollback failed.*gc"):
        do_bind(tree, kernel, state)
    [entry] = state.entries()
    assert tree.driver_of(AUDIO) is None  # stranded, and recorded so reconcile can retry
    assert entry.devices[0].original_driver == "snd_hda_intel"
    with pytest.raises(VfioError, match=r"restored 0 binding\(s\) but not: release of 0000:18:00.0"):
        vfio.reconcile(state, tree.root, force=True, writer=kernel, sleep=kernel.sleep, poll_s=0.005)
    assert [e.id for e in state.entries()] == [entry.id]


def test_reconcile_restores_bindings_of_a_dead_pid_and_empties_state(
    tree: FakeSysfs, kernel: FakeKernel, state: BindingState
) -> None:
    before = tree.snapshot()
    do_bind(tree, kernel, state, pid=dead_pid(), run_id="killed")  # the Binding object is dropped
    assert tree.driver_of(GPU) == "vfio-pci"
    restored = vfio.reconcile(state, tree.root, writer=kernel, sleep=kernel.sleep, poll_s=0.005)
    assert len(restored) == 1
    assert "run killed" in restored[0]
    assert f"{GPU} -> nvidia" in restored[0]
    assert tree.snapshot() == before
    assert state.entries() == []


def test_reconcile_leaves_entries_of_live_pids_alone_unless_forced(
    tree: FakeSysfs, kernel: FakeKernel, state: BindingState
) -> None:
    before = tree.snapshot()
    do_bind(tree, kernel, state)  # this process: alive
    do_bind(tree, kernel, state, bdf=GPU2, pid=4242)
    restored = vfio.reconcile(
        state, tree.root, alive=lambda pid: pid != 4242, writer=kernel, sleep=kernel.sleep, poll_s=0.005
    )
    assert len(restored) == 1
    assert GPU2 in restored[0]
    assert tree.driver_of(GPU) == "vfio-pci"
    assert tree.driver_of(GPU2) == "nvidia"
    assert [e.gpu_bdf for e in state.entries()] == [GPU]
    assert vfio.reconcile(state, tree.root, writer=kernel, sleep=kernel.sleep) == []  # default alive()
    vfio.reconcile(state, tree.root, force=True, writer=kernel, sleep=kernel.sleep, poll_s=0.005)
    assert tree.snapshot() == before
    assert state.entries() == []


CHILD = """
import os, signal, sys
from dataclasses import replace
from pathlib import Path
from gpuconform.drivers import vfio
from gpuconform.drivers.base import Deadline
from gpuconform.fixtures.sim.fakesysfs import CLASS_VGA, FakeKernel, FakeSysfs
root, state_path, bdf, when = sys.argv[1:5]
kernel = FakeKernel(FakeSysfs.load(Path(root)))
def writer(path, data, *, timeout):
    if when == "mid-bind" and path.name == "drivers_probe" and data == bdf:
        os.kill(os.getpid(), signal.SIGKILL)
    kernel(path, data, timeout=timeout)
vfio.bind(bdf, sysfs_root=Path(root), state=vfio.BindingState(Path(state_path)), deadline=Deadline(10),
          writer=writer, sleep=kernel.sleep, poll_s=0.005, run_id="child")
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("when", ["mid-bind", "after-bind"])
def test_sigkilled_run_is_repaired_by_reconcile_in_another_process(
    tree: FakeSysfs, state: BindingState, when: str
) -> None:
    before = tree.snapshot()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tree.root), str(state.path), GPU, when],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, stderr
    [entry] = state.entries()
    assert (entry.pid, entry.run_id) == (proc.pid, "child")
    assert tree.driver_of(AUDIO) == "vfio-pci"
    assert tree.driver_of(GPU) == (None if when == "mid-bind" else "vfio-pci")
    kernel = FakeKernel(FakeSysfs.load(tree.root))
    restored = vfio.reconcile(state, tree.root, writer=kernel, sleep=kernel.sleep, poll_s=0.005)
    assert len(restored) == 1
    assert tree.snapshot() == before
    assert state.entries() == []


def test_corrupt_state_file_is_an_error_not_an_empty_record(state: BindingState) -> None:
    state.path.parent.mkdir(parents=True)
    state.path.write_text("{not json")
    with pytest.raises(VfioError, match="not valid") as info:
        state.entries()
    assert "delete the file" in info.value.hint


def test_write_sysfs_writes_once_and_raises_the_kernels_error(tmp_path: Path) -> None:
    attr = tmp_path / "driver_override"
    attr.write_text("(null)\n")
    vfio.write_sysfs(attr, "vfio-pci", timeout=5)
    assert attr.read_text().startswith("vfio-pci")
    with pytest.raises(FileNotFoundError):
        vfio.write_sysfs(tmp_path / "missing", "x", timeout=5)


def test_write_sysfs_that_hangs_times_out(tmp_path: Path) -> None:
    fifo = tmp_path / "stuck"
    os.mkfifo(fifo)  # opening a FIFO for writing blocks until a reader comes, like a stuck unbind
    with pytest.raises(VfioTimeout, match="did not return within 0.2s"):
        vfio.write_sysfs(fifo, "0000:18:00.0", timeout=0.2)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # unblock the abandoned writer thread
    try:
        for thread in threading.enumerate():
            if thread.name == "sysfs-write stuck":
                thread.join(5)
                assert not thread.is_alive()
    finally:
        os.close(reader)


# Real-host safety: BAR sizing, companion GPUs, processes holding the device --------------------


def test_hole64_is_sized_from_the_gpus_bars_with_headroom(tmp_path: Path) -> None:
    from gpuconform.drivers import pci_bars

    tree = FakeSysfs.create(
        tmp_path / "sys",
        [nvidia_gpu(GPU, 10), nvidia_gpu(GPU2, 11), nvidia_gpu("0000:3b:00.0", 12, bar1_gib=16)],
    )
    # BAR1 128 GiB + BAR3 32 MiB count; the 32-bit BAR0 and the ROM and SR-IOV slots do not.
    assert pci_bars.bar_sizes(GPU, tree.root) == [128 << 30, 32 << 20]
    assert pci_bars.hole64_for((GPU,), tree.root) == 256 << 30  # 1.5 x 128.03 GiB -> 256 GiB
    assert pci_bars.hole64_for((GPU, GPU2), tree.root) == 512 << 30
    assert pci_bars.hole64_for(("0000:3b:00.0",), tree.root) == 32 << 30  # never below QEMU's default
    assert pci_bars.hole64_for(("0000:99:00.0",), tree.root) is None  # unreadable: keep QEMU's
    assert pci_bars.qemu_size(512 << 30) == "512G"


def two_gpus_one_group(tmp_path: Path) -> tuple[FakeSysfs, FakeKernel]:
    tree = FakeSysfs.create(
        tmp_path / "sys", [nvidia_gpu(GPU, 10), nvidia_audio(AUDIO, 10), nvidia_gpu(GPU2, 10)]
    )
    return tree, FakeKernel(tree)


def test_companion_that_is_itself_a_gpu_is_refused_unless_granted(
    tmp_path: Path, state: BindingState
) -> None:
    tree, kernel = two_gpus_one_group(tmp_path)
    before = tree.snapshot()
    with pytest.raises(VfioError, match=rf"group 10 also holds the GPU {GPU2}.*not granted"):
        vfio.bind(
            GPU, sysfs_root=tree.root, state=state, deadline=Deadline(5), writer=kernel, sleep=kernel.sleep
        )
    assert kernel.writes == [] and tree.snapshot() == before and state.entries() == []
    binding = vfio.bind(
        GPU,
        sysfs_root=tree.root,
        state=state,
        deadline=Deadline(5),
        writer=kernel,
        sleep=kernel.sleep,
        granted=(GPU, GPU2),
    )
    assert set(binding.bdfs) == {GPU, AUDIO, GPU2}
    assert {tree.driver_of(b) for b in binding.bdfs} == {"vfio-pci"}
    vfio.release(binding, sysfs_root=tree.root, state=state, writer=kernel, sleep=kernel.sleep)
    assert tree.snapshot() == before


def fake_proc(root: Path, pid: int, comm: str, fds: dict[str, str]) -> None:
    (root / str(pid) / "fd").mkdir(parents=True)
    (root / str(pid) / "comm").write_text(comm + "\n")
    for fd, target in fds.items():
        (root / str(pid) / "fd" / fd).symlink_to(target)


def test_unbind_is_refused_while_a_process_holds_the_gpus_device_node(
    tree: FakeSysfs, kernel: FakeKernel, state: BindingState, tmp_path: Path
) -> None:
    proc, dev = tmp_path / "proc", tmp_path / "dev"
    info = proc / "driver/nvidia/gpus" / GPU / "information"
    info.parent.mkdir(parents=True)
    info.write_text("Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 140\nDevice Minor: \t 3\n")
    fake_proc(proc, 1, "systemd", {"0": "/dev/null"})
    fake_proc(
        proc,
        2107,
        "nvidia-persiste",
        {"0": "/dev/null", "5": str(dev / "nvidiactl"), "6": str(dev / "nvidia3")},
    )
    fake_proc(proc, 2300, "dcgm", {"4": str(dev / "nvidia2")})  # another GPU: not a holder of this one
    before = tree.snapshot()
    with pytest.raises(VfioError) as err:
        vfio.bind(
            GPU,
            sysfs_root=tree.root,
            state=state,
            deadline=Deadline(5),
            writer=kernel,
            sleep=kernel.sleep,
            proc_root=proc,
            dev_root=dev,
        )
    message = str(err.value)
    assert (
        f"refusing to unbind {GPU} from nvidia: held open by pid 2107 (nvidia-persiste) via {dev}/nvidia3"
        in message
    )
    assert "2300" not in message and "systemctl stop nvidia-persistenced" in message
    assert kernel.writes == [] and tree.snapshot() == before and state.entries() == []
    (proc / "2107/fd/6").unlink()  # the holder lets go: the same bind goes through
    binding = vfio.bind(
        GPU,
        sysfs_root=tree.root,
        state=state,
        deadline=Deadline(5),
        writer=kernel,
        sleep=kernel.sleep,
        proc_root=proc,
        dev_root=dev,
    )
    assert tree.driver_of(GPU) == "vfio-pci"
    do_release(tree, kernel, state, binding)


def test_unbind_is_refused_while_a_live_process_holds_a_sysfs_file_of_the_device(
    tree: FakeSysfs, kernel: FakeKernel, state: BindingState
) -> None:
    """A real child process (found through the real /proc) holds the audio function's resource file."""
    audio = AUDIO
    held = tree.dev_dir(audio) / "resource"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; f=open(sys.argv[1]); print('open', flush=True); time.sleep(60)",
            str(held),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "open"
        with pytest.raises(
            VfioError,
            match=rf"refusing to unbind {audio} from snd_hda_intel: held open by pid {child.pid} \(python",
        ):
            vfio.bind(
                GPU,
                sysfs_root=tree.root,
                state=state,
                deadline=Deadline(5),
                writer=kernel,
                sleep=kernel.sleep,
            )
        assert kernel.writes == [] and state.entries() == []
    finally:
        child.kill()
        child.wait(10)
    binding = vfio.bind(
        GPU, sysfs_root=tree.root, state=state, deadline=Deadline(5), writer=kernel, sleep=kernel.sleep
    )
    do_release(tree, kernel, state, binding)
