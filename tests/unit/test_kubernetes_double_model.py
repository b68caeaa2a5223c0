"""The API double's scheduler inputs and selectors (the double itself runs in the integration tests)."""

from __future__ import annotations

from typing import Any

import pytest

from gpuconform.fixtures.sim.kubedouble.runner import ContainerSpec, run_argv
from gpuconform.fixtures.sim.kubedouble.scheduling import ApiError, gpu_limit, node_allowed
from gpuconform.fixtures.sim.kubedouble.selectors import SelectorError, field_selector, label_selector


def pod(limits: dict[str, Any] | None = None, requests: dict[str, Any] | None = None) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if limits is not None:
        resources["limits"] = limits
    if requests is not None:
        resources["requests"] = requests
    return {"spec": {"containers": [{"name": "c", "resources": resources}]}}


def test_gpu_limit_reads_limits_and_requires_requests_to_match() -> None:
    assert gpu_limit(pod({"nvidia.com/gpu": "2"})) == 2
    assert gpu_limit(pod()) == 0
    with pytest.raises(ApiError) as info:
        gpu_limit(pod({"nvidia.com/gpu": "2"}, {"nvidia.com/gpu": "1"}))
    assert info.value.code == 422
    with pytest.raises(ApiError):
        gpu_limit(pod({"nvidia.com/gpu": "1.5"}))


def test_node_affinity_on_metadata_name_is_honoured() -> None:
    term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}
    spec = {
        "affinity": {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
        }
    }
    assert node_allowed({"spec": spec}, "n1")
    assert not node_allowed({"spec": spec}, "n2")
    assert node_allowed({"spec": {}}, "n2")


def test_label_and_field_selectors() -> None:
    obj = {"metadata": {"name": "p", "labels": {"a": "1", "b": "2"}}, "involvedObject": {"name": "x"}}
    assert label_selector("a=1,b")(obj)
    assert not label_selector("a!=1")(obj)
    assert not label_selector("c")(obj)
    assert label_selector("!c")(obj)
    assert field_selector("metadata.name=p")(obj)
    assert field_selector("involvedObject.name==x")(obj)
    assert not field_selector("involvedObject.name=y")(obj)
    with pytest.raises(SelectorError):
        label_selector("a in (1,2)")


def test_podman_run_gets_the_cdi_names_labels_and_entrypoint() -> None:
    spec = ContainerSpec(
        name="c1",
        image="img",
        command=("sleep", "9"),
        args=(),
        env=(("A", "1"),),
        devices=("sim.gpuconform.dev/gpu=GPU-1",),
        labels=(("dev.gpuconform.run", "r"),),
    )
    argv = run_argv(spec, "d1")
    assert argv[:3] == ["podman", "run", "-d"]
    assert argv[argv.index("--device") : argv.index("--device") + 2] == [
        "--device",
        "sim.gpuconform.dev/gpu=GPU-1",
    ]
    assert "dev.gpuconform.kubedouble=d1" in argv
    assert argv[argv.index("--entrypoint") + 1] == "sleep"
    assert argv[-2:] == ["img", "9"]
