"""A command that times out inside a real sandbox is gone afterwards, not only its client.

Podman (``podman exec``), Docker Engine 26 through its exec API (a private dockerd on the simulated
host), a pod of the Kubernetes API double (an exec stream over HTTP) and a QEMU guest over SSH:
``sleep 300`` (and a shell with two background sleeps) exec'd with a 2 s timeout; afterwards the
sandbox's /proc lists no such sleep. A control shows the engine's own exec leaves the sleep running
(what the kill is for, and that the check can see it).
Also measures what the wrapper costs a command on podman (printed; run with ``-s`` to see it).
"""

from __future__ import annotations

import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuconform.drivers.base import AdapterContext, Deadline, Sandbox
from gpuconform.drivers.docker import DockerAdapter
from gpuconform.drivers.inventory import Inventory
from gpuconform.drivers.kubernetes import KubernetesAdapter
from gpuconform.drivers.leases import GpuLeases
from gpuconform.drivers.podman import PodmanAdapter
from gpuconform.drivers.qemu import QemuAdapter
from gpuconform.drivers.request import GpuRequest
from gpuconform.fixtures.build.guestimage import build_guest_image
from gpuconform.fixtures.sim.kubedouble import KubeDouble
from gpuconform.fixtures.sim.offer import simulated_host
from gpuconform.fixtures.sim.simgpu.host import SimHost
from gpuconform.fixtures.sim.simgpu.profiles import get_profile
from tests.integration.test_docker_cdi import Sim, bring_up, tear_down

pytestmark = pytest.mark.integration
KIND = "sim.gpuconform.dev/timeoutkill"
TREE = ["sh", "-c", "sleep 300 & sleep 300 & wait"]
# Lists every process's command line; a shell loop, so it needs no ps in the image.
LIST_PROCESSES = ["sh", "-c", 'for f in /proc/[0-9]*/cmdline; do tr "\\0" " " < "$f"; echo; done']
SAMPLES = 15


def sleeps(sandbox: Sandbox) -> list[str]:
    """The ``sleep 300`` processes running in ``sandbox``."""
    listed = sandbox.exec(LIST_PROCESSES, timeout=30)
    assert listed.ok, listed
    return [line for line in listed.stdout.splitlines() if line.startswith("sleep 300")]


def assert_killed_inside(sandbox: Sandbox) -> None:
    """Each way a command can outlive its client, timed out at 2 s: gone inside afterwards."""
    for argv, started in ((["sleep", "300"], 1), (TREE, 2)):
        begun = time.monotonic()
        result = sandbox.exec(argv, timeout=2)
        assert result.timed_out and result.exit_code is None, result
        assert "killed inside: pid" in result.stderr, result.stderr
        assert len(result.stderr.split("pid", 1)[1].split(sep=None)) >= started, result.stderr
        assert time.monotonic() - begun < 2 + 5 + 5  # the timeout, the kill's deadline, slack
        assert sleeps(sandbox) == [], f"{argv} still runs inside after its exec timed out"


def assert_client_kill_leaves_it(sandbox: Sandbox) -> None:
    """The control: the engine's exec alone (no wrapper, no kill) leaves the sleep running."""
    result = sandbox.raw_exec(["sleep", "300"], timeout=2)
    assert result.timed_out, result
    assert len(sleeps(sandbox)) == 1, "the engine killed the command itself: the kill is not what is tested"


# -- podman ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def podman(image: str, tmp_path_factory: pytest.TempPathFactory) -> PodmanAdapter:
    inv = Inventory(
        host="h", gpus=get_profile("h100x2").records(KIND), simulated=True, source="t", cdi_kind=KIND
    )
    base = tmp_path_factory.mktemp("timeoutkill")
    return PodmanAdapter(
        AdapterContext(inv, GpuLeases(base / "leases"), f"it{secrets.token_hex(4)}", host="")
    )


@pytest.fixture
def podman_sandbox(podman: PodmanAdapter, image: str) -> Iterator[Sandbox]:
    sandbox = podman.provision(
        GpuRequest.none(), image=image, labels=podman.ctx.labels, deadline=Deadline(120)
    )
    try:
        yield sandbox
    finally:
        sandbox.close()
        assert podman.leftovers(podman.ctx.labels) == []


def test_podman_exec_timed_out_is_killed_inside(podman_sandbox: Sandbox) -> None:
    assert_killed_inside(podman_sandbox)


def test_podman_exec_alone_leaves_the_command_running(podman_sandbox: Sandbox) -> None:
    assert_client_kill_leaves_it(podman_sandbox)


