"""Nothing is left behind: not after a normal run, not after Ctrl-C, not after SIGKILL + gc.

Podman's containers and the simulated host, and for the docker-cdi column also its private
Engine 26 daemon: its process, its containers, its containerd shims and its data root.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, conformance_argv, podman_containers

pytestmark = pytest.mark.integration

CDI_DIR = Path("/var/run/cdi")
SIM_BASE = Path("/run/gpuconform/sim")
DATA_BASE = Path("/var/lib/gpuconform")


RUN_ID = "cleanup" + secrets.token_hex(3)


def _sim_specs() -> list[str]:
    """The run's CDI spec, if it exists (the simulated host instance is named r<run id>)."""
    return sorted(p.name for p in CDI_DIR.glob(f"gpuconform-sim-r{RUN_ID}.*"))


def _sim_roots() -> list[str]:
    return sorted(p.name for p in SIM_BASE.glob(f"r{RUN_ID}")) if SIM_BASE.exists() else []


def _ours() -> list[str]:
    """Containers of the run under test (other runs on this machine are not ours to judge)."""
    return podman_containers(f"dev.gpuconform.run={RUN_ID}")


def _start_run(out: Path, driver: str = "podman", run_id: str = RUN_ID) -> subprocess.Popen[str]:
    argv = conformance_argv(
        out, "--drivers", driver, "--require-driver", driver, "--sim", "h100x4", "-k", "device"
    )
    return subprocess.Popen(
        argv,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "GPUCONFORM_RUN_ID": run_id},
    )


def _wait_for_container(
    proc: subprocess.Popen[str], timeout: float = 180, ours: Callable[[], list[str]] = _ours
) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ours():
            return
        if proc.poll() is not None:
            pytest.fail(
                f"run ended before any container existed: {proc.stdout.read() if proc.stdout else ''}"
            )
        time.sleep(0.2)
    pytest.fail("no container appeared within the timeout")


def test_ctrl_c_removes_containers_and_the_simulated_host(tmp_path: Path) -> None:
    before = (_sim_specs(), _sim_roots())
    proc = _start_run(tmp_path / "out")
    _wait_for_container(proc)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    assert not _ours(), "containers left after Ctrl-C"
    assert (_sim_specs(), _sim_roots()) == before, "simulated host left after Ctrl-C"


