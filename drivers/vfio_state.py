"""The VFIO binding record: what was moved to vfio-pci, by whom, and where each device came from.

A run that is SIGKILLed between binding a GPU to vfio-pci and giving it back cannot clean up
after itself, so every binding is written to a state file *before* sysfs is touched and removed
only once every device is back on its original driver. ``drivers.vfio.reconcile`` (called by
``gpuconform gc`` and at the start of every run) reads this file and restores the devices of
entries whose process is gone. The file is shared by all workers and runs on the host, hence the
flock around every read-modify-write and the atomic replace (a reader never sees half a file).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuconform.drivers.base import DeadlineExceeded, HarnessError

STATE_FILE = "vfio-bindings.json"
SCHEMA = 1
LOCK_TIMEOUT_S = 10.0


class VfioError(HarnessError):
    """A VFIO bind, release or reconcile could not be done (or was refused)."""


class VfioTimeout(VfioError, DeadlineExceeded):
    """A device did not reach the expected driver, or a sysfs write hung, within its deadline."""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a process of another user counts as alive).

    A zombie is dead: a SIGKILLed run's processes are re-parented to PID 1, which in a container
    (or a CI sandbox) may never reap them, and ``kill(pid, 0)`` still succeeds on a zombie; taking
    it for alive kept a dead run's VFIO binding forever.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # "pid (comm) S ...": comm may hold spaces and parentheses, the state follows the last ")".
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def default_state_path(state_dir: Path) -> Path:
    """Where the host-wide binding record lives under an adapter's ``state_dir``."""
    return Path(state_dir) / STATE_FILE


@dataclass(frozen=True)
class DeviceRecord:
    """One PCI function moved to vfio-pci, with what it must get back.

    ``original_override`` is the ``driver_override`` it had (None when the kernel said
    ``(null)``), so a release restores an administrator's override instead of clearing it.
    """

    bdf: str
    original_driver: str | None
    original_override: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "bdf": self.bdf,
            "original_driver": self.original_driver,
            "original_override": self.original_override,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeviceRecord:
        return cls(str(data["bdf"]), data.get("original_driver"), data.get("original_override"))


@dataclass(frozen=True)
class Binding:
    """A GPU (and its IOMMU-group companions) handed to vfio-pci for one sandbox.

    ``devices`` is in bind order: companions first, the GPU last; release walks it backwards.
    ``id`` is unique per binding, so a late release never removes a newer binding of the same GPU.
    """

    id: str
    gpu_bdf: str
    iommu_group: str
    run_id: str
    pid: int
    created: float
    devices: tuple[DeviceRecord, ...]

    @property
    def bdfs(self) -> tuple[str, ...]:
        return tuple(d.bdf for d in self.devices)

    @property
    def vfio_device(self) -> Path:
        """The character device QEMU opens for this group."""
        return Path("/dev/vfio") / self.iommu_group

    def describe(self) -> str:
        return f"{self.gpu_bdf} (IOMMU group {self.iommu_group}, run {self.run_id or '?'}, pid {self.pid})"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "gpu": self.gpu_bdf,
            "iommu_group": self.iommu_group,
            "run_id": self.run_id,
            "pid": self.pid,
            "created": self.created,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created)),
            "devices": [d.to_json() for d in self.devices],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Binding:
        return cls(
            id=str(data["id"]),
            gpu_bdf=str(data["gpu"]),
            iommu_group=str(data["iommu_group"]),
            run_id=str(data.get("run_id", "")),
            pid=int(data["pid"]),
            created=float(data["created"]),
            devices=tuple(DeviceRecord.from_json(d) for d in data["devices"]),
        )


class BindingState:
    """The host-wide JSON record of live VFIO bindings at ``path`` (lock file beside it)."""

    def __init__(self, path: Path, *, lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.lock_timeout_s = lock_timeout_s

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            end = time.monotonic() + self.lock_timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise
                    if time.monotonic() >= end:
                        raise VfioError(
                            f"could not lock {self.lock_path} within {self.lock_timeout_s:.0f}s",
                            hint="another gpuconform process holds it; is one stuck?",
                        ) from None
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)  # closing the descriptor drops the flock

    def _read(self) -> list[Binding]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        try:
            data = json.loads(text)
            return [Binding.from_json(e) for e in data["bindings"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise VfioError(
                f"VFIO state file {self.path} is not valid ({exc}); expected schema {SCHEMA} JSON",
                hint="check which devices are on vfio-pci, restore them, then delete the file",
            ) from None

    def _write(self, bindings: list[Binding]) -> None:
        payload = json.dumps({"schema": SCHEMA, "bindings": [b.to_json() for b in bindings]}, indent=2)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(payload + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def entries(self) -> list[Binding]:
        with self._locked():
            return self._read()

    def add(self, binding: Binding) -> None:
        """Record ``binding``; refuse if another live entry already holds one of its devices."""
        with self._locked():
            current = self._read()
            for other in current:
                shared = sorted(set(other.bdfs) & set(binding.bdfs))
                if shared:
                    raise VfioError(
                        f"cannot bind {binding.gpu_bdf}: {', '.join(shared)} already bound to vfio-pci "
                        f"for {other.describe()}",
                        hint="release that sandbox first, or run `gpuconform gc` if its run is dead",
                    )
            self._write([*current, binding])

    def remove(self, binding_id: str) -> None:
        """Drop the entry with ``binding_id``; a no-op if it is already gone."""
        with self._locked():
            current = self._read()
            kept = [b for b in current if b.id != binding_id]
            if len(kept) != len(current):
                self._write(kept)
