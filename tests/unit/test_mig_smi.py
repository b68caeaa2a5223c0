"""MIG in nvidia-smi output: real captured listings parsed, and the simulated tool printing the same.

The captured ``nvidia-smi -L`` outputs below are quoted from public threads (URL above each), only
the lines the parser reads. The simulated nvidia-smi runs against a fake sandbox (touched node
files and descriptors, as tests/unit/test_sim_nvidia_smi.py does) holding some of profile
``mig``'s devices, and must list exactly the MIG devices whose capability nodes are there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from gpuconform.fixtures.sim.simgpu import mig as simmig
from gpuconform.fixtures.sim.simgpu.layout import ENV_DESC_DIR, ENV_DEV_DIR, format_descriptor
from gpuconform.fixtures.sim.simgpu.plan import descriptor_fields
from gpuconform.fixtures.sim.simgpu.profiles import SimGpu, SimMig, get_profile
from gpuconform.fixtures.sim.simgpu.smi_build import SmiBuild, ensure_built
from gpuconform.workloads.nvidia_smi import ListedMig, parse_list, parse_query, parse_xml

# https://github.com/DataDog/datadog-agent/pull/33120 (driver 535.216.01, an A100 with 7 x 1g.10gb)
DATADOG_33120 = """\
GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-7fdaf0a5-179b-f636-d15d-daf243e3ff16)
  MIG 1g.10gb     Device  0: (UUID: MIG-feb88891-0321-5fef-9c87-d4af3b54259e)
  MIG 1g.10gb     Device  1: (UUID: MIG-a25704ba-3a06-5299-a795-fd7cf4d13973)
  MIG 1g.10gb     Device  2: (UUID: MIG-50f1c4c9-1508-5e8d-bb06-d08145b22e01)
  MIG 1g.10gb     Device  3: (UUID: MIG-36c795f2-5cf7-55d6-af30-e535e79b7bb6)
  MIG 1g.10gb     Device  4: (UUID: MIG-3f45d38c-8cee-503e-b806-a1f1bdceedeb)
  MIG 1g.10gb     Device  5: (UUID: MIG-96655de9-9525-58f9-a62b-0e4c1cc1c265)
  MIG 1g.10gb     Device  6: (UUID: MIG-1aae4990-b962-574e-8375-119d6d9b9687)
"""
# https://github.com/influxdata/telegraf/issues/5812 (one of four A100s in MIG mode, 4 x 1g.20gb)
TELEGRAF_5812 = """\
GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-513536b6-7d19-9063-b049-1e69664bb298)
  MIG 1g.20gb     Device  0: (UUID: MIG-ce861fb0-a248-58ce-a9a8-f9adbc22a66a)
  MIG 1g.20gb     Device  1: (UUID: MIG-a45882f0-9215-5733-a0c1-49286ab31cb5)
  MIG 1g.20gb     Device  2: (UUID: MIG-f00d722c-f4e1-52c9-aa31-750441ae1bfe)
  MIG 1g.20gb     Device  3: (UUID: MIG-930574a9-d43a-5d2b-95da-3e68384c8d6b)
GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-d8594bd4-0fc3-8595-e355-7c98138f3b95)
GPU 2: NVIDIA A100-SXM4-80GB (UUID: GPU-5e375e7e-b41f-155b-dcdc-534524c356fc)
GPU 3: NVIDIA A100-SXM4-80GB (UUID: GPU-69ec2344-ebac-b028-f88f-452abb3d7f11)
"""
# https://github.com/NVIDIA/nvidia-container-toolkit/issues/203 (driver 530, A100 PCIe, 2 x 3g.40gb)
TOOLKIT_203 = """\
GPU 0: NVIDIA A100 80GB PCIe (UUID: GPU-932bfb2c-849a-2a22-1e84-9eff6bc02b39)
  MIG 3g.40gb     Device  0: (UUID: MIG-0929581a-2be6-5dec-bf34-0954c6c529a6)
  MIG 3g.40gb     Device  1: (UUID: MIG-3adbed3a-d03d-549f-a016-ba1fd7359f23)