def test_podman_wrapper_overhead_per_command(podman_sandbox: Sandbox) -> None:
    """What the wrapper adds to one command (one more exec inside), against the bare engine exec,
    interleaved so both see the same load."""
    wrapped: list[float] = []
    bare: list[float] = []
    for _ in range(SAMPLES):
        start = time.monotonic()
        assert podman_sandbox.exec(["true"], timeout=30).ok
        wrapped.append(time.monotonic() - start)
        start = time.monotonic()
        assert podman_sandbox.raw_exec(["true"], timeout=30).ok
        bare.append(time.monotonic() - start)
    extra = statistics.median(wrapped) - statistics.median(bare)
    print(
        f"\npodman exec `true`, median of {SAMPLES}: wrapped {statistics.median(wrapped) * 1000:.0f} ms, "
        f"bare {statistics.median(bare) * 1000:.0f} ms, wrapper adds {extra * 1000:.0f} ms"
    )
    assert extra < 0.25, "the wrapper costs more than one short exec inside should"


# -- docker (Engine 26, its exec API) ----------------------------------------------------------
@pytest.fixture(scope="module")
def docker_sim() -> Iterator[Sim]:
    base = Path(tempfile.mkdtemp(prefix="gtk-", dir="/tmp"))
    up = bring_up(base)
    try:
        yield up
    finally:
        tear_down(up)


def test_docker_exec_timed_out_is_killed_inside(docker_sim: Sim) -> None:
    adapter: DockerAdapter = docker_sim.adapter()
    availability = adapter.available()
    assert availability.ok, availability.reason
    image = adapter.image("busybox", deadline=Deadline(900))
    sandbox = adapter.provision(
        GpuRequest.none(), image=image, labels=adapter.ctx.labels, deadline=Deadline(120)
    )
    try:
        assert_killed_inside(sandbox)
        assert_client_kill_leaves_it(sandbox)
    finally:
        sandbox.close()
    assert adapter.leftovers(adapter.ctx.labels) == []


# -- kubernetes (the API double: an exec stream over HTTP, a Podman container behind it) --------
def test_kubernetes_exec_timed_out_is_killed_in_the_pod(image: str, tmp_path: Path) -> None:
    sim = SimHost.up("h100x4", instance=f"k{secrets.token_hex(4)}", owner_pid=os.getpid())
    kube = KubeDouble.from_sim_host(sim)
    try:
        kube.start()
        ctx = AdapterContext(
            inventory=sim.inventory,
            leases=GpuLeases(tmp_path / "leases"),
            run_id=f"it-{secrets.token_hex(3)}",
            options={
                "kubernetes.kubeconfig": str(kube.write_kubeconfig(tmp_path / "kubeconfig")),
                "image.busybox": image,
            },
        )
        adapter = KubernetesAdapter(ctx)
        assert adapter.available().ok
        with adapter.provision(GpuRequest.none(), image=image, labels={}, deadline=Deadline(60)) as sandbox:
            assert_killed_inside(sandbox)
            assert_client_kill_leaves_it(sandbox)
        adapter.gc(ctx.run_id)
        assert kube.containers() == []
    finally:
        kube.stop()
        sim.down()


# -- qemu (a guest over SSH; boots one VM: slow) -----------------------------------------------
@pytest.fixture
def qemu_ctx(tmp_path: Path) -> Iterator[AdapterContext]:
    if not Path("/usr/bin/qemu-system-x86_64").exists():
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    build_guest_image(deadline=Deadline(900))  # cached; `gpuconform images build --guest` makes it
    sim = SimHost.up(
        "h100x4", instance=f"t{secrets.token_hex(4)}", base=tmp_path / "sim", cdi_dir=tmp_path / "cdi"
    )
    try:
        options = {"sim.root": str(sim.root)}
        yield AdapterContext(
            sim.inventory,
            GpuLeases(tmp_path / "leases"),
            run_id=f"it{secrets.token_hex(3)}",
            state_dir=tmp_path / "state",
            options=options,
            sim=simulated_host(options, sim.inventory),
        )
    finally:
        sim.down()


def test_qemu_exec_timed_out_over_ssh_is_killed_in_the_guest(qemu_ctx: AdapterContext) -> None:
    adapter = QemuAdapter(qemu_ctx)
    assert adapter.available().ok
    sandbox = adapter.provision(GpuRequest.none(), image="busybox", labels={}, deadline=Deadline(300))
    try:
        assert_killed_inside(sandbox)
        assert_client_kill_leaves_it(sandbox)
    finally:
        sandbox.close()
    assert adapter.release_problems(sandbox) == []