def test_sigkill_leftovers_are_removed_by_gc(tmp_path: Path) -> None:
    before = (_sim_specs(), _sim_roots())
    proc = _start_run(tmp_path / "out")
    _wait_for_container(proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert _ours() or _sim_specs() != before[0], "nothing was left to collect; the test proves nothing"
    gc = subprocess.run(
        [sys.executable, "-m", "gpuconform.conformance.cli", "gc"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert gc.returncode == 0, gc.stderr
    assert not _ours(), gc.stdout
    assert (_sim_specs(), _sim_roots()) == before, gc.stdout


def _engine26(run_id: str) -> tuple[list[str], list[int], bool]:
    """(containers of the run in its private Engine 26, processes under its exec root, data root
    present), read from the outside: the socket, /proc and the filesystem."""
    import docker

    daemon_dir = SIM_BASE / f"r{run_id}" / "docker-cdi"
    containers: list[str] = []
    sock = daemon_dir / "docker.sock"
    if sock.exists():
        client = docker.DockerClient(base_url=f"unix://{sock}", timeout=10)
        try:
            containers = [c.name for c in client.containers.list(all=True)]
        except docker.errors.DockerException:
            containers = []
        finally:
            client.close()
    procs = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(daemon_dir) in argv:
                procs.append(int(entry.name))
    return containers, procs, (DATA_BASE / f"dockerd-cdi-r{run_id}").exists()


def test_sigkill_of_a_docker_cdi_run_leaves_engine_26_to_gc(tmp_path: Path) -> None:
    """The private Engine 26 daemon outlives a killed run (its own session); gc stops it, removes
    its containers, shims and data root, and the run's CDI spec; the system dockerd is not used."""
    if not Path("/var/cache/gpuconform/docker26/root/usr/sbin/dockerd").exists():
        pytest.fail("Engine 26 is not unpacked: bash .ci/setup.d/20-docker-engine26.sh")
    run_id = "cleanupcdi" + secrets.token_hex(3)
    proc = _start_run(tmp_path / "out", "docker-cdi", run_id)
    _wait_for_container(proc, ours=lambda: _engine26(run_id)[0])
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    containers, procs, data_root = _engine26(run_id)
    assert containers and procs and data_root, "nothing was left to collect; the test proves nothing"
    gc = subprocess.run(
        [sys.executable, "-m", "gpuconform.conformance.cli", "gc"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert gc.returncode == 0, gc.stderr
    assert "stopped private dockerd-cdi" in gc.stdout, gc.stdout
    assert _engine26(run_id) == ([], [], False), gc.stdout
    assert not list(CDI_DIR.glob(f"gpuconform-sim-r{run_id}.*")), gc.stdout
    assert not (SIM_BASE / f"r{run_id}").exists(), gc.stdout


def test_gc_stops_a_dockerd_whose_run_died_before_recording_it() -> None:
    """A run killed during bring-up leaves daemons that no env.json names: gc finds them under
    the dead simulated host's instance, stops them and purges their data roots."""
    from gpuconform.drivers.base import Deadline
    from gpuconform.fixtures.reaper import reap_dead_runs
    from gpuconform.fixtures.sim.simgpu.dockerd import PrivateDockerd
    from gpuconform.fixtures.sim.simgpu.host import SimHost

    dead = subprocess.Popen(["true"])
    dead.wait(timeout=10)
    host = SimHost.up("h100x2", instance=f"o{secrets.token_hex(4)}", owner_pid=dead.pid)
    daemons = []
    try:
        for flavour in ("legacy", "cdi"):
            daemons.append(
                PrivateDockerd.start(
                    host.root,
                    deadline=Deadline(90),
                    flavour=flavour,
                    cdi_spec_dirs=[host.cdi_spec_path.parent],
                )
            )
        report = reap_dead_runs()
        done = report.lines(verbose=True)
        for daemon in daemons:
            assert not daemon.status().running, done
            assert not daemon.data_root.exists(), done
        assert any(f"stopped orphan cdi dockerd of {host.instance}" in line for line in done), done
        assert not host.root.exists() and not host.cdi_spec_path.exists(), done
    finally:
        for daemon in daemons:
            daemon.stop(purge=True)
        host.down()


def _labelled_container(name: str, run_id: str, host: str, image: str) -> None:
    subprocess.run(
        ["podman", "run", "-d", "--name", name, "--label", f"dev.gpuconform.run={run_id}"]
        + ["--label", f"dev.gpuconform.host={host}", image, "sleep", "600"],
        check=True,
        capture_output=True,
        timeout=120,
    )


def test_gc_sweeps_a_container_whose_run_folder_is_gone_but_not_another_hosts(image: str) -> None:
    """A straggler (a pod container the API double started after its run's own teardown) carries
    the run label of a run with no folder anywhere: gc removes it once older than the grace.
    A container labelled by another host sharing the engine is never touched."""
    from gpuconform.drivers.base import host_label

    ours, theirs = "gone" + secrets.token_hex(3), "elsewhere" + secrets.token_hex(3)
    names = {ours: f"gpuconform-{ours}-straggler", theirs: f"gpuconform-{theirs}-pod"}
    try:
        _labelled_container(names[ours], ours, host_label(), image)
        _labelled_container(names[theirs], theirs, "another-runner", image)
        young = subprocess.run(
            [sys.executable, "-m", "gpuconform.conformance.cli", "gc", "-v"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert young.returncode == 0, young.stderr
        assert podman_containers(f"dev.gpuconform.run={ours}") == [names[ours]], young.stdout
        assert f"left run {ours}: no run folder here, but its newest resource is" in young.stdout
        time.sleep(2)
        gc = subprocess.run(
            [sys.executable, "-m", "gpuconform.conformance.cli", "gc", "-v", "--grace", "1"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert gc.returncode == 0, gc.stderr
        assert f"removed {names[ours]}" in gc.stdout, gc.stdout
        assert podman_containers(f"dev.gpuconform.run={ours}") == [], gc.stdout
        assert podman_containers(f"dev.gpuconform.run={theirs}") == [names[theirs]], gc.stdout
        assert f"left run {theirs}: made by host another-runner" in gc.stdout
    finally:
        subprocess.run(
            ["podman", "rm", "-f", "-t", "0", "--ignore", *names.values()], capture_output=True, timeout=120
        )
    assert podman_containers(f"dev.gpuconform.run={theirs}") == [], "the test's own cleanup failed"


def _bindings(state_file: Path) -> list[str]:
    try:
        return [str(b["gpu"]) for b in json.loads(state_file.read_text())["bindings"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def test_sigkill_of_a_qemu_run_with_its_own_vfio_state_path_then_gc_gives_the_gpu_back(
    tmp_path: Path,
) -> None:
    """The run keeps its VFIO record at ``--driver-opt qemu.vfio_state=...`` (outside its run
    directory) and is killed holding a GPU on vfio-pci: gc learns the path from the run's record
    (run.json) and gives the GPU back to its driver."""
    run_id = "cleanupvfio" + secrets.token_hex(3)
    state_file = tmp_path / "own-state" / "bindings.json"
    argv = conformance_argv(
        tmp_path / "out", "--drivers", "qemu", "--require-driver", "qemu", "--sim", "h100x2",
        "-k", "smi.default", "--driver-opt", f"qemu.vfio_state={state_file}",
    )  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, env={**os.environ, "GPUCONFORM_RUN_ID": run_id},
    )  # fmt: skip
    try:
        end = time.monotonic() + 300
        while not _bindings(state_file):
            if proc.poll() is not None:
                pytest.fail(
                    f"the run ended before binding a GPU: {proc.stdout.read() if proc.stdout else ''}"
                )
            assert time.monotonic() < end, "no VFIO binding was recorded within 300 s"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    bound = _bindings(state_file)
    assert bound, "the binding went before the kill: the test proves nothing"
    gc = subprocess.run(
        [sys.executable, "-m", "gpuconform.conformance.cli", "gc"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert gc.returncode == 0, gc.stderr
    for bdf in bound:
        assert any("restored" in line and f"{bdf} -> nvidia" in line for line in gc.stdout.splitlines()), (
            gc.stdout
        )
    assert _bindings(state_file) == [], gc.stdout
