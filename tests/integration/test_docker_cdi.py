"""The docker-cdi column on a real Engine 26 with CDI on, through the simulated host.

Engine 26 is Debian 13's docker.io unpacked by .ci/setup.d/20-docker-engine26.sh; a private daemon
(fixtures.simgpu.dockerd, flavour ``cdi``) runs with ``{"features": {"cdi": true}}`` and the
simulated host's CDI spec dir, and no hook on its PATH. The adapter sends
``DeviceRequest(driver="cdi", device_ids=[...])`` through the real SDK and testcontainers, and the
engine itself resolves the names. Everything lives under a short temporary directory (unix socket
paths are limited to 108 bytes) and is removed at the end, daemons first.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import yaml

from gpuconform.drivers.base import LABEL_RUN, AdapterContext, Deadline, RequestRejected
from gpuconform.drivers.docker import DockerAdapter, DockerCdiAdapter, DockerLegacyAdapter
from gpuconform.drivers.leases import GpuLeases
from gpuconform.drivers.request import GpuRequest
from gpuconform.fixtures.sim.simgpu.dockerd import ENGINE26_HINT, ENGINE26_ROOT, PrivateDockerd
from gpuconform.fixtures.sim.simgpu.host import SimHost

pytestmark = pytest.mark.integration
UUID_LINE = re.compile(r"^GPU \d+: .+ \(UUID: (GPU-[0-9a-f-]+)\)$")


class Sim:
    def __init__(self, base: Path, host: SimHost, dockerd: PrivateDockerd) -> None:
        self.base, self.host, self.dockerd = base, host, dockerd

    def adapter(self, cls: type[DockerAdapter] = DockerCdiAdapter, url: str | None = None) -> DockerAdapter:
        ctx = AdapterContext(
            inventory=self.host.inventory,
            leases=GpuLeases(self.base / "leases"),
            run_id=f"it{secrets.token_hex(3)}",
            worker="gw0",
            options={f"{cls.name}.host": url or self.dockerd.socket_url},
        )
        return cls(ctx)


def bring_up(base: Path, *faults: str) -> Sim:
    if os.geteuid() != 0:
        pytest.skip("the simulated host and a private dockerd need root")
    if not (ENGINE26_ROOT / "usr" / "sbin" / "dockerd").exists():
        pytest.fail(f"Docker Engine 26 is not at {ENGINE26_ROOT}: {ENGINE26_HINT}")
    host = SimHost.up(
        "h100x4",
        faults=faults,
        instance=f"t{secrets.token_hex(4)}",
        base=base,
        cdi_dir=base / "cdi",
        owner_pid=os.getpid(),
    )
    try:
        dockerd = PrivateDockerd.start(
            host.root,
            deadline=Deadline(90),
            data_root=base / "data",
            flavour="cdi",
            cdi_spec_dirs=[base / "cdi"],
        )
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
    base = Path(tempfile.mkdtemp(prefix="gce-", dir="/tmp"))
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
    matches = [UUID_LINE.match(line) for line in result.stdout.strip().splitlines()]
    assert all(matches), result.stdout
    return [m.group(1) for m in matches if m]


def gpu_nodes(sandbox) -> list[str]:  # type: ignore[no-untyped-def]
    result = sandbox.exec(["ls", "/dev"], timeout=30)
    assert result.exit_code == 0, result
    return sorted(n for n in result.stdout.split() if re.fullmatch(r"nvidia\d+", n))


def test_engine_26_with_cdi_and_the_evidence_it_records(sim: Sim, adapter: DockerAdapter) -> None:
    versions = adapter.versions
    assert versions["engine"].startswith("docker 26.")
    assert versions["api"] == "1.45"
    assert versions["gpu_path"] == "cdi"
    assert versions["cdi_spec_dirs"] == str(sim.base / "cdi")
    assert versions["cdi_spec_file"] == str(sim.host.cdi_spec_path)
    assert versions["cdi_spec_version"] == str(
        yaml.safe_load(sim.host.cdi_spec_path.read_text())["cdiVersion"]
    )
    assert not (sim.dockerd.dir / "hookbin").exists(), (
        "the CDI daemon must have no legacy hook to fall back on"
    )


def test_default_and_count_requests_see_exactly_their_leased_gpus(
    adapter: DockerAdapter, busybox: str
) -> None:
    for req, n in ((GpuRequest.default(), 1), (GpuRequest.of_count(2), 2), (GpuRequest.of_count(4), 4)):
        with provision(adapter, req, busybox) as sandbox:
            assert sandbox.granted is not None and len(sandbox.granted) == n
            assert sorted(seen_uuids(sandbox)) == sorted(sandbox.granted)
            assert len(gpu_nodes(sandbox)) == n
            assert sandbox.driver == "docker-cdi" and sandbox.versions["gpu_path"] == "cdi"


@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize("form", ["index", "uuid"])
def test_each_cdi_name_selects_that_gpu(
    sim: Sim, adapter: DockerAdapter, busybox: str, form: str, index: int
) -> None:
    gpu = sim.host.inventory.gpus[index]
    name = f"{sim.host.cdi_kind}={index if form == 'index' else gpu.uuid}"
    with provision(adapter, GpuRequest.of_ids([name]), busybox) as sandbox:
        assert seen_uuids(sandbox) == [gpu.uuid]
        assert gpu_nodes(sandbox) == [f"nvidia{gpu.minor}"]


def test_a_pair_and_all(sim: Sim, adapter: DockerAdapter, busybox: str) -> None:
    gpus, kind = sim.host.inventory.gpus, sim.host.cdi_kind
    with provision(adapter, GpuRequest.of_ids([f"{kind}=1", f"{kind}=3"], count=2), busybox) as sandbox:
        assert sorted(seen_uuids(sandbox)) == sorted([gpus[1].uuid, gpus[3].uuid])
    with provision(adapter, GpuRequest.of_ids([f"{kind}=all"]), busybox) as sandbox:
        assert sorted(seen_uuids(sandbox)) == sorted(g.uuid for g in gpus)
        assert len(gpu_nodes(sandbox)) == 4


def test_unknown_name_is_rejected_by_the_engine_naming_it(
    sim: Sim, adapter: DockerAdapter, busybox: str
) -> None:
    name = f"{sim.host.cdi_kind}=9"
    with pytest.raises(RequestRejected) as caught:
        provision(adapter, GpuRequest.of_ids([name]), busybox)
    assert f"unresolvable CDI devices {name}" in str(caught.value)  # Engine 26's own words
    assert adapter.leftovers(adapter.ctx.labels) == []
    with provision(adapter, GpuRequest.of_count(4), busybox):  # the refusal kept no lease
        pass


def test_no_request_with_image_env_all_sees_no_gpu(adapter: DockerAdapter) -> None:
    image = adapter.image("busybox-envall", deadline=Deadline(900))
    with provision(adapter, GpuRequest.none(), image, NVIDIA_VISIBLE_DEVICES="all") as sandbox:
        assert sandbox.exec(["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"], timeout=30).stdout.strip() == "all"
        assert sandbox.exec(["nvidia-smi", "-L"], timeout=30).exit_code in (126, 127)
        assert gpu_nodes(sandbox) == []


def test_exec_has_a_hard_deadline_and_put_file_works(adapter: DockerAdapter, busybox: str) -> None:
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
    try:
        client.containers.run(
            busybox,
            ["sleep", "2147483647"],
            detach=True,
            network="none",
            labels={LABEL_RUN: adapter.ctx.run_id},
        )
        assert len(adapter.gc(adapter.ctx.run_id)) == 1
        assert client.containers.list(all=True) == []
    finally:
        client.close()


def test_no_column_falls_back_to_the_other_path(sim: Sim) -> None:
    """docker-legacy on Engine 26 (no hook, no nvidia runtime) and docker-cdi on Engine 20.10 are
    unavailable with the reason; neither quietly sends the other path's request."""
    legacy = sim.adapter(DockerLegacyAdapter).available()
    assert not legacy.ok and "neither nvidia-container-runtime-hook" in legacy.reason
    old = PrivateDockerd.start(sim.host.root, deadline=Deadline(90), data_root=sim.base / "data20")
    try:
        cdi_on_20 = sim.adapter(DockerCdiAdapter, url=old.socket_url).available()
        assert not cdi_on_20.ok
        assert "predates CDI" in cdi_on_20.reason and cdi_on_20.versions["engine"].startswith("docker 20.10")
    finally:
        old.stop(purge=True)


def test_stop_leaves_nothing(sim: Sim) -> None:
    """A stopped CDI daemon leaves no process, socket, exec root or (purged) data root behind."""
    own = bring_up(Path(tempfile.mkdtemp(prefix="gce-", dir="/tmp")))
    pid = own.dockerd.pid
    tear_down_dirs = (own.dockerd.exec_root, own.dockerd.socket_path, own.dockerd.data_root)
    try:
        own.dockerd.stop(purge=True)
        assert pid is not None and not Path(f"/proc/{pid}").exists()
        assert [p for p in tear_down_dirs if p.exists()] == []
    finally:
        tear_down(own)