"""
# https://github.com/kubernetes-sigs/dra-driver-nvidia-gpu/issues/787: a MIG device's spec without
# its capability nodes; inside, "only the (unusable) parent GPU", no MIG line.
DRA_787 = "GPU 0: NVIDIA GB200 (UUID: GPU-7277883e-ce1e-3b6e-6cc1-6d52e80cdb86)\n"

MIG = get_profile("mig")


def test_real_listing_with_seven_mig_devices_of_one_gpu() -> None:
    (gpu,) = parse_list(DATADOG_33120)
    assert gpu.uuid == "GPU-7fdaf0a5-179b-f636-d15d-daf243e3ff16"
    assert [(m.name, m.device) for m in gpu.mig] == [("1g.10gb", d) for d in range(7)]
    assert gpu.mig[6].uuid == "MIG-1aae4990-b962-574e-8375-119d6d9b9687"


def test_real_listing_mixing_a_mig_enabled_gpu_and_whole_gpus() -> None:
    gpus = parse_list(TELEGRAF_5812)
    assert [len(g.mig) for g in gpus] == [4, 0, 0, 0]
    assert gpus[0].mig[3] == ListedMig("1g.20gb", 3, "MIG-930574a9-d43a-5d2b-95da-3e68384c8d6b")


def test_real_listing_of_two_equal_mig_devices_and_of_a_bare_parent() -> None:
    (gpu,) = parse_list(TOOLKIT_203)
    assert [m.uuid for m in gpu.mig] == [
        "MIG-0929581a-2be6-5dec-bf34-0954c6c529a6",
        "MIG-3adbed3a-d03d-549f-a016-ba1fd7359f23",
    ]
    (bare,) = parse_list(DRA_787)
    assert bare.mig == ()


# ---- the simulated nvidia-smi -------------------------------------------------------------------


@pytest.fixture(scope="module")
def smi(tmp_path_factory: pytest.TempPathFactory) -> SmiBuild:
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.fail("no C compiler: the simulated nvidia-smi cannot be built (apt-get install gcc libc6-dev)")
    return ensure_built(tmp_path_factory.mktemp("smi-cache"))


class Box:
    """A fake sandbox: /dev (with nvidia-caps) and the descriptor dir, holding what was injected."""

    def __init__(self, tmp: Path, smi: SmiBuild) -> None:
        self.dev, self.desc, self.smi = tmp / "dev", tmp / "gpus", smi
        (self.dev / "nvidia-caps").mkdir(parents=True)
        self.desc.mkdir()

    def gpu(self, gpu: SimGpu) -> None:
        (self.dev / f"nvidia{gpu.minor}").touch()
        (self.desc / str(gpu.minor)).write_text(format_descriptor(descriptor_fields(gpu, ())))

    def mig(self, mig: SimMig, *, caps: Sequence[int] | None = None, descriptor: bool = True) -> None:
        for minor in (mig.gi_cap, mig.ci_cap) if caps is None else caps:
            (self.dev / "nvidia-caps" / simmig.cap_name(minor)).touch()
        if descriptor:
            (self.desc / simmig.descriptor_name(mig)).write_text(
                format_descriptor(simmig.descriptor_fields(mig))
            )

    def run(self, *args: str) -> tuple[int, str]:
        env = {**os.environ, ENV_DEV_DIR: str(self.dev), ENV_DESC_DIR: str(self.desc)}
        proc = subprocess.run(
            [str(self.smi.binary), *args], env=env, capture_output=True, text=True, timeout=30
        )
        return proc.returncode, proc.stdout


@pytest.fixture
def box(tmp_path: Path, smi: SmiBuild) -> Box:
    return Box(tmp_path, smi)


def _migs_of(parent: int) -> list[SimMig]:
    return [m for m in MIG.migs if m.parent.index == parent]


def test_whole_host_lists_every_mig_device_under_its_parent_in_the_real_format(box: Box) -> None:
    for gpu in MIG.gpus:
        box.gpu(gpu)
    for mig in MIG.migs:
        box.mig(mig)
    rc, out = box.run("-L")
    assert rc == 0
    assert "  MIG 3g.40gb     Device  0: (UUID: MIG-" in out  # the column layout of the captures above
    for line in out.splitlines():
        if "MIG " in line:  # the same layout as a real line, character for character
            assert re.fullmatch(r"  MIG \S+ +Device +\d: \(UUID: MIG-[0-9a-f-]{36}\)", line)
            assert line.index("Device") == DATADOG_33120.splitlines()[1].index("Device")
    gpus = parse_list(out)
    assert [[m.uuid for m in g.mig] for g in gpus] == [[m.uuid for m in _migs_of(i)] for i in range(4)]


def test_one_mig_device_injected_is_the_only_one_listed_renumbered_from_zero(box: Box) -> None:
    target = _migs_of(1)[2]  # 1g.10gb, device 2 on the host
    box.gpu(target.parent)
    box.mig(target)
    (gpu,) = parse_list(box.run("-L")[1])
    assert (gpu.uuid, gpu.mig) == (target.parent.uuid, (ListedMig("1g.10gb", 0, target.uuid),))


@pytest.mark.parametrize(
    ("what", "caps", "descriptor"),
    [("no caps", (), True), ("only the GPU instance cap", None, True), ("no descriptor", None, False)],
)
def test_a_mig_device_missing_a_cap_node_or_descriptor_is_not_listed(
    box: Box, what: str, caps: tuple[int, ...] | None, descriptor: bool
) -> None:
    target = _migs_of(2)[0]
    box.gpu(target.parent)
    box.mig(
        target, caps=(target.gi_cap,) if what == "only the GPU instance cap" else caps, descriptor=descriptor
    )
    (gpu,) = parse_list(box.run("-L")[1])
    assert gpu.uuid == target.parent.uuid and gpu.mig == (), what


def test_mig_devices_of_an_absent_parent_are_not_listed(box: Box) -> None:
    box.gpu(MIG.gpus[0])
    box.mig(_migs_of(1)[0])
    (gpu,) = parse_list(box.run("-L")[1])
    assert gpu.uuid == MIG.gpus[0].uuid and gpu.mig == ()


def test_query_reports_mig_mode_and_xml_lists_the_visible_mig_devices(box: Box) -> None:
    for gpu in MIG.gpus[:3]:
        box.gpu(gpu)
    for mig in _migs_of(2):
        box.mig(mig)
    rc, out = box.run("--query-gpu=index,uuid,mig.mode.current", "--format=csv,noheader")
    assert rc == 0
    rows = parse_query(out, ["index", "uuid", "mig.mode.current"])
    assert [r["mig.mode.current"] for r in rows] == ["Disabled", "Enabled", "Enabled"]
    xml = parse_xml(box.run("-q", "-x")[1])
    assert [g["mig_mode"] for g in xml] == ["Disabled", "Enabled", "Enabled"]
    assert xml[1]["mig_devices"] == []  # MIG-enabled, none of its devices injected
    assert xml[2]["mig_devices"] == [
        {"index": i, "gpu_instance_id": m.gi, "compute_instance_id": 0, "memory.total": m.memory_mib}
        for i, m in enumerate(_migs_of(2))
    ]
