"""Profiles and fault names of the simulated GPU host: fixed ids, and one-line refusals."""

from __future__ import annotations

import re

import pytest

from gpuconform.drivers.inventory import SCHEME_CDI, SCHEME_PCI
from gpuconform.fixtures.sim.simgpu.faults import Fault, FaultError, parse_fault, parse_faults, source_string
from gpuconform.fixtures.sim.simgpu.profiles import (
    PROFILES,
    ProfileError,
    foreign_uuid,
    get_profile,
    sim_uuid,
)

UUID_RE = re.compile(r"^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def test_required_profiles_exist_with_their_models() -> None:
    assert {"h100x4", "a100x8", "single", "h100x2"} <= set(PROFILES)
    h100 = get_profile("h100x4")
    assert h100.count == 4
    assert {(g.model.name, g.model.memory_mib, g.model.driver) for g in h100.gpus} == {
        ("NVIDIA H100 80GB HBM3", 81559, "580.105.08")
    }
    a100 = get_profile("a100x8")
    assert a100.count == 8
    assert {(g.model.name, g.model.memory_mib) for g in a100.gpus} == {("NVIDIA A100-SXM4-80GB", 81920)}
    assert get_profile("single").count == 1
    assert get_profile("h100x2").count == 2


def test_uuids_are_fixed_and_well_formed() -> None:
    uuids = [g.uuid for g in get_profile("h100x4").gpus]
    # Pinned: evidence from different runs and machines must name the same GPUs.
    assert uuids[0] == sim_uuid("h100x4", 0) == "GPU-3da96f55-cc53-5101-bd02-6246468af388"
    assert uuids == [g.uuid for g in get_profile("h100x4").gpus]
    assert all(UUID_RE.match(u) for u in uuids)
    assert len(set(uuids)) == 4
    all_uuids = [g.uuid for p in PROFILES.values() for g in p.gpus]
    assert len(set(all_uuids)) == len(all_uuids), "profiles must not share UUIDs"


def test_pci_bus_ids_are_distinct_sorted_and_in_both_forms() -> None:
    for profile in PROFILES.values():
        gpus = profile.gpus
        smi = [g.pci_smi for g in gpus]
        assert smi == sorted(smi), "nvidia-smi lists GPUs in bus order; index order must match it"
        assert len(set(smi)) == len(smi)
        for g in gpus:
            assert re.fullmatch(r"00000000:[0-9A-F]{2}:00\.0", g.pci_smi)
            assert re.fullmatch(r"0000:[0-9a-f]{2}:00\.0", g.pci_sysfs)
    assert get_profile("h100x4").gpus[0].pci_sysfs == "0000:18:00.0"
    assert get_profile("h100x4").gpus[0].pci_smi == "00000000:18:00.0"


def test_records_carry_native_ids_of_the_sim_kind() -> None:
    records = get_profile("h100x2").records("sim.gpuconform.dev/gpu")
    kind = "sim.gpuconform.dev/gpu"
    assert records[1].ids(SCHEME_CDI) == (f"{kind}=1", f"{kind}={records[1].uuid}")
    assert records[1].ids(SCHEME_PCI)[0] == records[1].pci_bus_id
    assert [r.minor for r in records] == [0, 1]


def test_unknown_profile_names_the_valid_ones() -> None:
    with pytest.raises(ProfileError) as info:
        get_profile("h200x3")
    message = str(info.value)
    assert "h200x3" in message
    assert "h100x4" in message
    assert "a100x8" in message
    assert "\n" not in message


def test_foreign_uuid_is_not_in_any_profile() -> None:
    gpu = get_profile("h100x4").gpus[2]
    assert UUID_RE.match(foreign_uuid(gpu.uuid))
    assert foreign_uuid(gpu.uuid) not in {g.uuid for p in PROFILES.values() for g in p.gpus}


@pytest.mark.parametrize(
    "text", ["wrong-gpu:1", "extra-gpu:0", "uuid-mismatch:2", "cuda-unusable:3", "fallen-off-bus:3"]
)
def test_each_fault_kind_parses(text: str) -> None:
    fault = parse_fault(text, gpu_count=4)
    assert str(fault) == text


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("melted:1", "wrong-gpu, extra-gpu, uuid-mismatch, cuda-unusable, fallen-off-bus"),
        ("wrong-gpu", "wrong-gpu:N"),
        ("wrong-gpu:x", "wrong-gpu:N"),
        ("wrong-gpu:4", "0..3"),
    ],
)
def test_bad_faults_are_one_line_errors_naming_what_is_valid(text: str, needle: str) -> None:
    with pytest.raises(FaultError) as info:
        parse_fault(text, gpu_count=4)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_selection_faults_need_a_second_gpu() -> None:
    with pytest.raises(FaultError, match="second GPU"):
        parse_faults(["wrong-gpu:0"], gpu_count=1)
    assert parse_faults(["cuda-unusable:0"], gpu_count=1) == (Fault("cuda-unusable", 0),)


def test_duplicate_and_conflicting_faults_are_refused() -> None:
    with pytest.raises(FaultError, match="twice"):
        parse_faults(["wrong-gpu:1", "wrong-gpu:1"], gpu_count=4)
    with pytest.raises(FaultError, match="both change"):
        parse_faults(["wrong-gpu:1", "extra-gpu:1"], gpu_count=4)
    assert len(parse_faults(["wrong-gpu:1", "extra-gpu:0", "fallen-off-bus:1"], gpu_count=4)) == 3


def test_source_string_records_the_faults() -> None:
    faults = parse_faults(["wrong-gpu:1"], gpu_count=4)
    assert source_string("h100x4", faults) == "sim:h100x4+wrong-gpu:1"
    assert source_string("h100x4", ()) == "sim:h100x4"


def test_profile_options_choose_the_cdi_naming_and_keep_the_uuids() -> None:
    from gpuconform.fixtures.sim.simgpu.profiles import ProfileError, get_profile

    plain, named = get_profile("h100x4"), get_profile("h100x4:cdi=uuid:no-all")
    assert (named.cdi_naming, named.cdi_all) == ("uuid", False)
    assert [g.uuid for g in named.gpus] == [g.uuid for g in plain.gpus]
    assert all(g.cdi_naming == "uuid" for g in named.gpus)
    for bad in ("h100x4:cdi=serial", "h100x4:all", "h100x9:cdi=uuid"):
        with pytest.raises(ProfileError, match="hint"):
            get_profile(bad)
