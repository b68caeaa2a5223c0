"""MIG through real engines against the simulated host (profile ``mig``), healthy and broken.

Healthy: every MIG cell is green on each container column. Fault ``mig-whole-parent:1`` (a MIG
request of GPU 1 injects all of GPU 1's MIG devices): mig.each turns red naming the siblings,
while mig.parent and the neighbouring device cases stay green, so the fault is caught by the case
that names it and by no other. Fault ``mig-grant-mismatch:1`` (Kubernetes: the device plugin
reports one MIG device, the runtime injects its twin of the same profile): kubernetes mig.each turns
red naming both UUIDs, every other kubernetes cell keeps its verdict, and podman stays green.
"""

from __future__ import annotations

import pytest

from tests.integration.conftest import run_conformance

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


def test_kubernetes_mig_grant_mismatch_turns_only_mig_each_red_naming_the_granted_and_seen_uuids(  # type: ignore[no-untyped-def]
    conformance, tmp_path
) -> None:
    """Fault mig-grant-mismatch:1: the device plugin reports one 1g.10gb unit of GPU 1 in
    allocatedResourcesStatus while the runtime injects its twin, same profile, same parent: a pod
    that counted its MIG devices or checked their profile would pass; only the UUID check sees it.
    The whole kubernetes column runs with and without the fault: mig.each alone changes verdict."""
    clean = conformance("--drivers", "kubernetes", "--require-driver", "kubernetes", "--sim", "mig")
    assert clean.exit_code == 0, clean.output[-3000:]
    faulted = run_conformance(
        tmp_path / "faulted",
        *("--drivers", "kubernetes", "--require-driver", "kubernetes", "--sim", "mig"),
        *("--sim-fault", "mig-grant-mismatch:1"),
    )
    assert faulted.exit_code == 1, faulted.output[-3000:]
    before, after = clean.verdicts("kubernetes"), faulted.verdicts("kubernetes")
    assert before["mig.each"] == "pass" and after["mig.each"] == "fail"
    assert {c: v for c, v in after.items() if c != "mig.each"} == {
        c: v for c, v in before.items() if c != "mig.each"
    }
    twins = [m for m in faulted.results["inventory"]["migs"] if m["profile"] == "1g.10gb"]
    assert len(twins) == 2 and {m["parent_index"] for m in twins} == {1}
    record = faulted.record("kubernetes", "mig.each")
    detail = next(d for d in record["details"] if d["id"] == "nvidia.com/mig-1g.10gb")
    granted = detail["mig"]  # what allocatedResourcesStatus reported
    (seen,) = detail["migs"]
    assert {granted, seen} == {m["uuid"] for m in twins}, "the grant and what was seen must be the twins"
    assert detail["gpus"] == [twins[0]["parent_uuid"]]  # the same parent: only the UUID tells
    assert granted in record["reason"] and seen in record["reason"], record["reason"]
    assert record["reason"].endswith("instead"), record["reason"]
    for other in record["details"]:  # the profiles with one unit are untouched and were judged
        if other is not detail:
            assert other["migs"] == [other["mig"]]
    assert not faulted.containers(), "pods' containers left behind after a failing run"


def test_mig_grant_mismatch_leaves_the_container_columns_green(conformance) -> None:  # type: ignore[no-untyped-def]
    """The fault is the Kubernetes device plugin's: a CDI request by name on podman is unaffected."""
    run = conformance(
        *("--drivers", "podman", "--require-driver", "podman", "--sim", "mig"),
        *("--sim-fault", "mig-grant-mismatch:1", "-k", "mig"),
    )
    assert run.exit_code == 0, run.output[-3000:]
    assert run.verdicts("podman") == {"mig.each": "pass", "mig.parent": "pass"}
