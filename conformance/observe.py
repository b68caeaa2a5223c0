"""What a sandbox sees, read through nvidia-smi and /dev, and the shared checks on it.

Every comparison is by UUID: indices are renumbered inside sandboxes (SPEC section 2). Each
helper records the commands it ran in the cell's evidence and ends the case with ``fail`` when
the stack misbehaves, so suites stay short.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from gpuconform.drivers.base import ExecResult, Sandbox
from gpuconform.drivers.request import GpuRequest
from gpuconform.fixtures.cell import Cell
from gpuconform.workloads.nvidia_smi import (
    QUERY_FIELDS,
    ListedGpu,
    Value,
    nvml_error_name,
    parse_list,
    parse_query,
    query_argv,
)

NODE_RE = re.compile(r"^nvidia(\d+)$")
ABSENT_MARKERS = ("executable file not found", "not found in $path", "no such file or directory")


def shape_request(cell: Cell, shape: str) -> GpuRequest:
    """The request behind a shared sandbox shape, in this driver's own terms."""
    if shape == "none":
        return GpuRequest.none()
    if shape == "default":
        return GpuRequest.default()
    if shape == "count.max":
        return GpuRequest.of_count(len(cell.inventory.gpus))
    if shape.startswith("count."):
        return GpuRequest.of_count(int(shape.split(".", 1)[1]))
    if shape == "all":
        all_ids = cell.all_ids()
        if all_ids:
            return GpuRequest.of_ids(all_ids)
        return GpuRequest.of_count(len(cell.inventory.gpus))
    raise ValueError(f"unknown sandbox shape {shape!r}")


def is_absent(result: ExecResult) -> bool:
    """Whether the command could not be started (exit 127/126 or the runtime's not-found text).

    That is also how a present binary fails when its loader or a library is missing: runc says
    ``exec /usr/bin/nvidia-smi: no such file or directory`` (execve's ENOENT for the ELF
    interpreter) and a shell says ``not found``. ``smi_presence`` tells the two apart.
    """
    text = (result.stderr + result.stdout).lower()
    return result.exit_code in (126, 127) or any(marker in text for marker in ABSENT_MARKERS)


def smi_presence(cell: Cell, sandbox: Sandbox) -> str | None:
    """Where ``nvidia-smi`` is on the sandbox's PATH (asked through its own shell), or None."""
    probe = cell.run(sandbox, ["sh", "-c", "command -v nvidia-smi"])
    path = probe.stdout.strip()
    return path if probe.exit_code == 0 and path.startswith("/") else None


def _smi_failure(cell: Cell, sandbox: Sandbox, result: ExecResult, what: str) -> None:
    if is_absent(result):
        seen = (result.stderr or result.stdout).strip()[:300]
        path = smi_presence(cell, sandbox)
        if path is None:
            cell.fail(f"{what}: nvidia-smi is not present in the sandbox", seen=seen)
        cause = (
            "a shared library it needs is missing"
            if "error while loading shared libraries" in seen
            else "no glibc loader?"
        )
        cell.fail(
            f"{what}: nvidia-smi is present but cannot execute in this image ({cause}); {path}: {seen}",
            seen=seen,
        )
    code = result.exit_code if result.exit_code is not None else -1
    cell.fail(
        f"{what}: nvidia-smi exited {code} ({nvml_error_name(code)}): "
        f"{(result.stderr or result.stdout).strip()[:300]}"
    )


def list_gpus(cell: Cell, sandbox: Sandbox) -> tuple[ListedGpu, ...]:
    result = cell.run(sandbox, ["nvidia-smi", "-L"])
    if result.exit_code != 0:
        _smi_failure(cell, sandbox, result, "nvidia-smi -L")
    listed = parse_list(result.stdout)
    cell.parsed["listed"] = [{"index": g.index, "name": g.name, "uuid": g.uuid} for g in listed]
    return listed


def query_gpus(cell: Cell, sandbox: Sandbox) -> list[dict[str, Value]]:
    result = cell.run(sandbox, query_argv(QUERY_FIELDS))
    if result.exit_code != 0:
        _smi_failure(cell, sandbox, result, "nvidia-smi --query-gpu")
    rows = parse_query(result.stdout, fields=QUERY_FIELDS)
    cell.parsed["query"] = [{k: str(v) for k, v in row.items()} for row in rows]
    return rows


def device_nodes(cell: Cell, sandbox: Sandbox, key: str = "device_nodes") -> set[int]:
    """The N of every /dev/nvidiaN inside (nvidiactl, nvidia-uvm and friends are not GPUs)."""
    result = cell.run(sandbox, ["ls", "-1", "/dev"])
    if result.exit_code != 0:
        cell.error(f"could not list /dev in {sandbox.id}: {result.stderr.strip()[:200]}")
    nodes = {int(m.group(1)) for line in result.stdout.split() if (m := NODE_RE.match(line.strip()))}
    cell.parsed[key] = sorted(nodes)
    return nodes


