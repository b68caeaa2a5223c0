"""The Docker adapter's wire format: GPU path, DeviceRequests, ids, profiles, versions, exec frames.

Functions over the engine's ``/version`` and ``/info`` answers and the inventory, kept apart from
the adapter so the exact API payload for every request shape is easy to see and to test; and the
reader of the multiplexed exec stream, which gives exec a hard deadline (docker-py has none).

Two GPU paths (SPEC section 3), one matrix column each; a column's name fixes its path on every
host, and a column whose engine cannot take its path is unavailable (never the other path):
- ``docker-cdi``: Engine >= 25 with CDI enabled (``CDISpecDirs`` non-empty in ``/info``; on by
  default from 28.2) and a spec of the inventory's kind in those dirs.
  ``DeviceRequest(driver="cdi", device_ids=[<CDI names>])``, names passed untouched, so the
  engine itself judges them.
- ``docker-legacy`` (alias ``docker``): ``DeviceRequest(device_ids=[...] | count=-1,
  capabilities=[["gpu"]])``: dockerd sets NVIDIA_VISIBLE_DEVICES from the ids and runs
  ``nvidia-container-runtime-hook`` (needs the hook on dockerd's PATH or the nvidia runtime).
  CDI names are mapped to the legacy ids (index or UUID, same form) through the inventory; ids
  it does not know are refused here, naming them.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tarfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gpuconform.drivers.base import Deadline, HarnessError, Profile, RequestRejected
from gpuconform.drivers.inventory import SCHEME_CDI, SCHEME_LEGACY, Inventory
from gpuconform.drivers.request import GpuRequest

GPU_PATH_CDI = "cdi"
GPU_PATH_LEGACY = "legacy"
GPU_PATHS = (GPU_PATH_CDI, GPU_PATH_LEGACY)
# Columns of the matrix and the one path each proves, on every host. ``docker`` is kept as an
# alias of ``docker-legacy``: it is what the ``docker`` column ran before the split, here and in
# older results, so a stored matrix keeps its meaning.
COLUMNS = {"docker-legacy": GPU_PATH_LEGACY, "docker-cdi": GPU_PATH_CDI}
ALIASES = {"docker": "docker-legacy"}
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
HOOK_NAME = "nvidia-container-runtime-hook"
CDI_MIN_ENGINE = 25
LEGACY_ALL = "all"
GPU_CAPABILITIES = [["gpu"]]
# Engine messages that mean "the engine refused these devices" (a clean rejection), as opposed to
# an engine or harness failure. Legacy: the hook's exit reaches the start error via runc.
REFUSAL_MARKERS = (
    "unresolvable CDI devices",
    "CDI device injection failed",
    "could not select device driver",
    "unknown device",
    "device error",
    "error running hook",
    "invalid device",
)


class GpuPathError(HarnessError):
    """A GPU path that no column has (the ``docker.gpu_path`` option is gone: columns fix it)."""


def engine_major(version: str) -> int | None:
    """The major of an engine version like ``20.10.24+dfsg1`` or ``28.2.2``; None if unreadable."""
    match = re.match(r"\s*v?(\d+)\.", version or "")
    return int(match.group(1)) if match else None


def cdi_spec_dirs(info: Mapping[str, Any]) -> list[str]:
    return [str(d) for d in info.get("CDISpecDirs") or []]


def discovered_cdi_devices(info: Mapping[str, Any]) -> list[str]:
    """CDI device names the engine reports (``DiscoveredDevices``, API >= 1.48), if any."""
    return [
        str(d.get("ID", ""))
        for d in info.get("DiscoveredDevices") or []
        if isinstance(d, Mapping) and str(d.get("Source", "")).lower() == "cdi"
    ]


def engine_name(version: Mapping[str, Any], info: Mapping[str, Any]) -> str:
    return str(version.get("Version") or info.get("ServerVersion") or "?")


def path_support(
    path: str, version: Mapping[str, Any], info: Mapping[str, Any], *, hook: str | None
) -> tuple[bool, str]:
    """Whether this engine can take GPU ``path`` at all, and why (a phrase for skip reasons).

    ``hook`` is where ``nvidia-container-runtime-hook`` was found for the engine (legacy path),
    None when it was not. Whether the CDI spec dirs resolve the wanted kind is judged apart
    (:func:`cdi_spec_for_kind`): it needs the inventory and the engine's filesystem.
    """
    engine = engine_name(version, info)
    if path == GPU_PATH_CDI:
        major = engine_major(engine)
        if major is None or major < CDI_MIN_ENGINE:
            return False, f"engine {engine} predates CDI (the docker-cdi column needs >= {CDI_MIN_ENGINE})"
        if not cdi_spec_dirs(info):
            return False, (
                f"engine {engine} has CDI disabled (no CDISpecDirs); start dockerd with "
                '{"features": {"cdi": true}} in its daemon.json'
            )
        return True, f"engine {engine} with CDI spec dirs {', '.join(cdi_spec_dirs(info))}"
    if path == GPU_PATH_LEGACY:
        runtimes = info.get("Runtimes") or {}
        if isinstance(runtimes, Mapping) and "nvidia" in runtimes:
            return True, f"engine {engine} with the nvidia runtime"
        if hook:
            return True, f"engine {engine} with {HOOK_NAME} at {hook}"
        return False, (
            f"engine {engine} has neither {HOOK_NAME} on its PATH nor an nvidia runtime "
            "(install nvidia-container-toolkit)"
        )
    raise GpuPathError(f"unknown GPU path {path!r}", hint=f"expected one of {', '.join(GPU_PATHS)}")


def cdi_spec_for_kind(
    dirs: Sequence[str], kind: str, info: Mapping[str, Any] | None = None
) -> tuple[str, str] | None:
    """(spec file, cdiVersion) of the spec in ``dirs`` that declares ``kind``; None if none does.

    Engines that list their devices (``DiscoveredDevices``, API >= 1.48) answer for themselves;
    otherwise the spec dirs are read here, which needs the engine on this machine (the spec dirs
    of a remote engine are not ours to read).
    """
    import yaml  # the CDI spec format is YAML (JSON is a subset)

    listed = discovered_cdi_devices(info or {})
    if listed and not any(d.startswith(f"{kind}=") for d in listed):
        return None
    for directory in dirs:
        base = Path(directory)
        if not base.is_dir():
            continue
        for path in sorted(base.iterdir()):
            if path.suffix not in (".yaml", ".yml", ".json") or not path.is_file():
                continue
            try:
                doc = yaml.safe_load(path.read_text(encoding="utf-8", errors="replace"))
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(doc, Mapping) and doc.get("kind") == kind:
                return str(path), str(doc.get("cdiVersion", "?"))
    if listed:
        return "(listed by the engine)", "?"
    return None


def engine_versions(
    version: Mapping[str, Any], info: Mapping[str, Any], path: str, why: str
) -> dict[str, str]:
    """What evidence records say about the engine (SPEC section 6)."""
    out = {
        "engine": f"docker {version.get('Version', info.get('ServerVersion', '?'))}",
        "api": str(version.get("ApiVersion", "")),
        "runtime": str(info.get("DefaultRuntime", "")),
        "gpu_path": path,
        "gpu_path_reason": why,
    }
    runc = info.get("RuncCommit") or {}
    if isinstance(runc, Mapping) and runc.get("ID"):
        out["runtime_commit"] = str(runc["ID"])
    dirs = cdi_spec_dirs(info)
    if dirs:
        out["cdi_spec_dirs"] = ",".join(dirs)
    devices = discovered_cdi_devices(info)
    if devices:
        out["cdi_devices"] = ",".join(devices)
    return out


def profile_for(column: str, path: str) -> Profile:
    """Each column declares its path, so the matrix says which Docker path a column proves."""
    how = {
        GPU_PATH_CDI: "CDI device names through DeviceRequest(driver=cdi); the engine resolves them",
        GPU_PATH_LEGACY: "DeviceRequest(capabilities=[[gpu]]) -> NVIDIA_VISIBLE_DEVICES + "
        "nvidia-container-runtime-hook; CDI names mapped to index/UUID",
    }
    return Profile(
        driver=column,
        cases={"device.unsupported": "unsupported"},
        exclusive=True,
        oversubscribe="reject",
        notes=f"gpu path: {path}; {how.get(path, '?')}; harness leases GPUs for default/count requests",
    )


def column_option(options: Mapping[str, str], column: str, key: str) -> str | None:
    """``<column>.<key>``, else (for the ``docker`` alias) its target's, else ``docker.<key>``."""
    for name in dict.fromkeys((column, ALIASES.get(column, column), "docker")):
        value = options.get(f"{name}.{key}")
        if value:
            return value
    return None


