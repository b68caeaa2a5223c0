"""mig.each's judgement of what a sandbox for one MIG device lists (conformance/test_mig.py).

Each wrong shape a real stack produces must fail with the defect named: siblings (the whole
parent's MIG devices injected), a bare parent (no capability nodes), another GPU, another MIG device.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

from gpuconform.conformance.test_mig import _judge_mig
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
CELL = cast(Cell, SimpleNamespace(inventory=INVENTORY))
GPU1, GPU2 = INVENTORY.gpus[1].uuid, INVENTORY.gpus[2].uuid
TARGET = INVENTORY.migs_of(GPU1)[1]  # 2g.20gb, device 1 of GPU 1
SIBLINGS = [m.uuid for m in INVENTORY.migs_of(GPU1) if m.uuid != TARGET.uuid]


def judge(gpus: list[str], migs: list[str]) -> str | None:
    return _judge_mig(CELL, TARGET, "t=1:1", gpus, migs)


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
