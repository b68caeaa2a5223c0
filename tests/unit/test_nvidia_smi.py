"""Tests of the nvidia-smi parsers against captured-style outputs in data/nvidia_smi/.

The parsers decide what UUIDs a sandbox saw, so most tests here are about what must be refused:
a loose parser that half-parses, or accepts a malformed UUID, would pass these data files too.
"""

from __future__ import annotations

import random
import re
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from gpuconform.drivers.inventory import records_from_query
from gpuconform.workloads.nvidia_smi import (
    NVML_EXIT_CODES,
    QUERY_FIELDS,
    ListedGpu,
    ListedMig,
    SmiParseError,
    Unavailable,
    nvml_error_name,
    parse_list,
    parse_query,
    parse_xml,
    query_argv,
)

DATA = Path(__file__).parent / "data" / "nvidia_smi"
H100_UUIDS = (
    "GPU-1e250c70-dff6-4e52-8690-a9c144e7cf0f",
    "GPU-8db8df93-edd5-4cd5-86b3-bc355166765c",
    "GPU-5ba68dd7-a280-4d1d-9057-e02036f41959",
    "GPU-0ef519ec-7d02-4ffe-8b8a-cc079f7fce21",
)
GPU0 = f"GPU 0: NVIDIA H100 80GB HBM3 (UUID: {H100_UUIDS[0]})"
MIG_UUID = "MIG-026bac30-a0e4-4d2d-b632-b7e7fe037afd"
DEGRADED_FIELDS = (*QUERY_FIELDS, "power.draw", "ecc.mode.current", "serial")


def read(name: str) -> str:
    return (DATA / name).read_text()


# ---- nvidia-smi -L ------------------------------------------------------------------------------


def test_parse_list_h100x4_returns_every_gpu_in_order_without_mig() -> None:
    gpus = parse_list(read("h100x4_list.txt"))
    assert [g.index for g in gpus] == [0, 1, 2, 3]
    assert tuple(g.uuid for g in gpus) == H100_UUIDS
    assert {g.name for g in gpus} == {"NVIDIA H100 80GB HBM3"}
    assert all(g.mig == () for g in gpus)


def test_parse_list_attaches_mig_children_to_the_gpu_line_above_them() -> None:
    gpus = parse_list(read("a100x8_mig_list.txt"))
    assert len(gpus) == 8
    assert [len(g.mig) for g in gpus] == [4, 7, 0, 2, 0, 0, 0, 0]
    assert gpus[0].uuid == "GPU-117b86a0-c2d2-446a-b2a9-20ac45a37935"
    assert gpus[0].mig[0] == ListedMig(name="3g.40gb", device=0, uuid=MIG_UUID)
    assert [m.name for m in gpus[0].mig] == ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]
    assert [m.device for m in gpus[1].mig] == list(range(7))
    assert gpus[1].mig[6].uuid == "MIG-d89fc652-6fcc-4e07-bdab-946af700d2d6"
    # GPU 3: a "+me" profile, and a tab-spaced compute-instance line "1c.3g.40gb".
    assert gpus[3].mig == (
        ListedMig(name="1g.10gb+me", device=0, uuid="MIG-e378507a-858f-461b-9a01-5160fa6ef90a"),
        ListedMig(name="1c.3g.40gb", device=1, uuid="MIG-2d7c1778-fb2f-4505-854e-94f8d7e8ec97"),
    )
    all_mig = [m.uuid for g in gpus for m in g.mig]
    assert len(set(all_mig)) == 13


def test_parse_list_accepts_the_r460_mig_uuid_form_that_names_its_parent() -> None:
    (gpu,) = parse_list(read("a100_r460_mig_list.txt"))
    assert gpu.name == "NVIDIA A100-SXM4-40GB"
    assert [m.uuid for m in gpu.mig] == [f"MIG-{gpu.uuid}/1/0", f"MIG-{gpu.uuid}/5/0", f"MIG-{gpu.uuid}/13/0"]
    assert [m.name for m in gpu.mig] == ["3g.20gb", "2g.10gb", "1g.5gb"]


