"""Through Podman: CDI names learnt from the spec on the machine, and the node check per case.

The simulated host writes its spec in the shapes ``nvidia-ctk cdi generate`` writes (profile
option ``cdi=``); the harness must pick names that exist in it, and a node leak nvidia-smi cannot
see must turn the cell whose request caused it red, naming the extra node.
"""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.integration

GOOD = {"pass", "rejected", "unsupported", "skip"}


@pytest.mark.parametrize("case", ["device.each", "count.1", "smi.default"])
def test_a_leaked_node_fails_the_case_whose_request_caused_it(conformance, case: str) -> None:  # type: ignore[no-untyped-def]
    """Every GPU's entries leak the other GPU's node, so whichever GPU a lease yields, it leaks."""
    run = conformance(
        "--drivers", "podman", "--require-driver", "podman", "--sim", "h100x2",
        "--sim-fault", "extra-node:0", "--sim-fault", "extra-node:1", "-k", case,
    )  # fmt: skip
    assert run.exit_code == 1, run.output[-3000:]
    record = run.record("podman", case)
    assert record["verdict"] == "fail", record
    assert re.search(r"extra /dev/nvidia[01]\b", record["reason"]), record["reason"]
    assert record["seen"], "nvidia-smi saw the right GPU: only the node check can catch this"
    assert any(c["argv"] == ["ls", "-1", "/dev"] for c in record["commands"]), (
        "the evidence shows the listing"
    )
    assert not run.containers(), "containers left behind"


def test_a_uuid_only_spec_without_all_still_passes_podmans_device_cases(conformance) -> None:  # type: ignore[no-untyped-def]
    run = conformance(
        "--drivers", "podman", "--require-driver", "podman", "--sim", "h100x4:cdi=uuid:no-all",
        "-k", "smi or count or device",
    )  # fmt: skip
    verdicts = run.verdicts("podman")
    assert all(v in GOOD for v in verdicts.values()), verdicts
    assert run.exit_code == 0, run.output[-3000:]
    assert verdicts["device.each"] == verdicts["device.pair"] == verdicts["smi.all"] == "pass"
    assert verdicts["device.uuid"] == "skip", "one name per GPU: nothing to compare the UUID form with"
    ids = [i for d in run.record("podman", "device.each")["details"] for i in d["ids"]]
    assert ids and all("=GPU-" in i for i in ids), ids


def test_an_index_only_spec_skips_device_uuid_with_the_reason(conformance) -> None:  # type: ignore[no-untyped-def]
    run = conformance(
        "--drivers",
        "podman",
        "--require-driver",
        "podman",
        "--sim",
        "h100x2:cdi=index",
        "-k",
        "device.uuid or device.each",
    )
    assert run.exit_code == 0, run.output[-3000:]
    assert run.verdicts("podman") == {"device.uuid": "skip", "device.each": "pass"}
    assert "no separate UUID-form and index-form ids" in run.record("podman", "device.uuid")["reason"]


def test_a_type_index_spec_names_gpus_gpu0_gpu1(conformance) -> None:  # type: ignore[no-untyped-def]
    run = conformance(
        "--drivers",
        "podman",
        "--require-driver",
        "podman",
        "--sim",
        "h100x2:cdi=type-index",
        "-k",
        "device.each or smi.all",
    )
    assert run.exit_code == 0, run.output[-3000:]
    assert run.verdicts("podman") == {"device.each": "pass", "smi.all": "pass"}
    ids = [i for d in run.record("podman", "device.each")["details"] for i in d["ids"]]
    assert [i.split("=")[1] for i in ids] == ["gpu0", "gpu1"]


def test_a_uuid_only_spec_without_all_passes_the_docker_cdi_column_too(conformance) -> None:  # type: ignore[no-untyped-def]
    run = conformance(
        "--drivers", "docker-cdi", "--require-driver", "docker-cdi", "--sim", "h100x2:cdi=uuid:no-all",
        "-k", "device.each or smi.default or smi.all",
    )  # fmt: skip
    assert run.exit_code == 0, run.output[-3000:]
    assert run.verdicts("docker-cdi") == {"device.each": "pass", "smi.default": "pass", "smi.all": "pass"}
    ids = [i for d in run.record("docker-cdi", "device.each")["details"] for i in d["ids"]]
    assert ids and all("=GPU-" in i for i in ids), ids
