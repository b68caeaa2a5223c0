"""Host-side VFIO: hand NVIDIA GPUs (with their IOMMU-group companions) to vfio-pci and back.

VFIO passes whole IOMMU groups, so a GPU's audio function must move with it, and a group that
also holds, say, a NIC must be refused rather than stolen from the host. Each move is recorded in
a ``BindingState`` before sysfs is touched, so a SIGKILLed run is repaired by ``reconcile`` (which
``gpuconform gc`` and the start of every run call). Every function takes a sysfs root and an
injected ``SysfsWriter`` so the whole sequence runs against ``fixtures.fakesysfs`` without root.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gpuconform.drivers.base import Deadline
from gpuconform.drivers.inventory import InventoryError, normalise_pci_bus_id
from gpuconform.drivers.vfio_holders import holders
from gpuconform.drivers.vfio_state import (
    Binding,
    BindingState,
    DeviceRecord,
    VfioError,
    VfioTimeout,
    default_state_path,
    pid_alive,
)

__all__ = [
    "Binding",
    "BindingState",
    "DeviceRecord",
    "PciFunction",
    "PciGpu",
    "SysfsWriter",
    "VfioError",
    "VfioTimeout",
    "bind",
    "default_state_path",
    "discover",
    "pid_alive",
    "reconcile",
    "release",
    "write_sysfs",
]

SYSFS = Path("/sys")
NVIDIA_VENDOR = 0x10DE
VFIO_DRIVER = "vfio-pci"
GPU_CLASSES = (0x0300, 0x0302)  # VGA, 3D controller (class >> 8)
BRIDGE_CLASS = 0x0604
DISPLAY_BASE_CLASS = 0x03  # class >> 16: VGA, XGA, 3D, other display controllers
WRITE_TIMEOUT_S = 10.0
RESTORE_TIMEOUT_S = 30.0
POLL_S = 0.05


class SysfsWriter(Protocol):
    """Writes ``data`` to the sysfs attribute ``path``; raises OSError as the kernel does."""

    def __call__(self, path: Path, data: str, *, timeout: float) -> None: ...


def write_sysfs(path: Path, data: str, *, timeout: float) -> None:
    """One write(2) to a sysfs attribute, in a thread so a driver stuck in unbind cannot hang us."""
    outcome: list[BaseException | None] = []

    def work() -> None:
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, data.encode())
            finally:
                os.close(fd)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=work, name=f"sysfs-write {path.name}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive() or not outcome:
        raise VfioTimeout(
            f"write of {data.strip()!r} to {path} did not return within {timeout:.1f}s",
            hint="the device is stuck in its driver (consumer GPUs can hang on unbind); see dmesg",
        )
    if outcome[0] is not None:
        raise outcome[0]


@dataclass(frozen=True)
class PciFunction:
    """One PCI function as sysfs shows it; ``driver`` is None when nothing is bound."""

    bdf: str
    vendor: int
    device: int
    pci_class: int
    driver: str | None

    @property
    def is_nvidia(self) -> bool:
        return self.vendor == NVIDIA_VENDOR

    @property
    def is_bridge(self) -> bool:
        return self.pci_class >> 8 == BRIDGE_CLASS

    @property
    def is_gpu(self) -> bool:
        return self.is_nvidia and self.pci_class >> 8 in GPU_CLASSES

    def describe(self) -> str:
        return (
            f"{self.bdf} [{self.vendor:04x}:{self.device:04x}] class 0x{self.pci_class:06x}, "
            f"driver {self.driver or 'none'}"
        )


@dataclass(frozen=True)
class PciGpu:
    """An NVIDIA GPU with its IOMMU group (None when the IOMMU is off) and the group's other members."""

    function: PciFunction
    iommu_group: str | None
    companions: tuple[PciFunction, ...]

    @property
    def bdf(self) -> str:
        return self.function.bdf

    @property
    def driver(self) -> str | None:
        return self.function.driver