def test_parse_list_rejects_an_r460_mig_uuid_whose_parent_is_another_gpu() -> None:
    text = f"{GPU0}\n  MIG 1g.5gb Device 0: (UUID: MIG-{H100_UUIDS[1]}/7/0)\n"
    with pytest.raises(SmiParseError, match=r"^line 2: expected a MIG device of GPU-1e250c70"):
        parse_list(text)


@pytest.mark.parametrize("text", ["No devices found.", "No devices found.\n", "\n  No devices found.  \r\n"])
def test_parse_list_no_devices_found_is_an_empty_tuple(text: str) -> None:
    assert parse_list(text) == ()


@pytest.mark.parametrize("text", ["", "\n", "  \n\t\n"])
def test_parse_list_rejects_empty_output(text: str) -> None:
    with pytest.raises(SmiParseError, match="got empty output$"):
        parse_list(text)


def test_parse_list_rejects_no_devices_found_mixed_with_gpu_lines() -> None:
    with pytest.raises(SmiParseError, match=r"^line 2: .*got: 'No devices found\.'$"):
        parse_list(f"{GPU0}\nNo devices found.\n")


@pytest.mark.parametrize(
    "line",
    [
        f"GPU  0:  NVIDIA H100 80GB HBM3   (UUID:  {H100_UUIDS[0]})",
        f"GPU\t0:\tNVIDIA H100 80GB HBM3\t(UUID:\t{H100_UUIDS[0]})",
        f"   GPU 0: NVIDIA H100 80GB HBM3 (UUID: {H100_UUIDS[0]})   \r",
    ],
)
def test_parse_list_matches_on_whitespace_not_exact_spacing(line: str) -> None:
    assert parse_list(line + "\n") == (ListedGpu(0, "NVIDIA H100 80GB HBM3", H100_UUIDS[0], ()),)


def test_parse_list_round_trips_generated_lines_with_random_spacing() -> None:
    rng = random.Random(8)  # fixed seed: deterministic

    def space() -> str:
        return rng.choice([" ", "  ", "\t", " \t "])

    for _ in range(200):
        uuid = "GPU-" + "-".join(f"{rng.getrandbits(4 * n):0{n}x}" for n in (8, 4, 4, 4, 12))
        mig = "MIG-" + uuid[4:]
        name = rng.choice(["NVIDIA H100 80GB HBM3", "Tesla V100-SXM2-16GB", "NVIDIA GeForce RTX 4090"])
        gpu_line = f"GPU{space()}{rng.randint(0, 15)}:{space()}{name}{space()}(UUID:{space()}{uuid})"
        mig_line = f"{space()}MIG{space()}2g.20gb{space()}Device{space()}3:{space()}(UUID:{space()}{mig})"
        (gpu,) = parse_list(f"{gpu_line}\n{mig_line}\n")
        assert (gpu.name, gpu.uuid, gpu.mig) == (name, uuid, (ListedMig("2g.20gb", 3, mig),))


