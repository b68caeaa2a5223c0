"""The host's ground truth: one record per GPU, and the native ids that select each one.

Every comparison in the harness is by UUID (SPEC section 2): indices are renumbered inside
sandboxes. The native ids live here, in the inventory, rather than in the adapters, so the
simulated host can use its own CDI kind and never be confused with (or shadow) a real NVIDIA one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gpuconform.workloads.cdi_spec import CdiSpec, all_name, load_specs, names_by_gpu, naming_strategies

# Id schemes: which family of drivers an id form belongs to.
SCHEME_CDI = "cdi"  # docker (CDI path), podman: "nvidia.com/gpu=0", "...=GPU-<uuid>"
SCHEME_LEGACY = "legacy"  # docker --gpus / NVIDIA_VISIBLE_DEVICES: "0", "GPU-<uuid>"
SCHEME_PCI = "pci"  # qemu/vfio: "0000:18:00.0", or the host index
SCHEME_HOST = "host"  # bare host: CUDA_VISIBLE_DEVICES index or UUID

REAL_CDI_KIND = "nvidia.com/gpu"

_PCI_RE = re.compile(
    r"^(?P<domain>[0-9a-fA-F]{4,8}):(?P<bus>[0-9a-fA-F]{2}):(?P<dev>[0-9a-fA-F]{2})\.(?P<fn>[0-7])$"
)


class InventoryError(ValueError):
    """The inventory could not be read or is inconsistent."""


def normalise_pci_bus_id(bus_id: str) -> str:
    """Return the sysfs form ``0000:18:00.0`` of an nvidia-smi or sysfs bus id.

    nvidia-smi prints an 8-hex-digit domain (``00000000:18:00.0``); sysfs and QEMU use 4.
    """
    match = _PCI_RE.match(bus_id.strip())
    if not match:
        raise InventoryError(f"not a PCI bus id: {bus_id!r} (expected like 0000:18:00.0)")
    domain = int(match["domain"], 16)
    return f"{domain:04x}:{match['bus'].lower()}:{match['dev'].lower()}.{match['fn']}"


@dataclass(frozen=True)
class GpuRecord:
    """One GPU as the host sees it. ``minor`` is the N of ``/dev/nvidiaN``."""

    index: int
    uuid: str
    name: str
    pci_bus_id: str
    memory_total_mib: int | None
    driver_version: str
    minor: int
    native_ids: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False, compare=False)

    def ids(self, scheme: str) -> tuple[str, ...]:
        return tuple(self.native_ids.get(scheme, ()))

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "uuid": self.uuid,
            "name": self.name,
            "pci_bus_id": self.pci_bus_id,
            "memory_total_mib": self.memory_total_mib,
            "driver_version": self.driver_version,
            "minor": self.minor,
            "native_ids": {k: list(v) for k, v in self.native_ids.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GpuRecord:
        try:
            return cls(
                index=int(data["index"]),
                uuid=str(data["uuid"]),
                name=str(data["name"]),
                pci_bus_id=normalise_pci_bus_id(str(data["pci_bus_id"])),
                memory_total_mib=None
                if data.get("memory_total_mib") is None
                else int(data["memory_total_mib"]),
                driver_version=str(data["driver_version"]),
                minor=int(data.get("minor", data["index"])),
                native_ids={k: tuple(v) for k, v in dict(data.get("native_ids", {})).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InventoryError(f"bad GPU record {dict(data)!r}: {exc}") from None


def default_native_ids(index: int, uuid: str, pci_bus_id: str, cdi_kind: str) -> dict[str, tuple[str, ...]]:
    """The id forms each driver family uses to select this GPU (SPEC section 3)."""
    return {
        SCHEME_CDI: (f"{cdi_kind}={index}", f"{cdi_kind}={uuid}"),
        SCHEME_LEGACY: (str(index), uuid),
        SCHEME_PCI: (pci_bus_id, str(index)),
        SCHEME_HOST: (str(index), uuid),
    }


def default_mig_native_ids(
    parent_index: int, device: int, uuid: str, cdi_kind: str
) -> dict[str, tuple[str, ...]]:
    """The id forms that select one MIG device: ``<gpu>:<mig>`` and its ``MIG-`` UUID.

    Those are the names ``nvidia-ctk cdi generate`` gives MIG devices (index and uuid strategies)
    and the values NVIDIA_VISIBLE_DEVICES accepts; CUDA_VISIBLE_DEVICES takes the UUID. VFIO
    passes whole PCI functions, so there is no PCI form.
    """
    pair = f"{parent_index}:{device}"
    return {
        SCHEME_CDI: (f"{cdi_kind}={pair}", f"{cdi_kind}={uuid}"),
        SCHEME_LEGACY: (pair, uuid),
        SCHEME_HOST: (uuid,),
    }


@dataclass(frozen=True)
class MigRecord:
    """One MIG device of a MIG-enabled GPU: ``device`` is its number under the parent.

    ``profile`` is the MIG profile name (``3g.40gb``): what the Kubernetes device plugin's
    ``mixed`` strategy advertises it as (``nvidia.com/mig-3g.40gb``).
    """

    uuid: str
    parent_uuid: str
    parent_index: int
    device: int
    profile: str
    gi: int
    ci: int
    memory_total_mib: int | None
    native_ids: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False, compare=False)

    def ids(self, scheme: str) -> tuple[str, ...]:
        return tuple(self.native_ids.get(scheme, ()))

    def to_json(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "parent_uuid": self.parent_uuid,
            "parent_index": self.parent_index,
            "device": self.device,
            "profile": self.profile,
            "gi": self.gi,
            "ci": self.ci,
            "memory_total_mib": self.memory_total_mib,
            "native_ids": {k: list(v) for k, v in self.native_ids.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MigRecord:
        try:
            mem = data.get("memory_total_mib")
            return cls(
                uuid=str(data["uuid"]),
                parent_uuid=str(data["parent_uuid"]),
                parent_index=int(data["parent_index"]),
                device=int(data["device"]),
                profile=str(data["profile"]),
                gi=int(data["gi"]),
                ci=int(data["ci"]),
                memory_total_mib=None if mem is None else int(mem),
                native_ids={k: tuple(v) for k, v in dict(data.get("native_ids", {})).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InventoryError(f"bad MIG device record {dict(data)!r}: {exc}") from None


@dataclass(frozen=True)
class Inventory:
    """All GPUs of one host. ``simulated`` results never count as hardware evidence."""

    host: str
    gpus: tuple[GpuRecord, ...]
    simulated: bool
    source: str
    cdi_kind: str = REAL_CDI_KIND
    # Set by learn_cdi_ids: the spec's ``all`` name (None when the spec has none) and the naming
    # strategies seen; None/() on an inventory whose cdi ids were not learnt from specs.
    cdi_all_id: str | None = None
    cdi_strategies: tuple[str, ...] = ()
    # The MIG devices of MIG-enabled GPUs (each names its parent among ``gpus``); () without MIG.
    migs: tuple[MigRecord, ...] = ()

    def __post_init__(self) -> None:
        uuids = [g.uuid for g in self.gpus]
        if len(set(uuids)) != len(uuids):
            raise InventoryError(f"inventory has duplicate UUIDs: {uuids}")
        mig_uuids = [m.uuid for m in self.migs]
        if len(set(mig_uuids)) != len(mig_uuids):
            raise InventoryError(f"inventory has duplicate MIG UUIDs: {mig_uuids}")
        orphans = sorted(m.uuid for m in self.migs if m.parent_uuid not in uuids)
        if orphans:
            raise InventoryError(f"MIG devices {orphans} name a parent GPU that is not in the inventory")

    def mig_by_uuid(self, uuid: str) -> MigRecord | None:
        return next((m for m in self.migs if m.uuid == uuid), None)

    def resolve_mig(self, scheme: str, native_id: str) -> MigRecord | None:
        """The MIG device a native id selects (``kind=1:0``, ``MIG-<uuid>``), or None."""
        return next((m for m in self.migs if native_id in m.ids(scheme)), None)

    def migs_of(self, parent_uuid: str) -> tuple[MigRecord, ...]:
        """The MIG devices of one GPU, in device order; () for a GPU that is not MIG-enabled."""
        return tuple(sorted((m for m in self.migs if m.parent_uuid == parent_uuid), key=lambda m: m.device))

    @property
    def uuids(self) -> frozenset[str]:
        return frozenset(g.uuid for g in self.gpus)

    @property
    def cdi_all(self) -> str:
        return f"{self.cdi_kind}=all"

    def by_uuid(self, uuid: str) -> GpuRecord | None:
        return next((g for g in self.gpus if g.uuid == uuid), None)

    def resolve(self, scheme: str, native_id: str) -> GpuRecord | None:
        """The GPU a native id selects, or None when the id names no GPU of this host."""
        return next((g for g in self.gpus if native_id in g.ids(scheme)), None)

    def identity(self) -> dict[str, Any]:
        """What evidence records say about the host."""
        return {
            "host": self.host,
            "simulated": self.simulated,
            "source": self.source,
            "gpu_count": len(self.gpus),
            "gpu_names": sorted({g.name for g in self.gpus}),
            "driver_versions": sorted({g.driver_version for g in self.gpus}),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "simulated": self.simulated,
            "source": self.source,
            "cdi_kind": self.cdi_kind,
            "cdi_all_id": self.cdi_all_id,
            "cdi_strategies": list(self.cdi_strategies),
            "gpus": [g.to_json() for g in self.gpus],
            # Only where there are MIG devices, so inventories without MIG read as they always have.
            **({"migs": [m.to_json() for m in self.migs]} if self.migs else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Inventory:
        try:
            gpus = tuple(GpuRecord.from_json(g) for g in data["gpus"])
            migs = tuple(MigRecord.from_json(m) for m in data.get("migs", ()))
            return cls(
                host=str(data["host"]),
                gpus=gpus,
                simulated=bool(data["simulated"]),
                source=str(data["source"]),
                cdi_kind=str(data.get("cdi_kind", REAL_CDI_KIND)),
                cdi_all_id=None if data.get("cdi_all_id") is None else str(data["cdi_all_id"]),
                cdi_strategies=tuple(str(x) for x in data.get("cdi_strategies", ())),
                migs=migs,
            )
        except (KeyError, TypeError) as exc:
            raise InventoryError(f"bad inventory document: missing or wrong field {exc}") from None

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> Inventory:
        try:
            return cls.from_json(json.loads(text))
        except json.JSONDecodeError as exc:
            raise InventoryError(f"inventory is not valid JSON: {exc.msg}") from None


def _minor(value: Any, index: int) -> int:
    """``/dev/nvidiaN``'s N; nvidia-smi may not report it, and then it is the index."""
    return value if isinstance(value, int) and value >= 0 else index


