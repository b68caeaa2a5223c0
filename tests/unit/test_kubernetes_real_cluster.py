"""Kubernetes on a real cluster: images the nodes can get, the kubeconfig `cluster up` hands to
`run`, every image kind loaded into kind, and the cluster's GPU nodes as ground truth."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gpuconform.drivers import kube_cluster
from gpuconform.drivers.base import AdapterContext, Deadline, InfrastructureError
from gpuconform.drivers.inventory import Inventory
from gpuconform.drivers.kube_truth import inventory_from_probes
from gpuconform.drivers.kubernetes import KubernetesAdapter
from gpuconform.drivers.leases import GpuLeases
from gpuconform.fixtures.build.images import IMAGES, image_ref
from gpuconform.fixtures.sim.kind import cluster as kind


def write_kubeconfig(path: Path, server: str, context: str) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "other",
        "clusters": [
            {"name": "c", "cluster": {"server": server}},
            {"name": "o", "cluster": {"server": "https://wrong.example:6443"}},
        ],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [
            {"name": context, "context": {"cluster": "c", "user": "u"}},
            {"name": "other", "context": {"cluster": "o", "user": "u"}},
        ],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def adapter(tmp_path: Path, simulated: bool = False, **options: str) -> KubernetesAdapter:
    inventory = Inventory(host="runner", gpus=(), simulated=simulated, source="test")
    ctx = AdapterContext(
        inventory=inventory, leases=GpuLeases(tmp_path / "leases"), run_id="u1", options=options
    )
    return KubernetesAdapter(ctx)


def test_run_finds_the_cluster_that_cluster_up_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:39999", "kind-gpuconform")
    record = kube_cluster.record_cluster(kubeconfig, "kind-gpuconform", tmp_path / "rec/kind-cluster.json")
    a = adapter(tmp_path, False, **{"kubernetes.cluster_record": str(record)})
    assert a.configuration().host == "https://127.0.0.1:39999"  # the recorded context, not current-context
    assert "recorded by gpuconform cluster up" in a.versions["kubeconfig"]
    explicit = write_kubeconfig(tmp_path / "explicit", "https://10.0.0.1:6443", "mine")
    b = adapter(
        tmp_path,
        False,
        **{
            "kubernetes.cluster_record": str(record),
            "kubernetes.kubeconfig": str(explicit),
            "kubernetes.context": "mine",
        },
    )
    assert b.configuration().host == "https://10.0.0.1:6443"  # an explicit kubeconfig wins
    kubeconfig.unlink()
    assert kube_cluster.recorded_cluster(record) is None  # a record of a deleted kubeconfig is ignored
    kube_cluster.forget_cluster(record)
    assert not record.exists()


def test_cluster_up_loads_every_image_kind_and_records_the_kubeconfig(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    built: list[str] = []
    loaded: list[str] = []

    def fake_ensure(engine: str, kind_name: str, **kw: object) -> str:
        assert engine == "docker"  # kind loads from the local Docker engine; no Podman needed
        built.append(kind_name)
        return image_ref(kind_name)

    def fake_up(opts: kind.KindOptions, *, workdir: Path, deadline: Deadline | None = None) -> Path:
        workdir.mkdir(parents=True, exist_ok=True)
        return write_kubeconfig(workdir / "kubeconfig", "https://127.0.0.1:40000", opts.context)

    monkeypatch.setattr("gpuconform.fixtures.build.images.ensure_image", fake_ensure)
    monkeypatch.setattr(kind, "cluster_up", fake_up)
    monkeypatch.setattr(kind, "load_image", lambda opts, image, deadline=None: loaded.append(image))
    record = tmp_path / "kind-cluster.json"
    argv = ["up", "--workdir", str(tmp_path / "w"), "--record", str(record), "--load-image", "extra:1"]
    assert kind.main(argv) == 0
    assert built == list(IMAGES)
    assert loaded == [image_ref(k) for k in IMAGES] + ["extra:1"]
    assert kube_cluster.recorded_cluster(record) == (
        str((tmp_path / "w/kubeconfig").resolve()),
        "kind-gpuconform",
    )
    out = capsys.readouterr().out
    assert "--driver-opt kubernetes.kubeconfig=" in out and "kubernetes.context=kind-gpuconform" in out
    monkeypatch.setattr(kind, "_run", lambda *a, **kw: "")
    assert kind.main(["down", "--record", str(record)]) == 0
    assert not record.exists()


def test_pod_images_come_from_a_named_registry_or_what_cluster_up_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpuconform.drivers import kubernetes

    def no_podman(*a: object, **kw: object) -> str:
        raise AssertionError("a real cluster's image must not come from local Podman")

    monkeypatch.setattr(kubernetes, "ensure_image", no_podman)
    ref = image_ref("busybox")
    assert ref.startswith("localhost/")
    registry = adapter(tmp_path, False, **{"kubernetes.registry": "reg.example:5000/"})
    assert registry.image("busybox", deadline=Deadline(1)) == "reg.example:5000/" + ref.removeprefix(
        "localhost/"
    )
    assert adapter(tmp_path).image("busybox", deadline=Deadline(1)) == ref
    assert (
        adapter(tmp_path, False, **{"image.busybox": "mine:1"}).image("busybox", deadline=Deadline(1))
        == "mine:1"
    )
    monkeypatch.setattr(kubernetes, "ensure_image", lambda engine, k, deadline: f"{engine}:{k}")
    assert adapter(tmp_path, simulated=True).image("python", deadline=Deadline(1)) == "podman:python"


A0, A1, B0 = (f"GPU-{c * 8}-1111-2222-3333-444444444444" for c in "ab0")


def probe_rows(*rows: tuple[int, str, int]) -> str:
    return "".join(
        f"{i}, {uuid}, NVIDIA H100 80GB HBM3, 00000000:{18 + i:02X}:00.0, 81559, 580.105.08, {minor}\n"
        for i, uuid, minor in rows
    )


def test_cluster_ground_truth_joins_the_nodes_probes_by_uuid() -> None:
    inv = inventory_from_probes(
        {"node-b": probe_rows((0, B0, 4)), "node-a": probe_rows((0, A0, 0), (1, A1, 1))},
        simulated=False,
    )
    assert [(g.index, g.uuid, g.minor) for g in inv.gpus] == [
        (0, A0, 0),
        (1, A1, 1),
        (2, B0, 4),
    ]
    assert inv.source == "kubernetes nodes node-a,node-b" and not inv.simulated
    with pytest.raises(InfrastructureError, match="probe pod on node-a"):
        inventory_from_probes({"node-a": "Failed to initialize NVML: Unknown Error\n"}, simulated=False)


def test_ground_truth_mode_defaults_to_cluster_on_real_gpus_and_host_on_the_double(tmp_path: Path) -> None:
    assert adapter(tmp_path, simulated=True).ground_truth() is None
    with pytest.raises(InfrastructureError, match="expected 'cluster'"):
        adapter(tmp_path, False, **{"kubernetes.ground_truth": "nodes"}).ground_truth()