@pytest.mark.parametrize(
    "line",
    [
        "GPU 0: x (UUID: whatever)",
        "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1e250c70)",
        "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1e250c70-dff6-4e52-8690-a9c144e7cf0f",
        "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1E250C70-DFF6-4E52-8690-A9C144E7CF0F)",
        "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1e250c70-dff6-4e52-8690-a9c144e7cf0fff)",
        "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1e250c70-dff6-4e52-8690-a9c144e7cf0g)",
        "GPU 0: NVIDIA H100 80GB HBM3 (UUID: 1e250c70-dff6-4e52-8690-a9c144e7cf0f)",
        f"GPU 0: NVIDIA H100 80GB HBM3 (UUID: {MIG_UUID})",
        f"GPU x: NVIDIA H100 80GB HBM3 (UUID: {H100_UUIDS[1]})",
        f"GPU 0: (UUID: {H100_UUIDS[1]})",
        f"GPU 0: NVIDIA H100 80GB HBM3 (UUID: {H100_UUIDS[1]}) extra",
        f"GPU 0: NVIDIA H100 80GB HBM3 (S/N: {H100_UUIDS[1]})",
        "GPU 1: NVIDIA H100 80GB HBM3",
        "garbage",
        f"  MIG 3g.40gb     Device  0: (UUID: {H100_UUIDS[1]})",
        "  MIG 3g.40gb     Device  0: (UUID: MIG-026bac30)",
        f"  MIG 3g.40gb     Device: (UUID: {MIG_UUID})",
        f"  MIG whatever    Device  0: (UUID: {MIG_UUID})",
        f"  MIG 3g.40gb     Device  0: (UUID: {MIG_UUID}",
        f"  MIG 3g.40gb     Device  0: (UUID: MIG-{H100_UUIDS[0]}/a/0)",
        "Unable to determine the device handle for GPU0000:2A:00.0: Unknown Error",
    ],
)
def test_parse_list_rejects_the_whole_output_for_one_malformed_line(line: str) -> None:
    text = f"{GPU0}\n{line}\nGPU 2: NVIDIA H100 80GB HBM3 (UUID: {H100_UUIDS[2]})\n"
    with pytest.raises(SmiParseError, match=r"^line 2: expected ") as caught:
        parse_list(text)
    assert "\n" not in str(caught.value)


def test_parse_list_rejects_every_single_character_deletion_from_the_uuid() -> None:
    for position in range(4, len(H100_UUIDS[0])):
        broken = H100_UUIDS[0][:position] + H100_UUIDS[0][position + 1 :]
        with pytest.raises(SmiParseError):
            parse_list(f"GPU 0: NVIDIA H100 80GB HBM3 (UUID: {broken})")


def test_parse_list_error_is_one_line_naming_the_forms_and_an_excerpt() -> None:
    with pytest.raises(SmiParseError) as caught:
        parse_list(f"{GPU0}\n{'garbage ' * 20}\n")
    message = str(caught.value)
    assert message.startswith(
        'line 2: expected "GPU <n>: <name> (UUID: GPU-...)" lines or "No devices found.", '
    )
    assert message.endswith("got: 'garbage garbage garbage garbage garbage garbage garbage garb...'")


def test_parse_list_rejects_a_mig_line_before_any_gpu_line() -> None:
    with pytest.raises(SmiParseError, match=r"^line 1: expected a GPU line before the first MIG line"):
        parse_list(f"  MIG 3g.40gb     Device  0: (UUID: {MIG_UUID})\n{GPU0}\n")


def test_parse_list_rejects_the_table_output_with_a_hint() -> None:
    with pytest.raises(SmiParseError, match=r"^line 2: .*hint: that is the human table output"):
        parse_list(read("h100_table.txt"))


def test_listed_gpu_is_a_frozen_value() -> None:
    (gpu,) = parse_list(GPU0)
    with pytest.raises(FrozenInstanceError):
        gpu.uuid = H100_UUIDS[1]  # type: ignore[misc]


# ---- --query-gpu CSV --------------------------------------------------------------------------


def test_parse_query_noheader_nounits_with_the_callers_fields() -> None:
    rows = parse_query(read("h100x4_query_noheader_nounits.csv"), QUERY_FIELDS)
    assert rows[0] == {
        "index": 0,
        "uuid": H100_UUIDS[0],
        "name": "NVIDIA H100 80GB HBM3",
        "pci.bus_id": "0000:18:00.0",
        "memory.total": 81559,
        "driver_version": "580.105.08",
    }
    assert [r["uuid"] for r in rows] == list(H100_UUIDS)
    assert [r["pci.bus_id"] for r in rows] == ["0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0"]
    assert all(type(r["index"]) is int and type(r["memory.total"]) is int for r in rows)


def test_parse_query_header_with_units_gives_the_same_rows_as_noheader_nounits() -> None:
    with_header = parse_query(read("h100x4_query_header_units.csv"))
    assert with_header == parse_query(read("h100x4_query_noheader_nounits.csv"), QUERY_FIELDS)
    assert parse_query(read("h100x4_query_header_units.csv"), QUERY_FIELDS) == with_header