def records_from_query(
    rows: Iterable[Mapping[str, Any]], cdi_kind: str = REAL_CDI_KIND
) -> tuple[GpuRecord, ...]:
    """Build records from parsed ``nvidia-smi --query-gpu`` rows (see workloads.nvidia_smi)."""
    records = []
    for row in rows:
        index = int(row["index"])
        pci = normalise_pci_bus_id(str(row["pci.bus_id"]))
        mem = row.get("memory.total")
        records.append(
            GpuRecord(
                index=index,
                uuid=str(row["uuid"]),
                name=str(row["name"]),
                pci_bus_id=pci,
                memory_total_mib=mem if isinstance(mem, int) else None,
                driver_version=str(row["driver_version"]),
                minor=_minor(row.get("minor_number"), index),
                native_ids=default_native_ids(index, str(row["uuid"]), pci, cdi_kind),
            )
        )
    return tuple(records)


def learn_cdi_ids(inventory: Inventory, specs: Iterable[CdiSpec]) -> Inventory:
    """A copy of ``inventory`` whose CDI ids are the names the specs on the machine give each GPU.

    The default ids (``kind=<index>``, ``kind=<uuid>``) are an assumption about how the spec was
    generated; this replaces them with what the specs of ``inventory.cdi_kind`` actually name,
    matched through each device's ``/dev/nvidiaN`` node and the GPU's minor number. A GPU no spec
    names gets no CDI id at all, so no case can offer an id the engine would not know. Docker's CDI
    path calls this too (docker.py), so both engines learn the same names.
    """
    specs = list(specs)
    names = names_by_gpu(specs, inventory, inventory.cdi_kind)
    gpus = tuple(
        replace(g, native_ids={**dict(g.native_ids), SCHEME_CDI: tuple(names.get(g.uuid, ()))})
        for g in inventory.gpus
    )
    migs = tuple(
        replace(m, native_ids={**dict(m.native_ids), SCHEME_CDI: mig_cdi_names(specs, m, inventory.cdi_kind)})
        for m in inventory.migs
    )
    return replace(
        inventory,
        gpus=gpus,
        migs=migs,
        cdi_all_id=all_name(specs, inventory, inventory.cdi_kind),
        cdi_strategies=naming_strategies(specs, inventory, inventory.cdi_kind),
    )


