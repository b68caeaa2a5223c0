"""The bare host's sandbox: a private scratch directory that leftovers, gc and the sweep can see."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuconform.drivers.base import LABEL_CASE, LABEL_RUN, AdapterContext, Deadline, InfrastructureError
from gpuconform.drivers.host import HostAdapter
from gpuconform.drivers.inventory import Inventory
from gpuconform.drivers.leases import GpuLeases
from gpuconform.drivers.request import GpuRequest
from gpuconform.fixtures.sim.simgpu.profiles import get_profile

KIND = "sim.gpuconform.dev/hostunit"


@pytest.fixture
def host(tmp_path: Path) -> HostAdapter:
    inv = Inventory(
        host="h", gpus=get_profile("h100x2").records(KIND), simulated=True, source="t", cdi_kind=KIND
    )
    return HostAdapter(
        AdapterContext(inv, GpuLeases(tmp_path / "leases"), "hr1", state_dir=tmp_path / "state")
    )


def test_a_host_sandbox_is_a_labelled_scratch_dir_until_closed(host: HostAdapter) -> None:
    labels = {**host.ctx.labels, LABEL_CASE: "cuda.init"}
    box = host.provision(
        GpuRequest.of_count(2), image="python", labels={LABEL_CASE: "cuda.init"}, deadline=Deadline(5)
    )
    assert box.granted == frozenset(g.uuid for g in host.ctx.inventory.gpus)
    box.put_file("/tmp/gpuconform/probe.py", b"print('hi')\n", 0o644)
    result = box.exec(["python3", "/tmp/gpuconform/probe.py"], timeout=30)
    assert (result.stdout, result.argv) == ("hi\n", ("python3", "/tmp/gpuconform/probe.py"))
    with pytest.raises(InfrastructureError, match="only takes files under /tmp/gpuconform"):
        box.put_file("/etc/x", b"")
    assert len(host.leftovers(labels)) == 1
    assert host.leftovers({**labels, LABEL_CASE: "other"}) == []
    assert [r.run_id for r in host.labelled_runs()] == ["hr1"]
    box.close()
    assert host.leftovers(labels) == [] and host.release_problems(box) == []


def test_gc_removes_what_a_dead_run_left(host: HostAdapter) -> None:
    host.provision(GpuRequest.default(), image="busybox", labels={}, deadline=Deadline(5))  # never closed
    assert len(host.gc("hr1")) == 1
    assert host.leftovers({LABEL_RUN: "hr1"}) == [] and host.labelled_runs() == []


def test_the_host_runs_commands_in_its_own_environment(host: HostAdapter) -> None:
    assert host.image("busybox", deadline=Deadline(1)) == "busybox"