def test_parse_query_takes_names_from_the_header_without_unit_suffixes() -> None:
    rows = parse_query(read("a100x8_query_header_units.csv"))
    assert list(rows[0]) == [
        "index",
        "uuid",
        "name",
        "pci.bus_id",
        "minor_number",
        "memory.total",
        "memory.used",
        "mig.mode.current",
        "driver_version",
    ]
    assert [r["minor_number"] for r in rows] == list(range(8))
    assert rows[7]["pci.bus_id"] == "0000:bd:00.0"


def test_parse_query_mig_gpus_report_memory_used_as_unavailable() -> None:
    rows = parse_query(read("a100x8_query_header_units.csv"))
    assert [r["mig.mode.current"] for r in rows[:4]] == ["Enabled", "Enabled", "Disabled", "Enabled"]
    assert rows[0]["memory.used"] == Unavailable("[N/A]")
    assert rows[2]["memory.used"] == 0


def test_parse_query_bracketed_values_are_unavailable_and_distinct_from_missing_fields() -> None:
    rows = parse_query(read("degraded_query_noheader_units.csv"), DEGRADED_FIELDS)
    assert rows[0]["power.draw"] == "57.84 W"
    assert rows[1]["power.draw"] != "[N/A]"  # not the bare text: a value that could not be read
    assert rows[1]["power.draw"] == Unavailable("[N/A]")
    assert rows[1]["ecc.mode.current"] == Unavailable("[Not Supported]")
    assert rows[2]["memory.total"] == Unavailable("[Unknown Error]")
    assert rows[2]["serial"] == Unavailable("[Insufficient Permissions]")
    assert rows[3]["uuid"] == Unavailable("[GPU requires reset]")
    assert rows[3]["pci.bus_id"] == "0000:e3:00.0"
    assert "temperature.gpu" not in rows[0]  # never asked for: absent, not Unavailable


def test_parse_query_8_digit_pci_domain_is_normalised_to_sysfs_form() -> None:
    rows = parse_query(
        f"0, {H100_UUIDS[0]}, NVIDIA H100 80GB HBM3, 00000001:AB:1F.7, 81559, 580.105.08", QUERY_FIELDS
    )
    assert rows[0]["pci.bus_id"] == "0001:ab:1f.7"


@pytest.mark.parametrize(
    "text", ["No devices were found", "No devices found.", "\nNo devices were found\n\n"]
)
@pytest.mark.parametrize("fields", [None, QUERY_FIELDS])
def test_parse_query_no_devices_is_an_empty_list(text: str, fields: tuple[str, ...] | None) -> None:
    assert parse_query(text, fields) == []


def test_parse_query_rejects_empty_output() -> None:
    with pytest.raises(SmiParseError, match="got empty output$"):
        parse_query("\n", QUERY_FIELDS)


def test_parse_query_without_header_or_fields_is_rejected() -> None:
    with pytest.raises(SmiParseError, match=r"^expected a CSV header line .*pass the field list\)$"):
        parse_query(read("h100x4_query_noheader_nounits.csv"))


def test_parse_query_header_must_name_the_requested_fields() -> None:
    with pytest.raises(SmiParseError, match="expected a CSV header naming"):
        parse_query(
            read("h100x4_query_header_units.csv"),
            ("index", "uuid", "name", "pci.bus_id", "memory.total", "serial"),
        )


def test_parse_query_header_without_rows_is_rejected_as_truncated() -> None:
    with pytest.raises(SmiParseError, match="truncated"):
        parse_query("index, uuid, name, pci.bus_id, memory.total [MiB], driver_version\n")


def test_parse_query_row_with_a_missing_column_names_its_line() -> None:
    lines = read("h100x4_query_noheader_nounits.csv").splitlines()
    lines[2] = lines[2].replace(", 81559", "")
    with pytest.raises(
        SmiParseError, match=r"^line 3: expected 6 columns \(index, uuid, .*\), not 5, got: '2, GPU-"
    ):
        parse_query("\n".join(lines), QUERY_FIELDS)