def expect_no_nodes_from_smi(cell: Cell, sandbox: Sandbox, before: Collection[int], *, smi_ran: bool) -> None:
    """Fail naming every /dev/nvidiaN that appears once nvidia-smi has run (failure class 4).

    NVML creates the device nodes it finds missing where the driver lets it
    (NVreg_ModifyDeviceFiles=1) and the sandbox may mknod (CAP_MKNOD), so a sandbox that started
    with exactly its grant holds other GPUs' nodes after its first nvidia-smi. ``before``: the nodes
    listed before nvidia-smi ran; ``smi_ran``: whether the case has run it since (else it runs
    ``nvidia-smi -L`` here, whatever its result: node creation happens at NVML's initialisation).
    """
    if not smi_ran:
        cell.run(sandbox, ["nvidia-smi", "-L"])
    after = device_nodes(cell, sandbox, "device_nodes_after_smi")
    created = sorted(set(after) - set(before))
    if created:
        names = ", ".join(f"/dev/nvidia{n}" for n in created)
        cell.fail(
            f"{names} appeared after nvidia-smi ran, for GPU(s) not granted: NVML creates missing device "
            "nodes where the driver sets NVreg_ModifyDeviceFiles=1 and the sandbox has CAP_MKNOD "
            "(the NVIDIA toolkit sets ModifyDeviceFiles: 0 inside containers)",
            expected=[f"/dev/nvidia{n}" for n in sorted(before)],
            seen=[f"/dev/nvidia{n}" for n in sorted(after)],
        )


def expect_exactly(
    cell: Cell, sandbox: Sandbox, count: int, granted: Collection[str] | None
) -> tuple[str, ...]:
    """Check the sandbox lists exactly ``count`` distinct inventory GPUs (== ``granted`` when known)."""
    listed = list_gpus(cell, sandbox)
    uuids = tuple(g.uuid for g in listed)
    cell.seen = tuple(sorted(uuids))
    if len(set(uuids)) != len(uuids):
        cell.fail(f"nvidia-smi lists a GPU twice: {list(uuids)}", seen=uuids)
    unknown = set(uuids) - cell.inventory.uuids
    if unknown:
        cell.fail(
            f"sandbox sees GPU(s) not in the host inventory: {', '.join(sorted(unknown))}",
            expected=sorted(granted) if granted is not None else f"{count} inventory GPUs",
            seen=uuids,
        )
    if granted is not None and set(uuids) != set(granted):
        extra, missing = set(uuids) - set(granted), set(granted) - set(uuids)
        parts = ([f"extra {', '.join(sorted(extra))}"] if extra else []) + (
            [f"missing {', '.join(sorted(missing))}"] if missing else []
        )
        cell.fail(f"sandbox sees the wrong GPUs: {'; '.join(parts)}", expected=sorted(granted), seen=uuids)
    if len(uuids) != count:
        cell.fail(f"sandbox sees {len(uuids)} GPU(s), expected {count}", expected=count, seen=uuids)
    expect_nodes_of(cell, sandbox, uuids)
    return uuids


def expect_nodes_of(cell: Cell, sandbox: Sandbox, uuids: Collection[str]) -> None:
    """Fail unless the /dev/nvidiaN nodes inside are exactly those of ``uuids`` (SPEC 4 node check).

    Run in every positive case, so a node leak (a stack that injects another GPU's node without
    its driver files, invisible to nvidia-smi) fails the cell whose request caused it. Only where
    the driver's nodes follow the host's numbering and its profile holds it to smi.nodes: a VM's
    guest numbers its own nodes, and the bare host isolates nothing.
    """
    if not cell.node_minors_follow_host or cell.profile.expect("smi.nodes") == "unsupported":
        return
    expected = {g.minor for g in cell.inventory.gpus if g.uuid in set(uuids)}
    nodes = device_nodes(cell, sandbox)
    if nodes != expected:
        extra, missing = sorted(nodes - expected), sorted(expected - nodes)
        parts = ([f"extra {', '.join(f'/dev/nvidia{n}' for n in extra)}"] if extra else []) + (
            [f"missing {', '.join(f'/dev/nvidia{n}' for n in missing)}"] if missing else []
        )
        cell.fail(
            f"device nodes do not match the GPU(s) seen: {'; '.join(parts)}",
            expected=[f"/dev/nvidia{n}" for n in sorted(expected)],
            seen=[f"/dev/nvidia{n}" for n in sorted(nodes)],
        )


def expect_no_gpu(cell: Cell, sandbox: Sandbox, context: str) -> str:
    """Fail unless the sandbox has no /dev/nvidiaN and nvidia-smi is absent or lists nothing.

    Returns how the absence showed, for the verdict's reason. An nvidia-smi that neither lists
    GPUs nor says there are none is ``inconclusive``, never a pass.
    """
    nodes = device_nodes(cell, sandbox)
    if nodes:
        cell.fail(
            f"{context}: device nodes /dev/nvidia{sorted(nodes)} present", expected=[], seen=sorted(nodes)
        )
    result = cell.run(sandbox, ["nvidia-smi", "-L"])
    if is_absent(result):
        return "no /dev/nvidiaN and no nvidia-smi in the sandbox"
    if result.exit_code == 0:
        listed = parse_list(result.stdout)
        if listed:
            seen = tuple(g.uuid for g in listed)
            cell.fail(f"{context}: the sandbox sees {len(listed)} GPU(s)", expected=[], seen=seen)
        return "no /dev/nvidiaN; nvidia-smi -L reports 'No devices found.'"
    if result.exit_code == 6 and "no devices were found" in result.stdout.lower():
        return "no /dev/nvidiaN; nvidia-smi reports no devices (exit 6)"
    code = result.exit_code if result.exit_code is not None else -1
    cell.inconclusive(
        f"{context}: nvidia-smi -L exited {code} ({nvml_error_name(code)}) without saying whether GPUs "
        f"are visible: {(result.stderr or result.stdout).strip()[:200]}"
    )
