"""The kind path's manifests: pinned, structurally valid, and rendered with the harness's options.

The Kubernetes objects are checked against the client's own models (required fields enforced,
and a round trip through the model must reproduce the document, so a misspelt field fails);
the kind Cluster config, which has no client model, is checked field by field.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from gpuconform.fixtures.sim.kind.cluster import (
    DEVICE_PLUGIN_IMAGE,
    DEVICE_PLUGIN_MANIFEST,
    KIND_CONFIG,
    KIND_NODE_IMAGE,
    KindOptions,
    render_device_plugin,
    render_kind_config,
    write_manifests,
)

MODELS = {("node.k8s.io/v1", "RuntimeClass"): "V1RuntimeClass", ("apps/v1", "DaemonSet"): "V1DaemonSet"}


def round_trip(doc: dict[str, Any]) -> Any:
    """``doc`` deserialised into its client model and serialised back (raises on invalid)."""
    from kubernetes.client import ApiClient

    api = ApiClient()
    model = MODELS[(doc["apiVersion"], doc["kind"])]
    deserialize: Any = api.deserialize  # its signature differs between client generations
    try:
        obj = deserialize(json.dumps(doc), model, "application/json")  # pydantic-generated client
    except TypeError:
        obj = deserialize(SimpleNamespace(data=json.dumps(doc)), model)  # older generated client
    return api.sanitize_for_serialization(obj)


def env_of(daemonset: dict[str, Any]) -> dict[str, str]:
    (ctr,) = daemonset["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in ctr["env"]}


def test_shipped_device_plugin_manifest_is_valid_and_pinned() -> None:
    docs = [d for d in yaml.safe_load_all(DEVICE_PLUGIN_MANIFEST.read_text()) if d]
    assert [(d["apiVersion"], d["kind"]) for d in docs] == list(MODELS)
    for doc in docs:
        assert round_trip(doc) == doc
    daemonset = docs[1]
    (ctr,) = daemonset["spec"]["template"]["spec"]["containers"]
    assert ctr["image"] == DEVICE_PLUGIN_IMAGE
    assert re.fullmatch(r"nvcr\.io/nvidia/k8s-device-plugin:v0\.17\.\d+", ctr["image"])
    assert env_of(daemonset)["DEVICE_LIST_STRATEGY"] == "cdi-cri"
    # Found by the adapter's device plugin discovery (drivers/kube_cluster.py).
    assert daemonset["metadata"]["labels"]["app.kubernetes.io/name"] == "nvidia-device-plugin"
    assert (
        daemonset["spec"]["selector"]["matchLabels"].items()
        <= daemonset["spec"]["template"]["metadata"]["labels"].items()
    )
    mounts = {m["mountPath"] for m in ctr["volumeMounts"]}
    assert {"/var/lib/kubelet/device-plugins", "/var/run/cdi", "/driver-root"} <= mounts


def test_rendered_device_plugin_carries_the_harness_options() -> None:
    opts = KindOptions(
        device_plugin_image="registry.local/k8s-device-plugin:v0.17.9", device_list_strategy="envvar"
    )
    docs = render_device_plugin(opts)
    for doc in docs:
        assert round_trip(doc) == doc
    daemonset = docs[1]
    assert daemonset["spec"]["template"]["spec"]["containers"][0]["image"] == opts.device_plugin_image
    assert env_of(daemonset)["DEVICE_LIST_STRATEGY"] == "envvar"
    assert daemonset["metadata"]["labels"]["app.kubernetes.io/version"] == "v0.17.9"
    # Rendering never edits the shipped file's defaults.
    assert env_of(render_device_plugin(KindOptions())[1])["DEVICE_LIST_STRATEGY"] == "cdi-cri"


def test_kind_config_passes_the_gpus_to_the_worker_with_a_pinned_node_image() -> None:
    (config,) = [d for d in yaml.safe_load_all(KIND_CONFIG.read_text()) if d]
    assert (config["apiVersion"], config["kind"]) == ("kind.x-k8s.io/v1alpha4", "Cluster")
    roles = [n["role"] for n in config["nodes"]]
    assert roles == ["control-plane", "worker"]
    for node in config["nodes"]:
        assert node["image"] == KIND_NODE_IMAGE
        assert re.fullmatch(r"kindest/node:v1\.\d+\.\d+@sha256:[0-9a-f]{64}", node["image"])
    worker = config["nodes"][1]
    assert worker["extraMounts"] == [
        {"hostPath": "/dev/null", "containerPath": "/var/run/nvidia-container-devices/all"}
    ]
    assert worker["labels"] == {"gpuconform.dev/gpu": "true"}
    assert any("enable_cdi = true" in patch for patch in config["containerdConfigPatches"])


def test_device_plugin_is_scheduled_onto_the_gpu_worker_label() -> None:
    (config,) = [d for d in yaml.safe_load_all(KIND_CONFIG.read_text()) if d]
    daemonset = render_device_plugin(KindOptions())[1]
    assert (
        daemonset["spec"]["template"]["spec"]["nodeSelector"].items() <= config["nodes"][1]["labels"].items()
    )


@pytest.mark.parametrize(("gpus", "paths"), [("all", ["all"]), ("0, 2", ["0", "2"])])
def test_rendered_kind_config_selects_the_requested_gpus(gpus: str, paths: list[str]) -> None:
    config = render_kind_config(
        KindOptions(name="ci-7", node_image="kindest/node:v1.31.4@sha256:" + "0" * 64, gpus=gpus)
    )
    assert config["name"] == "ci-7"
    assert {n["image"] for n in config["nodes"]} == {"kindest/node:v1.31.4@sha256:" + "0" * 64}
    mounts = config["nodes"][1]["extraMounts"]
    assert [m["containerPath"].rsplit("/", 1)[1] for m in mounts] == paths
    assert {m["hostPath"] for m in mounts} == {"/dev/null"}


def test_write_manifests_produces_loadable_files(tmp_path: Path) -> None:
    config, plugin = write_manifests(KindOptions(), tmp_path)
    assert yaml.safe_load(config.read_text()) == render_kind_config(KindOptions())
    assert [d for d in yaml.safe_load_all(plugin.read_text()) if d] == render_device_plugin(KindOptions())