@pytest.mark.parametrize(
    "row",
    [
        f"0, {H100_UUIDS[0]}, NVIDIA H100 80GB HBM3, 00000000:18:00.0, 81559, 580.105.08, extra",
        f"0,{H100_UUIDS[0]},NVIDIA H100 80GB HBM3,00000000:18:00.0,81559,580.105.08",
        f"0, {H100_UUIDS[0]}, NVIDIA H100 80GB HBM3, 00000000:18:00.0, 815",
    ],
)
def test_parse_query_rejects_rows_with_the_wrong_number_of_columns(row: str) -> None:
    with pytest.raises(SmiParseError, match=r"^line 1: expected 6 columns"):
        parse_query(row, QUERY_FIELDS)


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        (0, "x", "an integer for index"),
        (0, "-1", "an integer for index"),
        (4, "81559 GiB", r"an integer \(MiB\) for memory.total"),
        (4, "81.5 MiB", r"an integer \(MiB\) for memory.total"),
        (4, "NA", r"an integer \(MiB\) for memory.total"),
        (3, "18:00.0", "a PCI bus id"),
        (1, "GPU-whatever", "a UUID like GPU-"),
        (1, MIG_UUID, "a UUID like GPU-"),
        (1, "GPU-1e250c70-dff6-4e52-8690", "a UUID like GPU-"),
    ],
)
def test_parse_query_rejects_values_of_the_wrong_shape(column: int, value: str, expected: str) -> None:
    values = [
        str(v) for v in (0, H100_UUIDS[0], "NVIDIA H100 80GB HBM3", "00000000:18:00.0", 81559, "580.105.08")
    ]
    values[column] = value
    good = f"1, {H100_UUIDS[1]}, NVIDIA H100 80GB HBM3, 00000000:2A:00.0, 81559, 580.105.08"
    with pytest.raises(SmiParseError, match=rf"^line 2: expected {expected}"):
        parse_query(f"{good}\n{', '.join(values)}\n", QUERY_FIELDS)


def test_parse_query_rejects_a_trailing_warning_line() -> None:
    text = read("h100x4_query_noheader_nounits.csv") + "WARNING: infoROM is corrupted at gpu 0000:18:00.0\n"
    with pytest.raises(SmiParseError, match=r"^line 5: expected 6 columns"):
        parse_query(text, QUERY_FIELDS)


@pytest.mark.parametrize("fields", [None, QUERY_FIELDS, ("name",)])
def test_parse_query_rejects_the_table_output_even_for_a_single_field(fields: tuple[str, ...] | None) -> None:
    with pytest.raises(SmiParseError, match=r"^line 2: .*hint: that is the human table output"):
        parse_query(read("h100_table.txt"), fields)


@pytest.mark.parametrize("fields", [(), ("index", "index"), ("index,uuid",), ("memory.total [MiB]",), ("",)])
def test_parse_query_rejects_a_bad_field_list_as_a_caller_error(fields: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="expected distinct nvidia-smi query field names") as caught:
        parse_query("No devices were found", fields)
    assert not isinstance(caught.value, SmiParseError)


def test_parse_query_rows_feed_the_inventory_records() -> None:
    records = records_from_query(parse_query(read("a100x8_query_header_units.csv")))
    assert [r.pci_bus_id for r in records[:2]] == ["0000:07:00.0", "0000:0f:00.0"]
    assert {r.memory_total_mib for r in records} == {81920}
    assert [r.minor for r in records] == list(range(8))


# ---- -q -x XML --------------------------------------------------------------------------------


def test_parse_xml_reads_identity_memory_and_mig_state_of_each_gpu() -> None:
    gpus = parse_xml(read("h100x2_q.xml"))
    assert gpus[1] == {
        "uuid": H100_UUIDS[1],
        "name": "NVIDIA H100 80GB HBM3",
        "pci.bus_id": "0000:2a:00.0",
        "minor_number": 1,
        "memory.total": 81559,
        "driver_version": "580.105.08",
        "mig_mode": "Disabled",
        "mig_devices": [],
    }


