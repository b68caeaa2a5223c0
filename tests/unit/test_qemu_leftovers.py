"""The qemu adapter's leftovers(): what ``count.over`` checks on the qemu column is real.

A VM directory, a QEMU process or a VFIO binding left by a VM with the cell's labels is reported;
those of another VM of the same run (another worker's, the qemu-single column's) are not. The
QEMU processes are stand-ins (a shell whose argv[0] and ``-name`` look like QEMU's) and the VFIO
bindings are made on the fake sysfs, through the adapter's own site.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuconform.drivers import qemu_vm as vm
from gpuconform.drivers.base import LABEL_CASE, LABEL_RUN, LABEL_WORKER, AdapterContext, Deadline
from gpuconform.drivers.inventory import Inventory
from gpuconform.drivers.leases import GpuLeases
from gpuconform.drivers.qemu import QemuAdapter
from gpuconform.fixtures.sim.offer import simulated_host
from gpuconform.fixtures.sim.simgpu.profiles import get_profile

KIND = "sim.gpuconform.dev/unit"
RUN = "lo1"
MINE = {LABEL_RUN: RUN, LABEL_WORKER: "gw0", LABEL_CASE: "count.over"}
OTHER = {LABEL_RUN: RUN, LABEL_WORKER: "gw1", LABEL_CASE: "smi.default"}


@pytest.fixture
def adapter(tmp_path: Path) -> QemuAdapter:
    prof = get_profile("h100x2")
    inv = Inventory(host="unit", gpus=prof.records(KIND), simulated=True, source="unit", cdi_kind=KIND)
    ctx = AdapterContext(
        inv,
        GpuLeases(tmp_path / "leases"),
        run_id=RUN,
        state_dir=tmp_path / "state",
        sim=simulated_host({}, inv),
    )
    return QemuAdapter(ctx)


def _vm_dir(adapter: QemuAdapter, name: str, labels: dict[str, str], gpus: list[str]) -> Path:
    path = adapter.vm_base(RUN) / name
    path.mkdir(parents=True)
    (path / "owner.json").write_text(json.dumps({"pid": 1, "name": name, "labels": labels, "gpus": gpus}))
    return path


@pytest.fixture
def fake_qemu() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait(timeout=10)


def _start_fake_qemu(started: list[subprocess.Popen[bytes]], name: str) -> int:
    """A process that vm_processes() takes for QEMU: argv[0] qemu-system-x86_64, ``-name NAME``."""
    proc = subprocess.Popen(
        ["qemu-system-x86_64", "-c", "sleep 60; true", "-name", name], executable="/bin/bash"
    )
    started.append(proc)
    deadline = time.monotonic() + 10
    while name not in vm.vm_processes(name).values():
        assert time.monotonic() < deadline, "the stand-in QEMU process never appeared"
        time.sleep(0.05)
    return proc.pid


def test_nothing_started_nothing_left(adapter: QemuAdapter) -> None:
    assert adapter.leftovers(MINE) == []


def test_a_vm_directory_with_the_cells_labels_is_left_behind(adapter: QemuAdapter) -> None:
    _vm_dir(adapter, f"gpuconform-{RUN}-aaaa", MINE, [])
    _vm_dir(adapter, f"gpuconform-{RUN}-bbbb", OTHER, [])
    assert adapter.leftovers(MINE) == [f"VM directory {adapter.vm_base(RUN) / f'gpuconform-{RUN}-aaaa'}"]


def test_qemu_processes_of_the_cell_or_of_no_vm_are_left_behind(
    adapter: QemuAdapter, fake_qemu: list[subprocess.Popen[bytes]]
) -> None:
    _vm_dir(adapter, f"gpuconform-{RUN}-othr", OTHER, [])
    orphan = _start_fake_qemu(fake_qemu, f"gpuconform-{RUN}-orph")
    _start_fake_qemu(fake_qemu, f"gpuconform-{RUN}-othr")  # another worker's live VM
    _start_fake_qemu(fake_qemu, "gpuconform-elsewhere-1")  # another run's
    assert adapter.leftovers(MINE) == [f"QEMU gpuconform-{RUN}-orph (pid {orphan}) still runs"]


def test_a_vfio_binding_of_the_run_is_left_behind_until_released(adapter: QemuAdapter) -> None:
    site = adapter.vfio_site()
    gpu = adapter.ctx.inventory.gpus[0].pci_bus_id
    binding = site.bind(gpu, run_id=RUN, deadline=Deadline(30))
    left = adapter.leftovers(MINE)
    assert any(gpu in line and "still recorded" in line for line in left), left
    site.release(binding)
    assert adapter.leftovers(MINE) == []


def test_a_binding_another_vm_of_the_run_holds_is_not_a_leftover(adapter: QemuAdapter) -> None:
    site = adapter.vfio_site()
    gpu = adapter.ctx.inventory.gpus[1].pci_bus_id
    binding = site.bind(gpu, run_id=RUN, deadline=Deadline(30))
    _vm_dir(adapter, f"gpuconform-{RUN}-cccc", OTHER, [gpu])
    try:
        assert adapter.leftovers(MINE) == []
    finally:
        site.release(binding)


def test_labelled_runs_names_a_dead_runs_vms_but_never_a_live_owners(adapter: QemuAdapter) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait(timeout=10)
    path = _vm_dir(adapter, f"{vm.NAME_PREFIX}{RUN}-aa", MINE, ["0000:18:00.0"])
    owner = json.loads((path / "owner.json").read_text())
    (path / "owner.json").write_text(json.dumps({**owner, "pid": dead.pid}))
    (run,) = [r for r in adapter.labelled_runs() if r.run_id == RUN]  # (other VMs on this machine)
    assert run.created > 0  # a real time: a sweep's grace period applies
    (path / "owner.json").write_text(json.dumps({**owner, "pid": os.getpid()}))
    assert RUN not in {r.run_id for r in adapter.labelled_runs()}  # its owner still runs
