"""The CDI spec reader against real generated specs (tests/corpus/cdi/SOURCES.md) and variants.

What matters is the meaning the harness takes from a spec: which qualified name selects which
inventory GPU, whether ``all`` exists, which naming strategy was used, and that a broken file is
reported in one line without stopping the others from loading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gpuconform.drivers.inventory import GpuRecord, Inventory
from gpuconform.workloads.cdi_spec import (
    CdiSpecError,
    all_name,
    load_spec,
    load_specs,
    names_by_gpu,
    naming_strategies,
    node_mismatches,
    parse_spec,
)

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "cdi"
KIND = "example.com/device"
UUIDS = ("GPU-1e250c70-dff6-4e52-8690-a9c144e7cf0f", "GPU-8db8df93-edd5-4cd5-86b3-bc355166765c")


def inventory(count: int = 1, minors: tuple[int, ...] | None = None) -> Inventory:
    minors = minors or tuple(range(count))
    gpus = tuple(
        GpuRecord(
            i, UUIDS[i], "NVIDIA H100 80GB HBM3", f"0000:{0x18 + i:02x}:00.0", 81559, "580.105.08", minors[i]
        )
        for i in range(count)
    )
    return Inventory("h", gpus, simulated=False, source="test", cdi_kind=KIND)


def generated() -> dict[str, Any]:
    doc = yaml.safe_load((CORPUS / "nvidia-ctk-generate-index.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def variant(tmp_path: Path, names: dict[str, str], gpus: int = 2, keep_all: bool = True) -> Path:
    """The generated spec's structure for ``gpus`` GPUs, each device renamed per ``names``."""
    doc = generated()
    one = doc["devices"][0]
    devices = []
    for i in range(gpus):
        dev = yaml.safe_load(yaml.safe_dump(one))
        dev["containerEdits"]["deviceNodes"][0]["path"] = f"/dev/nvidia{i}"
        dev["containerEdits"]["deviceNodes"][0]["hostPath"] = f"/driver-root/dev/nvidia{i}"
        dev["name"] = names[str(i)]
        devices.append(dev)
    if keep_all:
        every = [{"path": f"/dev/nvidia{i}", "hostPath": f"/driver-root/dev/nvidia{i}"} for i in range(gpus)]
        devices.append({"name": "all", "containerEdits": {"deviceNodes": every}})
    doc["devices"] = devices
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_the_generated_spec_reads_with_its_devices_edits_and_hooks() -> None:
    spec = load_spec(CORPUS / "nvidia-ctk-generate-index.yaml")
    assert (spec.kind, spec.version) == (KIND, "0.5.0")
    assert [d.name for d in spec.devices] == ["0", "all"]
    assert spec.devices[0].nodes[0].path == "/dev/nvidia0"
    assert spec.devices[0].nodes[0].host_path == "/driver-root/dev/nvidia0"
    assert [n.path for n in spec.edits.nodes] == ["/dev/nvidiactl"]
    assert [h.action for h in spec.edits.hooks] == ["create-symlinks", "enable-cuda-compat", "update-ldcache"]
    assert spec.edits.env == ("NVIDIA_VISIBLE_DEVICES=void",)
    assert spec.edits.mounts[0].options == ("ro", "nosuid", "nodev", "bind")


def test_the_generated_spec_names_gpu_by_its_node_minor_and_has_all() -> None:
    specs = [load_spec(CORPUS / "nvidia-ctk-generate-index.yaml")]
    inv = inventory(1)
    assert names_by_gpu(specs, inv, KIND) == {UUIDS[0]: [f"{KIND}=0"]}
    assert all_name(specs, inv, KIND) == f"{KIND}=all"
    assert naming_strategies(specs, inv, KIND) == ("index",)


def test_a_spec_of_another_kind_names_nothing() -> None:
    specs = [load_spec(CORPUS / "nvidia-ctk-generate-index.yaml")]
    assert names_by_gpu(specs, inventory(1), "nvidia.com/gpu") == {UUIDS[0]: []}
    assert all_name(specs, inventory(1), "nvidia.com/gpu") is None