def test_parse_xml_agrees_with_list_and_query_output_of_the_same_host() -> None:
    xml = parse_xml(read("h100x2_q.xml"))
    listed = parse_list(read("h100x4_list.txt"))
    rows = parse_query(read("h100x4_query_header_units.csv"))
    for gpu, item, row in zip(xml, listed, rows, strict=False):
        assert gpu["uuid"] == item.uuid == row["uuid"]
        assert gpu["pci.bus_id"] == row["pci.bus_id"]
        assert gpu["memory.total"] == row["memory.total"]


def test_parse_xml_lists_mig_devices_under_their_gpu() -> None:
    mig_gpu, plain_gpu = parse_xml(read("a100_mig_q.xml"))
    assert mig_gpu["uuid"] == "GPU-117b86a0-c2d2-446a-b2a9-20ac45a37935"
    assert mig_gpu["mig_mode"] == "Enabled"
    assert mig_gpu["mig_devices"] == [
        {"index": 0, "gpu_instance_id": 2, "compute_instance_id": 0, "memory.total": 40192},
        {"index": 1, "gpu_instance_id": 3, "compute_instance_id": 0, "memory.total": 19968},
        {"index": 2, "gpu_instance_id": 9, "compute_instance_id": 0, "memory.total": 9728},
        {"index": 3, "gpu_instance_id": 10, "compute_instance_id": 0, "memory.total": 9728},
    ]
    assert (plain_gpu["mig_mode"], plain_gpu["mig_devices"], plain_gpu["minor_number"]) == ("Disabled", [], 2)


def _with_mig_uuid(uuid: str) -> str:
    return read("a100_mig_q.xml").replace(
        "<index>1</index>", f"<index>1</index>\n\t\t\t\t<uuid>{uuid}</uuid>", 1
    )


def test_parse_xml_keeps_a_mig_device_uuid_where_present() -> None:
    devices = parse_xml(_with_mig_uuid(MIG_UUID))[0]["mig_devices"]
    assert isinstance(devices, list)
    assert "uuid" not in devices[0]
    assert devices[1]["uuid"] == MIG_UUID


def test_parse_xml_rejects_a_mig_device_uuid_of_the_wrong_shape() -> None:
    with pytest.raises(SmiParseError, match=r"expected a MIG UUID .* in <uuid> of <mig_device> 1"):
        parse_xml(_with_mig_uuid("MIG-whatever"))


def test_parse_xml_na_values_become_unavailable() -> None:
    text = read("h100x2_q.xml").replace("<minor_number>0</minor_number>", "<minor_number>N/A</minor_number>")
    text = text.replace("<current_mig>Disabled</current_mig>", "<current_mig>N/A</current_mig>", 1)
    gpu = parse_xml(text)[0]
    assert gpu["minor_number"] == Unavailable("[N/A]")
    assert gpu["mig_mode"] == Unavailable("[N/A]")


def test_parse_xml_without_doctype_and_with_pci_only_in_the_id_attribute() -> None:
    text = read("h100x2_q.xml").replace('<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_v12.dtd">\n', "")
    text = re.sub(r"<pci_bus_id>[^<]*</pci_bus_id>", "", text)
    assert [g["pci.bus_id"] for g in parse_xml(text)] == ["0000:18:00.0", "0000:2a:00.0"]


