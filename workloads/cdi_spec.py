"""The one reader of CDI specs (Container Device Interface), and which spec name selects which GPU.

Why here and pure: a real machine's CDI names are whatever ``nvidia-ctk cdi generate`` wrote
(``--device-name-strategy`` index, uuid or type-index; with or without ``all``; cdiVersion 0.3.0
to 0.8.0), so the harness learns them from the specs present instead of assuming ``kind=0`` and
``kind=GPU-<uuid>`` (SPEC section 7). Podman, Docker's CDI path and ``gpuconform doctor`` all read
specs through this module; it touches no engine.

Stable API (``doctor`` builds on it):
- ``load_spec(path) -> CdiSpec``; ``load_specs(dirs) -> SpecList`` (a list of CdiSpec whose
  ``errors`` keeps one CdiSpecError per broken file: a broken spec is reported, never fatal);
- ``CdiSpec(kind, version, path, devices, edits)``, ``CdiDevice(name, nodes, mounts, hooks, env)``;
- ``names_by_gpu(specs, inventory, kind) -> dict[uuid, list[qualified name]]``,
  ``all_name(...)``, ``naming_strategies(...)``, ``node_mismatches(...)``.

Which name selects which GPU: a name in one of nvidia-ctk's forms names its GPU itself; any other
name stands for the GPU of its ``/dev/nvidiaN`` node, the GPU whose ``minor`` (nvidia-smi's
``minor_number``) is N. A device with ``/dev/nvidia-caps/...`` nodes is a MIG device and never
counts as its whole parent GPU.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

SUPPORTED_VERSIONS = ("0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0")
SPEC_SUFFIXES = (".yaml", ".yml", ".json")
MAX_SPEC_BYTES = 16 * 1024 * 1024  # a generated spec for 8 GPUs with MIG is well under 1 MiB

_KIND_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*[A-Za-z0-9]/[A-Za-z0-9][A-Za-z0-9_.-]*")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_GPU_NODE_RE = re.compile(r"nvidia(\d+)")
_MIG_CAP_RE = re.compile(r"/dev/nvidia-caps/nvidia-cap\d+$")
# Names in nvidia-ctk's forms for a whole GPU: "0", "gpu0", "GPU-<uuid>".
_IDENTITY_NAME_RE = re.compile(r"\d+|gpu\d+|GPU-[0-9a-fA-F-]+")

ALL_NAME = "all"
STRATEGY_INDEX = "index"  # "0", MIG "0:1"
STRATEGY_UUID = "uuid"  # "GPU-<uuid>", MIG "MIG-<uuid>"
STRATEGY_TYPE_INDEX = "type-index"  # "gpu0", MIG "mig0:1"


class CdiSpecError(ValueError):
    """A spec that cannot be read or is not a CDI spec; the message is one line naming the file."""

    def __init__(self, path: Path | str, problem: str, hint: str = "") -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" + (f" (hint: {hint})" if hint else ""))


@dataclass(frozen=True)
class DeviceNode:
    """One ``deviceNodes`` entry; ``host_path`` defaults to ``path`` in the CDI spec."""

    path: str
    host_path: str | None = None
    type: str | None = None
    major: int | None = None
    minor: int | None = None
    file_mode: int | None = None
    uid: int | None = None
    gid: int | None = None

    @property
    def gpu_minor(self) -> int | None:
        """N for a ``/dev/nvidiaN`` node (by its host path, else its path), None for any other node."""
        match = _GPU_NODE_RE.fullmatch(Path(self.host_path or self.path).name)
        return int(match.group(1)) if match else None

    @property
    def is_mig_capability(self) -> bool:
        return bool(_MIG_CAP_RE.search(self.path))


@dataclass(frozen=True)
class Mount:
    host_path: str
    container_path: str
    options: tuple[str, ...] = ()
    type: str | None = None


@dataclass(frozen=True)
class Hook:
    """A runtime hook; ``args[1]`` of an nvidia-ctk / nvidia-cdi-hook hook names what it does."""

    hook_name: str
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()

    @property
    def action(self) -> str | None:
        """``create-symlinks``, ``update-ldcache``, ``chmod``... for NVIDIA's hooks, else None."""
        args = list(self.args)
        if args[:2] == ["nvidia-ctk", "hook"]:
            args = args[1:]
        return args[1] if len(args) > 1 and args[0] in ("nvidia-cdi-hook", "hook") else None


