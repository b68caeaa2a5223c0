"""The kubernetes column's ground truth: the cluster's GPU nodes, as probe pods report them.

On a real cluster the runner's own GPUs say nothing about the pods' GPUs (the cluster may be
elsewhere, or a kind worker may hold only some of them), so the inventory the column is judged
against is read from the nodes: one probe pod per GPU node takes all of its allocatable
``nvidia.com/gpu`` and runs ``nvidia-smi --query-gpu``. The rows become one inventory, indexed
across nodes; identity stays the UUID.
"""

from __future__ import annotations

from collections.abc import Mapping

from gpuconform.drivers.base import InfrastructureError
from gpuconform.drivers.inventory import GpuRecord, Inventory, records_from_query
from gpuconform.workloads.nvidia_smi import QUERY_FIELDS, SmiParseError, parse_query

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
