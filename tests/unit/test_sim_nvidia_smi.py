"""The simulated nvidia-smi ELF and its libnvidia-ml.so.1, run against temporary node/descriptor dirs.

It must behave like the real tool where the harness looks (formats, renumbering, exit codes), and
be shaped like it: a dynamically linked program that needs the glibc loader and its NVML library,
so that an image without glibc cannot run it (tests/integration/test_simgpu_podman.py runs that).
Every test runs the binary built from fixtures/sim/simgpu/smi/ into this session's own cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from gpuconform.fixtures.sim.simgpu.faults import parse_faults
from gpuconform.fixtures.sim.simgpu.layout import ENV_DESC_DIR, ENV_DEV_DIR, NVML_SONAME, format_descriptor
from gpuconform.fixtures.sim.simgpu.plan import descriptor_fields
from gpuconform.fixtures.sim.simgpu.profiles import SimGpu, get_profile
from gpuconform.fixtures.sim.simgpu.smi_build import SmiBuild, ensure_built
from gpuconform.workloads import nvidia_smi as parsers

GPUS = get_profile("h100x4").gpus
INVALID = "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help."
ALL_FIELDS = "index,uuid,name,pci.bus_id,memory.total,driver_version,minor_number,count"


@dataclass(frozen=True)
class Run:
    rc: int
    out: str
    err: str


@pytest.fixture(scope="module")
def smi(tmp_path_factory: pytest.TempPathFactory) -> SmiBuild:
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.fail("no C compiler: the simulated nvidia-smi cannot be built (apt-get install gcc libc6-dev)")
    return ensure_built(tmp_path_factory.mktemp("smi-cache"))


class Sandbox:
    """A fake sandbox: /dev and the descriptor dir, holding the GPUs "injected" into it."""

    def __init__(self, tmp: Path, smi: SmiBuild) -> None:
        self.dev, self.desc, self.smi = tmp / "dev", tmp / "gpus", smi
        self.dev.mkdir()
        self.desc.mkdir()

    def inject(self, gpus: Sequence[SimGpu], faults: Sequence[str] = ()) -> None:
        parsed = parse_faults(faults, len(GPUS))
        for gpu in gpus:
            (self.dev / f"nvidia{gpu.minor}").touch()  # NVML's discovery checks that the node exists
            (self.desc / str(gpu.minor)).write_text(format_descriptor(descriptor_fields(gpu, parsed)))

    def run(self, *args: str) -> Run:
        env = {**os.environ, ENV_DEV_DIR: str(self.dev), ENV_DESC_DIR: str(self.desc)}
        proc = subprocess.run(
            [str(self.smi.binary), *args], env=env, capture_output=True, text=True, timeout=30
        )
        return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def box(tmp_path: Path, smi: SmiBuild) -> Sandbox:
    return Sandbox(tmp_path, smi)


def _readelf(path: Path, flag: str) -> str:
    argv = ["readelf", flag, str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout


def test_binary_is_a_dynamically_linked_elf_needing_our_nvml_and_glibc(smi: SmiBuild) -> None:
    assert smi.binary.read_bytes()[:4] == b"\x7fELF"
    dynamic = _readelf(smi.binary, "-d")
    assert f"Shared library: [{NVML_SONAME}]" in dynamic
    assert "Shared library: [libc.so.6]" in dynamic
    assert f"Library runpath: [$ORIGIN/../lib/{smi.multiarch}]" in dynamic
    assert "Requesting program interpreter: /lib" in _readelf(smi.binary, "-l")
    assert smi.library.parent == smi.root / "lib" / smi.multiarch
    assert f"Library soname: [{NVML_SONAME}]" in _readelf(smi.library, "-d")


def test_without_its_library_the_binary_does_not_run(box: Sandbox, tmp_path: Path) -> None:
    lonely = tmp_path / "alone" / "bin" / "nvidia-smi"
    lonely.parent.mkdir(parents=True)
    shutil.copy2(box.smi.binary, lonely)
    proc = subprocess.run([str(lonely), "-L"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 127
    assert f"{NVML_SONAME}: cannot open shared object file" in proc.stderr


def test_rebuild_is_cached_by_content(smi: SmiBuild) -> None:
    assert ensure_built(smi.root.parent) == smi


def listed(gpu: SimGpu, index: int) -> str:
    return f"GPU {index}: {gpu.model.name} (UUID: {gpu.uuid})"


def test_list_gpus(box: Sandbox) -> None:
    box.inject(GPUS)
    result = box.run("-L")
    assert (result.rc, result.err) == (0, "")
    assert result.out.splitlines() == [listed(g, g.index) for g in GPUS]
    assert box.run("--list-gpus").out == result.out


def test_renumbering_in_pci_order(box: Sandbox) -> None:
    box.inject([GPUS[3], GPUS[2]])
    result = box.run("-L")
    assert result.rc == 0
    assert result.out.splitlines() == [listed(GPUS[2], 0), listed(GPUS[3], 1)]
    rows = box.run("--query-gpu=index,minor_number,pci.bus_id", "--format=csv,noheader").out.splitlines()
    assert rows == ["0, 2, 00000000:3A:00.0", "1, 3, 00000000:5D:00.0"]


def test_query_with_header_and_units(box: Sandbox) -> None:
    box.inject(GPUS[:2])
    result = box.run(f"--query-gpu={ALL_FIELDS}", "--format=csv")
    assert result.rc == 0
    assert result.out.splitlines() == [
        "index, uuid, name, pci.bus_id, memory.total [MiB], driver_version, minor_number, count",
        f"0, {GPUS[0].uuid}, NVIDIA H100 80GB HBM3, 00000000:18:00.0, 81559 MiB, 580.105.08, 0, 2",
        f"1, {GPUS[1].uuid}, NVIDIA H100 80GB HBM3, 00000000:2A:00.0, 81559 MiB, 580.105.08, 1, 2",
    ]


def test_query_noheader_and_nounits(box: Sandbox) -> None:
    box.inject(GPUS[:1])
    assert box.run("--query-gpu=index,memory.total", "--format=csv,noheader").out == "0, 81559 MiB\n"
    assert box.run("--query-gpu=index,memory.total", "--format=csv,noheader,nounits").out == "0, 81559\n"
    assert box.run("--query-gpu=memory.total", "--format=csv,nounits").out == "memory.total [MiB]\n81559\n"
    assert box.run("--query-gpu", "uuid", "--format", "csv,noheader").out == f"{GPUS[0].uuid}\n"


@pytest.mark.parametrize("flag", ["-i", "--id"])
def test_id_filter_by_index_uuid_and_list(box: Sandbox, flag: str) -> None:
    box.inject(GPUS)
    assert box.run(flag, "2", "-L").out == listed(GPUS[2], 2) + "\n"
    assert box.run(f"--id={GPUS[3].uuid}", "-L").out == listed(GPUS[3], 3) + "\n"
    by_uuid = box.run(flag, GPUS[1].uuid, "--query-gpu=index,uuid", "--format=csv,noheader")
    assert by_uuid.out == f"1, {GPUS[1].uuid}\n"
    assert box.run(flag, "0,3", "--query-gpu=index", "--format=csv,noheader").out == "0\n3\n"


def test_id_filter_that_matches_nothing_is_not_found(box: Sandbox) -> None:
    box.inject(GPUS[:2])
    result = box.run("-i", "7", "-L")
    assert (result.rc, result.out.strip()) == (6, "No devices were found")


def test_no_devices(box: Sandbox) -> None:
    listing = box.run("-L")
    assert (listing.rc, listing.out) == (0, "No devices found.\n")
    plain = box.run()
    assert (plain.rc, plain.out) == (6, "No devices were found\n")
    query = box.run("--query-gpu=uuid", "--format=csv")
    assert (query.rc, query.out) == (6, "No devices were found\n")


def test_a_descriptor_without_its_node_is_not_a_gpu(box: Sandbox) -> None:
    box.inject(GPUS[:2])
    (box.dev / "nvidia1").unlink()
    assert box.run("-L").out.splitlines() == [listed(GPUS[0], 0)]


def test_plain_invocation_prints_a_table(box: Sandbox) -> None:
    box.inject(GPUS[:2])
    result = box.run()
    assert result.rc == 0
    assert "Driver Version: 580.105.08" in result.out
    assert "00000000:2A:00.0" in result.out
    lines = result.out.splitlines()
    assert len({len(line) for line in lines}) == 1, "table rows are aligned"
    assert lines[-1] == lines[2] == "+" + "+".join("-" * n for n in (38, 18, 15, 12)) + "+"


def test_lost_gpu_fails_commands_touching_it_with_exit_15(box: Sandbox) -> None:
    box.inject(GPUS, faults=["fallen-off-bus:3"])
    message = (
        "Unable to determine the device handle for GPU3: 0000:5D:00.0: GPU is lost.  "
        "Reboot the system to recover this GPU"
    )
    listing = box.run("-L")
    assert listing.rc == 15
    assert listing.out.splitlines() == [listed(g, g.index) for g in GPUS[:3]]
    assert listing.err.strip() == message
    query = box.run("--query-gpu=index", "--format=csv,noheader")
    assert (query.rc, query.out, query.err.strip()) == (15, "0\n1\n2\n", message)
    plain = box.run()
    assert (plain.rc, plain.err.strip()) == (15, message)
    assert box.run("-i", "3", "-L").rc == 15
    healthy = box.run("-i", "1", "-L")
    assert (healthy.rc, healthy.out) == (0, listed(GPUS[1], 1) + "\n")


def test_cuda_unusable_gpu_is_still_listed(box: Sandbox) -> None:
    box.inject(GPUS[:2], faults=["cuda-unusable:1"])
    assert box.run("-L").out.splitlines() == [listed(GPUS[0], 0), listed(GPUS[1], 1)]


def test_uuid_mismatch_shows_the_descriptor_uuid(box: Sandbox) -> None:
    box.inject(GPUS[:3], faults=["uuid-mismatch:2"])
    uuids = box.run("--query-gpu=uuid", "--format=csv,noheader").out.splitlines()
    assert uuids[:2] == [GPUS[0].uuid, GPUS[1].uuid]
    assert uuids[2] != GPUS[2].uuid


def test_invalid_field_exits_2(box: Sandbox) -> None:
    box.inject(GPUS[:1])
    result = box.run("--query-gpu=index,temperature.bogus", "--format=csv")
    assert (result.rc, result.out, result.err.strip()) == (
        2,
        "",
        'Field "temperature.bogus" is not a valid field to query.',
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["-L", "--query-gpu=uuid", "--format=csv"],
        ["--query-gpu=uuid"],
        ["--query-gpu=uuid", "--format=json"],
        ["-i"],
    ],
)
def test_unknown_option_or_bad_combination_exits_2(box: Sandbox, args: list[str]) -> None:
    box.inject(GPUS[:1])
    result = box.run(*args)
    assert (result.rc, result.out) == (2, "")
    assert result.err.strip() == INVALID


def test_xml_output(box: Sandbox) -> None:
    box.inject([GPUS[1]])
    result = box.run("-q", "-x")
    assert result.rc == 0
    assert f"<uuid>{GPUS[1].uuid}</uuid>" in result.out
    assert "<minor_number>1</minor_number>" in result.out
    assert "<total>81559 MiB</total>" in result.out


def test_workloads_parsers_accept_the_simulated_output(box: Sandbox) -> None:
    box.inject([GPUS[3], GPUS[1]])
    listed_gpus = parsers.parse_list(box.run("-L").out)
    assert [(g.index, g.uuid, g.name) for g in listed_gpus] == [
        (0, GPUS[1].uuid, GPUS[1].model.name),
        (1, GPUS[3].uuid, GPUS[3].model.name),
    ]
    fields = ["index", "uuid", "name", "pci.bus_id", "memory.total", "driver_version"]
    for fmt in ("csv", "csv,noheader", "csv,noheader,nounits", "csv,nounits"):
        rows = parsers.parse_query(box.run(f"--query-gpu={','.join(fields)}", f"--format={fmt}").out, fields)
        assert [r["uuid"] for r in rows] == [GPUS[1].uuid, GPUS[3].uuid]
        assert [r["pci.bus_id"] for r in rows] == [GPUS[1].pci_sysfs, GPUS[3].pci_sysfs]
        assert [r["memory.total"] for r in rows] == [81559, 81559]
    xml = parsers.parse_xml(box.run("-q", "-x").out)
    assert [(g["uuid"], g["minor_number"], g["pci.bus_id"]) for g in xml] == [
        (GPUS[1].uuid, 1, GPUS[1].pci_sysfs),
        (GPUS[3].uuid, 3, GPUS[3].pci_sysfs),
    ]
    (box.dev.parent / "empty").mkdir()
    empty = Sandbox(box.dev.parent / "empty", box.smi)
    assert parsers.parse_list(empty.run("-L").out) == ()
    assert parsers.parse_query(empty.run("--query-gpu=uuid", "--format=csv").out) == []
    assert parsers.nvml_error_name(box.run("--bogus").rc) == "INVALID_ARGUMENT"


def test_an_unusable_cache_is_a_one_line_error(tmp_path: Path) -> None:
    from gpuconform.fixtures.sim.simgpu.smi_build import SmiBuildError

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SmiBuildError, match="GPUCONFORM_CACHE") as caught:
        ensure_built(blocker / "cache")
    assert "\n" not in str(caught.value)
