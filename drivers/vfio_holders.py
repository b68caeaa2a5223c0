"""Who holds a PCI device open: the processes an unbind would hang on.

Unbinding a GPU from the nvidia driver while nvidia-persistenced, DCGM, a CUDA process (or the
harness's own host probe) has ``/dev/nvidiaN`` open does not fail: the write to ``unbind`` blocks
in the kernel until the holder lets go, which may be never. So ``drivers.vfio.bind`` asks first
and refuses, naming the process. A holder is any open file descriptor (``/proc/<pid>/fd/*``)
whose target is the GPU's device node or a file of the PCI function's sysfs directory (a
``resource`` file mapped by a diagnostics tool). The GPU's node number comes from the nvidia
driver's ``/proc/driver/nvidia/gpus/<bus id>/information`` ("Device Minor"). Every root is a
parameter, so a fake proc tree or a real child process holding a file of a fake tree tests it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_MINOR_RE = re.compile(r"^Device Minor:\s*(\d+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Holder:
    """One open file descriptor on the device: which process, and through which path."""

    pid: int
    name: str
    path: str

    def describe(self) -> str:
        return f"pid {self.pid} ({self.name}) via {self.path}"


def nvidia_minor(bdf: str, proc_root: Path = Path("/proc")) -> int | None:
    """The N of ``/dev/nvidiaN`` for ``bdf``, as the nvidia driver reports it (None if not its)."""
    try:
        text = (Path(proc_root) / "driver/nvidia/gpus" / bdf / "information").read_text()
    except OSError:
        return None
    match = _MINOR_RE.search(text)
    return int(match.group(1)) if match else None


def _process_name(pid_dir: Path) -> str:
    try:
        return (pid_dir / "comm").read_text().strip() or "?"
    except OSError:
        return "?"


def holders(
    bdf: str,
    *,
    sysfs_root: Path = Path("/sys"),
    proc_root: Path = Path("/proc"),
    dev_root: Path | None = Path("/dev"),
) -> list[Holder]:
    """Every process with the GPU's device node (under ``dev_root``; None skips the node) or a
    file of its sysfs directory open. Processes that vanish or cannot be read are skipped."""
    nodes: set[str] = set()
    minor = nvidia_minor(bdf, proc_root)
    if dev_root is not None and minor is not None:
        nodes.add(str(Path(dev_root) / f"nvidia{minor}"))
    try:
        sys_dir = str((Path(sysfs_root) / "bus/pci/devices" / bdf).resolve(strict=True))
    except OSError:
        sys_dir = None
    found: list[Holder] = []
    try:
        pids = [p for p in Path(proc_root).iterdir() if p.name.isdigit()]
    except OSError:
        return found
    for pid_dir in sorted(pids, key=lambda p: int(p.name)):
        try:
            fds = list((pid_dir / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target in nodes or (sys_dir is not None and target.startswith(sys_dir + os.sep)):
                found.append(Holder(int(pid_dir.name), _process_name(pid_dir), target))
                break
    return found
