"""The Kubernetes API double on a MIG host: the device plugin's ``mixed`` strategy.

MIG-enabled GPUs are not advertised as ``nvidia.com/gpu``; each MIG profile is a resource
``nvidia.com/mig-<profile>`` whose units are its MIG devices, handed to the pod's container by the
MIG device's CDI name (k8s-device-plugin, "MIG support"). Without MIG devices nothing changes.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from gpuconform.drivers.inventory import Inventory
from gpuconform.fixtures.sim.kubedouble.model import Cluster
from gpuconform.fixtures.sim.kubedouble.runner import ContainerSpec, PodmanRunner
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
