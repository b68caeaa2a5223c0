"""The docker-legacy column on a real Engine 20.10 (legacy GPU path), through the simulated host.

A private dockerd (fixtures.simgpu.dockerd) serves one simulated host instance with the simulated
``nvidia-container-runtime-hook`` first on its PATH; the adapter talks to it through the real SDK
and testcontainers. Everything lives under a short temporary directory (unix socket paths are
limited to 108 bytes) and is removed at the end, daemon first.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import docker
import pytest

from gpuconform.drivers.base import LABEL_RUN, AdapterContext, Deadline, RequestRejected
from gpuconform.drivers.docker import DockerAdapter, DockerLegacyAdapter
from gpuconform.drivers.inventory import Inventory, default_native_ids
from gpuconform.drivers.leases import GpuLeases
from gpuconform.drivers.request import GpuRequest
from gpuconform.fixtures.sim.simgpu.dockerd import DockerdError, PrivateDockerd
from gpuconform.fixtures.sim.simgpu.host import SimHost

pytestmark = pytest.mark.integration
UUID_LINE = re.compile(r"^GPU \d+: .+ \(UUID: (GPU-[0-9a-f-]+)\)$")


class Sim:
    def __init__(self, base: Path, host: SimHost, dockerd: PrivateDockerd) -> None:
        self.base, self.host, self.dockerd = base, host, dockerd

    def adapter(self, inventory: Inventory | None = None, *, hook: bool = True) -> DockerAdapter:
        leases = GpuLeases(self.base / "leases")
        ctx = AdapterContext(
            inventory=inventory or self.host.inventory,
            leases=leases,
            run_id=f"it{secrets.token_hex(3)}",
            worker="gw0",
            options={
                "docker-legacy.host": self.dockerd.socket_url,
                **({"docker-legacy.legacy_hook": str(self.dockerd.hook_path)} if hook else {}),
            },
        )
        return DockerLegacyAdapter(ctx)


def bring_up(base: Path, *faults: str) -> Sim:
    if shutil.which("dockerd") is None:
        pytest.skip("dockerd is not installed (apt-get install -y docker.io)")
    if os.geteuid() != 0:
        pytest.skip("the simulated host and a private dockerd need root")
    host = SimHost.up(
        "h100x4",
        faults=faults,
        instance=f"t{secrets.token_hex(4)}",
        base=base,
        cdi_dir=base / "cdi",
        owner_pid=os.getpid(),
    )
    try:
        dockerd = PrivateDockerd.start(host.root, deadline=Deadline(60), data_root=base / "data")
    except BaseException:
        host.down()
        raise
    return Sim(base, host, dockerd)


def tear_down(sim: Sim) -> None:
    try:
        sim.dockerd.stop(purge=True)
    finally:
        sim.host.down()
        shutil.rmtree(sim.base, ignore_errors=True)


@pytest.fixture(scope="module")
def sim() -> Iterator[Sim]:
    base = Path(tempfile.mkdtemp(prefix="gcd-", dir="/tmp"))
    up = bring_up(base)
    try:
        yield up
    finally:
        tear_down(up)


@pytest.fixture(scope="module")
def adapter(sim: Sim) -> DockerAdapter:
    adapter = sim.adapter()
    availability = adapter.available()
    assert availability.ok, availability.reason
    return adapter


@pytest.fixture(scope="module")
def busybox(adapter: DockerAdapter) -> str:
    return adapter.image("busybox", deadline=Deadline(900))


def provision(adapter: DockerAdapter, req: GpuRequest, image: str, **env: str):  # type: ignore[no-untyped-def]
    return adapter.provision(req, image=image, labels=adapter.ctx.labels, deadline=Deadline(120), env=env)


def seen_uuids(sandbox) -> list[str]:  # type: ignore[no-untyped-def]
    result = sandbox.exec(["nvidia-smi", "-L"], timeout=30)
    assert result.exit_code == 0, result
    lines = result.stdout.strip().splitlines()
    matches = [UUID_LINE.match(line) for line in lines]
    assert all(matches), lines
    return [m.group(1) for m in matches if m]


def gpu_nodes(sandbox) -> list[str]:  # type: ignore[no-untyped-def]
    result = sandbox.exec(["ls", "/dev"], timeout=30)
    assert result.exit_code == 0, result
    return sorted(n for n in result.stdout.split() if re.fullmatch(r"nvidia\d+", n))


def test_private_dockerd_is_engine_20_10_on_the_legacy_path(sim: Sim, adapter: DockerAdapter) -> None:
    assert sim.dockerd.status().running
    assert adapter.versions["engine"].startswith("docker 20.10")
    assert adapter.versions["gpu_path"] == "legacy"
    assert str(sim.dockerd.hook_path) in adapter.versions["gpu_path_reason"]
    assert adapter.profile.notes.startswith("gpu path: legacy;")


def test_legacy_column_without_the_hook_is_unavailable_not_rejected(sim: Sim) -> None:
    """Engine 20.10 without nvidia-container-runtime-hook would refuse every GPU request; the
    column says why it cannot run instead of turning each cell into a false 'rejected'."""
    if shutil.which("nvidia-container-runtime-hook"):
        pytest.skip("this machine has the real hook on its PATH")
    adapter = sim.adapter(hook=False)
    availability = adapter.available()
    assert not availability.ok
    assert "neither nvidia-container-runtime-hook on its PATH nor an nvidia runtime" in availability.reason


def test_default_request_sees_exactly_its_leased_gpu(adapter: DockerAdapter, busybox: str) -> None:
    with provision(adapter, GpuRequest.default(), busybox) as sandbox:
        assert sandbox.granted is not None and len(sandbox.granted) == 1
        assert seen_uuids(sandbox) == sorted(sandbox.granted)
        assert len(gpu_nodes(sandbox)) == 1
        assert sandbox.versions["gpu_path"] == "legacy"
        assert sandbox.timings["provision_s"] > 0


def test_count_2_sees_two_distinct_gpus(adapter: DockerAdapter, busybox: str) -> None:
    with provision(adapter, GpuRequest.of_count(2), busybox) as sandbox:
        seen = seen_uuids(sandbox)
        assert len(set(seen)) == 2 and set(seen) == sandbox.granted
        assert len(gpu_nodes(sandbox)) == 2


@pytest.mark.parametrize("form", ["index", "cdi-index", "cdi-uuid"])
def test_explicit_id_selects_that_gpu(sim: Sim, adapter: DockerAdapter, busybox: str, form: str) -> None:
    gpu1 = sim.host.inventory.gpus[1]
    device_id = {
        "index": "1",
        "cdi-index": f"{sim.host.inventory.cdi_kind}=1",
        "cdi-uuid": f"{sim.host.inventory.cdi_kind}={gpu1.uuid}",
    }[form]
    with provision(adapter, GpuRequest.of_ids([device_id]), busybox) as sandbox:
        assert sandbox.granted == frozenset({gpu1.uuid})
        assert seen_uuids(sandbox) == [gpu1.uuid]
        assert gpu_nodes(sandbox) == [f"nvidia{gpu1.minor}"]


def test_no_request_with_image_env_all_sees_no_gpu(sim: Sim, adapter: DockerAdapter) -> None:
    image = adapter.image("busybox-envall", deadline=Deadline(900))
    with provision(adapter, GpuRequest.none(), image, NVIDIA_VISIBLE_DEVICES="all") as sandbox:
        env = sandbox.exec(["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"], timeout=30)
        assert env.stdout.strip() == "all"  # the escalation attempt is really there
        smi = sandbox.exec(["nvidia-smi", "-L"], timeout=30)
        assert smi.exit_code in (126, 127), smi  # absent: the hook never ran for this container
        assert gpu_nodes(sandbox) == []
        log = sim.dockerd.dir / "legacy-hook.log"
        assert sandbox.id[:12] not in (log.read_text() if log.exists() else "")


def test_gpu_request_with_image_env_all_sees_only_its_grant(adapter: DockerAdapter) -> None:
    image = adapter.image("busybox-envall", deadline=Deadline(900))
    with provision(adapter, GpuRequest.default(), image) as sandbox:
        assert seen_uuids(sandbox) == sorted(sandbox.granted or ())
        assert len(gpu_nodes(sandbox)) == 1


def test_concurrent_default_requests_get_disjoint_gpus(adapter: DockerAdapter, busybox: str) -> None:
    with (
        provision(adapter, GpuRequest.default(), busybox) as first,
        provision(adapter, GpuRequest.default(), busybox) as second,
    ):
        # Each sees exactly its own one GPU first: two empty sets are disjoint too.
        seen_first, seen_second = seen_uuids(first), seen_uuids(second)
        assert len(seen_first) == 1 and seen_first == sorted(first.granted or ())
        assert len(seen_second) == 1 and seen_second == sorted(second.granted or ())
        assert set(seen_first).isdisjoint(seen_second)


def test_count_over_is_rejected_leaving_no_container(sim: Sim, adapter: DockerAdapter, busybox: str) -> None:
    with pytest.raises(RequestRejected, match="requested 5 GPUs but the host has 4"):
        provision(adapter, GpuRequest.of_count(5), busybox)
    assert adapter.leftovers(adapter.ctx.labels) == []


def test_hook_refusal_is_rejected_with_its_message_and_cleaned_up(sim: Sim, busybox: str) -> None:
    # An inventory that knows a 5th GPU the host's plan lacks: the adapter passes "4", the hook refuses.
    inv = sim.host.inventory
    extra = replace(
        inv.gpus[3],
        index=4,
        uuid="GPU-99999999-9999-5999-9999-999999999999",
        minor=4,
        native_ids=default_native_ids(
            4, "GPU-99999999-9999-5999-9999-999999999999", inv.gpus[3].pci_bus_id, inv.cdi_kind
        ),
    )
    adapter = sim.adapter(replace(inv, gpus=(*inv.gpus, extra)))
    with pytest.raises(RequestRejected, match="device error: 4: unknown device"):
        provision(adapter, GpuRequest.of_ids(["4"]), busybox)
    assert adapter.leftovers(adapter.ctx.labels) == []
    adapter.ctx.leases.acquire_exact([extra], Deadline(1)).release()  # the refusal gave its lease back


def test_exec_has_a_hard_deadline(adapter: DockerAdapter, busybox: str) -> None:
    with provision(adapter, GpuRequest.none(), busybox) as sandbox:
        start = time.monotonic()
        result = sandbox.exec(["sleep", "60"], timeout=1)
        assert result.timed_out and result.exit_code is None
        assert time.monotonic() - start < 5
        sandbox.put_file("/tmp/gpuconform/probe.sh", b"#!/bin/sh\necho out; echo err >&2; exit 4\n")
        ran = sandbox.exec(["/tmp/gpuconform/probe.sh"], timeout=30)
        assert (ran.exit_code, ran.stdout, ran.stderr) == (4, "out\n", "err\n")


def test_gc_removes_labelled_leftovers(sim: Sim, adapter: DockerAdapter, busybox: str) -> None:
    client = docker.DockerClient(base_url=sim.dockerd.socket_url, timeout=30)
    try:  # what a killed run leaves: a labelled container nobody will close
        client.containers.run(
            busybox,
            ["sleep", "2147483647"],
            detach=True,
            network="none",
            labels={LABEL_RUN: adapter.ctx.run_id},
        )
        assert len(adapter.leftovers({LABEL_RUN: adapter.ctx.run_id})) == 1
        assert len(adapter.gc(adapter.ctx.run_id)) == 1
        assert adapter.leftovers({LABEL_RUN: adapter.ctx.run_id}) == []
        assert client.containers.list(all=True) == []
    finally:
        client.close()


def test_stopped_dockerd_is_unavailable_within_seconds() -> None:
    own = bring_up(Path(tempfile.mkdtemp(prefix="gcd-", dir="/tmp")))
    try:
        adapter = own.adapter()
        assert adapter.available().ok
        own.dockerd.stop()
        assert not own.dockerd.status().running
        start = time.monotonic()
        availability = adapter.available()
        assert not availability.ok
        assert availability.reason.startswith(f"docker engine not reachable at {own.dockerd.socket_url}")
        assert time.monotonic() - start < 5
    finally:
        tear_down(own)


def test_faults_of_the_plan_apply_on_the_legacy_path() -> None:
    own = bring_up(Path(tempfile.mkdtemp(prefix="gcd-", dir="/tmp")), "wrong-gpu:1", "extra-gpu:0")
    try:
        adapter, gpus = own.adapter(), own.host.inventory.gpus
        image = adapter.image("busybox", deadline=Deadline(900))
        with provision(adapter, GpuRequest.of_ids(["1"]), image) as sandbox:
            assert seen_uuids(sandbox) == [gpus[2].uuid]  # asked for GPU 1, the broken stack gives GPU 2
        with provision(adapter, GpuRequest.of_ids(["0"]), image) as sandbox:
            assert seen_uuids(sandbox) == [gpus[0].uuid, gpus[1].uuid]  # one asked, two injected
    finally:
        tear_down(own)


def test_a_daemon_that_dies_at_start_fails_loudly() -> None:
    root = Path(tempfile.mkdtemp(prefix="gcd-", dir="/tmp"))  # short: the socket paths must fit
    try:
        (root / "plan.json").write_text("{}")
        with pytest.raises(DockerdError, match="private dockerd exited with 1 while starting"):
            PrivateDockerd.start(root, deadline=Deadline(10), data_root=root / "data", binary="false")
        assert not (root / "docker" / "exec").exists()
    finally:
        shutil.rmtree(root)


def test_a_root_too_deep_for_unix_sockets_is_refused(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    deep.mkdir()
    (deep / "plan.json").write_text("{}")
    with pytest.raises(DockerdError, match="too deep"):
        PrivateDockerd.start(deep, deadline=Deadline(10), data_root=tmp_path / "data")