@dataclass(frozen=True)
class ContainerEdits:
    env: tuple[str, ...] = ()
    nodes: tuple[DeviceNode, ...] = ()
    mounts: tuple[Mount, ...] = ()
    hooks: tuple[Hook, ...] = ()


@dataclass(frozen=True)
class CdiDevice:
    """One named device of a spec, with its own edits (the spec's top-level edits are separate)."""

    name: str
    nodes: tuple[DeviceNode, ...] = ()
    mounts: tuple[Mount, ...] = ()
    hooks: tuple[Hook, ...] = ()
    env: tuple[str, ...] = ()

    @property
    def gpu_minors(self) -> frozenset[int]:
        return frozenset(m for n in self.nodes if (m := n.gpu_minor) is not None)

    @property
    def is_mig(self) -> bool:
        return any(n.is_mig_capability for n in self.nodes)


@dataclass(frozen=True)
class CdiSpec:
    kind: str
    version: str
    path: str
    devices: tuple[CdiDevice, ...]
    edits: ContainerEdits = field(default_factory=ContainerEdits)

    def qualified(self, name: str) -> str:
        """The fully qualified device name engines take: ``vendor/class=name``."""
        return f"{self.kind}={name}"

    def device(self, name: str) -> CdiDevice | None:
        return next((d for d in self.devices if d.name == name), None)


class SpecList(list[CdiSpec]):
    """The specs that could be read, in file order, plus one error per file that could not."""

    def __init__(self, specs: Iterable[CdiSpec] = (), errors: Iterable[CdiSpecError] = ()) -> None:
        super().__init__(specs)
        self.errors: list[CdiSpecError] = list(errors)


# ---- reading ------------------------------------------------------------------------------------


