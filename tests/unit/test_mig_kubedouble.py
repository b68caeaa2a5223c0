"""The Kubernetes API double on a MIG host: the device plugin's ``mixed`` strategy.

MIG-enabled GPUs are not advertised as ``nvidia.com/gpu``; each MIG profile is a resource
``nvidia.com/mig-<profile>`` whose units are its MIG devices, handed to the pod's container by the
MIG device's CDI name (k8s-device-plugin, "MIG support"). Without MIG devices nothing changes.
Fault ``mig-grant-mismatch:N`` makes the plugin report one MIG device and the runtime inject its
twin of the same profile (tests/integration/test_mig.py shows kubernetes mig.each turning red).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from gpuconform.drivers.inventory import Inventory
from gpuconform.fixtures.sim.kubedouble.model import Cluster
from gpuconform.fixtures.sim.kubedouble.runner import ContainerSpec, PodmanRunner
from gpuconform.fixtures.sim.simgpu.faults import (
    FaultError,
    check_mig_twin_faults,
    mig_grant_swaps,
    mig_twin_gpus,
    parse_faults,
)
from gpuconform.fixtures.sim.simgpu.profiles import get_profile

KIND = "sim.gpuconform.dev/k"


class FakeRunner:
    double_id = "t"

    def __init__(self) -> None:
        self.started: list[ContainerSpec] = []

    async def run(self, spec: ContainerSpec) -> str:
        self.started.append(spec)
        return f"id-{len(self.started)}"

    async def remove(self, name: str) -> None:
        return None


def _inventory(profile: str) -> Inventory:
    prof = get_profile(profile)
    return Inventory("t", prof.records(KIND), True, f"sim:{profile}", KIND, migs=prof.mig_records(KIND))


def _pod(name: str, limits: dict[str, str]) -> dict[str, Any]:
    container = {"name": "c", "image": "busybox", "resources": {"limits": limits}}
    return {"metadata": {"name": name}, "spec": {"containers": [container]}}


def test_node_advertises_whole_gpus_and_mig_profiles_separately() -> None:
    cluster = Cluster(_inventory("mig"), cast(PodmanRunner, FakeRunner()), "node")
    allocatable = cluster.node["status"]["allocatable"]
    assert allocatable["nvidia.com/gpu"] == "2"  # GPUs 0 and 3; 1 and 2 are MIG-enabled
    assert {k: v for k, v in allocatable.items() if k.startswith("nvidia.com/mig-")} == {
        "nvidia.com/mig-1g.10gb": "2",
        "nvidia.com/mig-2g.20gb": "1",
        "nvidia.com/mig-3g.40gb": "2",
        "nvidia.com/mig-4g.40gb": "1",
    }
    assert cluster.node["metadata"]["labels"]["nvidia.com/mig.strategy"] == "mixed"
    plain = Cluster(_inventory("h100x4"), cast(PodmanRunner, FakeRunner()), "node")
    assert not any(k.startswith("nvidia.com/mig-") for k in plain.node["status"]["allocatable"])
    assert "nvidia.com/mig.strategy" not in plain.node["metadata"]["labels"]


def test_a_mig_resource_gets_one_mig_device_of_that_profile_by_its_cdi_name_and_returns_it() -> None:
    inventory = _inventory("mig")
    runner = FakeRunner()

    async def scenario() -> None:
        cluster = Cluster(inventory, cast(PodmanRunner, runner), "node")
        cluster.create_namespace({"metadata": {"name": "ns"}})
        cluster.create_pod("ns", _pod("a", {"nvidia.com/mig-3g.40gb": "1"}))
        cluster.create_pod("ns", _pod("b", {"nvidia.com/mig-3g.40gb": "1"}))
        cluster.create_pod("ns", _pod("c", {"nvidia.com/mig-3g.40gb": "1"}))
        await asyncio.sleep(0.05)
        threes = [m.uuid for m in inventory.migs if m.profile == "3g.40gb"]
        assert cluster.allocations() == {"ns/a": (threes[0],), "ns/b": (threes[1],)}
        assert runner.started[0].devices == (f"{KIND}={threes[0]}",)
        pending = cluster.get_pod("ns", "c").obj["status"]["conditions"][0]
        assert pending["reason"] == "Unschedulable"
        assert "Insufficient nvidia.com/mig-3g.40gb" in pending["message"]
        cluster.delete_pod("ns", "a", 0)
        await asyncio.sleep(0.1)
        assert cluster.allocations() == {"ns/b": (threes[1],), "ns/c": (threes[0],)}

    asyncio.run(scenario())


def test_whole_gpu_requests_never_get_a_mig_enabled_gpu() -> None:
    inventory = _inventory("mig")

    async def scenario() -> None:
        cluster = Cluster(inventory, cast(PodmanRunner, FakeRunner()), "node")
        cluster.create_namespace({"metadata": {"name": "ns"}})
        cluster.create_pod("ns", _pod("all", {"nvidia.com/gpu": "2"}))
        await asyncio.sleep(0.05)
        assert cluster.allocations() == {"ns/all": (inventory.gpus[0].uuid, inventory.gpus[3].uuid)}

    asyncio.run(scenario())


# -- fault mig-grant-mismatch:N: the plugin reports one MIG device, the runtime injects its twin ----
def _twins(inventory: Inventory, profile: str = "1g.10gb") -> list[str]:
    return [m.uuid for m in sorted(inventory.migs, key=lambda m: m.device) if m.profile == profile]


def test_mig_grant_mismatch_needs_a_mig_enabled_gpu_with_two_devices_of_one_profile() -> None:
    prof = get_profile("mig")
    migs = {m.parent.index for m in prof.migs}
    (fault,) = parse_faults(["mig-grant-mismatch:1"], prof.count, mig_gpus=migs)
    assert str(fault) == "mig-grant-mismatch:1"
    with pytest.raises(FaultError, match="not MIG-enabled"):
        parse_faults(["mig-grant-mismatch:0"], prof.count, mig_gpus=migs)
    twins = mig_twin_gpus((m.parent.index, m.profile) for m in prof.migs)
    assert twins == {1}  # GPU 2's 4g.40gb and 3g.40gb are one of each
    check_mig_twin_faults([fault], twins)
    with pytest.raises(FaultError, match=r"no two MIG devices of one profile .*hint: use GPU 1\)"):
        check_mig_twin_faults(parse_faults(["mig-grant-mismatch:2"], prof.count, mig_gpus=migs), twins)


def test_mig_grant_mismatch_swaps_only_the_faulted_gpus_twins_as_a_permutation() -> None:
    inventory = _inventory("mig")
    a, b = _twins(inventory)
    migs = [(m.parent_index, m.profile, m.device, m.uuid) for m in inventory.migs]
    assert mig_grant_swaps(["mig-grant-mismatch:1"], migs) == {a: b, b: a}
    assert mig_grant_swaps([], migs) == {}
    # three of one profile rotate: each injects the next, the last the first
    assert mig_grant_swaps(
        ["mig-grant-mismatch:0"], [(0, "p", 2, "z"), (0, "p", 0, "x"), (0, "p", 1, "y")]
    ) == {
        "x": "y",
        "y": "z",
        "z": "x",
    }


def test_a_double_for_a_fault_with_no_twin_refuses_to_start() -> None:
    with pytest.raises(FaultError, match="mig-grant-mismatch:2"):
        Cluster(_inventory("mig"), cast(PodmanRunner, FakeRunner()), "node", ["mig-grant-mismatch:2"])


def test_mig_grant_mismatch_reports_the_grant_and_injects_its_twin_that_another_pod_holds() -> None:
    inventory = _inventory("mig")
    runner = FakeRunner()
    a, b = _twins(inventory)
    three = _twins(inventory, "3g.40gb")[0]

    async def scenario() -> None:
        cluster = Cluster(inventory, cast(PodmanRunner, runner), "node", ["mig-grant-mismatch:1"])
        cluster.create_namespace({"metadata": {"name": "ns"}})
        cluster.create_pod("ns", _pod("p", {"nvidia.com/mig-1g.10gb": "1"}))
        cluster.create_pod("ns", _pod("q", {"nvidia.com/mig-1g.10gb": "1"}))
        cluster.create_pod("ns", _pod("r", {"nvidia.com/mig-3g.40gb": "1"}))
        await asyncio.sleep(0.05)
        assert cluster.allocations() == {"ns/p": (a,), "ns/q": (b,), "ns/r": (three,)}
        reported = {
            name: cluster.get_pod("ns", name).obj["status"]["containerStatuses"][0][
                "allocatedResourcesStatus"
            ]
            for name in ("p", "q")
        }
        assert reported == {
            "p": [{"name": "nvidia.com/mig-1g.10gb", "resources": [{"resourceID": a, "health": "Healthy"}]}],
            "q": [{"name": "nvidia.com/mig-1g.10gb", "resources": [{"resourceID": b, "health": "Healthy"}]}],
        }
        injected = {s.name.rsplit("-", 1)[1]: s.devices for s in runner.started}
        assert injected == {"p": (f"{KIND}={b}",), "q": (f"{KIND}={a}",), "r": (f"{KIND}={three}",)}

    asyncio.run(scenario())


def test_a_pod_taking_every_unit_of_the_profile_still_gets_them_all_under_the_fault() -> None:
    """The permutation keeps the MIG probe's truth (every unit of each profile) right."""
    inventory = _inventory("mig")
    runner = FakeRunner()

    async def scenario() -> None:
        cluster = Cluster(inventory, cast(PodmanRunner, runner), "node", ["mig-grant-mismatch:1"])
        cluster.create_namespace({"metadata": {"name": "ns"}})
        cluster.create_pod("ns", _pod("probe", {"nvidia.com/mig-1g.10gb": "2"}))
        await asyncio.sleep(0.05)
        (spec,) = runner.started
        assert sorted(spec.devices) == sorted(f"{KIND}={u}" for u in _twins(inventory))

    asyncio.run(scenario())
