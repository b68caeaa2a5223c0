"""Every real nvidia-smi output in tests/corpus/nvidia_smi/ parses to what it means.

The samples were posted publicly by people running real drivers (sources in index.json); the
meaning of each (UUIDs, counts, names, values, or "refused" with the reason) was written down
from reading the sample, not from running the parser. A parser change that reads any of them
differently fails here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gpuconform.workloads.nvidia_smi import (
    SmiParseError,
    Unavailable,
    nvml_error_in,
    nvml_error_name,
    parse_list,
    parse_query,
    parse_xml,
)

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "nvidia_smi"
INDEX = json.loads((CORPUS / "index.json").read_text())
SAMPLES = INDEX["samples"]


def _of(kind: str) -> list[Any]:
    return [pytest.param(s, id=s["id"]) for s in SAMPLES if s["kind"] == kind]


def _text(sample: dict[str, Any]) -> str:
    return (CORPUS / str(sample["file"])).read_text()


def _query_fields(sample: dict[str, Any]) -> list[str] | None:
    """The field list of a noheader sample, from the command that produced it."""
    if "fields" in sample["expect"]:
        return [str(f) for f in sample["expect"]["fields"]]
    command = str(sample.get("command", ""))
    if "noheader" not in command:
        return None
    arg = next(a for a in command.split() if a.startswith("--query-gpu="))
    return arg.split("=", 1)[1].split(",")


def _same(value: Any, meant: Any) -> bool:
    if isinstance(meant, dict) and "unavailable" in meant:
        return isinstance(value, Unavailable) and value.text == meant["unavailable"]
    return bool(value == meant) and not isinstance(value, Unavailable)


def test_the_corpus_has_forty_samples_each_with_a_source_and_a_meaning() -> None:
    assert len(SAMPLES) >= 40
    for sample in SAMPLES:
        assert sample["source"].strip(), sample["id"]
        assert sample["expect"], sample["id"]
        assert (CORPUS / sample["file"]).is_file(), sample["id"]
    assert {s["kind"] for s in SAMPLES} == {"list", "query", "xml", "error"}


@pytest.mark.parametrize("sample", _of("list"))
def test_list_sample_means_what_it_says(sample: dict[str, Any]) -> None:
    expect = sample["expect"]
    if "refused" in expect:
        with pytest.raises(SmiParseError, match=expect["refused"].replace("(", r"\(").replace(")", r"\)")):
            parse_list(_text(sample))
        return
    gpus = parse_list(_text(sample))
    if "gpus" in expect:
        assert [
            [g.index, g.name, g.uuid, [[m.name, m.device, m.uuid] for m in g.mig]] for g in gpus
        ] == expect["gpus"]
    if "count" in expect:
        assert len(gpus) == expect["count"]
        assert len({g.uuid for g in gpus}) == expect["count"]
    if "names" in expect:
        assert sorted({g.name for g in gpus}) == expect["names"]
    if "first_uuid" in expect:
        assert gpus[0].uuid == expect["first_uuid"]
    if "last_uuid" in expect:
        assert gpus[-1].uuid == expect["last_uuid"]
    migs = {g.uuid: [m.uuid for m in g.mig] for g in gpus}
    for parent, uuids in expect.get("mig", {}).items():
        assert migs[parent] == uuids
    for parent, count in expect.get("mig_counts", {}).items():
        assert len(migs[parent]) == count
        assert sum(len(v) for v in migs.values()) == sum(expect["mig_counts"].values())
    all_migs = [m for g in gpus for m in g.mig]
    if "mig_devices" in expect:
        assert [m.device for m in all_migs] == expect["mig_devices"]
    if "mig_profiles" in expect:
        assert [m.name for m in all_migs] == expect["mig_profiles"]
    if "mig_gpu_instances" in expect:  # R450-R465 UUIDs carry the GPU instance id
        assert [int(m.uuid.split("/")[1]) for m in all_migs] == expect["mig_gpu_instances"]


@pytest.mark.parametrize("sample", _of("query"))
def test_query_sample_means_what_it_says(sample: dict[str, Any]) -> None:
    rows = parse_query(_text(sample), fields=_query_fields(sample))
    expect = sample["expect"]["rows"]
    assert len(rows) == len(expect)
    for row, meant in zip(rows, expect, strict=True):
        for field, value in meant.items():
            assert _same(row[field], value), (field, row[field], value)


@pytest.mark.parametrize("sample", _of("xml"))
def test_xml_sample_means_what_it_says(sample: dict[str, Any]) -> None:
    expect = sample["expect"]
    if "refused" in expect:
        with pytest.raises(SmiParseError, match=expect["refused"]):
            parse_xml(_text(sample))
        return
    gpus = parse_xml(_text(sample))
    assert len(gpus) == len(expect["gpus"])
    for gpu, meant in zip(gpus, expect["gpus"], strict=True):
        for field, value in meant.items():
            assert _same(gpu[field], value), (field, gpu[field], value)


@pytest.mark.parametrize("sample", _of("error"))
def test_error_sample_names_its_nvml_error_by_text_and_by_exit_status(sample: dict[str, Any]) -> None:
    expect = sample["expect"]
    assert nvml_error_in(_text(sample)) == expect["nvml"]
    assert nvml_error_name(expect["exit"]) == expect["nvml"]
