"""mig.each's judgement of what a sandbox for one MIG device lists (conformance/test_mig.py).

Each wrong shape a real stack produces must fail with the defect named: siblings (the whole
parent's MIG devices injected), a bare parent (no capability nodes), another GPU, another MIG device.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import NoReturn, cast

import pytest

from gpuconform.conformance.test_mig import _granted_mig, _judge_mig
from gpuconform.drivers.inventory import Inventory
from gpuconform.fixtures.cell import Cell
from gpuconform.fixtures.sim.simgpu.profiles import get_profile

KIND = "sim.gpuconform.dev/t"
PROFILE = get_profile("mig")
INVENTORY = Inventory(
    host="t",
    gpus=PROFILE.records(KIND),
    simulated=True,
    source="sim:mig",
    cdi_kind=KIND,
    migs=PROFILE.mig_records(KIND),
)
GPU1, GPU2 = INVENTORY.gpus[1].uuid, INVENTORY.gpus[2].uuid
TARGET = INVENTORY.migs_of(GPU1)[1]  # 2g.20gb, device 1 of GPU 1
SIBLINGS = [m.uuid for m in INVENTORY.migs_of(GPU1) if m.uuid != TARGET.uuid]


def judge(gpus: list[str], migs: list[str]) -> str | None:
    return _judge_mig(INVENTORY, TARGET, "t=1:1", gpus, migs)


def test_exactly_the_mig_device_under_its_parent_passes() -> None:
    assert judge([GPU1], [TARGET.uuid]) is None


def test_siblings_are_named_as_the_whole_parent_injected() -> None:
    reason = judge([GPU1], [m.uuid for m in INVENTORY.migs_of(GPU1)])
    assert reason is not None and "sibling" in reason and "whole parent GPU's MIG devices" in reason
    assert all(s in reason for s in SIBLINGS)


def test_a_bare_parent_is_named_as_missing_capability_nodes() -> None:
    reason = judge([GPU1], [])
    assert reason is not None and "no MIG device" in reason and "/dev/nvidia-caps" in reason


def test_another_gpu_or_another_mig_device_fails_naming_what_was_seen() -> None:
    wrong_parent = judge([GPU2], [INVENTORY.migs_of(GPU2)[0].uuid])
    assert wrong_parent is not None and GPU2 in wrong_parent
    extra_gpu = judge([GPU1, GPU2], [TARGET.uuid])
    assert extra_gpu is not None and "also lists" in extra_gpu and GPU2 in extra_gpu
    other = judge([GPU1], [SIBLINGS[0]])
    assert other is not None and "instead" in other and SIBLINGS[0] in other


class _Failed(Exception):
    pass


def _failing_cell() -> Cell:
    def fail(reason: str, **_: object) -> NoReturn:
        raise _Failed(reason)

    return cast(Cell, SimpleNamespace(fail=fail))


# Kubernetes' id for a MIG device is its profile's resource: several devices answer to it.
THREES = [m for m in INVENTORY.migs if m.profile == "3g.40gb"]


def test_an_id_naming_one_device_yields_that_device_whatever_the_grant() -> None:
    assert _granted_mig(_failing_cell(), "t=1:1", [TARGET], frozenset({GPU1}), []) is TARGET


def test_a_resource_class_is_judged_against_the_reported_grant() -> None:
    assert len(THREES) == 2
    chosen = _granted_mig(_failing_cell(), "nvidia.com/mig-3g.40gb", THREES, frozenset({THREES[1].uuid}), [])
    assert chosen is THREES[1]


def test_a_grant_outside_the_class_or_of_two_units_fails_naming_it() -> None:
    other = INVENTORY.migs_of(GPU1)[1].uuid  # a 2g.20gb device
    for granted in (frozenset({other}), frozenset(m.uuid for m in THREES)):
        with pytest.raises(_Failed, match="reports granting"):
            _granted_mig(_failing_cell(), "nvidia.com/mig-3g.40gb", THREES, granted, [])


def test_without_a_reported_grant_the_one_device_of_the_class_shown_is_judged() -> None:
    shown = [THREES[0].uuid, INVENTORY.migs_of(GPU1)[1].uuid]
    assert _granted_mig(_failing_cell(), "nvidia.com/mig-3g.40gb", THREES, None, shown) is THREES[0]
    with pytest.raises(_Failed, match="exactly one of its MIG devices"):
        _granted_mig(_failing_cell(), "nvidia.com/mig-3g.40gb", THREES, None, [m.uuid for m in THREES])