def test_parse_xml_rejects_an_id_attribute_that_disagrees_with_pci_bus_id() -> None:
    text = read("h100x2_q.xml").replace('<gpu id="00000000:18:00.0">', '<gpu id="00000000:19:00.0">')
    with pytest.raises(SmiParseError, match="id attribute and <pci/pci_bus_id> to agree"):
        parse_xml(text)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (f"<uuid>{H100_UUIDS[0]}</uuid>", "", r"expected <uuid> in <gpu id='00000000:18:00.0'> \(gpu 0\)"),
        ("<minor_number>0</minor_number>", "", "expected <minor_number>"),
        ("<driver_version>580.105.08</driver_version>", "", "expected <driver_version> in <nvidia_smi_log>"),
        ("<current_mig>Disabled</current_mig>", "", "expected <mig_mode/current_mig>"),
        ("<total>81559 MiB</total>", "", "expected <fb_memory_usage/total>"),
        (
            "<total>81559 MiB</total>",
            "<total>81559</total>",
            "expected an integer MiB in <fb_memory_usage/total>",
        ),
        (f"<uuid>{H100_UUIDS[0]}</uuid>", "<uuid>GPU-1234</uuid>", "expected a UUID like GPU-"),
        ("\t\t\tNone\n", "\t\t\tSomething\n", "expected 'None' or <mig_device> elements"),
    ],
)
def test_parse_xml_rejects_missing_or_malformed_fields(old: str, new: str, message: str) -> None:
    text = read("h100x2_q.xml")
    assert old in text
    with pytest.raises(SmiParseError, match=message):
        parse_xml(text.replace(old, new, 1))


@pytest.mark.parametrize(
    "text",
    [
        read("h100x2_q.xml")[:1500],
        "<nvidia_smi_log><gpu></nvidia_smi_log>",
        "GPU 0: NVIDIA H100 80GB HBM3",
        "<nvidia_smi_log>&unknown;</nvidia_smi_log>",
    ],
)
def test_parse_xml_rejects_malformed_xml(text: str) -> None:
    with pytest.raises(SmiParseError, match=r"^expected nvidia-smi -q -x XML, got malformed XML \("):
        parse_xml(text)


def test_parse_xml_rejects_another_root_element() -> None:
    with pytest.raises(SmiParseError, match="expected root element <nvidia_smi_log>, got <html>"):
        parse_xml("<html><gpu/></html>")


@pytest.mark.parametrize(
    "text",
    [
        '<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>\n<lolz>&lol2;</lolz>',
        "<!DOCTYPE nvidia_smi_log [<!ELEMENT nvidia_smi_log ANY>]>\n<nvidia_smi_log/>",
        '<!DOCTYPE nvidia_smi_log SYSTEM "http://example.invalid/x.dtd">\n<nvidia_smi_log/>',
        '<!DOCTYPE nvidia_smi_log SYSTEM "/etc/passwd">\n<nvidia_smi_log/>',
    ],
)
def test_parse_xml_refuses_dtds_other_than_the_one_nvidia_smi_writes(text: str) -> None:
    with pytest.raises(
        SmiParseError, match="^expected (nvidia-smi -q -x XML without entity|<!DOCTYPE nvidia_smi_log)"
    ):
        parse_xml(text)


@pytest.mark.parametrize("text", ["No devices were found\n", "No devices found."])
def test_parse_xml_no_devices_is_an_empty_list(text: str) -> None:
    assert parse_xml(text) == []


def test_parse_xml_rejects_empty_output() -> None:
    with pytest.raises(SmiParseError, match="got empty output"):
        parse_xml("  \n")


# ---- exit codes, argv, values -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "name"),
    [(0, "SUCCESS"), (2, "INVALID_ARGUMENT"), (4, "NO_PERMISSION"), (6, "NOT_FOUND"),
     (9, "DRIVER_NOT_LOADED"), (12, "LIBRARY_NOT_FOUND"), (14, "CORRUPTED_INFOROM"), (15, "GPU_IS_LOST"),
     (255, "UNKNOWN"), (1, "UNINITIALIZED"), (7, "INSUFFICIENT_SIZE"), (18, "LIB_RM_VERSION_MISMATCH"),
     (29, "INVALID_STATE"), (30, "EXIT_30"), (127, "EXIT_127"), (256, "EXIT_256"), (-9, "EXIT_-9")],
)  # fmt: skip
def test_nvml_error_name_names_known_codes_and_falls_back_for_others(code: int, name: str) -> None:
    assert nvml_error_name(code) == name