def engine_url(options: Mapping[str, str], column: str) -> str:
    """The engine a column talks to: its own ``.host`` option, ``docker.host``, ``DOCKER_HOST``."""
    return column_option(options, column, "host") or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET


def legacy_ids(req: GpuRequest, inventory: Inventory) -> GpuRequest:
    """``req`` with its device ids in legacy form (same form: index stays index, UUID stays UUID).

    Accepts CDI names of this inventory's kind, legacy ids themselves, and the ``=all`` name.
    """
    if not req.device_ids:
        return req
    mapped = []
    for device_id in req.device_ids:
        if device_id in (inventory.cdi_all, LEGACY_ALL):
            mapped.append(LEGACY_ALL)
            continue
        gpu = inventory.resolve(SCHEME_CDI, device_id) or inventory.resolve_mig(SCHEME_CDI, device_id)
        if gpu is not None:
            cdi, legacy = gpu.ids(SCHEME_CDI), gpu.ids(SCHEME_LEGACY)
            position = cdi.index(device_id)
            if not legacy:
                raise RequestRejected(f"GPU {gpu.uuid} has no legacy id in the inventory")
            mapped.append(legacy[position] if position < len(legacy) else legacy[0])
            continue
        if (
            inventory.resolve(SCHEME_LEGACY, device_id) is not None
            or inventory.resolve_mig(SCHEME_LEGACY, device_id) is not None
        ):
            mapped.append(device_id)
            continue
        raise RequestRejected(
            f"unknown device id {device_id!r}: no GPU of this host has it",
            hint=f"the docker legacy path takes {inventory.cdi_kind}=<index|UUID|all>, an index or a UUID",
        )
    return GpuRequest(gpu=req.gpu, count=req.count, device_ids=tuple(mapped))


