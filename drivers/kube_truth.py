"""The kubernetes column's ground truth: the cluster's GPU nodes, as probe pods report them.

On a real cluster the runner's own GPUs say nothing about the pods' GPUs (the cluster may be
elsewhere, or a kind worker may hold only some of them), so the inventory the column is judged
against is read from the nodes: one probe pod per GPU node takes all of its allocatable
``nvidia.com/gpu`` and runs ``nvidia-smi --query-gpu``. The rows become one inventory, indexed
across nodes; identity stays the UUID. Where nodes advertise MIG devices (the plugin's mixed
strategy), a second probe pod per such node takes all of its ``nvidia.com/mig-*`` units and lists
them with ``nvidia-smi -L``: the MIG devices a pod can be handed, under their parents.
"""

from __future__ import annotations

from collections.abc import Mapping

from gpuconform.drivers.base import InfrastructureError
from gpuconform.drivers.inventory import GpuRecord, Inventory, MigRecord, records_from_query
from gpuconform.workloads.nvidia_smi import QUERY_FIELDS, SmiParseError, parse_list, parse_query

PROBE_FIELDS = (*QUERY_FIELDS, "minor_number")


def inventory_from_probes(found: Mapping[str, str], *, simulated: bool) -> Inventory:
    """``{node: nvidia-smi --query-gpu=PROBE_FIELDS output}`` -> the cluster's inventory."""
    records: list[GpuRecord] = []
    for node in sorted(found):
        try:
            rows = parse_query(found[node], fields=PROBE_FIELDS)
        except SmiParseError as exc:
            raise InfrastructureError(f"nvidia-smi in the probe pod on {node}: {exc}") from None
        for row in rows:
            records.extend(records_from_query([{**row, "index": len(records)}]))
    if not records:
        raise InfrastructureError(
            "no GPU node of the cluster reported a GPU to its probe pod",
            hint="kubectl get nodes -o jsonpath='{..allocatable.nvidia\\.com/gpu}'",
        )
    nodes = ",".join(sorted(found))
    return Inventory(host=nodes, gpus=tuple(records), simulated=simulated, source=f"kubernetes nodes {nodes}")


def mig_inventory_from_probes(
    found: Mapping[str, tuple[str, str]], *, simulated: bool, first_index: int = 0
) -> Inventory:
    """``{node: (nvidia-smi --query-gpu=PROBE_FIELDS, nvidia-smi -L)}`` of probe pods that took all
    of a node's ``nvidia.com/mig-*`` units -> the cluster's MIG devices, with their parent GPUs as
    ``gpus`` (so the inventory's parent invariant holds). Parent indices run across nodes from
    ``first_index`` (after the whole-GPU truth's, so no two GPUs of the column share one). A MIG
    device's number is as the probe saw it (all of a parent's MIG devices advertised, so nvidia-smi
    numbers them as on the node); GI/CI ids are not listed by ``-L`` and are recorded as -1."""
    gpus: list[GpuRecord] = []
    migs: list[MigRecord] = []
    for node in sorted(found):
        query, listing = found[node]
        try:
            rows = {str(r["uuid"]): r for r in parse_query(query, fields=PROBE_FIELDS)}
            listed = parse_list(listing)
        except SmiParseError as exc:
            raise InfrastructureError(f"nvidia-smi in the MIG probe pod on {node}: {exc}") from None
        for gpu in listed:
            row = rows.get(gpu.uuid)
            if row is None or not gpu.mig:
                continue
            (parent,) = records_from_query([{**row, "index": first_index + len(gpus)}])
            gpus.append(parent)
            migs.extend(
                MigRecord(m.uuid, parent.uuid, parent.index, m.device, m.name, -1, -1, None) for m in gpu.mig
            )
    nodes = ",".join(sorted(found))
    return Inventory(
        host=nodes,
        gpus=tuple(gpus),
        simulated=simulated,
        source=f"kubernetes MIG units of {nodes}",
        migs=tuple(migs),
    )
