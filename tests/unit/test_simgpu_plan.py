"""The injection plan and the CDI spec built from it, with each fault applied exactly where named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gpuconform.fixtures.sim.simgpu import cdi
from gpuconform.fixtures.sim.simgpu.faults import parse_faults
from gpuconform.fixtures.sim.simgpu.plan import build_plan, descriptor_fields, injection
from gpuconform.fixtures.sim.simgpu.profiles import foreign_uuid, get_profile

ROOT = Path("/run/gpuconform/sim/gpu")
GPUS = get_profile("h100x4").gpus


def plan_for(*faults: str) -> dict[str, Any]:
    return build_plan("gpu", GPUS, parse_faults(faults, 4), ROOT)


def nodes(entry: dict[str, Any]) -> list[tuple[str, str]]:
    return [(n["path"], n["hostPath"]) for n in entry["nodes"]]


def mounts(entry: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["containerPath"], m["hostPath"]) for m in entry["mounts"]]


def gpu_nodes(*minors: int) -> list[tuple[str, str]]:
    return [(f"/dev/nvidia{m}", f"{ROOT}/dev/nvidia{m}") for m in minors]


def gpu_mounts(*minors: int) -> list[tuple[str, str]]:
    return [(f"/run/gpuconform-sim/gpus/{m}", f"{ROOT}/gpus/{m}") for m in minors]


def test_plain_plan_has_index_uuid_and_all_selectors() -> None:
    plan = plan_for()
    assert plan["instance"] == "gpu"
    assert plan["cdi_kind"] == "sim.gpuconform.dev/gpu"
    assert set(plan["devices"]) == {"0", "1", "2", "3", "all", *(g.uuid for g in GPUS)}
    for gpu in GPUS:
        for selector in (str(gpu.index), gpu.uuid):
            assert nodes(plan["devices"][selector]) == gpu_nodes(gpu.minor)
            assert mounts(plan["devices"][selector]) == gpu_mounts(gpu.minor)
    assert nodes(plan["devices"]["all"]) == gpu_nodes(0, 1, 2, 3)
    assert plan["common"]["nodes"] == [
        {"path": "/dev/nvidiactl", "hostPath": f"{ROOT}/dev/nvidiactl", "type": "c", "major": 1, "minor": 3}
    ]
    assert mounts(plan["common"]) == [("/usr/bin/nvidia-smi", f"{ROOT}/bin/nvidia-smi")]
    assert all("ro" in m["options"] for m in plan["common"]["mounts"] + plan["devices"]["0"]["mounts"])


def test_wrong_gpu_redirects_only_the_faulted_selectors() -> None:
    plan = plan_for("wrong-gpu:1")
    for selector in ("1", GPUS[1].uuid):
        assert nodes(plan["devices"][selector]) == gpu_nodes(2)
        assert mounts(plan["devices"][selector]) == gpu_mounts(2)
    for gpu in (GPUS[0], GPUS[2], GPUS[3]):
        assert nodes(plan["devices"][str(gpu.index)]) == gpu_nodes(gpu.minor)
        assert nodes(plan["devices"][gpu.uuid]) == gpu_nodes(gpu.minor)
    assert nodes(plan["devices"]["all"]) == gpu_nodes(0, 2, 3), "all is the union of the index entries"
    assert plan["faults"] == ["wrong-gpu:1"]


def test_wrong_gpu_on_the_last_gpu_wraps_to_the_first() -> None:
    assert nodes(plan_for("wrong-gpu:3")["devices"]["3"]) == gpu_nodes(0)


def test_extra_gpu_adds_the_next_gpu_only_to_the_faulted_selectors() -> None:
    plan = plan_for("extra-gpu:0")
    for selector in ("0", GPUS[0].uuid):
        assert nodes(plan["devices"][selector]) == gpu_nodes(0, 1)
        assert mounts(plan["devices"][selector]) == gpu_mounts(0, 1)
    for gpu in GPUS[1:]:
        assert nodes(plan["devices"][str(gpu.index)]) == gpu_nodes(gpu.minor)
    assert nodes(plan["devices"]["all"]) == gpu_nodes(0, 1, 2, 3)


@pytest.mark.parametrize("fault", ["uuid-mismatch:2", "cuda-unusable:1", "fallen-off-bus:3"])
def test_descriptor_faults_leave_the_selection_untouched(fault: str) -> None:
    assert plan_for(fault)["devices"] == {**plan_for()["devices"]}


def test_descriptor_fields_apply_each_fault_to_its_gpu_only() -> None:
    faults = parse_faults(["uuid-mismatch:2", "cuda-unusable:1", "fallen-off-bus:3"], 4)
    fields = [descriptor_fields(g, faults) for g in GPUS]
    assert fields[0] == {
        "MINOR": 0,
        "UUID": GPUS[0].uuid,
        "NAME": "NVIDIA H100 80GB HBM3",
        "PCI": "00000000:18:00.0",
        "MEMORY_MIB": 81559,
        "DRIVER": "580.105.08",
        "CUDA": "ok",
        "STATE": "ok",
    }
    assert fields[2]["UUID"] == foreign_uuid(GPUS[2].uuid) != GPUS[2].uuid
    assert [f["CUDA"] for f in fields] == ["ok", "unusable", "ok", "ok"]
    assert [f["STATE"] for f in fields] == ["ok", "ok", "ok", "lost"]
    assert [f["UUID"] for i, f in enumerate(fields) if i != 2] == [GPUS[i].uuid for i in (0, 1, 3)]


def test_injection_merges_common_edits_and_knows_unknown_selectors() -> None:
    plan = plan_for()
    merged = injection(plan, "2")
    assert merged is not None
    assert nodes(merged) == [("/dev/nvidiactl", f"{ROOT}/dev/nvidiactl"), *gpu_nodes(2)]
    assert mounts(merged) == [("/usr/bin/nvidia-smi", f"{ROOT}/bin/nvidia-smi"), *gpu_mounts(2)]
    assert injection(plan, "7") is None
    assert injection(plan, "GPU-00000000-0000-0000-0000-000000000000") is None


def test_cdi_spec_structure() -> None:
    plan = plan_for("wrong-gpu:1")
    spec = cdi.cdi_spec(plan)
    assert spec["cdiVersion"] == "0.5.0"
    assert spec["kind"] == "sim.gpuconform.dev/gpu"
    assert set(spec) == {"cdiVersion", "kind", "containerEdits", "devices"}, "podman 4.3 rejects extra keys"
    names = [d["name"] for d in spec["devices"]]
    assert sorted(names) == sorted(["0", "1", "2", "3", "all", *(g.uuid for g in GPUS)])
    assert spec["containerEdits"]["deviceNodes"] == [
        {"path": "/dev/nvidiactl", "hostPath": f"{ROOT}/dev/nvidiactl", "type": "c", "major": 1, "minor": 3}
    ]
    assert spec["containerEdits"]["mounts"] == [
        {
            "hostPath": f"{ROOT}/bin/nvidia-smi",
            "containerPath": "/usr/bin/nvidia-smi",
            "options": ["ro", "nosuid", "nodev", "bind"],
        }
    ]
    one = next(d for d in spec["devices"] if d["name"] == "1")["containerEdits"]
    assert [n["path"] for n in one["deviceNodes"]] == ["/dev/nvidia2"]
    assert [(m["containerPath"], m["hostPath"]) for m in one["mounts"]] == gpu_mounts(2)
    assert all("ro" in m["options"] for m in one["mounts"])


def test_rendered_spec_starts_with_the_marker_and_round_trips() -> None:
    spec = cdi.cdi_spec(plan_for())
    text = cdi.render(spec)
    assert text.splitlines()[0] == cdi.MARKER
    assert yaml.safe_load(text) == spec


@pytest.mark.parametrize("kind", ["nvidia.com/gpu", "nvidia.com/mig"])
def test_nvidia_kinds_are_refused(kind: str) -> None:
    plan = {**plan_for(), "cdi_kind": kind}
    with pytest.raises(cdi.CdiSafetyError, match="never shadow"):
        cdi.cdi_spec(plan)
    with pytest.raises(cdi.CdiSafetyError):
        cdi.check_can_write(Path("/nonexistent/x.yaml"), kind)


def test_missing_gpu_injects_nothing_of_that_gpu_but_stays_resolvable() -> None:
    plan = plan_for("missing-gpu:1")
    assert nodes(plan["devices"]["1"]) == []
    assert mounts(plan["devices"]["1"]) == []
    assert nodes(plan["devices"]["0"]) == gpu_nodes(0)
    assert nodes(plan["devices"]["all"]) == gpu_nodes(0, 2, 3)
    spec = cdi.cdi_spec(plan)
    entry = next(d for d in spec["devices"] if d["name"] == "1")
    assert entry["containerEdits"] == {"env": ["GPUCONFORM_SIM_EMPTY_DEVICE=1"]}


def test_extra_node_adds_the_next_gpus_node_without_its_descriptor() -> None:
    plan = plan_for("extra-node:0")
    for selector in ("0", GPUS[0].uuid):
        assert nodes(plan["devices"][selector]) == gpu_nodes(0, 1)
        assert mounts(plan["devices"][selector]) == gpu_mounts(0), "a leaked node, not a second GPU"
    for gpu in GPUS[1:]:
        assert nodes(plan["devices"][str(gpu.index)]) == gpu_nodes(gpu.minor)
    assert nodes(plan["devices"]["all"]) == gpu_nodes(0, 1, 2, 3)


def test_extra_node_needs_a_second_gpu() -> None:
    from gpuconform.fixtures.sim.simgpu.faults import FaultError

    with pytest.raises(FaultError, match="needs a second GPU"):
        parse_faults(["extra-node:0"], 1)


def _named_spec(profile: str) -> dict[str, Any]:
    from gpuconform.fixtures.sim.simgpu.profiles import get_profile as profile_of

    plan = build_plan("gpu", profile_of(profile).gpus, (), ROOT)
    return cdi.cdi_spec(plan)


@pytest.mark.parametrize(
    ("profile", "names"),
    [
        ("h100x2:cdi=index", ["0", "1", "all"]),
        ("h100x2:cdi=uuid:no-all", [g.uuid for g in get_profile("h100x2").gpus]),
        ("h100x2:cdi=type-index", ["gpu0", "gpu1", "all"]),
        ("h100x2:cdi=type-index:no-all", ["gpu0", "gpu1"]),
    ],
)
def test_the_simulated_spec_takes_the_shape_of_each_naming_strategy(profile: str, names: list[str]) -> None:
    spec = _named_spec(profile)
    assert [d["name"] for d in spec["devices"]] == names
    assert spec["kind"] == "sim.gpuconform.dev/gpu"
    first = spec["devices"][0]["containerEdits"]["deviceNodes"]
    assert [n["path"] for n in first] == ["/dev/nvidia0"], "each name still injects its own GPU"
    hooks = spec["containerEdits"]["hooks"]
    assert [h["args"][1] for h in hooks] == ["create-symlinks", "update-ldcache", "chmod"]
    assert {h["path"] for h in hooks} == {"/bin/true"} and spec["containerEdits"]["env"] == [
        "NVIDIA_VISIBLE_DEVICES=void"
    ]


def test_the_simulated_spec_is_read_by_the_one_reader_with_the_names_it_was_given(tmp_path: Path) -> None:
    from gpuconform.drivers.inventory import Inventory, learn_cdi_ids
    from gpuconform.workloads.cdi_spec import load_specs

    gpus = get_profile("h100x2").gpus
    (tmp_path / "s.yaml").write_text(cdi.render(_named_spec("h100x2:cdi=uuid:no-all")))
    inv = Inventory(
        "h", tuple(g.record("sim.gpuconform.dev/gpu") for g in gpus), True, "sim", "sim.gpuconform.dev/gpu"
    )
    learnt = learn_cdi_ids(inv, load_specs([tmp_path]))
    assert [g.ids("cdi") for g in learnt.gpus] == [(f"sim.gpuconform.dev/gpu={g.uuid}",) for g in gpus]
    assert learnt.cdi_all_id is None and learnt.cdi_strategies == ("uuid",)


def test_the_default_naming_keeps_the_spec_as_it_was() -> None:
    spec = _named_spec("h100x2")
    assert [d["name"] for d in spec["devices"]] == [
        "0",
        get_profile("h100x2").gpus[0].uuid,
        "1",
        get_profile("h100x2").gpus[1].uuid,
        "all",
    ]
    assert "hooks" not in spec["containerEdits"]