def test_a_name_in_nvidia_ctk_form_names_its_gpu_and_a_node_mismatch_is_reported() -> None:
    """Host index 0 is /dev/nvidia3 here, but the spec's "0" injects /dev/nvidia0."""
    specs = [load_spec(CORPUS / "nvidia-ctk-generate-index.yaml")]
    inv = inventory(1, minors=(3,))
    assert names_by_gpu(specs, inv, KIND) == {UUIDS[0]: [f"{KIND}=0"]}
    (problem,) = node_mismatches(specs, inv, KIND)
    assert f"{KIND}=0 names GPU 0" in problem and "/dev/nvidia3) but injects /dev/nvidia0" in problem


def test_any_other_name_stands_for_the_gpu_of_its_single_node(tmp_path: Path) -> None:
    path = variant(tmp_path, {"0": "left", "1": "right"})
    inv = inventory(2, minors=(1, 0))
    assert names_by_gpu([load_spec(path)], inv, KIND) == {
        UUIDS[0]: [f"{KIND}=right"],
        UUIDS[1]: [f"{KIND}=left"],
    }
    assert naming_strategies([load_spec(path)], inv, KIND) == ()
    assert node_mismatches([load_spec(path)], inv, KIND) == []


def test_a_device_injecting_two_gpus_under_an_index_name_still_names_that_gpu(tmp_path: Path) -> None:
    """A leak (the spec's "0" also injects /dev/nvidia1) must not hide GPU 0's name: the cases catch it."""
    path = variant(tmp_path, {"0": "0", "1": "1"})
    doc = yaml.safe_load(path.read_text())
    doc["devices"][0]["containerEdits"]["deviceNodes"].append({"path": "/dev/nvidia1"})
    path.write_text(yaml.safe_dump(doc))
    specs = [load_spec(path)]
    assert names_by_gpu(specs, inventory(2), KIND)[UUIDS[0]] == [f"{KIND}=0"]
    assert len(node_mismatches(specs, inventory(2), KIND)) == 1


@pytest.mark.parametrize(
    ("names", "strategy"),
    [
        ({"0": "0", "1": "1"}, "index"),
        ({"0": UUIDS[0], "1": UUIDS[1]}, "uuid"),
        ({"0": "gpu0", "1": "gpu1"}, "type-index"),
    ],
)
def test_each_naming_strategy_is_learnt_from_the_spec(
    tmp_path: Path, names: dict[str, str], strategy: str
) -> None:
    specs = [load_spec(variant(tmp_path, names))]
    inv = inventory(2)
    assert names_by_gpu(specs, inv, KIND) == {UUIDS[i]: [f"{KIND}={names[str(i)]}"] for i in range(2)}
    assert naming_strategies(specs, inv, KIND) == (strategy,)


def test_a_spec_without_all_has_no_all_name(tmp_path: Path) -> None:
    specs = [load_spec(variant(tmp_path, {"0": "gpu0", "1": "gpu1"}, keep_all=False))]
    assert all_name(specs, inventory(2), KIND) is None


def test_a_mig_device_never_names_its_parent_gpu(tmp_path: Path) -> None:
    path = variant(tmp_path, {"0": "0", "1": "1"})
    doc = yaml.safe_load(path.read_text())
    doc["devices"].append(
        {
            "name": "0:1",
            "containerEdits": {
                "deviceNodes": [
                    {"path": "/dev/nvidia0"},
                    {"path": "/dev/nvidia-caps/nvidia-cap12"},
                    {"path": "/dev/nvidia-caps/nvidia-cap13"},
                ]
            },
        }
    )
    path.write_text(yaml.safe_dump(doc))
    spec = load_spec(path)
    assert spec.device("0:1") is not None and spec.device("0:1").is_mig  # type: ignore[union-attr]
    assert names_by_gpu([spec], inventory(2), KIND)[UUIDS[0]] == [f"{KIND}=0"]