def device_requests(path: str, ids: Sequence[str]) -> list[dict[str, Any]]:
    """The ``HostConfig.DeviceRequests`` for native ids (already chosen, leased and mapped)."""
    from docker.types import DeviceRequest  # optional dependency: only with the docker driver

    if not ids:
        return []
    if path == GPU_PATH_CDI:
        return [DeviceRequest(driver="cdi", device_ids=list(ids))]
    if list(ids) == [LEGACY_ALL]:
        return [DeviceRequest(count=-1, capabilities=GPU_CAPABILITIES)]  # what `--gpus all` sends
    return [DeviceRequest(device_ids=list(ids), capabilities=GPU_CAPABILITIES)]


def is_device_refusal(message: str) -> bool:
    return any(marker.lower() in message.lower() for marker in REFUSAL_MARKERS)


def one_line(exc: BaseException) -> str:
    """The engine's message for ``exc`` on one line (docker-py puts it in ``explanation``)."""
    text = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:500]


def single_file_tar(name: str, data: bytes, mode: int) -> bytes:
    """The ``put_archive`` body for one file (no directory entries: those would reset modes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), mode, int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def container_label(entry: Mapping[str, Any]) -> str:
    """How ``gc`` names a container from ``GET /containers/json``: its name, else its id."""
    return str((entry.get("Names") or [entry["Id"]])[0]).lstrip("/")


def read_multiplexed(sock: Any, deadline: Deadline) -> tuple[str, str, bool]:
    """Drain an attached, non-tty exec stream until EOF or ``deadline``: (stdout, stderr, timed_out).

    Frames are an 8-byte header (stream 1 or 2, three zero bytes, big-endian size) and a payload;
    stdout and stderr come interleaved on one connection, so draining it never deadlocks. Reads go
    through the HTTP response's buffered reader when there is one (docker-py's
    ``exec_start(socket=True)`` keeps it on the socket as ``_response``): the header parser may
    already have buffered the first frames.
    """
    response = getattr(sock, "_response", None)
    stream = getattr(getattr(getattr(response, "raw", None), "_fp", None), "fp", None) or sock
    raw = getattr(sock, "_sock", sock)
    out: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
    timed_out = False
    try:
        while True:
            header = _read_exact(stream, raw, 8, deadline)
            if len(header) < 8:
                break
            size = int.from_bytes(header[4:8], "big")
            payload = _read_exact(stream, raw, size, deadline)
            out[2 if header[0] == 2 else 1].extend(payload)
            if len(payload) < size:
                break
    except TimeoutError:
        timed_out = True
    finally:
        for closable in (response, sock):  # the response first: it flushes through the socket
            if closable is not None:
                with contextlib.suppress(OSError, ValueError):
                    closable.close()
    return out[1].decode(errors="replace"), out[2].decode(errors="replace"), timed_out


def _read_exact(stream: Any, raw: Any, size: int, deadline: Deadline) -> bytes:
    """Up to ``size`` bytes (fewer only at EOF); TimeoutError when the deadline passes first."""
    data = bytearray()
    read = getattr(stream, "read1", None) or getattr(stream, "read", None) or stream.recv
    while len(data) < size:
        if deadline.expired:
            raise TimeoutError("exec deadline passed")
        settimeout = getattr(raw, "settimeout", None)
        if settimeout is not None:
            settimeout(deadline.cap(deadline.remaining))
        try:
            chunk = read(size - len(data))
        except (ConnectionResetError, BrokenPipeError):
            break  # the container went away mid-exec: what we have is all there is
        if not chunk:
            break
        data.extend(chunk)
    return bytes(data)
