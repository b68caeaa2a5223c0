"""Podman takes its CDI ids from the specs in the directories its CDI registry reads.

The engine is not called: these tests hold the adapter to what it offers (native ids, the all
form, availability) given the specs present, which is where a wrong assumption would show.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from gpuconform.drivers.base import AdapterContext, Deadline
from gpuconform.drivers.inventory import GpuRecord, Inventory, cdi_spec_dirs
from gpuconform.drivers.leases import GpuLeases
from gpuconform.drivers.podman import PodmanAdapter
from gpuconform.drivers.request import GpuRequest
from gpuconform.drivers.selection import select_gpus

KIND = "sim.gpuconform.dev/t1"
UUIDS = ("GPU-1e250c70-dff6-4e52-8690-a9c144e7cf0f", "GPU-8db8df93-edd5-4cd5-86b3-bc355166765c")
INV = Inventory(
    "h",
    tuple(
        GpuRecord(i, UUIDS[i], "NVIDIA H100 80GB HBM3", f"0000:1{i}:00.0", 81559, "580.105.08", i)
        for i in range(2)
    ),
    simulated=True,
    source="sim:test",
    cdi_kind=KIND,
)


def _adapter(tmp_path: Path, names: list[str], with_all: bool) -> PodmanAdapter:
    spec_dir = tmp_path / "cdi"
    spec_dir.mkdir()
    devices = [
        {"name": n, "containerEdits": {"deviceNodes": [{"path": f"/dev/nvidia{i}"}]}}
        for i, n in enumerate(names)
    ]
    if with_all:
        devices.append(
            {
                "name": "all",
                "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0"}, {"path": "/dev/nvidia1"}]},
            }
        )
    (spec_dir / "x.yaml").write_text(
        yaml.safe_dump({"cdiVersion": "0.5.0", "kind": KIND, "devices": devices})
    )
    ctx = AdapterContext(INV, GpuLeases(tmp_path / "leases"), "r1", options={"cdi.dirs": str(spec_dir)})
    return PodmanAdapter(ctx)


def test_uuid_only_spec_offers_uuid_names_and_default_requests_use_them(tmp_path: Path) -> None:
    adapter = _adapter(tmp_path, list(UUIDS), with_all=False)
    assert adapter.native_ids(INV.gpus[1]) == [f"{KIND}={UUIDS[1]}"]
    assert adapter.all_ids() is None
    selection = select_gpus(
        adapter.ctx, GpuRequest.of_count(2), "cdi", Deadline(5), inventory=adapter.id_inventory()
    )
    try:
        assert sorted(selection.ids) == sorted(f"{KIND}={u}" for u in UUIDS)
    finally:
        selection.release()
    assert "names uuid;" in adapter.versions["cdi"] and "2/2 GPUs named" in adapter.versions["cdi"]


def test_type_index_spec_with_all(tmp_path: Path) -> None:
    adapter = _adapter(tmp_path, ["gpu0", "gpu1"], with_all=True)
    assert adapter.native_ids(INV.gpus[0]) == [f"{KIND}=gpu0"]
    assert adapter.all_ids() == [f"{KIND}=all"]


def test_spec_dirs_come_from_the_option_then_the_simulated_host_then_podman_defaults(tmp_path: Path) -> None:
    assert cdi_spec_dirs({"cdi.dirs": "/a, /b"}) == [Path("/a"), Path("/b")]
    (tmp_path / "state.json").write_text(json.dumps({"cdi_spec_path": "/run/x/cdi/gpuconform-sim-r1.yaml"}))
    assert cdi_spec_dirs({"sim.root": str(tmp_path)}) == [Path("/run/x/cdi")]
    assert cdi_spec_dirs({}) == [Path("/etc/cdi"), Path("/var/run/cdi")]
