"""The inventory: PCI bus id normalisation, UUID uniqueness, native id resolution, JSON, query rows."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gpuconform.drivers.inventory import (
    REAL_CDI_KIND,
    SCHEME_CDI,
    SCHEME_HOST,
    SCHEME_LEGACY,
    SCHEME_PCI,
    GpuRecord,
    Inventory,
    InventoryError,
    default_native_ids,
    normalise_pci_bus_id,
    records_from_query,
)

UUIDS = ("GPU-aaaaaaaa-0000", "GPU-bbbbbbbb-1111")
BUSES = ("0000:18:00.0", "0000:2d:00.0")


def _record(index: int, uuid: str | None = None, bus: str | None = None) -> GpuRecord:
    uuid = uuid or UUIDS[index]
    bus = bus or BUSES[index]
    return GpuRecord(
        index=index,
        uuid=uuid,
        name="NVIDIA H100 80GB HBM3",
        pci_bus_id=bus,
        memory_total_mib=81559,
        driver_version="550.54.15",
        minor=index,
        native_ids=default_native_ids(index, uuid, bus, REAL_CDI_KIND),
    )


def _inventory() -> Inventory:
    return Inventory(host="gpu-a", gpus=(_record(0), _record(1)), simulated=False, source="nvidia-smi")


# -- normalise_pci_bus_id ------------------------------------------------------------------------


def test_pci_bus_id_eight_digit_domain_becomes_four() -> None:
    assert normalise_pci_bus_id("00000000:18:00.0") == "0000:18:00.0"


def test_pci_bus_id_upper_case_becomes_lower() -> None:
    assert normalise_pci_bus_id("00000000:2D:1F.3") == "0000:2d:1f.3"


def test_pci_bus_id_nonzero_domain_is_kept() -> None:
    assert normalise_pci_bus_id("0000000A:18:00.0") == "000a:18:00.0"


def test_pci_bus_id_surrounding_whitespace_is_ignored() -> None:
    assert normalise_pci_bus_id(" 0000:18:00.0\n") == "0000:18:00.0"


@pytest.mark.parametrize("bad", ["18:00.0", "0000:18:00.8", "0000:1:00.0", "GPU-1234", ""])
def test_pci_bus_id_invalid_is_an_inventory_error(bad: str) -> None:
    with pytest.raises(InventoryError) as info:
        normalise_pci_bus_id(bad)
    assert str(info.value) == f"not a PCI bus id: {bad!r} (expected like 0000:18:00.0)"


# -- Inventory -----------------------------------------------------------------------------------


def test_duplicate_uuids_are_rejected() -> None:
    with pytest.raises(InventoryError, match="inventory has duplicate UUIDs"):
        Inventory(
            host="h",
            gpus=(_record(0), _record(1, uuid=UUIDS[0])),
            simulated=True,
            source="test",
        )


@pytest.mark.parametrize(
    ("scheme", "native_id", "index"),
    [
        (SCHEME_CDI, "nvidia.com/gpu=1", 1),
        (SCHEME_CDI, f"nvidia.com/gpu={UUIDS[0]}", 0),
        (SCHEME_LEGACY, "1", 1),
        (SCHEME_LEGACY, UUIDS[1], 1),
        (SCHEME_PCI, BUSES[1], 1),
        (SCHEME_PCI, "0", 0),
        (SCHEME_HOST, "0", 0),
        (SCHEME_HOST, UUIDS[1], 1),
    ],
)
def test_resolve_finds_the_gpu_per_scheme(scheme: str, native_id: str, index: int) -> None:
    gpu = _inventory().resolve(scheme, native_id)
    assert gpu is not None
    assert gpu.index == index


@pytest.mark.parametrize(
    ("scheme", "native_id"),
    [
        (SCHEME_CDI, "nvidia.com/gpu=7"),
        (SCHEME_CDI, "1"),  # a legacy form is not a CDI id
        (SCHEME_PCI, "nvidia.com/gpu=0"),
        (SCHEME_LEGACY, BUSES[0]),  # a PCI form is not a legacy id
        ("nosuch", "0"),
    ],
)
def test_resolve_returns_none_for_ids_of_another_scheme_or_no_gpu(scheme: str, native_id: str) -> None:
    assert _inventory().resolve(scheme, native_id) is None


def test_by_uuid_and_cdi_all() -> None:
    inv = _inventory()
    found = inv.by_uuid(UUIDS[1])
    assert found is not None and found.index == 1
    assert inv.by_uuid("GPU-missing") is None
    assert inv.cdi_all == "nvidia.com/gpu=all"
    assert inv.uuids == frozenset(UUIDS)


def test_inventory_json_round_trip_keeps_native_ids() -> None:
    inv = _inventory()
    back = Inventory.loads(inv.dumps())
    assert back == inv
    assert [g.native_ids for g in back.gpus] == [g.native_ids for g in inv.gpus]


def test_record_from_json_normalises_bus_id_and_defaults_minor_to_index() -> None:
    doc: dict[str, Any] = _record(1).to_json()
    doc["pci_bus_id"] = "00000000:2D:00.0"
    del doc["minor"]
    rec = GpuRecord.from_json(doc)
    assert rec.pci_bus_id == "0000:2d:00.0"
    assert rec.minor == 1


def test_inventory_loads_invalid_json_is_one_line() -> None:
    with pytest.raises(InventoryError) as info:
        Inventory.loads("{not json")
    assert str(info.value) == "inventory is not valid JSON: Expecting property name enclosed in double quotes"


def test_inventory_from_json_missing_field_is_named() -> None:
    doc = _inventory().to_json()
    del doc["host"]
    with pytest.raises(InventoryError) as info:
        Inventory.from_json(doc)
    assert str(info.value) == "bad inventory document: missing or wrong field 'host'"


def test_inventory_from_json_not_an_object() -> None:
    with pytest.raises(InventoryError, match="^bad inventory document"):
        Inventory.loads("[1, 2]")


def test_inventory_from_json_bad_record_names_it() -> None:
    doc = _inventory().to_json()
    doc["gpus"][1]["pci_bus_id"] = "nope"
    with pytest.raises(InventoryError) as info:
        Inventory.from_json(doc)
    message = str(info.value)
    assert message.startswith("bad GPU record {")
    assert "not a PCI bus id: 'nope'" in message
    assert "\n" not in message


def test_inventory_from_json_record_missing_uuid() -> None:
    doc = _inventory().to_json()
    del doc["gpus"][0]["uuid"]
    with pytest.raises(InventoryError, match=r"^bad GPU record .*: 'uuid'$"):
        Inventory.loads(json.dumps(doc))


def test_inventory_from_json_duplicate_uuids_rejected() -> None:
    doc = _inventory().to_json()
    doc["gpus"][1]["uuid"] = UUIDS[0]
    with pytest.raises(InventoryError, match="duplicate UUIDs"):
        Inventory.from_json(doc)


# -- records_from_query --------------------------------------------------------------------------


def _row(index: int, **extra: Any) -> dict[str, Any]:
    return {
        "index": index,
        "uuid": UUIDS[index],
        "name": "NVIDIA A100-SXM4-80GB",
        "pci.bus_id": "00000000:" + BUSES[index].split(":", 1)[1].upper(),
        "memory.total": 81920,
        "driver_version": "535.104.05",
        **extra,
    }


def test_records_from_query_uses_minor_numbers_when_present() -> None:
    records = records_from_query([_row(0, minor_number=4), _row(1, minor_number=6)])
    assert [r.minor for r in records] == [4, 6]
    assert [r.pci_bus_id for r in records] == list(BUSES)
    assert records[1].ids(SCHEME_CDI) == ("nvidia.com/gpu=1", f"nvidia.com/gpu={UUIDS[1]}")
    assert records[1].ids(SCHEME_PCI) == (BUSES[1], "1")
    assert records[0].memory_total_mib == 81920


def test_records_from_query_without_minor_numbers_falls_back_to_index() -> None:
    records = records_from_query([_row(0), _row(1)])
    assert [r.minor for r in records] == [0, 1]


@pytest.mark.parametrize("minor", [-1, None, "[N/A]"], ids=["negative", "none", "text"])
def test_records_from_query_unusable_minor_falls_back_to_index(minor: Any) -> None:
    (record,) = records_from_query([_row(1, minor_number=minor)])
    assert record.minor == 1


def test_records_from_query_uses_the_given_cdi_kind() -> None:
    (record,) = records_from_query([_row(0)], cdi_kind="sim.gpuconform.dev/x")
    assert record.ids(SCHEME_CDI)[0] == "sim.gpuconform.dev/x=0"


def test_records_from_query_unknown_memory_is_none() -> None:
    (record,) = records_from_query([_row(0, **{"memory.total": "[N/A]"})])
    assert record.memory_total_mib is None


def test_records_from_query_bad_bus_id_raises() -> None:
    with pytest.raises(InventoryError, match="not a PCI bus id: 'xx'"):
        records_from_query([_row(0, **{"pci.bus_id": "xx"})])


# ---- CDI ids learnt from the specs on the machine ----------------------------------------------


def _spec(tmp_path: Any, names: dict[int, str], with_all: bool = True, kind: str = REAL_CDI_KIND) -> Any:
    import yaml

    devices = [
        {"name": n, "containerEdits": {"deviceNodes": [{"path": f"/dev/nvidia{m}"}]}}
        for m, n in names.items()
    ]
    if with_all:
        every = [{"path": f"/dev/nvidia{m}"} for m in names]
        devices.append({"name": "all", "containerEdits": {"deviceNodes": every}})
    path = tmp_path / "nvidia.yaml"
    path.write_text(yaml.safe_dump({"cdiVersion": "0.5.0", "kind": kind, "devices": devices}))
    return path


def _learn(tmp_path: Any, names: dict[int, str], **kw: Any) -> Inventory:
    from gpuconform.drivers.inventory import learn_cdi_ids
    from gpuconform.workloads.cdi_spec import load_specs

    _spec(tmp_path, names, **kw)
    inv = Inventory("h", (_record(0), _record(1)), simulated=False, source="nvidia-smi")
    return learn_cdi_ids(inv, load_specs([tmp_path]))


def test_learnt_uuid_only_spec_offers_only_uuid_names(tmp_path: Any) -> None:
    inv = _learn(tmp_path, {0: UUIDS[0], 1: UUIDS[1]})
    assert [g.ids(SCHEME_CDI) for g in inv.gpus] == [
        (f"{REAL_CDI_KIND}={UUIDS[0]}",),
        (f"{REAL_CDI_KIND}={UUIDS[1]}",),
    ]
    assert inv.resolve(SCHEME_CDI, f"{REAL_CDI_KIND}=0") is None  # never assumed
    assert inv.cdi_all_id == f"{REAL_CDI_KIND}=all" and inv.cdi_strategies == ("uuid",)


def test_learnt_type_index_spec_without_all(tmp_path: Any) -> None:
    inv = _learn(tmp_path, {0: "gpu0", 1: "gpu1"}, with_all=False)
    assert inv.resolve(SCHEME_CDI, f"{REAL_CDI_KIND}=gpu1") == inv.gpus[1]
    assert inv.cdi_all_id is None and inv.cdi_strategies == ("type-index",)
    assert inv.gpus[0].ids(SCHEME_LEGACY) == ("0", UUIDS[0])  # other schemes untouched


def test_learnt_names_follow_minor_numbers_not_indices(tmp_path: Any) -> None:
    """GPU index 0 is /dev/nvidia1 here (minor numbers need not follow indices)."""
    from dataclasses import replace

    from gpuconform.drivers.inventory import learn_cdi_ids
    from gpuconform.workloads.cdi_spec import load_specs

    _spec(tmp_path, {1: "0", 0: "1"})
    inv = Inventory("h", (replace(_record(0), minor=1), replace(_record(1), minor=0)), False, "nvidia-smi")
    learnt = learn_cdi_ids(inv, load_specs([tmp_path]))
    assert learnt.gpus[0].ids(SCHEME_CDI) == (f"{REAL_CDI_KIND}=0",)
    assert learnt.gpus[1].ids(SCHEME_CDI) == (f"{REAL_CDI_KIND}=1",)


def test_a_spec_of_another_kind_leaves_no_cdi_ids(tmp_path: Any) -> None:
    inv = _learn(tmp_path, {0: "0", 1: "1"}, kind="example.com/gpu")
    assert all(g.ids(SCHEME_CDI) == () for g in inv.gpus) and inv.cdi_all_id is None


def test_learnt_inventory_round_trips_through_json(tmp_path: Any) -> None:
    inv = _learn(tmp_path, {0: "gpu0", 1: "gpu1"})
    assert Inventory.loads(inv.dumps()).cdi_strategies == ("type-index",)
    assert Inventory.loads(inv.dumps()).cdi_all_id == inv.cdi_all_id
