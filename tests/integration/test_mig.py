"""MIG through real engines against the simulated host (profile ``mig``), healthy and broken.

Healthy: every MIG cell is green on each container column. Fault ``mig-whole-parent:1`` (a MIG
request of GPU 1 injects all of GPU 1's MIG devices): mig.each turns red naming the siblings,
while mig.parent and the neighbouring device cases stay green, so the fault is caught by the case
that names it and by no other.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

GOOD = {"pass", "rejected", "unsupported", "skip"}
COLUMNS = ["podman", "docker-cdi", "docker-legacy"]
CASES = "mig or device.each or smi.all"


@pytest.mark.parametrize("driver", COLUMNS)
def test_healthy_mig_host_is_green_with_each_mig_device_seen_alone(conformance, driver: str) -> None:  # type: ignore[no-untyped-def]
    run = conformance("--drivers", driver, "--require-driver", driver, "--sim", "mig", "-k", CASES)
    assert run.exit_code == 0, run.output[-3000:]
    verdicts = run.verdicts(driver)
    assert verdicts == {"mig.each": "pass", "mig.parent": "pass", "device.each": "pass", "smi.all": "pass"}
    record = run.record(driver, "mig.each")
    migs = run.results["inventory"]["migs"]
    assert len(record["details"]) == len(migs) == 6
    for detail, mig in zip(record["details"], migs, strict=True):
        assert detail["migs"] == [mig["uuid"]] and detail["gpus"] == [mig["parent_uuid"]]
    assert not run.containers(), "containers left behind"


@pytest.mark.parametrize("driver", COLUMNS)
def test_mig_whole_parent_turns_mig_each_red_naming_the_siblings_and_nothing_else(  # type: ignore[no-untyped-def]
    conformance, driver: str
) -> None:
    run = conformance(
        "--drivers",
        driver,
        "--require-driver",
        driver,
        "--sim",
        "mig",
        "--sim-fault",
        "mig-whole-parent:1",
        "-k",
        CASES,
    )
    assert run.exit_code == 1, run.output[-3000:]
    verdicts = run.verdicts(driver)
    assert verdicts == {"mig.each": "fail", "mig.parent": "pass", "device.each": "pass", "smi.all": "pass"}
    record = run.record(driver, "mig.each")
    migs = [m for m in run.results["inventory"]["migs"] if m["parent_index"] == 1]
    assert "sibling" in record["reason"] and "whole parent GPU's MIG devices" in record["reason"]
    assert sum(m["uuid"] in record["reason"] for m in migs) == len(migs)
    assert sorted(record["parsed"]["seen"]["migs"]) == sorted(m["uuid"] for m in migs)
    assert record["commands"], "a failed case must carry the commands it ran"
    assert not run.containers(), "containers left behind after a failing run"


def test_vm_columns_declare_mig_out_of_scope_and_host_without_mig_skips(conformance) -> None:  # type: ignore[no-untyped-def]
    run = conformance("--drivers", "qemu,qemu-single", "--sim", "mig", "-k", "mig")
    assert run.verdicts("qemu") == {"mig.each": "unsupported", "mig.parent": "unsupported"}, run.output[
        -3000:
    ]
    assert run.verdicts("qemu-single") == {"mig.each": "unsupported", "mig.parent": "unsupported"}
    plain = conformance("--drivers", "podman", "--sim", "h100x4", "-k", "mig")
    assert plain.verdicts("podman") == {"mig.each": "skip", "mig.parent": "skip"}
    assert "no GPU of this host is in MIG mode" in plain.record("podman", "mig.each")["reason"]


def _kube_run(conformance, *faults: str):  # type: ignore[no-untyped-def]
    extra = [a for f in faults for a in ("--sim-fault", f)]
    return conformance(
        "--drivers", "kubernetes", "--require-driver", "kubernetes", "--sim", "mig", *extra, "-k", CASES
    )  # fmt: skip


def test_kubernetes_mig_units_by_mixed_strategy_resource_each_yield_the_granted_device_alone(  # type: ignore[no-untyped-def]
    conformance,
) -> None:
    """One pod per MIG profile asks one nvidia.com/mig-<profile> unit; each sees exactly the MIG
    device the double's plugin granted (allocatedResourcesStatus), under its parent."""
    run = _kube_run(conformance)
    assert run.exit_code == 0, run.output[-3000:]
    assert run.verdicts("kubernetes") == {
        "mig.each": "pass",
        "mig.parent": "unsupported",
        "device.each": "rejected",
        "smi.all": "pass",
    }
    record = run.record("kubernetes", "mig.each")
    migs = {m["uuid"]: m for m in run.results["inventory"]["migs"]}
    profiles = sorted({m["profile"] for m in migs.values()})
    assert sorted(d["id"] for d in record["details"]) == [f"nvidia.com/mig-{p}" for p in profiles]
    for detail in record["details"]:
        mig = migs[detail["mig"]]
        assert detail["id"] == f"nvidia.com/mig-{mig['profile']}"
        assert detail["migs"] == [mig["uuid"]] and detail["gpus"] == [mig["parent_uuid"]]
    assert not run.containers(), "pods' containers left behind"


def test_kubernetes_mig_whole_parent_turns_mig_each_red_naming_the_siblings_and_nothing_else(  # type: ignore[no-untyped-def]
    conformance,
) -> None:
    run = _kube_run(conformance, "mig-whole-parent:1")
    assert run.exit_code == 1, run.output[-3000:]
    assert run.verdicts("kubernetes") == {
        "mig.each": "fail",
        "mig.parent": "unsupported",
        "device.each": "rejected",
        "smi.all": "pass",
    }
    record = run.record("kubernetes", "mig.each")
    siblings = [m for m in run.results["inventory"]["migs"] if m["parent_index"] == 1]
    assert "sibling" in record["reason"] and "whole parent GPU's MIG devices" in record["reason"]
    assert sum(m["uuid"] in record["reason"] for m in siblings) == len(siblings)  # it and its siblings
    assert sorted(record["parsed"]["seen"]["migs"]) == sorted(m["uuid"] for m in siblings)
    assert not run.containers(), "pods' containers left behind after a failing run"
