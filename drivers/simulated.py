"""What a simulated GPU host offers the adapters, declared here so adapters never import it.

The simulated environment (fixtures/sim) puts an object of this shape into
``AdapterContext.sim`` when the run's inventory is simulated; on a real host it is None. Through
it the bare host's commands see the simulated GPUs, a QEMU guest receives its granted GPUs'
injections, and the VFIO steps run against a fake sysfs tree whose "kernel" gives the writes
their meaning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

# Where a simulated GPU's files sit inside a sandbox (fixtures/sim/simgpu/layout.py re-exports
# these): the QEMU guest's loader names the files it receives after them.
SANDBOX_DESC_DIR = "/run/gpuconform-sim/gpus"
SANDBOX_NVIDIA_SMI = "/usr/bin/nvidia-smi"
NVML_SONAME = "libnvidia-ml.so.1"

Sleep = Callable[[float], None]


class SysfsWriterLike(Protocol):
    """drivers.vfio.SysfsWriter: writes ``data`` to a sysfs attribute, raising OSError as the kernel."""

    def __call__(self, path: Path, data: str, *, timeout: float) -> None: ...


class SimulatedHost(Protocol):
    """The simulated GPU host of a run, as the adapters see it."""

    @property
    def root(self) -> Path:
        """The simulated host's directory (named in errors and evidence)."""

    def host_env(self) -> dict[str, str]:
        """Environment entries that make a command on the host see the simulated GPUs (PATH
        with the simulated nvidia-smi first, where its nodes and descriptors live)."""

    def injection(self, selector: str) -> dict[str, Any] | None:
        """What GPU ``selector`` (its index) injects into a sandbox (nodes, mounts), faults
        applied; None when the simulated host has no such GPU."""

    def reload_event(self) -> list[str]:
        """The host's reload event (a systemd daemon-reload) as the simulated GPUs feel it: GPUs
        marked revocable are lost to the sandboxes running now. Returns the UUIDs revoked."""

    def sysfs_tree(self, root: Path, bus_ids: Sequence[str] | None) -> bool:
        """Whether a fake sysfs tree exists at ``root``; with ``bus_ids`` it is built first
        (holding those GPUs) when missing."""

    def sysfs_kernel(self, root: Path) -> tuple[SysfsWriterLike, Sleep]:
        """The writer and sleep that give writes to the fake tree at ``root`` the kernel's meaning."""
