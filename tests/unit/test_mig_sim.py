"""The simulated host's MIG model: profile ``mig``, its plan entries, CDI names and inventory.

What must hold: each MIG device is injected with its parent's node and descriptor plus exactly its
own two capability nodes and descriptor; the parent's own entries carry no capability node; the
CDI spec names MIG devices as nvidia-ctk does (``<gpu>:<mig>``, ``MIG-<uuid>``, ``mig<gpu>:<mig>``)
and the spec reader takes them for MIG devices, never for their parent; profiles without MIG are
unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gpuconform.drivers.inventory import (
    SCHEME_CDI,
    SCHEME_LEGACY,
    Inventory,
    InventoryError,
    MigRecord,
    learn_cdi_ids,
)
from gpuconform.fixtures.sim.simgpu.cdi import cdi_spec
from gpuconform.fixtures.sim.simgpu.faults import FaultError, parse_faults
from gpuconform.fixtures.sim.simgpu.plan import build_plan, cdi_names, descriptor_fields
from gpuconform.fixtures.sim.simgpu.profiles import PROFILES, SimMig, get_profile
from gpuconform.workloads.cdi_spec import parse_spec

ROOT = Path("/run/gpuconform/sim/t")
KIND = "sim.gpuconform.dev/t"
MIG = get_profile("mig")


def _plan(profile: str = "mig", faults: tuple[str, ...] = ()) -> dict[str, Any]:
    prof = get_profile(profile)
    migs = prof.migs
    parsed = parse_faults(faults, prof.count, mig_gpus={m.parent.index for m in migs})
    return build_plan("t", prof.gpus, parsed, ROOT, migs)


def _paths(entry: dict[str, Any]) -> tuple[list[str], list[str]]:
    return [n["path"] for n in entry["nodes"]], [m["containerPath"] for m in entry["mounts"]]


def test_profile_mig_has_two_mig_enabled_gpus_with_devices_of_different_sizes() -> None:
    assert [g.mig_enabled for g in MIG.gpus] == [False, True, True, False]
    by_parent = {i: [m.profile for m in MIG.migs if m.parent.index == i] for i in (1, 2)}
    assert by_parent == {1: ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"], 2: ["4g.40gb", "3g.40gb"]}
    uuids = [m.uuid for m in MIG.migs]
    assert len(set(uuids)) == len(uuids) and all(u.startswith("MIG-") for u in uuids)
    assert [m.selector for m in MIG.migs][:2] == ["1:0", "1:1"]


def test_no_other_profile_has_mig_devices_or_mig_mode() -> None:
    for name, prof in PROFILES.items():
        if name != "mig":
            assert prof.migs == () and not any(g.mig_enabled for g in prof.gpus)
            assert all("MIG_MODE" not in descriptor_fields(g, ()) for g in prof.gpus)


def test_capability_minors_follow_the_drivers_mig_minors_table() -> None:
    # /proc/driver/nvidia-caps/mig-minors: gpu0/gi2/access is 21 and gpu0/gi2/ci0/access 22 (9 per
    # GPU instance after config 1 and monitor 2; 15 GPU instances per GPU).
    gpu0 = MIG.gpus[0]
    mig = SimMig(parent=gpu0, device=0, profile="3g.40gb", gi=2, ci=0, memory_mib=40192, uuid="MIG-x")
    assert (mig.gi_cap, mig.ci_cap) == (21, 22)
    first = MIG.migs[0]  # GPU 1, GPU instance 1
    assert (first.gi_cap, first.ci_cap) == (3 + (15 + 1) * 9, 3 + (15 + 1) * 9 + 1)
    caps = [c for m in MIG.migs for c in (m.gi_cap, m.ci_cap)]
    assert len(set(caps)) == len(caps)


def test_a_mig_entry_injects_its_parent_and_exactly_its_own_caps_and_descriptor() -> None:
    plan = _plan()
    mig = MIG.migs[1]  # 2g.20gb on GPU 1
    nodes, mounts = _paths(plan["devices"]["1:1"])
    assert nodes == [
        "/dev/nvidia1",
        f"/dev/nvidia-caps/nvidia-cap{mig.gi_cap}",
        f"/dev/nvidia-caps/nvidia-cap{mig.ci_cap}",
    ]
    assert mounts == ["/run/gpuconform-sim/gpus/1", f"/run/gpuconform-sim/gpus/mig-{mig.gi_cap}"]
    assert plan["devices"][mig.uuid] == plan["devices"]["1:1"]


def test_the_parent_requested_whole_gets_no_capability_node() -> None:
    nodes, mounts = _paths(_plan()["devices"]["1"])
    assert nodes == ["/dev/nvidia1"] and mounts == ["/run/gpuconform-sim/gpus/1"]


def test_all_injects_every_gpu_and_every_mig_device() -> None:
    nodes, mounts = _paths(_plan()["devices"]["all"])
    assert sum(p.startswith("/dev/nvidia-caps/") for p in nodes) == 2 * len(MIG.migs)
    assert sum("/mig-" in p for p in mounts) == len(MIG.migs)


def test_fault_mig_whole_parent_injects_every_sibling_for_one_mig_request() -> None:
    plan = _plan(faults=("mig-whole-parent:1",))
    nodes, mounts = _paths(plan["devices"]["1:1"])
    siblings = [m for m in MIG.migs if m.parent.index == 1]
    assert sum(p.startswith("/dev/nvidia-caps/") for p in nodes) == 2 * len(siblings)
    assert sorted(p for p in mounts if "/mig-" in p) == sorted(
        f"/run/gpuconform-sim/gpus/mig-{m.gi_cap}" for m in siblings
    )
    assert _paths(plan["devices"]["2:0"]) == _paths(_plan()["devices"]["2:0"])  # GPU 2 untouched


@pytest.mark.parametrize(("profile", "gpu"), [("mig", 0), ("mig", 3), ("h100x4", 1)])
def test_fault_mig_whole_parent_on_a_gpu_without_mig_is_refused_with_a_hint(profile: str, gpu: int) -> None:
    prof = get_profile(profile)
    with pytest.raises(FaultError, match=r"not MIG-enabled \(hint: "):
        parse_faults([f"mig-whole-parent:{gpu}"], prof.count, mig_gpus={m.parent.index for m in prof.migs})


@pytest.mark.parametrize(
    ("naming", "expected"),
    [
        ("index", ["1:0", "1:1", "1:2", "1:3", "2:0", "2:1"]),
        ("uuid", [m.uuid for m in MIG.migs]),
        ("type-index", ["mig1:0", "mig1:1", "mig1:2", "mig1:3", "mig2:0", "mig2:1"]),
    ],
)
def test_cdi_names_of_mig_devices_follow_nvidia_ctk_strategies(naming: str, expected: list[str]) -> None:
    plan = build_plan(
        "t", get_profile(f"mig:cdi={naming}").gpus, (), ROOT, get_profile(f"mig:cdi={naming}").migs
    )
    names = [name for name, _ in cdi_names(plan)]
    assert names[4:-1] == expected and names[-1] == "all"


def _learnt(profile: str = "mig") -> Inventory:
    prof = get_profile(profile)
    inventory = Inventory(
        host="t",
        gpus=prof.records(KIND),
        simulated=True,
        source="sim:t",
        cdi_kind=KIND,
        migs=prof.mig_records(KIND),
    )
    spec = parse_spec(yaml.safe_dump(cdi_spec(_plan(profile))), "/var/run/cdi/t.yaml")
    return learn_cdi_ids(inventory, [spec])


def test_the_spec_reader_takes_mig_devices_for_mig_devices_never_for_their_parent() -> None:
    learnt = _learnt()
    gpu1 = next(g for g in learnt.gpus if g.index == 1)
    assert gpu1.ids(SCHEME_CDI) == (f"{KIND}=1", f"{KIND}={gpu1.uuid}")
    first = learnt.migs[0]
    assert first.ids(SCHEME_CDI) == (f"{KIND}=1:0", f"{KIND}={first.uuid}")
    assert first.ids(SCHEME_LEGACY) == ("1:0", first.uuid)


def test_inventory_round_trips_mig_devices_and_omits_the_key_without_them() -> None:
    inventory = _learnt()
    assert Inventory.loads(inventory.dumps()) == inventory
    assert Inventory.loads(inventory.dumps()).migs == inventory.migs
    plain = _learnt("h100x4")
    assert "migs" not in plain.to_json()
    assert [m.profile for m in inventory.migs_of(inventory.gpus[2].uuid)] == ["4g.40gb", "3g.40gb"]
    assert inventory.migs_of(inventory.gpus[0].uuid) == ()


def test_inventory_refuses_a_mig_device_whose_parent_it_does_not_have() -> None:
    orphan = MigRecord("MIG-1", "GPU-nope", 9, 0, "1g.10gb", 7, 0, 9728)
    with pytest.raises(InventoryError, match="name a parent GPU that is not in the inventory"):
        Inventory(host="t", gpus=(), simulated=True, source="t", migs=(orphan,))


def test_resolve_mig_finds_a_mig_device_by_any_of_its_ids_and_never_a_gpu() -> None:
    learnt = _learnt()
    first = learnt.migs[0]
    assert learnt.resolve_mig(SCHEME_CDI, f"{KIND}=1:0") == first
    assert learnt.resolve_mig(SCHEME_LEGACY, first.uuid) == first
    assert learnt.resolve_mig(SCHEME_LEGACY, "1") is None and learnt.resolve(SCHEME_LEGACY, "1:0") is None
