"""Where the QEMU adapter does its VFIO work: the host's /sys, or a fake sysfs on a simulated host.

A simulated host has no devices to pass through, but the bind/record/release sequence of
drivers.vfio still runs, against a fake tree that the simulated host in the adapter's context
(``ctx.sim``: fixtures/sim/fakesysfs.py behind it) builds from the inventory, so
``release`` (every device back on its original driver, no binding record left) is checked in CI
the same way it is on hardware. A ``VfioSite`` hides which of the two it is.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from gpuconform.drivers import vfio
from gpuconform.drivers.base import AdapterContext, Deadline, InfrastructureError
from gpuconform.drivers.simulated import SimulatedHost

REAL_STATE = Path("/var/lib/gpuconform/vfio-bindings.json")
FAKE_TREE_DIR = "fake-sysfs"


@dataclass(frozen=True)
class VfioSite:
    sysfs_root: Path
    state: vfio.BindingState
    fake: bool
    proc_root: Path = Path("/proc")
    dev_root: Path = Path("/dev")
    sim: SimulatedHost | None = None  # gives the fake tree's writes their meaning

    def _kernel(self) -> tuple[vfio.SysfsWriter | None, Callable[[float], None]]:
        """The fake tree needs the simulated kernel to give writes meaning; the real one has the kernel."""
        if not self.fake:
            return None, time.sleep
        if self.sim is None:
            raise InfrastructureError(f"fake sysfs {self.sysfs_root}: no simulated host in the context")
        return self.sim.sysfs_kernel(self.sysfs_root)

    def describe(self) -> str:
        kind = "fake sysfs (simulated host)" if self.fake else "sysfs"
        return f"{kind} {self.sysfs_root}, state {self.state.path}"

    def bind(
        self, bdf: str, *, run_id: str, deadline: Deadline, granted: tuple[str, ...] = ()
    ) -> vfio.Binding:
        """Bind ``bdf`` (a companion GPU moves only if in ``granted``), refusing a held device.

        Holders are looked for in /proc on both kinds of site (a process holding a file of the
        fake tree counts); device nodes only on the real one, whose /dev/nvidiaN are the GPUs'."""
        writer, sleep = self._kernel()
        try:
            return vfio.bind(
                bdf,
                sysfs_root=self.sysfs_root,
                state=self.state,
                deadline=deadline,
                run_id=run_id,
                writer=writer,
                sleep=sleep,
                granted=granted,
                proc_root=self.proc_root,
                dev_root=None if self.fake else self.dev_root,
            )
        except vfio.VfioError as exc:
            raise InfrastructureError(exc.message, hint=exc.hint) from None

    def release(self, binding: vfio.Binding) -> None:
        writer, sleep = self._kernel()
        vfio.release(binding, sysfs_root=self.sysfs_root, state=self.state, writer=writer, sleep=sleep)

    def reconcile(self) -> list[str]:
        if not self.state.path.exists():
            return []
        writer, sleep = self._kernel()
        return vfio.reconcile(self.state, self.sysfs_root, writer=writer, sleep=sleep)

    def driver_of(self, bdf: str) -> str | None:
        try:
            return Path(os.readlink(self.sysfs_root / "bus/pci/devices" / bdf / "driver")).name
        except OSError:
            return None

    def leftovers(self, bindings: Sequence[vfio.Binding]) -> list[str]:
        """Bindings still recorded, and devices not back on their original driver (a device that
        a newer live binding holds again is not a leftover)."""
        entries = self.state.entries()
        live_ids = {e.id for e in entries}
        held = {bdf for e in entries for bdf in e.bdfs}
        problems = []
        for binding in bindings:
            if binding.id in live_ids:
                problems.append(
                    f"VFIO binding of {binding.describe()} is still recorded in {self.state.path}"
                )
            for dev in binding.devices:
                current = self.driver_of(dev.bdf)
                if dev.bdf not in held and current != dev.original_driver:
                    problems.append(
                        f"{dev.bdf} is on {current or 'no driver'}, expected its original "
                        f"{dev.original_driver or 'no driver'}"
                    )
        return problems


def _fake_tree(ctx: AdapterContext, root: Path, create: bool) -> bool:
    """Whether the fake tree exists (building it from the inventory first when ``create``)."""
    if ctx.sim is None:
        return False
    if ctx.sim.sysfs_tree(root, None):
        return True
    if not create or not ctx.inventory.gpus:
        return False
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root.parent / f"{root.name}.lock"), timeout=30):
        bus_ids = [g.pci_bus_id for g in sorted(ctx.inventory.gpus, key=lambda g: g.index)]
        return ctx.sim.sysfs_tree(root, bus_ids)


def vfio_sites(ctx: AdapterContext, *, create: bool) -> list[VfioSite]:
    """The sites this context works with: the one to bind at first (``create``), then any other
    whose state file exists (``gpuconform gc`` does not know whether the dead run was simulated)."""
    opts = ctx.options
    base = Path(ctx.state_dir) / "qemu"
    real = VfioSite(
        Path(opts.get("qemu.sysfs_root") or "/sys"),
        vfio.BindingState(Path(opts.get("qemu.vfio_state") or REAL_STATE)),
        fake=False,
    )
    if not ctx.inventory.simulated:
        return [real]
    root = Path(opts.get("qemu.sysfs_root") or base / FAKE_TREE_DIR)
    if root.resolve() == Path("/sys") or Path("/sys") in root.resolve().parents:
        raise InfrastructureError(
            f"refusing qemu.sysfs_root={root} on a simulated host: it would move real devices",
            hint="leave qemu.sysfs_root unset to use a fake tree",
        )
    sites = []
    if _fake_tree(ctx, root, create):
        state = vfio.BindingState(Path(opts.get("qemu.vfio_state") or vfio.default_state_path(base)))
        sites.append(VfioSite(root, state, fake=True, sim=ctx.sim))
    if not create and "sim.root" not in opts and real.state.path.exists():
        sites.append(real)
    if create and not sites:
        why = "no simulated host in the adapter's context" if ctx.sim is None else "no GPUs to build one from"
        raise InfrastructureError(f"no fake sysfs tree at {root} and {why}")
    return sites
