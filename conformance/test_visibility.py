"""Visibility and identity through nvidia-smi: smi.default, smi.none, smi.all, smi.nodes."""

from __future__ import annotations

from gpuconform.conformance.catalogue import case
from gpuconform.conformance.observe import (
    device_nodes,
    expect_exactly,
    expect_no_gpu,
    expect_no_nodes_from_smi,
    list_gpus,
    query_gpus,
    shape_request,
)
from gpuconform.fixtures.cell import Cell

COMPARED_FIELDS = (
    ("name", "name"),
    ("memory.total", "memory_total_mib"),
    ("driver_version", "driver_version"),
)


@case("smi.default")
def test_smi_default(cell: Cell) -> None:
    sandbox = cell.shared(shape_request(cell, "default"))
    (uuid,) = expect_exactly(cell, sandbox, 1, sandbox.granted)
    rows = query_gpus(cell, sandbox)
    if [row.get("uuid") for row in rows] != [uuid]:
        cell.fail(
            "nvidia-smi --query-gpu and -L disagree", expected=[uuid], seen=[r.get("uuid") for r in rows]
        )
    host = cell.inventory.by_uuid(uuid)
    assert host is not None  # expect_exactly checked inventory membership
    mismatches = {
        field: {"host": getattr(host, attr), "sandbox": str(rows[0].get(field))}
        for field, attr in COMPARED_FIELDS
        if str(rows[0].get(field)) != str(getattr(host, attr))
    }
    if mismatches:
        cell.fail(
            f"{uuid} differs from the host: "
            + "; ".join(f"{f} {v['sandbox']!r} != host {v['host']!r}" for f, v in mismatches.items()),
            expected={f: v["host"] for f, v in mismatches.items()},
            seen={f: v["sandbox"] for f, v in mismatches.items()},
        )
    cell.passed(f"sees exactly {uuid} ({host.name}), name, memory and driver match the host")


@case("smi.none")
def test_smi_none(cell: Cell) -> None:
    sandbox = cell.shared(shape_request(cell, "none"))
    cell.seen = ()
    cell.passed(expect_no_gpu(cell, sandbox, "a sandbox without a GPU request"))


@case("smi.all")
def test_smi_all(cell: Cell) -> None:
    sandbox = cell.shared(shape_request(cell, "all"))
    everything = cell.inventory.uuids
    expect_exactly(cell, sandbox, len(everything), everything)
    cell.passed(
        f"the all-GPUs form ({sandbox.request.shape}) sees exactly the {len(everything)} inventory GPUs"
    )


@case("smi.nodes")
def test_smi_nodes(cell: Cell) -> None:
    sandbox = cell.shared(shape_request(cell, "default"))
    nodes = device_nodes(cell, sandbox)
    granted = sandbox.granted
    if granted is None:  # the driver chose: learn which GPUs from nvidia-smi, and hold it to the count
        granted = frozenset(g.uuid for g in list_gpus(cell, sandbox))
        if len(granted) != sandbox.request.wanted:
            cell.fail(
                f"sandbox sees {len(granted)} GPU(s) for a request of {sandbox.request.wanted}",
                expected=sandbox.request.wanted,
                seen=sorted(granted),
            )
    cell.granted = granted
    if cell.node_minors_follow_host:
        expected = {g.minor for g in cell.inventory.gpus if g.uuid in granted}
        if nodes != expected:
            cell.fail(
                f"device nodes /dev/nvidia{sorted(nodes)} do not match the granted GPU(s) "
                f"/dev/nvidia{sorted(expected)}",
                expected=sorted(expected),
                seen=sorted(nodes),
            )
    elif len(nodes) != len(granted):
        cell.fail(
            f"{len(nodes)} device node(s) for {len(granted)} granted GPU(s)",
            expected=len(granted),
            seen=sorted(nodes),
        )
    expect_no_nodes_from_smi(cell, sandbox, nodes, smi_ran=sandbox.granted is None)
    cell.passed(
        f"device nodes /dev/nvidia{sorted(nodes)} match the grant exactly, before and after nvidia-smi ran"
    )
