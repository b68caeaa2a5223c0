"""The simulated host through real Podman: CDI names resolve, inject exactly what the plan says.

Uses the real /var/run/cdi and the default sim base, with a unique instance name per module, and
always takes the instance down. Also pins the two facts cdi.py relies on: Podman 4.3 accepts
cdiVersion 0.5.0 and honours ``hostPath`` on device nodes.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gpuconform.drivers.base import Deadline
from gpuconform.fixtures.build.images import ensure_image
from gpuconform.fixtures.sim.simgpu import cdi
from gpuconform.fixtures.sim.simgpu.host import DEFAULT_CDI_DIR, SimHost
from gpuconform.fixtures.sim.simgpu.layout import NVML_SONAME

pytestmark = pytest.mark.integration
RUN_TIMEOUT = 120


def _up(*faults: str) -> SimHost:
    return SimHost.up("h100x4", faults=faults, instance=f"t{secrets.token_hex(4)}", owner_pid=os.getpid())


@pytest.fixture(scope="module")
def host(image: str) -> Iterator[SimHost]:
    sim = _up()
    try:
        yield sim
    finally:
        sim.down()


@pytest.fixture(scope="module")
def static_image(image: str) -> str:
    """The deliberately glibc-less image (busybox-static): what a real nvidia-smi cannot run in."""
    return ensure_image("podman", "busybox-static", deadline=Deadline(300))


@pytest.fixture(scope="module")
def faulty(image: str) -> Iterator[SimHost]:
    sim = _up("wrong-gpu:1", "extra-gpu:0", "fallen-off-bus:3")
    try:
        yield sim
    finally:
        sim.down()


def podman_run(image: str, devices: list[str], script: str) -> subprocess.CompletedProcess[str]:
    argv = ["podman", "run", "--rm", *(f"--device={d}" for d in devices), image, "sh", "-c", script]
    return subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT)


def listing(host: SimHost, *indices: int) -> list[str]:
    gpus = host.inventory.gpus
    return [f"GPU {n}: {gpus[i].name} (UUID: {gpus[i].uuid})" for n, i in enumerate(indices)]


def test_spec_is_cdi_0_5_0_with_host_paths(host: SimHost) -> None:
    assert host.cdi_spec_path.parent == DEFAULT_CDI_DIR
    spec = yaml.safe_load(host.cdi_spec_path.read_text())
    assert spec["cdiVersion"] == "0.5.0"
    assert spec["kind"] == host.cdi_kind != "nvidia.com/gpu"
    assert all(n["hostPath"].startswith(str(host.root)) for n in spec["containerEdits"]["deviceNodes"])


def test_index_name_injects_that_gpu_renumbered_from_zero(host: SimHost, image: str) -> None:
    proc = podman_run(image, [f"{host.cdi_kind}=1"], "nvidia-smi -L; ls /dev")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line for line in lines if line.startswith("GPU ")] == listing(host, 1)
    assert sorted(n for n in lines if n.startswith("nvidia")) == ["nvidia1", "nvidiactl"]


def test_all_name_injects_every_gpu(host: SimHost, image: str) -> None:
    proc = podman_run(image, [f"{host.cdi_kind}=all"], "nvidia-smi -L")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == listing(host, 0, 1, 2, 3)


def test_uuid_name_injects_that_gpu(host: SimHost, image: str) -> None:
    gpu = host.inventory.gpus[3]
    proc = podman_run(
        image,
        [f"{host.cdi_kind}={gpu.uuid}"],
        "nvidia-smi --query-gpu=index,uuid,pci.bus_id --format=csv,noheader",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"0, {gpu.uuid}, 00000000:5D:00.0\n"


def test_two_names_inject_two_gpus_in_pci_order(host: SimHost, image: str) -> None:
    proc = podman_run(image, [f"{host.cdi_kind}=2", f"{host.cdi_kind}=0"], "nvidia-smi -L")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == listing(host, 0, 2)


def test_unknown_name_is_unresolvable(host: SimHost, image: str) -> None:
    proc = podman_run(image, [f"{host.cdi_kind}=9"], "true")
    assert proc.returncode != 0
    assert f"unresolvable CDI devices {host.cdi_kind}=9" in proc.stderr


def test_without_a_device_nothing_is_injected(host: SimHost, image: str) -> None:
    proc = podman_run(image, [], "command -v nvidia-smi; echo found=$?; ls /dev; ls /run/gpuconform-sim")
    assert "found=1" in proc.stdout
    assert not [n for n in proc.stdout.split() if n.startswith("nvidia")]


def test_injected_files_are_read_only(host: SimHost, image: str) -> None:
    script = (
        "echo x > /run/gpuconform-sim/gpus/0 && echo writable; echo x > /usr/bin/nvidia-smi && echo writable"
    )
    proc = podman_run(image, [f"{host.cdi_kind}=0"], script)
    assert "writable" not in proc.stdout
    assert "Read-only file system" in proc.stderr


def test_parsers_accept_the_output_seen_in_a_container(host: SimHost, image: str) -> None:
    smi = pytest.importorskip("gpuconform.workloads.nvidia_smi")
    proc = podman_run(
        image,
        [f"{host.cdi_kind}=all"],
        "nvidia-smi --query-gpu=index,uuid,name,pci.bus_id,memory.total,driver_version --format=csv",
    )
    assert proc.returncode == 0, proc.stderr
    rows = smi.parse_query(proc.stdout)
    assert [r["uuid"] for r in rows] == [g.uuid for g in host.inventory.gpus]
    assert [r["pci.bus_id"] for r in rows] == [g.pci_bus_id for g in host.inventory.gpus]


def test_wrong_gpu_fault_injects_the_next_gpu(faulty: SimHost, image: str) -> None:
    proc = podman_run(image, [f"{faulty.cdi_kind}=1"], "nvidia-smi -L")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == listing(faulty, 2)
    by_uuid = podman_run(image, [f"{faulty.cdi_kind}={faulty.inventory.gpus[1].uuid}"], "nvidia-smi -L")
    assert by_uuid.stdout.splitlines() == listing(faulty, 2)


def test_extra_gpu_fault_injects_two(faulty: SimHost, image: str) -> None:
    proc = podman_run(image, [f"{faulty.cdi_kind}=0"], "nvidia-smi -L")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == listing(faulty, 0, 1)


def test_fallen_off_bus_fault_fails_nvidia_smi_with_15(faulty: SimHost, image: str) -> None:
    proc = podman_run(image, [f"{faulty.cdi_kind}=3"], "nvidia-smi -L; echo rc=$?")
    assert proc.stdout.strip() == "rc=15"
    assert "GPU is lost" in proc.stderr
    assert faulty.inventory.source == "sim:h100x4+extra-gpu:0+fallen-off-bus:3+wrong-gpu:1"


def test_down_removes_the_spec_so_the_name_stops_resolving(image: str) -> None:
    sim = _up()
    try:
        assert podman_run(image, [f"{sim.cdi_kind}=0"], "nvidia-smi -L").returncode == 0
    finally:
        sim.down()
    assert not sim.cdi_spec_path.exists()
    assert not sim.root.exists()
    assert sim.cdi_spec_path not in cdi.our_spec_files(DEFAULT_CDI_DIR)
    proc = podman_run(image, [f"{sim.cdi_kind}=0"], "true")
    assert "unresolvable CDI devices" in proc.stderr


def test_host_path_is_honoured_without_major_minor(image: str, tmp_path: Path) -> None:
    """Pins the engine fact cdi.py relies on: a node given only by hostPath gets that node's numbers."""
    node = tmp_path / "zero"
    os.mknod(node, 0o020666, os.makedev(1, 5))
    instance = f"t{secrets.token_hex(4)}"
    spec = {
        "cdiVersion": cdi.CDI_VERSION,
        "kind": f"sim.gpuconform.dev/{instance}",
        "devices": [
            {
                "name": "0",
                "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0", "hostPath": str(node)}]},
            }
        ],
    }
    path = cdi.spec_path(DEFAULT_CDI_DIR, instance)
    cdi.write_spec(spec, path)
    try:
        proc = podman_run(image, [f"sim.gpuconform.dev/{instance}=0"], "ls -l /dev/nvidia0")
    finally:
        cdi.remove_spec(path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[4:6] == ["1,", "5"]


def test_nvidia_smi_and_its_library_are_injected_without_a_loader(host: SimHost, static_image: str) -> None:
    """As a real spec: the ELF and libnvidia-ml, never the loader or libc, so no glibc, no run."""
    spec = yaml.safe_load(host.cdi_spec_path.read_text())
    mounted = {m["containerPath"] for m in spec["containerEdits"]["mounts"]}
    library = f"/usr/lib/{host.state['multiarch']}/{NVML_SONAME}"
    assert mounted == {"/usr/bin/nvidia-smi", library}
    script = f"ls /usr/bin/nvidia-smi {library}; ls /lib64 /lib 2>&1; nvidia-smi -L; echo rc=$?"
    proc = podman_run(static_image, [f"{host.cdi_kind}=0"], script)
    assert f"/usr/bin/nvidia-smi\n{library}\n" in proc.stdout
    assert "No such file or directory" in proc.stdout, "the image has no /lib64 loader"
    assert "rc=127" in proc.stdout and "GPU 0:" not in proc.stdout
    direct = subprocess.run(
        ["podman", "run", "--rm", f"--device={host.cdi_kind}=0", static_image, "nvidia-smi", "-L"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert direct.returncode != 0
    assert "exec /usr/bin/nvidia-smi: no such file or directory" in direct.stderr


def test_glibc_less_image_fails_smi_default_saying_nvidia_smi_cannot_execute(  # type: ignore[no-untyped-def]
    conformance, static_image: str
) -> None:
    run = conformance(
        "--drivers", "podman", "--require-driver", "podman", "--sim", "h100x4",
        "--image", f"busybox={static_image}", "-k", "smi.default",
    )  # fmt: skip
    assert run.exit_code == 1, run.output[-3000:]
    record = run.record("podman", "smi.default")
    assert record["verdict"] == "fail", record
    assert "nvidia-smi is present but cannot execute in this image (no glibc loader?)" in record["reason"]
    assert "not present" not in record["reason"]
    assert [c["argv"] for c in record["commands"]][-1] == ["sh", "-c", "command -v nvidia-smi"]
    assert not run.containers(), "containers left behind"


def test_default_image_passes_smi_default(conformance) -> None:  # type: ignore[no-untyped-def]
    run = conformance(
        "--drivers", "podman", "--require-driver", "podman", "--sim", "h100x4", "-k", "smi.default"
    )
    assert run.exit_code == 0, run.output[-3000:]
    assert run.record("podman", "smi.default")["verdict"] == "pass"