class _Sysfs:
    """Reads and writes under one sysfs root, through the injected writer and sleep."""

    def __init__(
        self, root: Path, writer: SysfsWriter | None, sleep: Callable[[float], None], poll_s: float
    ) -> None:
        self.root = Path(root)
        self.writer: SysfsWriter = writer or write_sysfs
        self.sleep = sleep
        self.poll_s = poll_s

    def dev(self, bdf: str) -> Path:
        return self.root / "bus/pci/devices" / bdf

    def _link_name(self, path: Path) -> str | None:
        try:
            return Path(os.readlink(path)).name
        except (FileNotFoundError, NotADirectoryError):
            return None

    def driver(self, bdf: str) -> str | None:
        return self._link_name(self.dev(bdf) / "driver")

    def override(self, bdf: str) -> str | None:
        try:
            value = (self.dev(bdf) / "driver_override").read_text().strip()
        except FileNotFoundError:
            return None
        return None if value in ("", "(null)") else value

    def function(self, bdf: str) -> PciFunction | None:
        try:
            vendor, device, klass = (
                int((self.dev(bdf) / n).read_text().strip(), 16) for n in ("vendor", "device", "class")
            )
        except (OSError, ValueError):
            return None
        return PciFunction(bdf, vendor, device, klass, self.driver(bdf))

    def group(self, bdf: str) -> str | None:
        return self._link_name(self.dev(bdf) / "iommu_group")

    def members(self, group: str) -> list[str]:
        return sorted(p.name for p in (self.root / "kernel/iommu_groups" / group / "devices").iterdir())

    def has_driver(self, name: str) -> bool:
        return (self.root / "bus/pci/drivers" / name).is_dir()

    def write(self, rel: str, data: str, deadline: Deadline) -> None:
        try:
            self.writer(self.root / rel, data, timeout=deadline.cap(WRITE_TIMEOUT_S))
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise VfioError(f"writing {data.strip()!r} to {self.root / rel} failed: {reason}") from None

    def wait_driver(self, bdf: str, want: str | None, deadline: Deadline) -> None:
        while (seen := self.driver(bdf)) != want:
            if deadline.expired:
                raise VfioTimeout(
                    f"{bdf} did not bind to {want or 'no driver'} within {deadline.seconds:.1f}s "
                    f"(driver now: {seen or 'none'})",
                    hint=f"check dmesg; is {want} loaded and does it accept this device?",
                )
            self.sleep(self.poll_s)

    def to_vfio(self, bdf: str, deadline: Deadline) -> None:
        """Unbind from the current driver, override to vfio-pci, reprobe, wait for the link."""
        current = self.driver(bdf)
        if current == VFIO_DRIVER:
            return
        if current is not None:
            self.write(f"bus/pci/drivers/{current}/unbind", bdf, deadline)
            self.wait_driver(bdf, None, deadline)
        self.write(f"bus/pci/devices/{bdf}/driver_override", VFIO_DRIVER, deadline)
        self.write("bus/pci/drivers_probe", bdf, deadline)
        self.wait_driver(bdf, VFIO_DRIVER, deadline)

    def restore(self, rec: DeviceRecord, deadline: Deadline) -> None:
        """Put ``rec.bdf`` back on its original driver and override; idempotent."""
        current = self.driver(rec.bdf)
        if current not in (rec.original_driver, VFIO_DRIVER, None):
            raise VfioError(
                f"{rec.bdf} is on {current}, neither vfio-pci nor its original "
                f"{rec.original_driver or 'no driver'}; left alone"
            )
        if current != rec.original_driver and current is not None:
            self.write(f"bus/pci/drivers/{current}/unbind", rec.bdf, deadline)
            self.wait_driver(rec.bdf, None, deadline)
        if self.override(rec.bdf) != rec.original_override:
            self.write(f"bus/pci/devices/{rec.bdf}/driver_override", rec.original_override or "\n", deadline)
        if rec.original_driver is None or self.driver(rec.bdf) == rec.original_driver:
            return
        if not self.has_driver(rec.original_driver):
            raise VfioError(
                f"cannot give {rec.bdf} back to {rec.original_driver}: that driver is not loaded",
                hint=f"modprobe {rec.original_driver}, then `gpuconform gc`",
            )
        try:
            self.write(f"bus/pci/drivers/{rec.original_driver}/bind", rec.bdf, deadline)
        except VfioError:
            self.write("bus/pci/drivers_probe", rec.bdf, deadline)  # let the kernel match it
        self.wait_driver(rec.bdf, rec.original_driver, deadline)

    def restore_all(self, records: tuple[DeviceRecord, ...], deadline: Deadline) -> list[str]:
        """Restore in reverse bind order; return one line per device that could not be restored."""
        failures = []
        for rec in reversed(records):
            try:
                self.restore(rec, deadline)
            except VfioError as exc:
                failures.append(str(exc))
        return failures


