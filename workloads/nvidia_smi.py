"""Parsers of nvidia-smi output (``-L``, ``--query-gpu`` CSV, ``-q -x`` XML) and NVML exit-code names.

Why strict: every verdict compares the UUIDs a sandbox reports with the host's inventory (SPEC
sections 2 and 4). A parser that skips a line it does not understand, or accepts a malformed UUID,
can turn a leak or a broken sandbox into a pass. So each parser returns a complete result or raises
SmiParseError; there is no half-parsed result. The human table output is not a stable interface
(SPEC section 8) and is rejected with a hint.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeAlias

from gpuconform.drivers.inventory import InventoryError, normalise_pci_bus_id

_HEX_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
GPU_UUID_RE = re.compile(rf"GPU-{_HEX_UUID}")
# Current MIG UUIDs are "MIG-<uuid>"; R450-R465 drivers printed "MIG-GPU-<parent uuid>/<gi>/<ci>".
MIG_UUID_RE = re.compile(rf"MIG-(?:{_HEX_UUID}|GPU-(?P<parent>{_HEX_UUID})/\d+/\d+)")
_GPU_UUID_FORM = "a UUID like GPU-<8-4-4-4-12 lowercase hex>"
_MIG_UUID_FORM = "a MIG UUID like MIG-<8-4-4-4-12 lowercase hex> or MIG-GPU-<uuid>/<gi>/<ci>"

NO_DEVICES_LIST = "No devices found."  # nvidia-smi -L
NO_DEVICES_QUERY = "No devices were found"  # plain nvidia-smi, --query-gpu, -q
_NO_DEVICES = frozenset({NO_DEVICES_LIST, NO_DEVICES_QUERY})

QUERY_FIELDS: tuple[str, ...] = ("index", "uuid", "name", "pci.bus_id", "memory.total", "driver_version")

# nvmlReturn_t (nvml.h). nvidia-smi exits with the return code where it fits in 8 bits and with 255
# for the rest (NVML_ERROR_UNKNOWN is 999), so every value below 256 that NVML defines is named.
NVML_EXIT_CODES: Mapping[int, str] = MappingProxyType(
    {
        0: "SUCCESS",
        1: "UNINITIALIZED",
        2: "INVALID_ARGUMENT",
        3: "NOT_SUPPORTED",
        4: "NO_PERMISSION",
        5: "ALREADY_INITIALIZED",
        6: "NOT_FOUND",
        7: "INSUFFICIENT_SIZE",
        8: "INSUFFICIENT_POWER",
        9: "DRIVER_NOT_LOADED",
        10: "TIMEOUT",
        11: "IRQ_ISSUE",
        12: "LIBRARY_NOT_FOUND",
        13: "FUNCTION_NOT_FOUND",
        14: "CORRUPTED_INFOROM",
        15: "GPU_IS_LOST",
        16: "RESET_REQUIRED",
        17: "OPERATING_SYSTEM",
        18: "LIB_RM_VERSION_MISMATCH",
        19: "IN_USE",
        20: "MEMORY",
        21: "NO_DATA",
        22: "VGPU_ECC_NOT_SUPPORTED",
        23: "INSUFFICIENT_RESOURCES",
        24: "FREQ_NOT_SUPPORTED",
        25: "ARGUMENT_VERSION_MISMATCH",
        26: "DEPRECATED",
        27: "NOT_READY",
        28: "GPU_NOT_FOUND",
        29: "INVALID_STATE",
        255: "UNKNOWN",
    }
)


def nvml_error_name(exit_code: int) -> str:
    """The NVML name of an nvidia-smi exit code, or ``EXIT_<n>`` for a code NVML does not define.

    ``EXIT_<n>`` remains for codes outside 0..255 (a signal, a runtime's own status) and for values
    a newer nvml.h may add: naming them would be a guess.
    """
    return NVML_EXIT_CODES.get(exit_code, f"EXIT_{exit_code}")


# What nvidia-smi prints for the failures a sandbox meets most, and the nvmlReturn_t each means.
# Matched case-insensitively on a substring; the first match wins, so specific texts come first.
_NVML_FAILURE_TEXTS: tuple[tuple[str, str], ...] = (
    ("driver/library version mismatch", "LIB_RM_VERSION_MISMATCH"),
    ("couldn't communicate with the nvidia driver", "DRIVER_NOT_LOADED"),
    ("driver not loaded", "DRIVER_NOT_LOADED"),
    ("nvml shared library not found", "LIBRARY_NOT_FOUND"),
    ("couldn't find libnvidia-ml.so", "LIBRARY_NOT_FOUND"),
    ("insufficient permissions", "NO_PERMISSION"),
    ("gpu is lost", "GPU_IS_LOST"),
    ("no devices were found", "NOT_FOUND"),
    ("infoROM is corrupted".lower(), "CORRUPTED_INFOROM"),
    ("failed to initialize nvml: unknown error", "UNKNOWN"),
)


def nvml_error_in(text: str) -> str | None:
    """The NVML error a failing nvidia-smi's message names, or None when it names none we know.

    Evidence for a failure should say what broke even where the exit status was lost (a runtime
    that reports only "exit 1" for its exec), so the text is read as well as the code.
    """
    lowered = text.lower()
    return next((name for marker, name in _NVML_FAILURE_TEXTS if marker in lowered), None)


class SmiParseError(ValueError):
    """nvidia-smi output that is not one of the documented forms; the message is one line."""


def _excerpt(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _error(expected: str, got: str, *, line: int | None = None, hint: str = "") -> SmiParseError:
    where = "" if line is None else f"line {line}: "
    return SmiParseError(f"{where}expected {expected}, got: {_excerpt(got)}{hint}")


_BRACKETED_RE = re.compile(r"\[[^\[\]\n]+\]")


@dataclass(frozen=True)
class Unavailable:
    """A value nvidia-smi could not give (``[N/A]``, ``[Not Supported]``, ``[GPU requires reset]``...).

    Kept distinct from a missing field: a field absent from the output is an error, while a GPU
    that answers ``[N/A]`` is a fact a case may have to judge.
    """

    text: str

    def __post_init__(self) -> None:
        if not _BRACKETED_RE.fullmatch(self.text):
            raise ValueError(f"Unavailable text must be bracketed like '[N/A]', got {self.text!r}")

    def __str__(self) -> str:
        return self.text


Value: TypeAlias = int | str | Unavailable
XmlValue: TypeAlias = Value | list[dict[str, Value]]  # parse_xml's "mig_devices" is a list


@dataclass(frozen=True)
class ListedMig:
    """One MIG device line of ``nvidia-smi -L``; ``name`` is the profile, e.g. ``3g.40gb``."""

    name: str
    device: int
    uuid: str


@dataclass(frozen=True)
class ListedGpu:
    """One GPU line of ``nvidia-smi -L`` with the MIG device lines listed under it."""

    index: int
    name: str
    uuid: str
    mig: tuple[ListedMig, ...] = ()


# Documented names are not all lowercase: pci.baseClass, encoder.stats.sessionCount,
# vgpu_driver_capability.heterogenous_multivGPU.
_FIELD_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*")


def _check_fields(fields: Sequence[str]) -> list[str]:
    """A caller's field list; a bad one is a programming error (ValueError), not bad output."""
    names = list(fields)
    bad = [name for name in names if not isinstance(name, str) or not _FIELD_NAME_RE.fullmatch(name)]
    if not names or bad or len(set(names)) != len(names):
        raise ValueError(f"expected distinct nvidia-smi query field names like 'memory.total', got {names!r}")
    return names


def query_argv(fields: Sequence[str] = QUERY_FIELDS, header: bool = False, units: bool = False) -> list[str]:
    """The argument list for ``nvidia-smi --query-gpu``; parse its output with parse_query."""
    names = _check_fields(fields)
    fmt = "csv" + ("" if header else ",noheader") + ("" if units else ",nounits")
    return ["nvidia-smi", f"--query-gpu={','.join(names)}", f"--format={fmt}"]


def _table_hint(line: str) -> str:
    if line.startswith(("+-", "+=", "|")) or "NVIDIA-SMI" in line:
        return " (hint: that is the human table output, which is never parsed; use -L or --query-gpu)"
    return ""


def _lines(text: str, expected: str) -> list[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers, stripped; refuses empty output and the table."""
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise SmiParseError(f"{expected}, got empty output")
    for number, line in lines:
        if _table_hint(line):
            raise SmiParseError(f"line {number}: {expected}, got: {_excerpt(line)}{_table_hint(line)}")
    return lines


# ---- nvidia-smi -L -------------------------------------------------------------------------------

_LIST_FORMS = 'expected "GPU <n>: <name> (UUID: GPU-...)" lines or "No devices found."'
_LIST_GPU_RE = re.compile(r"GPU\s+(?P<index>\d+):\s+(?P<name>\S.*?)\s+\(UUID:\s+(?P<uuid>[^\s()]+)\)")
# The profile: "3g.40gb", "1g.10gb+me", or a compute-instance profile such as "1c.3g.40gb".
_MIG_PROFILE = r"(?:\d+c\.)?\d+g\.\d+gb(?:\+[a-z]+)*"
_LIST_MIG_RE = re.compile(
    rf"MIG\s+(?P<profile>{_MIG_PROFILE})\s+Device\s+(?P<device>\d+):\s+\(UUID:\s+(?P<uuid>[^\s()]+)\)"
)


def parse_list(text: str) -> tuple[ListedGpu, ...]:
    """Parse ``nvidia-smi -L``: GPU lines, each followed by the MIG lines that belong to it."""
    lines = _lines(text, _LIST_FORMS)
    if len(lines) == 1 and lines[0][1] == NO_DEVICES_LIST:
        return ()
    gpus: list[tuple[int, str, str, list[ListedMig]]] = []
    for number, line in lines:
        gpu = _LIST_GPU_RE.fullmatch(line)
        mig = _LIST_MIG_RE.fullmatch(line)
        if gpu and "(UUID:" not in gpu["name"]:
            if not GPU_UUID_RE.fullmatch(gpu["uuid"]):
                raise _error(_GPU_UUID_FORM, gpu["uuid"], line=number)
            gpus.append((int(gpu["index"]), gpu["name"], gpu["uuid"], []))
        elif mig:
            shape = MIG_UUID_RE.fullmatch(mig["uuid"])
            if not shape:
                raise _error(_MIG_UUID_FORM, mig["uuid"], line=number)
            if not gpus:
                raise _error("a GPU line before the first MIG line", line, line=number)
            parent = gpus[-1][2]
            if shape["parent"] and f"GPU-{shape['parent']}" != parent:
                raise _error(f"a MIG device of {parent} (the GPU line above)", mig["uuid"], line=number)
            gpus[-1][3].append(ListedMig(name=mig["profile"], device=int(mig["device"]), uuid=mig["uuid"]))
        else:
            raise SmiParseError(f"line {number}: {_LIST_FORMS}, got: {_excerpt(line)}{_table_hint(line)}")
    return tuple(ListedGpu(index=i, name=name, uuid=uuid, mig=tuple(migs)) for i, name, uuid, migs in gpus)


# ---- nvidia-smi --query-gpu=... --format=csv[,noheader][,nounits] ----------------------------

_HEADER_COLUMN_RE = re.compile(rf"(?P<name>{_FIELD_NAME_RE.pattern})(?: \[[^\[\]]+\])?")
_INT_FIELDS = frozenset({"index", "minor_number"})
_INT_RE = re.compile(r"\d+")
_MIB_RE = re.compile(r"(?P<n>\d+)(?P<unit> MiB)?")


def _header_names(line: str) -> list[str] | None:
    """The field names of a CSV header line (unit suffixes such as `` [MiB]`` dropped), or None."""
    matches = [_HEADER_COLUMN_RE.fullmatch(column) for column in line.split(", ")]
    return [m["name"] for m in matches if m] if all(matches) else None


# Unbracketed forms of "unavailable" that CSV output uses for some fields (e.g. a bare ``N/A``).
_BARE_UNAVAILABLE = frozenset({"N/A"})


def _query_value(name: str, raw: str, number: int) -> Value:
    if _BRACKETED_RE.fullmatch(raw):
        return Unavailable(raw)
    if raw in _BARE_UNAVAILABLE:
        return Unavailable(f"[{raw}]")
    if name in _INT_FIELDS:
        if not _INT_RE.fullmatch(raw):
            raise _error(f"an integer for {name}", raw, line=number)
        return int(raw)
    if name.startswith("memory."):
        mib = _MIB_RE.fullmatch(raw)
        if not mib:
            raise _error(f"an integer (MiB) for {name}", raw, line=number)
        return int(mib["n"])
    if name == "pci.bus_id":
        try:
            return normalise_pci_bus_id(raw)
        except InventoryError:
            raise _error("a PCI bus id like 00000000:18:00.0 for pci.bus_id", raw, line=number) from None
    if name == "uuid" and not GPU_UUID_RE.fullmatch(raw):
        raise _error(_GPU_UUID_FORM, raw, line=number)
    return raw


def parse_query(text: str, fields: Sequence[str] | None = None) -> list[dict[str, Value]]:
    """Parse ``--query-gpu`` CSV output into one dict per GPU.

    Names come from the header line (format ``csv``) or from ``fields`` (format ``csv,noheader``);
    when both are there they must agree. Values: ``index``, ``minor_number`` and ``memory.*`` are
    ints (MiB), ``pci.bus_id`` is in sysfs form, bracketed values are Unavailable, the rest str.
    """
    wanted = None if fields is None else _check_fields(fields)
    lines = _lines(text, "expected --query-gpu CSV rows or 'No devices were found'")
    if len(lines) == 1 and lines[0][1] in _NO_DEVICES:
        return []
    names, rows = _header_names(lines[0][1]), lines[1:]
    if names is None:
        if wanted is None:
            hint = " (hint: for format=csv,noheader pass the field list)"
            raise _error("a CSV header line (format=csv) as line 1", lines[0][1], hint=hint)
        names, rows = wanted, lines
    elif wanted is not None and names != wanted:
        raise SmiParseError(f"expected a CSV header naming {wanted}, got one naming {names}")
    elif not rows:
        raise SmiParseError("expected CSV rows after the header line, got none (truncated output?)")
    result = []
    for number, line in rows:
        values = line.split(", ")
        if len(values) != len(names):
            raise _error(f"{len(names)} columns ({', '.join(names)}), not {len(values)}", line, line=number)
        result.append({n: _query_value(n, raw, number) for n, raw in zip(names, values, strict=True)})
    return result


# ---- nvidia-smi -q -x ----------------------------------------------------------------------------

# nvidia-smi writes an external DTD reference (which expat never fetches) and nothing else.
# Internal subsets and entity declarations, the entity-expansion attacks, are refused unparsed.
_SAFE_DOCTYPE_RE = re.compile(r'<!DOCTYPE\s+nvidia_smi_log\s+SYSTEM\s+"[A-Za-z0-9_.\-]+\.dtd"\s*>')
_XML_UNAVAILABLE = frozenset({"N/A", "Not Supported", "Unknown Error", "Insufficient Permissions"})
_XML_UNAVAILABLE |= {"GPU requires reset", "Not Available"}


def _xml_text(parent: ET.Element, path: str, where: str) -> str:
    element = parent.find(path)
    if element is None:
        raise SmiParseError(f"expected <{path}> in {where}, got none")
    return (element.text or "").strip()


def _xml_value(parent: ET.Element, path: str, where: str) -> str | Unavailable:
    """Element text; XML prints unavailable values unbracketed ("N/A"), they are bracketed here."""
    text = _xml_text(parent, path, where)
    if _BRACKETED_RE.fullmatch(text):
        return Unavailable(text)
    return Unavailable(f"[{text}]") if text in _XML_UNAVAILABLE else text


def _xml_int(parent: ET.Element, path: str, where: str, mib: bool = False) -> Value:
    value = _xml_value(parent, path, where)
    if isinstance(value, Unavailable):
        return value
    match = _MIB_RE.fullmatch(value) if mib else _INT_RE.fullmatch(value)
    if not match or (mib and not match["unit"]):
        raise _error(f"an integer{' MiB' if mib else ''} in <{path}> of {where}", value)
    return int(match["n"] if mib else value)


def _xml_uuid(parent: ET.Element, where: str, pattern: re.Pattern[str], form: str) -> Value:
    uuid = _xml_value(parent, "uuid", where)
    if isinstance(uuid, str) and not pattern.fullmatch(uuid):
        raise _error(f"{form} in <uuid> of {where}", uuid)
    return uuid


def _xml_mig_devices(gpu: ET.Element, where: str) -> list[dict[str, Value]]:
    container = gpu.find("mig_devices")
    if container is None:
        raise SmiParseError(f"expected <mig_devices> in {where}, got none")
    children, body = list(container), (container.text or "").strip()
    if not children and body in ("", "None"):
        return []
    if body or any(child.tag != "mig_device" for child in children):
        got = body or ", ".join(f"<{child.tag}>" for child in children)
        raise _error(f"'None' or <mig_device> elements in <mig_devices> of {where}", got)
    devices = []
    for position, device in enumerate(children):
        at = f"<mig_device> {position} of {where}"
        entry = {k: _xml_int(device, k, at) for k in ("index", "gpu_instance_id", "compute_instance_id")}
        if device.find("fb_memory_usage/total") is not None:
            entry["memory.total"] = _xml_int(device, "fb_memory_usage/total", at, mib=True)
        if device.find("uuid") is not None:  # some drivers leave it out; -L always has it
            entry["uuid"] = _xml_uuid(device, at, MIG_UUID_RE, _MIG_UUID_FORM)
        devices.append(entry)
    return devices


MIG_NOT_APPLICABLE = Unavailable("[N/A]")


def _xml_mig(gpu: ET.Element, where: str) -> dict[str, XmlValue]:
    """MIG mode and devices; a GPU without ``<mig_mode>`` (drivers before R450) has no MIG at all.

    Such a GPU's XML has no ``<mig_devices>`` either; a ``<mig_devices>`` without ``<mig_mode>``
    is refused, since a driver that lists MIG devices also states the mode.
    """
    if gpu.find("mig_mode") is None:
        if gpu.find("mig_devices") is not None:
            raise SmiParseError(f"expected <mig_mode> in {where} (it has <mig_devices>), got none")
        return {"mig_mode": MIG_NOT_APPLICABLE, "mig_devices": []}
    return {
        "mig_mode": _xml_value(gpu, "mig_mode/current_mig", where),
        "mig_devices": list(_xml_mig_devices(gpu, where)),
    }


def _xml_bus_id(gpu: ET.Element, where: str) -> str:
    """The bus id from ``<pci/pci_bus_id>`` and the ``id`` attribute; either may be absent, not both."""
    raw = [r for r in (gpu.get("id"), gpu.findtext("pci/pci_bus_id")) if r is not None]
    if not raw:
        raise SmiParseError(f"expected an id attribute or <pci/pci_bus_id> in {where}, got neither")
    try:
        normalised = {normalise_pci_bus_id(r) for r in raw}
    except InventoryError:
        raise _error(f"a PCI bus id like 00000000:18:00.0 in {where}", ", ".join(raw)) from None
    if len(normalised) != 1:
        raise _error(f"the id attribute and <pci/pci_bus_id> to agree in {where}", ", ".join(raw))
    return normalised.pop()


def _check_declarations(text: str) -> None:
    if "<!ENTITY" in text:
        raise _error("nvidia-smi -q -x XML without entity declarations", text[text.find("<!ENTITY") :])
    count = text.count("<!DOCTYPE")
    if count > 1 or (count == 1 and not _SAFE_DOCTYPE_RE.search(text)):
        form = '<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_vN.dtd"> or no DOCTYPE'
        raise _error(form, text[text.find("<!DOCTYPE") :])


def parse_xml(text: str) -> list[dict[str, XmlValue]]:
    """Parse ``nvidia-smi -q -x``: identity, minor number, memory and MIG state of each GPU."""
    stripped = text.strip()
    if not stripped:
        raise SmiParseError("expected nvidia-smi -q -x XML, got empty output")
    if stripped in _NO_DEVICES:
        return []
    _check_declarations(stripped)
    try:
        root = ET.fromstring(stripped)
    except ET.ParseError as exc:
        raise SmiParseError(f"expected nvidia-smi -q -x XML, got malformed XML ({exc})") from None
    if root.tag != "nvidia_smi_log":
        raise SmiParseError(f"expected root element <nvidia_smi_log>, got <{root.tag}>")
    driver = _xml_value(root, "driver_version", "<nvidia_smi_log>")
    result: list[dict[str, XmlValue]] = []
    for position, gpu in enumerate(root.findall("gpu")):
        where = f"<gpu id={gpu.get('id')!r}> (gpu {position})"
        result.append(
            {
                "uuid": _xml_uuid(gpu, where, GPU_UUID_RE, _GPU_UUID_FORM),
                "name": _xml_value(gpu, "product_name", where),
                "pci.bus_id": _xml_bus_id(gpu, where),
                "minor_number": _xml_int(gpu, "minor_number", where),
                "memory.total": _xml_int(gpu, "fb_memory_usage/total", where, mib=True),
                "driver_version": driver,
                **_xml_mig(gpu, where),
            }
        )
    return result
