"""Visibility and identity through nvidia-smi: smi.default, smi.none, smi.all, smi.nodes."""

from __future__ import annotations

from conformance.catalogue import case
from conformance.observe import device_nodes, expect_exactly, is_absent, list_gpus, query_gpus, shape_request
from fixtures.cell import Cell
from workloads.nvidia_smi import nvml_error_name, parse_list

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
    nodes = device_nodes(cell, sandbox)
    if nodes:
        cell.fail(
            f"a sandbox without a GPU request has device nodes /dev/nvidia{sorted(nodes)}",
            expected=[],
            seen=sorted(nodes),
        )
    result = cell.run(sandbox, ["nvidia-smi", "-L"])
    cell.seen = ()
    if is_absent(result):
        cell.passed("no /dev/nvidiaN and no nvidia-smi in the sandbox")
    if result.exit_code == 0:
        listed = parse_list(result.stdout)
        if listed:
            cell.seen = tuple(g.uuid for g in listed)
            cell.fail(
                f"a sandbox without a GPU request sees {len(listed)} GPU(s)", expected=[], seen=cell.seen
            )
        cell.passed("no /dev/nvidiaN; nvidia-smi -L reports 'No devices found.'")
    if result.exit_code == 6 and "no devices were found" in result.stdout.lower():
        cell.passed("no /dev/nvidiaN; nvidia-smi reports no devices (exit 6)")
    code = result.exit_code if result.exit_code is not None else -1
    cell.inconclusive(
        f"nvidia-smi -L exited {code} ({nvml_error_name(code)}) without saying whether GPUs are "
        f"visible: {(result.stderr or result.stdout).strip()[:200]}"
    )


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
    if granted is None:  # the driver chose: learn which GPU from nvidia-smi, judged by smi.default
        granted = frozenset(g.uuid for g in list_gpus(cell, sandbox))
    cell.granted = granted
    if getattr(cell.adapter, "node_minors_follow_host", True):
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
    cell.passed(f"device nodes /dev/nvidia{sorted(nodes)} match the grant exactly")
