"""Failure classes 2, 3, 7 and 9 of issue 11 (H9): the pieces that reproduce them, without engines.

- double-injection (class 3): a host-wide fault; the private CDI dockerd's default runtime (the
  simulated nvidia-container-runtime) then adds the legacy hook to every container; the hook keeps
  what a CDI bind mount already put there.
- <column>.privileged (class 2): the adapters pass the engine's privileged flag; the runtime and
  the hooks.d entry give a privileged container every simulated GPU of its host.
- plugin-double-alloc / plugin-unhealthy:N (classes 7, 9): the Kubernetes API double's device plugin.

Through the real engines: tests/integration/test_failure_classes_more.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gpuconform.drivers.base import AdapterContext, Deadline, ExecResult
from gpuconform.drivers.docker import DockerLegacyAdapter
from gpuconform.drivers.leases import GpuLeases
from gpuconform.drivers.podman import PodmanAdapter
from gpuconform.drivers.request import GpuRequest
from gpuconform.fixtures.sim.kubedouble.model import Cluster
from gpuconform.fixtures.sim.kubedouble.runner import ContainerSpec
from gpuconform.fixtures.sim.simgpu import legacy_hook
from gpuconform.fixtures.sim.simgpu.dockerd import PrivateDockerd
from gpuconform.fixtures.sim.simgpu.faults import FaultError, lost_gpus, parse_fault, parse_faults
from tests.unit.test_docker_payload import INV, FakeEngine, adapter_for, provision
from tests.unit.test_legacy_hook import UUIDS, write_plan

HOOK = Path(legacy_hook.__file__)
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="the hook creates device nodes (mknod needs root)")


# -- faults ---------------------------------------------------------------------------------------
def test_host_wide_faults_take_no_index_and_round_trip() -> None:
    faults = parse_faults(["double-injection", "plugin-double-alloc", "plugin-unhealthy:2"], gpu_count=4)
    assert [str(f) for f in faults] == ["double-injection", "plugin-double-alloc", "plugin-unhealthy:2"]
    assert lost_gpus(faults) == {2}
    with pytest.raises(FaultError, match="host-wide and takes no GPU index"):
        parse_fault("double-injection:1")
    with pytest.raises(FaultError, match="has no GPU index"):
        parse_fault("plugin-unhealthy")


# -- the simulated runtime and hooks -------------------------------------------------------------
PRIVILEGED = {
    "process": {"capabilities": {"bounding": ["CAP_CHOWN", "CAP_SYS_ADMIN"]}, "env": []},
    "linux": {},
}
CONFINED = {
    "process": {"capabilities": {"bounding": ["CAP_CHOWN"]}, "env": []},
    "linux": {"maskedPaths": ["/proc/kcore"]},
}


def test_runtime_adds_the_legacy_hook_only_with_the_fault_and_the_privileged_hook_only_when_privileged() -> (
    None
):
    confined: dict[str, Any] = json.loads(json.dumps(CONFINED))
    assert legacy_hook.add_runtime_hooks(confined, "/h", legacy=False) == []
    assert "hooks" not in confined or not confined["hooks"]["prestart"]
    assert legacy_hook.add_runtime_hooks(confined, "/h", legacy=True) == ["prestart"]
    assert legacy_hook.add_runtime_hooks(confined, "/h", legacy=True) == []  # never twice
    privileged: dict[str, Any] = json.loads(json.dumps(PRIVILEGED))
    assert legacy_hook.add_runtime_hooks(privileged, "/h", legacy=False) == ["privileged"]
    assert privileged["hooks"]["prestart"] == [
        {"path": "/h", "args": ["nvidia-container-runtime-hook", "privileged"]}
    ]


def test_privileged_is_every_capability_and_no_masked_path() -> None:
    assert legacy_hook.is_privileged(PRIVILEGED)
    assert not legacy_hook.is_privileged(CONFINED)
    assert not legacy_hook.is_privileged({**PRIVILEGED, "linux": {"maskedPaths": ["/proc/kcore"]}})


def test_runtime_edits_the_bundle_at_create_and_execs_runc_with_its_arguments(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(CONFINED))
    fake_runc = tmp_path / "runc"
    fake_runc.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path / "argv"}\n')
    fake_runc.chmod(0o755)
    runc_args = ["--root", "/r", "create", "--bundle", str(bundle), "--pid-file", "/p", "cid"]
    argv = [sys.executable, str(HOOK), "runtime", "--legacy", "--hook", "/h", "--runc", str(fake_runc)]
    proc = subprocess.run([*argv, "--", *runc_args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "argv").read_text().splitlines() == runc_args
    hooks = json.loads((bundle / "config.json").read_text())["hooks"]["prestart"]
    assert hooks == [{"path": "/h", "args": ["nvidia-container-runtime-hook", "prestart"]}]


def test_bundle_is_found_in_every_spelling() -> None:
    assert legacy_hook._bundle_arg(["create", "-b", "/b", "x"]) == Path("/b")
    assert legacy_hook._bundle_arg(["--log", "l", "create", "--bundle=/b", "x"]) == Path("/b")
    assert legacy_hook._bundle_arg(["start", "x"]) is None


def _bundle(tmp_path: Path, config: dict[str, Any]) -> tuple[Path, Path]:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(config))
    target = tmp_path / "rootfs"
    (target / "dev").mkdir(parents=True)
    return bundle, target


def _hook(verb: str, bundle: Path, target: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    state = {"id": "c" * 64, "pid": 1, "bundle": str(bundle)}
    argv = [sys.executable, str(HOOK), verb, "--target-root", str(target), *extra]
    return subprocess.run(argv, input=json.dumps(state), capture_output=True, text=True, timeout=30)


@ROOT_ONLY
def test_privileged_hook_finds_its_simulated_host_through_the_descriptor_mount(tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "host")
    mount = {"destination": "/run/gpuconform-sim/gpus/0", "source": str(plan.parent / "gpus" / "0")}
    bundle, target = _bundle(tmp_path, {**PRIVILEGED, "mounts": [mount]})
    proc = _hook("privileged", bundle, target)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (target / "dev").iterdir()) == [
        *(f"nvidia{i}" for i in range(4)),
        "nvidiactl",
    ]
    descriptors = target / "run" / "gpuconform-sim" / "gpus"
    assert sorted(p.name for p in descriptors.iterdir()) == ["0", "1", "2", "3"]


@ROOT_ONLY
def test_privileged_hook_leaves_a_confined_container_and_one_without_a_simulated_gpu_alone(
    tmp_path: Path,
) -> None:
    plan = write_plan(tmp_path / "host")
    mount = {"destination": "/run/gpuconform-sim/gpus/0", "source": str(plan.parent / "gpus" / "0")}
    bundle, target = _bundle(tmp_path, {**CONFINED, "mounts": [mount]})
    assert _hook("privileged", bundle, target).returncode == 0
    (bundle / "config.json").write_text(json.dumps(PRIVILEGED))  # no simulated GPU mounted
    assert _hook("privileged", bundle, target).returncode == 0
    assert list((target / "dev").iterdir()) == []


@ROOT_ONLY
def test_hook_keeps_what_a_cdi_bind_mount_already_put_there(tmp_path: Path) -> None:
    """A second injection over the CDI grant: the identical file stays (it is a read-only bind
    mount in a real container), the other GPUs are added."""
    plan = write_plan(tmp_path / "host")
    env = {"process": {"env": ["NVIDIA_VISIBLE_DEVICES=all"]}, "root": {"path": "rootfs"}}
    bundle, target = _bundle(tmp_path, env)
    first = target / "run" / "gpuconform-sim" / "gpus" / "0"
    first.parent.mkdir(parents=True)
    first.write_text((plan.parent / "gpus" / "0").read_text())
    first.chmod(0o444)
    proc = _hook("prestart", bundle, target, "--plan", str(plan))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in first.parent.iterdir()) == ["0", "1", "2", "3"]
    assert UUIDS[3] in (first.parent / "3").read_text()


# -- the private dockerds' configuration ----------------------------------------------------------
def _prepared(tmp_path: Path, flavour: str, faults: list[str]) -> PrivateDockerd:
    sim = tmp_path / "sim"
    sim.mkdir()
    (sim / "plan.json").write_text(json.dumps({"faults": faults}))
    daemon = PrivateDockerd(sim, tmp_path / "data", flavour=flavour)
    daemon._prepare([tmp_path / "cdi"])
    return daemon


@pytest.mark.parametrize(
    ("flavour", "faults", "legacy"),
    [
        ("cdi", [], False),
        ("cdi", ["double-injection"], True),
        ("legacy", ["double-injection"], False),  # the legacy daemon runs the hook for --gpus anyway
    ],
)
def test_private_dockerd_defaults_to_the_simulated_runtime(
    tmp_path: Path, flavour: str, faults: list[str], legacy: bool
) -> None:
    daemon = _prepared(tmp_path, flavour, faults)
    config = json.loads((daemon.dir / "daemon.json").read_text())
    assert config["default-runtime"] == "gpuconform-sim"
    assert config["runtimes"] == {"gpuconform-sim": {"path": str(daemon.runtime_path)}}
    script = daemon.runtime_path.read_text()
    assert ("--legacy" in script) is legacy
    assert os.access(daemon.runtime_path, os.X_OK)


# -- the adapters' privileged option ---------------------------------------------------------------
def test_podman_privileged_option_passes_the_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def cli(args: list[str], *, timeout: float, input_data: bytes | None = None) -> ExecResult:
        calls.append(list(args))
        return ExecResult(tuple(args), 0, "", "", 0.0)

    for options, flagged in (({"podman.privileged": "1"}, True), ({}, False)):
        calls.clear()
        ctx = AdapterContext(
            inventory=INV, leases=GpuLeases(tmp_path / "l"), run_id="r1", worker="gw0", options=options
        )
        adapter = PodmanAdapter(ctx)
        monkeypatch.setattr(adapter, "cli", cli)
        box = adapter.provision(GpuRequest.none(), image="img", labels=ctx.labels, deadline=Deadline(10))
        box.close()
        assert ("--privileged" in calls[0]) is flagged
    assert PodmanAdapter.OPTIONS["podman.privileged"].problem("1") is None
    assert PodmanAdapter.OPTIONS["podman.privileged"].problem("yes")


def test_docker_privileged_option_sets_host_config(tmp_path: Path) -> None:
    engine = FakeEngine("20.10.24", {"Runtimes": {"runc": {}}, "CDISpecDirs": []})
    try:
        options = {"docker-legacy.privileged": "1", "docker-legacy.legacy_hook": "/bin/true"}
        adapter = adapter_for(engine, tmp_path, DockerLegacyAdapter, **options)
        with provision(adapter, GpuRequest.none()):
            pass
        (body,) = engine.bodies("POST /containers/create")
        assert body["HostConfig"]["Privileged"] is True
    finally:
        engine.close()


# -- the Kubernetes double's device plugin -------------------------------------------------------
class _Runner:
    double_id = "unit"

    async def run(self, spec: ContainerSpec) -> str:
        return "id-" + spec.name

    async def remove(self, name: str) -> None:
        return None


def _gpu_pod(name: str) -> dict[str, Any]:
    ctr = {"name": "c", "image": "img", "resources": {"limits": {"nvidia.com/gpu": "1"}}}
    return {"metadata": {"name": name}, "spec": {"containers": [ctr]}}


def _allocate(faults: list[str], pods: int = 2) -> dict[str, tuple[str, ...]]:
    async def go() -> dict[str, tuple[str, ...]]:
        cluster = Cluster(INV, _Runner(), "node", faults)  # type: ignore[arg-type]
        for i in range(pods):
            cluster.create_pod("default", _gpu_pod(f"p{i}"))
        cluster.schedule()
        await asyncio.sleep(0)
        return cluster.allocations()

    return asyncio.run(go())


def test_device_plugin_hands_distinct_gpus_by_default() -> None:
    assert _allocate([]) == {"default/p0": (INV.gpus[0].uuid,), "default/p1": (INV.gpus[1].uuid,)}


def test_plugin_double_alloc_gives_two_pods_the_same_gpu() -> None:
    assert _allocate(["plugin-double-alloc"]) == {
        "default/p0": (INV.gpus[0].uuid,),
        "default/p1": (INV.gpus[0].uuid,),
    }


def test_plugin_unhealthy_offers_the_lost_gpu_first() -> None:
    assert _allocate(["plugin-unhealthy:2"], pods=1) == {"default/p0": (INV.gpus[2].uuid,)}