def _want(value: Any, kind: type, path: Path, where: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CdiSpecError(path, f"{where} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _strings(value: Any, path: Path, where: str) -> tuple[str, ...]:
    items = _want(value if value is not None else [], list, path, where)
    return tuple(_want(v, str, path, f"{where}[{i}]") for i, v in enumerate(items))


def _opt_int(entry: Mapping[str, Any], key: str, path: Path, where: str) -> int | None:
    return None if entry.get(key) is None else int(_want(entry[key], int, path, f"{where}.{key}"))


def _nodes(value: Any, path: Path, where: str) -> tuple[DeviceNode, ...]:
    nodes = []
    for i, raw in enumerate(_want(value if value is not None else [], list, path, where)):
        at = f"{where}[{i}]"
        entry = _want(raw, dict, path, at)
        if not isinstance(entry.get("path"), str) or not entry["path"].startswith("/"):
            raise CdiSpecError(path, f"{at}.path must be an absolute path, got {entry.get('path')!r}")
        host = entry.get("hostPath")
        nodes.append(
            DeviceNode(
                path=entry["path"],
                host_path=None if host is None else _want(host, str, path, f"{at}.hostPath"),
                type=None if entry.get("type") is None else _want(entry["type"], str, path, f"{at}.type"),
                major=_opt_int(entry, "major", path, at),
                minor=_opt_int(entry, "minor", path, at),
                file_mode=_opt_int(entry, "fileMode", path, at),
                uid=_opt_int(entry, "uid", path, at),
                gid=_opt_int(entry, "gid", path, at),
            )
        )
    return tuple(nodes)


def _mounts(value: Any, path: Path, where: str) -> tuple[Mount, ...]:
    mounts = []
    for i, raw in enumerate(_want(value if value is not None else [], list, path, where)):
        at = f"{where}[{i}]"
        entry = _want(raw, dict, path, at)
        container = entry.get("containerPath", entry.get("path"))  # some hand-written specs say path
        if not isinstance(entry.get("hostPath"), str) or not isinstance(container, str):
            raise CdiSpecError(path, f"{at} needs hostPath and containerPath strings")
        kind = entry.get("type")
        mounts.append(
            Mount(
                host_path=entry["hostPath"],
                container_path=container,
                options=_strings(entry.get("options"), path, f"{at}.options"),
                type=None if kind is None else _want(kind, str, path, f"{at}.type"),
            )
        )
    return tuple(mounts)


def _hooks(value: Any, path: Path, where: str) -> tuple[Hook, ...]:
    hooks = []
    for i, raw in enumerate(_want(value if value is not None else [], list, path, where)):
        at = f"{where}[{i}]"
        entry = _want(raw, dict, path, at)
        if not isinstance(entry.get("hookName"), str) or not isinstance(entry.get("path"), str):
            raise CdiSpecError(path, f"{at} needs hookName and path strings")
        hooks.append(
            Hook(
                hook_name=entry["hookName"],
                path=entry["path"],
                args=_strings(entry.get("args"), path, f"{at}.args"),
                env=_strings(entry.get("env"), path, f"{at}.env"),
            )
        )
    return tuple(hooks)


def _edits(value: Any, path: Path, where: str) -> ContainerEdits:
    entry = _want(value if value is not None else {}, dict, path, where)
    return ContainerEdits(
        env=_strings(entry.get("env"), path, f"{where}.env"),
        nodes=_nodes(entry.get("deviceNodes"), path, f"{where}.deviceNodes"),
        mounts=_mounts(entry.get("mounts"), path, f"{where}.mounts"),
        hooks=_hooks(entry.get("hooks"), path, f"{where}.hooks"),
    )


def parse_spec(text: str, path: Path | str = "<spec>") -> CdiSpec:
    """Parse one spec document (YAML, of which JSON is a subset); CdiSpecError when it is not one."""
    where = Path(path)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if isinstance(line, int) else ""
        raise CdiSpecError(where, f"not valid YAML or JSON{at}") from None
    if not isinstance(doc, dict):
        raise CdiSpecError(where, "expected a mapping with cdiVersion, kind and devices")
    version = str(doc.get("cdiVersion", "")).strip()
    if version not in SUPPORTED_VERSIONS:
        raise CdiSpecError(
            where,
            f"cdiVersion {version or '(missing)'!r} is not one gpuconform reads",
            hint=f"specs of cdiVersion {SUPPORTED_VERSIONS[0]} to {SUPPORTED_VERSIONS[-1]} are read",
        )
    kind = doc.get("kind")
    if not isinstance(kind, str) or not _KIND_RE.fullmatch(kind):
        raise CdiSpecError(where, f"kind must look like vendor.com/class, got {kind!r}")
    devices: list[CdiDevice] = []
    for i, raw in enumerate(_want(doc.get("devices") or [], list, where, "devices")):
        at = f"devices[{i}]"
        entry = _want(raw, dict, where, at)
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise CdiSpecError(
                where, f"{at}.name must be a CDI device name like 0, gpu0 or GPU-<uuid>, got {name!r}"
            )
        if any(d.name == name for d in devices):
            raise CdiSpecError(where, f"device name {name!r} appears twice")
        edits = _edits(entry.get("containerEdits"), where, f"{at}.containerEdits")
        devices.append(CdiDevice(name, edits.nodes, edits.mounts, edits.hooks, edits.env))
    if not devices:
        raise CdiSpecError(where, "declares no devices")
    return CdiSpec(
        kind, version, str(where), tuple(devices), _edits(doc.get("containerEdits"), where, "containerEdits")
    )


def load_spec(path: Path | str) -> CdiSpec:
    """Read one spec file (``.yaml``, ``.yml`` or ``.json``)."""
    where = Path(path)
    try:
        if where.stat().st_size > MAX_SPEC_BYTES:
            raise CdiSpecError(where, f"larger than {MAX_SPEC_BYTES // (1024 * 1024)} MiB; not read")
        text = where.read_text(encoding="utf-8")
    except OSError as exc:
        raise CdiSpecError(where, f"cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CdiSpecError(where, "is not UTF-8 text") from None
    if where.suffix == ".json":
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise CdiSpecError(where, f"not valid JSON at line {exc.lineno}") from None
    return parse_spec(text, where)


def spec_files(dirs: Iterable[Path | str]) -> list[Path]:
    """Spec files in ``dirs``, each directory in name order, as CDI registries read them."""
    files: list[Path] = []
    for directory in dirs:
        path = Path(directory)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in SPEC_SUFFIXES and p.is_file())
    return files


def load_specs(dirs: Iterable[Path | str]) -> SpecList:
    """Every readable spec in ``dirs``; a broken file lands in ``.errors`` and the rest still load."""
    result = SpecList()
    for path in spec_files(dirs):
        try:
            result.append(load_spec(path))
        except CdiSpecError as exc:
            result.errors.append(exc)
    return result


# ---- names against the inventory ----------------------------------------------------------------


class _Gpu(Protocol):
    @property
    def uuid(self) -> str: ...
    @property
    def index(self) -> int: ...
    @property
    def minor(self) -> int: ...


class _Inventory(Protocol):
    @property
    def gpus(self) -> Sequence[_Gpu]: ...


def _of_kind(specs: Iterable[CdiSpec], kind: str) -> list[CdiSpec]:
    return [s for s in specs if s.kind == kind]


def _named_gpu(name: str, inventory: _Inventory) -> _Gpu | None:
    """The GPU a name claims by its own form (``0``, ``GPU-<uuid>``, ``gpu0``), or None."""
    return next((g for g in inventory.gpus if strategy_of(name, g) is not None), None)


def _gpu_of(device: CdiDevice, inventory: _Inventory) -> _Gpu | None:
    """The one whole GPU ``device`` stands for, or None (MIG, ``all``, several or no GPUs)."""
    if device.is_mig or device.name == ALL_NAME:
        return None
    if _IDENTITY_NAME_RE.fullmatch(device.name):  # claims a GPU: that one or none, never by node
        return _named_gpu(device.name, inventory)
    by_minor = {g.minor: g for g in inventory.gpus}
    minors = [m for m in device.gpu_minors if m in by_minor]
    return by_minor[minors[0]] if len(minors) == 1 and len(device.gpu_minors) == 1 else None


def names_by_gpu(specs: Iterable[CdiSpec], inventory: _Inventory, kind: str) -> dict[str, list[str]]:
    """For each inventory GPU (by UUID), the qualified names that stand for exactly that GPU.

    A name in one of nvidia-ctk's forms (``0``, ``GPU-<uuid>``, ``gpu0``) stands for the GPU it
    names, whatever its nodes inject: that is what the operator asks for by it, so a spec that
    injects another GPU under that name is a broken stack the cases must catch (node_mismatches
    reports it for doctor). Any other name stands for the GPU of its single ``/dev/nvidiaN``
    node, matched through the GPU's minor number. MIG devices, ``all`` and devices injecting
    several GPUs stand for no single whole GPU. Names keep the spec's order.
    """
    names: dict[str, list[str]] = {g.uuid: [] for g in inventory.gpus}
    for spec in _of_kind(specs, kind):
        for device in spec.devices:
            gpu = _gpu_of(device, inventory)
            if gpu is not None:
                names[gpu.uuid].append(spec.qualified(device.name))
    return names


def node_mismatches(specs: Iterable[CdiSpec], inventory: _Inventory, kind: str) -> list[str]:
    """One line per device whose name names a GPU but whose nodes inject other GPU nodes."""
    problems = []
    for spec in _of_kind(specs, kind):
        for device in spec.devices:
            gpu = None if device.is_mig else _named_gpu(device.name, inventory)
            if gpu is not None and device.gpu_minors != {gpu.minor}:
                injected = ", ".join(f"/dev/nvidia{m}" for m in sorted(device.gpu_minors)) or "no GPU node"
                problems.append(
                    f"{spec.path}: {spec.qualified(device.name)} names GPU {gpu.index} ({gpu.uuid}, "
                    f"/dev/nvidia{gpu.minor}) but injects {injected}"
                )
    return problems


def all_name(specs: Iterable[CdiSpec], inventory: _Inventory, kind: str) -> str | None:
    """The qualified ``all`` name when that device injects exactly every inventory GPU, or None.

    An ``all`` that misses a GPU (a spec generated before a GPU was added) is not offered: the
    all-GPUs case would then fail on a stale spec rather than on the engine.
    """
    everything = frozenset(g.minor for g in inventory.gpus)
    for spec in _of_kind(specs, kind):
        for device in spec.devices:
            if device.name == ALL_NAME and everything and device.gpu_minors == everything:
                return spec.qualified(device.name)
    return None


def strategy_of(name: str, gpu: _Gpu) -> str | None:
    """Which ``--device-name-strategy`` wrote ``name`` (unqualified) for ``gpu``, if any."""
    if name == str(gpu.index):
        return STRATEGY_INDEX
    if name == gpu.uuid:
        return STRATEGY_UUID
    if name == f"gpu{gpu.index}":
        return STRATEGY_TYPE_INDEX
    return None


def naming_strategies(specs: Iterable[CdiSpec], inventory: _Inventory, kind: str) -> tuple[str, ...]:
    """The naming strategies the specs of ``kind`` use for whole GPUs, sorted; ``all`` is separate."""
    specs = list(specs)
    found = set()
    for gpu in inventory.gpus:
        for qualified in names_by_gpu(specs, inventory, kind)[gpu.uuid]:
            strategy = strategy_of(qualified.split("=", 1)[1], gpu)
            if strategy:
                found.add(strategy)
    return tuple(sorted(found))
