"""Lint the CDI specs on the machine with the harness's one spec reader (workloads.cdi_spec).

What a run needs of the specs of the inventory's kind (``nvidia.com/gpu`` on a real host, the
simulated host's own kind otherwise): readable, a ``cdiVersion`` the engine's CDI library
accepts, every inventory GPU resolvable by at least one name, device nodes and mounts that exist
on the host, driver libraries of the host's driver version, and one spec per kind. Specs of
other kinds are read too, but what is wrong with them is a note: the run never uses them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from gpuconform.conformance.doctor.engines import CDI_MIN_VERSION, Engine, version_tuple
from gpuconform.conformance.doctor.model import Check, missing, note, ok, wrong
from gpuconform.drivers.inventory import Inventory
from gpuconform.workloads.cdi_spec import (
    CdiDevice,
    CdiSpec,
    ContainerEdits,
    all_name,
    load_specs,
    names_by_gpu,
    naming_strategies,
)

#: A driver library and the driver version in its name (``libcuda.so.580.105.08``,
#: ``libGLX_nvidia.so.535.54.03``); ``libnvidia-egl-gbm.so.1.1.2`` is versioned on its own.
DRIVER_LIB_RE = re.compile(
    r"^lib[\w+-]*?(?:cuda|nvidia|nvcuvid|nvoptix)[\w+-]*\.so\.(?P<version>\d{3}\.\d{2,3}(?:\.\d{2,3})?)$"
)
HOOK_HINT = "regenerate the spec: nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml"

#: Which catalogue cases each naming strategy serves (SPEC section 4).
ENABLES = {
    "index": "device.each and device.pair by index",
    "uuid": "device.uuid",
    "type-index": "device.each by gpuN names",
    "all": "smi.all by =all",
}


def lint_specs(dirs: Sequence[Path], inventory: Inventory | None, engine: Engine | None) -> list[Check]:
    """One line per finding about the specs of the inventory's kind, then notes on the others."""
    where = ", ".join(map(str, dirs)) or "(none)"
    kind = inventory.cdi_kind if inventory else "nvidia.com/gpu"
    specs = load_specs(dirs)
    mine = [s for s in specs if s.kind == kind]
    others = sorted({s.kind for s in specs if s.kind != kind})
    # A spec that cannot be read may be the one this run needs: it blocks when none of ours is left.
    broken = [(Path(e.path).name, e.problem) for e in specs.errors]
    out: list[Check] = [
        (note if mine else wrong)(
            f"CDI spec {name}", f"unreadable: {problem}", "engines skip it; fix or remove it"
        )
        for name, problem in broken
    ]
    if not mine:
        out.insert(0, missing("CDI spec", f"no readable spec in {where} declares kind {kind}", HOOK_HINT))
        return out
    if len(mine) > 1:
        out.append(
            wrong(
                "CDI kind",
                f"{len(mine)} specs declare {kind}: {', '.join(s.path for s in mine)}",
                "keep one spec per kind; engines refuse names two specs define",
            )
        )
    for spec in mine:
        out += _lint_one(spec, inventory, engine)
    if inventory is not None:
        out += _resolution(mine, inventory, kind)
    if others:
        out.append(note("other CDI kinds", f"{', '.join(others)} (not used by this run)"))
    return out


def _lint_one(spec: CdiSpec, inventory: Inventory | None, engine: Engine | None) -> list[Check]:
    out = [_version(spec, engine)]
    out += _paths_exist(spec)
    if inventory is not None:
        out.append(_driver_libraries(spec, inventory))
    return [c for c in out if c is not None]


def _version(spec: CdiSpec, engine: Engine | None) -> Check:
    what = f"cdiVersion {Path(spec.path).name}"
    have = version_tuple(spec.version)
    if have < version_tuple(CDI_MIN_VERSION):
        return wrong(
            what, f"{spec.version} is older than any CDI library reads ({CDI_MIN_VERSION})", HOOK_HINT
        )
    if engine is None or engine.cdi_max is None:
        return ok(what, spec.version)
    if have > version_tuple(engine.cdi_max):
        return wrong(
            what,
            f"{spec.version} is newer than {engine.name}'s CDI library reads (<= {engine.cdi_max}): "
            "every device of this spec is unresolvable",
            f"generate the spec with --spec-version {engine.cdi_max}, or upgrade the engine",
        )
    return ok(what, f"{spec.version} (read by {engine.name})")