def mig_cdi_names(specs: Iterable[CdiSpec], mig: MigRecord, kind: str) -> tuple[str, ...]:
    """The qualified names the specs of ``kind`` give one MIG device, in spec order.

    A MIG device is named in one of nvidia-ctk's forms (``<gpu>:<mig>``, its ``MIG-`` UUID);
    a name counts only when its device carries ``/dev/nvidia-caps`` nodes (a MIG device), so a
    spec that names a whole GPU that way is not taken for one.
    """
    wanted = {f"{mig.parent_index}:{mig.device}", mig.uuid}
    return tuple(
        spec.qualified(device.name)
        for spec in specs
        if spec.kind == kind
        for device in spec.devices
        if device.name in wanted and device.is_mig
    )


# Where CDI registries (Podman's, Docker's) read specs unless configured otherwise.
DEFAULT_CDI_DIRS = ("/etc/cdi", "/var/run/cdi")


def cdi_spec_dirs(options: Mapping[str, str]) -> list[Path]:
    """The directories whose specs name this run's CDI devices.

    ``cdi.dirs`` (comma separated, a --driver-opt) wins; on a simulated host, the directory its
    spec was written to (``state.json`` in ``sim.root``); else the CDI defaults.
    """
    explicit = options.get("cdi.dirs", "").strip()
    if explicit:
        return [Path(d.strip()) for d in explicit.split(",") if d.strip()]
    sim_root = options.get("sim.root")
    if sim_root:
        try:
            state = json.loads((Path(sim_root) / "state.json").read_text())
            return [Path(str(state["cdi_spec_path"])).parent]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return [Path(d) for d in DEFAULT_CDI_DIRS]


def learnt_cdi_inventory(inventory: Inventory, options: Mapping[str, str]) -> tuple[Inventory, str]:
    """``inventory`` with the CDI ids the specs on this machine give, and one line for evidence.

    What Podman and Docker's CDI path select GPUs with: ``select_gpus(..., inventory=learnt,
    all_id=learnt.cdi_all_id)`` and ``native_ids`` from ``learnt``.
    """
    dirs = cdi_spec_dirs(options)
    specs = load_specs(dirs)
    learnt = learn_cdi_ids(inventory, specs)
    versions = sorted({s.version for s in specs if s.kind == learnt.cdi_kind})
    named = sum(1 for g in learnt.gpus if g.ids(SCHEME_CDI))
    summary = (
        f"{learnt.cdi_kind} cdiVersion {','.join(versions) or '-'}; names "
        f"{','.join(learnt.cdi_strategies) or 'none'}{'+all' if learnt.cdi_all_id else ''}; "
        f"{named}/{len(learnt.gpus)} GPUs named; from {','.join(str(d) for d in dirs)}"
    )
    if specs.errors:
        summary += f"; unreadable: {'; '.join(str(e) for e in specs.errors)[:300]}"
    return learnt, summary