def discover(sysfs_root: Path = SYSFS) -> list[PciGpu]:
    """Every NVIDIA display/3D function under ``sysfs_root``, with its IOMMU group and companions."""
    fs = _Sysfs(sysfs_root, None, time.sleep, POLL_S)
    devices = fs.root / "bus/pci/devices"
    if not devices.is_dir():
        return []
    gpus = []
    for bdf in sorted(p.name for p in devices.iterdir()):
        fn = fs.function(bdf)
        if fn is None or not fn.is_gpu:
            continue
        group = fs.group(bdf)
        others = [] if group is None else [fs.function(b) for b in fs.members(group) if b != bdf]
        gpus.append(PciGpu(fn, group, tuple(o for o in others if o is not None)))
    return gpus


def _plan(fs: _Sysfs, bdf: str, granted: frozenset[str]) -> tuple[str, list[PciFunction]]:
    """The IOMMU group and the functions to move (companions first, GPU last), or a refusal.

    A companion that is itself a display device (another GPU) moves only when it is ``granted``
    (leased to the same sandbox): otherwise another sandbox or the host may be using it."""
    gpu = fs.function(bdf)
    if gpu is None:
        raise VfioError(
            f"no PCI device {bdf} under {fs.root}/bus/pci/devices",
            hint="list the host's GPUs with `nvidia-smi -L` or lspci -D",
        )
    if not gpu.is_gpu:
        raise VfioError(f"refusing to bind {gpu.describe()}: not an NVIDIA display or 3D controller")
    if not fs.has_driver(VFIO_DRIVER):
        raise VfioError(f"cannot bind {bdf}: the vfio-pci driver is not loaded", hint="modprobe vfio-pci")
    group = fs.group(bdf)
    if group is None:
        raise VfioError(
            f"cannot bind {bdf}: it has no IOMMU group (the IOMMU is off)",
            hint="boot with intel_iommu=on or amd_iommu=on and enable VT-d/AMD-Vi",
        )
    moved: list[PciFunction] = []
    for other in fs.members(group):
        if other == bdf:
            continue
        fn = fs.function(other)
        if fn is None:
            raise VfioError(f"refusing to bind {bdf}: IOMMU group {group} member {other} is unreadable")
        if fn.is_bridge:
            continue
        if fn.pci_class >> 16 == DISPLAY_BASE_CLASS and fn.bdf not in granted:
            raise VfioError(
                f"refusing to bind {bdf}: IOMMU group {group} also holds the GPU {fn.describe()}, "
                "which this sandbox was not granted",
                hint="request both GPUs of the group together, or give them separate IOMMU groups",
            )
        if not fn.is_nvidia:
            raise VfioError(
                f"refusing to bind {bdf}: IOMMU group {group} also holds {fn.describe()}, which is not "
                "an NVIDIA function or a PCI bridge, and VFIO would take it from the host",
                hint="move the GPU to a slot with its own IOMMU group (or enable ACS)",
            )
        moved.append(fn)
    return group, [*moved, gpu]


def _refuse_held(
    functions: list[PciFunction], sysfs_root: Path, proc_root: Path, dev_root: Path | None
) -> None:
    for fn in functions:
        if fn.driver in (None, VFIO_DRIVER):
            continue
        held = holders(fn.bdf, sysfs_root=sysfs_root, proc_root=proc_root, dev_root=dev_root)
        if held:
            raise VfioError(
                f"refusing to unbind {fn.bdf} from {fn.driver}: held open by "
                + "; ".join(h.describe() for h in held[:5])
                + (f" and {len(held) - 5} more" if len(held) > 5 else ""),
                hint="stop the holder first (e.g. systemctl stop nvidia-persistenced nvidia-dcgm); "
                "an unbind under an open device hangs in the kernel",
            )