def test_nvml_exit_codes_cover_the_documented_set_and_are_read_only() -> None:
    assert sorted(NVML_EXIT_CODES) == [*range(30), 255]
    with pytest.raises(TypeError):
        NVML_EXIT_CODES[1] = "UNINITIALIZED"  # type: ignore[index]


def test_query_argv_defaults_to_the_harness_fields_without_header_or_units() -> None:
    assert query_argv() == [
        "nvidia-smi",
        "--query-gpu=index,uuid,name,pci.bus_id,memory.total,driver_version",
        "--format=csv,noheader,nounits",
    ]


@pytest.mark.parametrize(
    ("header", "units", "fmt"),
    [(True, True, "csv"), (True, False, "csv,nounits"), (False, True, "csv,noheader")],
)
def test_query_argv_format_follows_header_and_units(header: bool, units: bool, fmt: str) -> None:
    assert query_argv(("uuid", "minor_number"), header=header, units=units) == [
        "nvidia-smi",
        "--query-gpu=uuid,minor_number",
        f"--format={fmt}",
    ]


@pytest.mark.parametrize("fields", [(), ("uuid,name",), ("uuid", "uuid"), ("--help",)])
def test_query_argv_rejects_field_lists_that_would_change_the_command(fields: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="expected distinct nvidia-smi query field names"):
        query_argv(fields)


def test_unavailable_holds_bracketed_text_only() -> None:
    assert str(Unavailable("[Not Supported]")) == "[Not Supported]"
    with pytest.raises(ValueError, match="must be bracketed"):
        Unavailable("N/A")


# ---- defects met on real output (issue 10): each of these failed before the fix ----------------


CAMEL_FIELDS = (
    "pci.baseClass",
    "encoder.stats.sessionCount",
    "vgpu_driver_capability.heterogenous_multivGPU",
)


def test_query_accepts_documented_camel_case_field_names_in_the_header() -> None:
    text = f"{', '.join(CAMEL_FIELDS)}\n0x03, 0, No\n"
    assert parse_query(text) == [
        {"pci.baseClass": "0x03", "encoder.stats.sessionCount": "0", CAMEL_FIELDS[2]: "No"}
    ]


def test_query_accepts_camel_case_names_in_the_callers_field_list() -> None:
    assert parse_query("0x03, 0, No\n", fields=CAMEL_FIELDS)[0]["pci.baseClass"] == "0x03"
    assert query_argv(CAMEL_FIELDS)[1] == f"--query-gpu={','.join(CAMEL_FIELDS)}"


def test_exit_18_is_named_as_nvml_names_it() -> None:
    assert nvml_error_name(18) == "LIB_RM_VERSION_MISMATCH"


def test_xml_without_mig_mode_means_mig_not_applicable() -> None:
    text = read("h100x2_q.xml")
    start, end = text.index("<mig_mode>"), text.index("</mig_mode>") + len("</mig_mode>")
    old = text[:start] + text[end:]
    start, end = old.index("<mig_devices>"), old.index("</mig_devices>") + len("</mig_devices>")
    old = old[:start] + old[end:]
    gpus = parse_xml(old)
    assert gpus[0]["mig_mode"] == Unavailable("[N/A]")
    assert gpus[0]["mig_devices"] == []


def test_xml_with_mig_devices_but_no_mig_mode_is_refused() -> None:
    text = read("h100x2_q.xml")
    start, end = text.index("<mig_mode>"), text.index("</mig_mode>") + len("</mig_mode>")
    with pytest.raises(SmiParseError, match="expected <mig_mode>"):
        parse_xml(text[:start] + text[end:])


def test_query_bare_na_is_unavailable_like_the_bracketed_form() -> None:
    (row,) = parse_query(
        "GPU-22b2c6ac-2d49-4863-197c-9c469071178a, N/A\n", fields=("uuid", "temperature.memory")
    )
    assert row["temperature.memory"] == Unavailable("[N/A]")