def _edits(spec: CdiSpec) -> list[tuple[str, ContainerEdits | CdiDevice]]:
    """(owner label, container edits) for the spec's top level and each device."""
    return [("(all devices)", spec.edits), *((d.name, d) for d in spec.devices)]


def _paths_exist(spec: CdiSpec) -> list[Check]:
    lost: dict[str, list[str]] = {}
    for owner, edits in _edits(spec):
        for kind_of, host_path in _host_paths(edits):
            if not Path(host_path).exists():
                lost.setdefault(f"{kind_of} {host_path}", []).append(owner)
    if not lost:
        return [
            ok(f"CDI paths {Path(spec.path).name}", "every device node, mount and hook exists on the host")
        ]
    return [
        wrong(
            f"CDI paths {Path(spec.path).name}",
            f"{path} does not exist on the host (used by {', '.join(owners[:4])}"
            f"{', ...' if len(owners) > 4 else ''})",
            HOOK_HINT,
        )
        for path, owners in sorted(lost.items())
    ]


def _host_paths(edits: ContainerEdits | CdiDevice) -> list[tuple[str, str]]:
    return [
        *(("node", n.host_path or n.path) for n in edits.nodes),
        *(("mount", m.host_path) for m in edits.mounts),
        *(("hook", h.path) for h in edits.hooks),
    ]


def _driver_libraries(spec: CdiSpec, inventory: Inventory) -> Check:
    what = f"driver libraries {Path(spec.path).name}"
    host = sorted({g.driver_version for g in inventory.gpus})
    found: dict[str, list[str]] = {}
    for _, edits in _edits(spec):
        for mount in edits.mounts:
            match = DRIVER_LIB_RE.match(Path(mount.host_path).name)
            if match:
                found.setdefault(match["version"], []).append(Path(mount.host_path).name)
    if not found:
        return note(what, "the spec mounts no versioned driver library (nothing to compare)")
    stale = sorted(v for v in found if v not in host)
    if stale:
        libs = sorted({lib for v in stale for lib in found[v]})
        return wrong(
            what,
            f"the spec mounts driver {', '.join(stale)} ({', '.join(libs[:3])}) but the host driver is "
            f"{', '.join(host)}: the spec is stale",
            f"regenerate it after the driver upgrade: {HOOK_HINT}",
        )
    return ok(what, f"match the host driver {', '.join(host)}")


def _resolution(specs: list[CdiSpec], inventory: Inventory, kind: str) -> list[Check]:
    names = names_by_gpu(specs, inventory, kind)
    out: list[Check] = []
    for gpu in inventory.gpus:
        if not names.get(gpu.uuid):
            out.append(
                wrong(
                    f"CDI GPU {gpu.index}",
                    f"{gpu.uuid} ({gpu.pci_bus_id}) is resolvable by no name of {kind}",
                    HOOK_HINT,
                )
            )
    if not out:
        count = sum(len(v) for v in names.values())
        out.append(
            ok("CDI names", f"every inventory GPU resolves ({count} names for {len(inventory.gpus)} GPUs)")
        )
    strategies = set(naming_strategies(specs, inventory, kind))
    if all_name(specs, inventory, kind):
        strategies.add("all")
    enabled = "; ".join(f"{s}: {ENABLES.get(s, s)}" for s in sorted(strategies))
    out.append(note("CDI naming", f"strategies {', '.join(sorted(strategies)) or 'none'} ({enabled})"))
    if "uuid" not in strategies:
        out.append(
            note(
                "CDI UUID names",
                "the spec has no UUID names: device.uuid will be unsupported",
                "nvidia-ctk cdi generate --device-name-strategy=uuid adds them",
            )
        )
    return out