def bind(
    gpu_bdf: str,
    *,
    sysfs_root: Path = SYSFS,
    state: BindingState,
    deadline: Deadline,
    run_id: str = "",
    writer: SysfsWriter | None = None,
    sleep: Callable[[float], None] = time.sleep,
    poll_s: float = POLL_S,
    pid: int | None = None,
    granted: tuple[str, ...] = (),
    proc_root: Path | None = Path("/proc"),
    dev_root: Path | None = Path("/dev"),
) -> Binding:
    """Move ``gpu_bdf`` and its group companions to vfio-pci; on any failure undo it and raise.

    ``granted`` are the other GPUs of the same sandbox (a companion GPU among them may move).
    Before anything is written, every function that would be unbound is checked for processes
    holding it open (``proc_root``; None skips the check, ``dev_root`` None skips device nodes):
    an unbind under a holder hangs in the kernel, so it is refused, naming the process.
    """
    try:
        bdf = normalise_pci_bus_id(gpu_bdf)
    except InventoryError as exc:
        raise VfioError(str(exc)) from None
    fs = _Sysfs(sysfs_root, writer, sleep, poll_s)
    group, functions = _plan(fs, bdf, frozenset([bdf, *granted]))
    if proc_root is not None:
        _refuse_held(functions, sysfs_root, proc_root, dev_root)
    binding = Binding(
        id=uuid.uuid4().hex,
        gpu_bdf=bdf,
        iommu_group=group,
        run_id=run_id,
        pid=os.getpid() if pid is None else pid,
        created=time.time(),
        devices=tuple(DeviceRecord(f.bdf, f.driver, fs.override(f.bdf)) for f in functions),
    )
    state.add(binding)  # before any write: a crash from here on is repaired by reconcile
    try:
        for rec in binding.devices:
            fs.to_vfio(rec.bdf, deadline)
    except BaseException as exc:
        failures = fs.restore_all(binding.devices, Deadline(RESTORE_TIMEOUT_S))
        if failures:
            raise VfioError(
                f"binding {bdf} to vfio-pci failed ({exc}) and rollback failed: {'; '.join(failures)}",
                hint="the state entry is kept; run `gpuconform gc` to retry the restore",
            ) from exc
        state.remove(binding.id)
        if isinstance(exc, VfioError):  # VfioTimeout stays a VfioTimeout (a DeadlineExceeded)
            raise type(exc)(
                f"binding {bdf} to vfio-pci failed, rolled back: {exc.message}", hint=exc.hint
            ) from exc
        raise
    return binding


def release(
    binding: Binding,
    *,
    sysfs_root: Path = SYSFS,
    state: BindingState,
    deadline: Deadline | None = None,
    writer: SysfsWriter | None = None,
    sleep: Callable[[float], None] = time.sleep,
    poll_s: float = POLL_S,
) -> None:
    """Return every device of ``binding`` to its original driver, then drop the state entry."""
    fs = _Sysfs(sysfs_root, writer, sleep, poll_s)
    failures = fs.restore_all(binding.devices, deadline or Deadline(RESTORE_TIMEOUT_S))
    if failures:
        raise VfioError(
            f"release of {binding.describe()} incomplete: {'; '.join(failures)}",
            hint="the state entry is kept; `gpuconform gc --force` retries the restore",
        )
    state.remove(binding.id)


def reconcile(
    state: BindingState,
    sysfs_root: Path = SYSFS,
    *,
    alive: Callable[[int], bool] = pid_alive,
    force: bool = False,
    writer: SysfsWriter | None = None,
    sleep: Callable[[float], None] = time.sleep,
    poll_s: float = POLL_S,
) -> list[str]:
    """Restore the bindings of dead processes (all with ``force``); return what was restored.

    Entries that cannot be restored are kept and reported together in one VfioError at the end,
    after every other entry was tried.
    """
    restored, failed = [], []
    for binding in state.entries():
        if not force and alive(binding.pid):
            continue
        try:
            release(binding, sysfs_root=sysfs_root, state=state, writer=writer, sleep=sleep, poll_s=poll_s)
        except VfioError as exc:
            failed.append(str(exc))
            continue
        back = ", ".join(f"{d.bdf} -> {d.original_driver or 'no driver'}" for d in binding.devices)
        restored.append(f"restored {binding.describe()}: {back}")
    if failed:
        raise VfioError(f"reconcile restored {len(restored)} binding(s) but not: {' | '.join(failed)}")
    return restored