def test_a_json_spec_reads_like_yaml(tmp_path: Path) -> None:
    import json

    path = tmp_path / "nvidia.json"
    path.write_text(json.dumps(generated()))
    assert load_spec(path) == load_spec(CORPUS / "nvidia-ctk-generate-index.yaml").__class__(
        **{**load_spec(CORPUS / "nvidia-ctk-generate-index.yaml").__dict__, "path": str(path)}
    )


def test_the_wsl_spec_of_version_0_3_has_only_all_and_names_no_single_gpu() -> None:
    spec = load_spec(CORPUS / "wsl-all-only-0.3.0.yaml")
    assert (spec.version, [d.name for d in spec.devices]) == ("0.3.0", ["all"])
    node = spec.devices[0].nodes[0]
    assert (node.path, node.major, node.minor, node.file_mode) == ("/dev/dxg", 10, 258, 438)
    assert names_by_gpu([spec], inventory(1), "nvidia.com/gpu") == {UUIDS[0]: []}


def test_a_top_level_only_excerpt_is_refused_in_one_line() -> None:
    with pytest.raises(CdiSpecError) as info:
        load_spec(CORPUS / "toolkit-1.12-rc2-top-level-only-0.4.0.yaml")
    assert "kind must look like vendor.com/class" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("version", ["0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0"])
def test_every_cdi_version_from_0_3_to_0_8_reads(version: str) -> None:
    doc = generated()
    doc["cdiVersion"] = version
    assert parse_spec(yaml.safe_dump(doc)).version == version


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cdiVersion": "0.2.0"}, "cdiVersion '0.2.0' is not one gpuconform reads"),
        ({"cdiVersion": "1.0.0"}, "hint: specs of cdiVersion 0.3.0 to 0.8.0"),
        ({"kind": "nvidia"}, "kind must look like vendor.com/class"),
        ({"devices": []}, "declares no devices"),
        ({"devices": [{"name": "0"}, {"name": "0"}]}, "device name '0' appears twice"),
        ({"devices": [{"name": "bad name"}]}, "devices\\[0\\].name must be a CDI device name"),
        (
            {"devices": [{"name": "0", "containerEdits": {"deviceNodes": [{"path": "nvidia0"}]}}]},
            "must be an absolute path",
        ),
        (
            {
                "devices": [
                    {"name": "0", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0", "minor": "x"}]}}
                ]
            },
            "minor must be a int",
        ),
    ],
)
def test_bad_specs_are_refused_with_one_line_naming_the_file(change: dict[str, Any], message: str) -> None:
    doc = {**generated(), **change}
    with pytest.raises(CdiSpecError, match=message) as info:
        parse_spec(yaml.safe_dump(doc), "/etc/cdi/x.yaml")
    assert str(info.value).startswith("/etc/cdi/x.yaml: ") and "\n" not in str(info.value)


def test_load_specs_keeps_going_past_a_broken_file(tmp_path: Path) -> None:
    (tmp_path / "a-broken.yaml").write_text("cdiVersion: [\n")
    (tmp_path / "b-good.yaml").write_text((CORPUS / "nvidia-ctk-generate-index.yaml").read_text())
    (tmp_path / "c-ignored.txt").write_text("not a spec")
    specs = load_specs([tmp_path, tmp_path / "missing"])
    assert [Path(s.path).name for s in specs] == ["b-good.yaml"]
    assert [Path(e.path).name for e in specs.errors] == ["a-broken.yaml"]
    assert "not valid YAML or JSON at line" in str(specs.errors[0])


def test_a_name_claiming_a_gpu_the_host_lacks_names_none_even_if_its_node_matches(tmp_path: Path) -> None:
    stranger = "GPU-0ef519ec-7d02-4ffe-8b8a-cc079f7fce21"
    specs = [load_spec(variant(tmp_path, {"0": stranger, "1": "7"}))]
    assert names_by_gpu(specs, inventory(2), KIND) == {UUIDS[0]: [], UUIDS[1]: []}
