"""Verdicts for the cuda.* cases (SPEC section 4), from the compute probe's JSON document.

Pure functions, no I/O: the suites run ``workloads/cuda_probe.py`` in a sandbox, hand its stdout
to :func:`parse_probe_output` and the document to one ``judge_*`` function per case. Keeping the
rules here, apart from provisioning, is what lets CI prove each rule can fail.

Verdict strings are those of SPEC section 5 (``reports.evidence.Verdict`` values). A probe crash
or timeout is ``error`` and is decided by the caller; unparseable output is ``inconclusive``
(:func:`inconclusive`); anything the probe reports as broken is ``fail``, except a probe
environment that lacks the CUDA stack on a real host (:func:`environment_gap`): that is the
runner's to fix, so it is ``skip`` or ``error`` naming the missing piece, never ``fail``.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

PROBE_VERSION = 1
PASS, FAIL, SKIP, INCONCLUSIVE, ERROR = "pass", "fail", "skip", "inconclusive", "error"
BANDWIDTH_METRICS = ("h2d_gbps", "d2h_gbps", "d2d_gbps")
DEFAULT_THRESHOLDS: Mapping[str, float] = {"h2d_gbps": 0.9, "d2h_gbps": 0.9, "d2d_gbps": 0.9}
_MODES = ("cupy", "driver", "simulated", "none")
_SIM_NOTE = " (simulated: computed with numpy on the simulated host)"


@dataclass(frozen=True)
class Judgement:
    """One case's decision; ``parsed`` is what the evidence record keeps of the probe output."""

    verdict: str
    reason: str
    parsed: dict[str, Any] = field(default_factory=dict, hash=False)


class ProbeOutputError(ValueError):
    """The probe's stdout is not a document this harness understands (verdict ``inconclusive``)."""


def parse_probe_output(stdout: str) -> Mapping[str, Any]:
    """The probe's one JSON document, checked for the keys every judge relies on."""
    text = stdout.strip()
    if not text:
        raise ProbeOutputError("the compute probe printed nothing on stdout, expected one JSON document")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProbeOutputError(
            f"the compute probe's stdout is not one JSON document ({exc.msg} at line {exc.lineno}); "
            f"it starts {text[:60]!r}"
        ) from None
    if not isinstance(doc, dict):
        raise ProbeOutputError(f"the compute probe printed a JSON {type(doc).__name__}, expected an object")
    if doc.get("probe_version") != PROBE_VERSION:
        raise ProbeOutputError(
            f"probe_version is {doc.get('probe_version')!r}, expected {PROBE_VERSION} "
            "(hint: the probe copied into the sandbox is not the one this harness ships)"
        )
    missing = [k for k in ("mode", "simulated", "cuda", "devices", "errors") if k not in doc]
    if missing:
        raise ProbeOutputError(f"the probe document lacks {', '.join(missing)}")
    cuda, devices = doc["cuda"], doc["devices"]
    if doc["mode"] not in _MODES or not isinstance(cuda, dict) or not isinstance(devices, list):
        raise ProbeOutputError(
            f"the probe document is malformed: mode {doc['mode']!r}, expected one of {_MODES}"
        )
    if not isinstance(cuda.get("ok"), bool) or not isinstance(cuda.get("device_count"), int):
        raise ProbeOutputError(
            "the probe document's cuda block lacks a boolean ok or an integer device_count"
        )
    if not all(isinstance(d, dict) for d in devices):
        raise ProbeOutputError("the probe document's devices are not all objects")
    return doc


def inconclusive(exc: ProbeOutputError) -> Judgement:
    return Judgement(INCONCLUSIVE, str(exc))


def _simulated(doc: Mapping[str, Any]) -> bool:
    return bool(doc.get("simulated")) or doc.get("mode") == "simulated"


def _uuids(doc: Mapping[str, Any]) -> list[str | None]:
    return [d.get("uuid") for d in doc.get("devices", [])]


def _base(doc: Mapping[str, Any], granted: frozenset[str] | None) -> dict[str, Any]:
    cuda = doc.get("cuda", {})
    return {
        "mode": doc.get("mode"),
        "simulated": _simulated(doc),
        "cuda_ok": cuda.get("ok"),
        "cuda_error": cuda.get("error"),
        **({"cuda_error_code": cuda["error_code"]} if cuda.get("error_code") is not None else {}),
        "device_count": cuda.get("device_count"),
        "uuids": _uuids(doc),
        "granted": None if granted is None else sorted(granted),
    }


def _note(doc: Mapping[str, Any]) -> str:
    return _SIM_NOTE if _simulated(doc) else ""


# What a CUresult from initialisation means in a sandbox whose NVML works (failure classes 10, 12
# and 13 of the research catalogue), keyed by the ``error_code`` the probe reports.
CUDA_INIT_CAUSES: Mapping[int, str] = {
    999: "with NVML working this is most often a missing or denied /dev/nvidia-uvm "
    "(nvidia-uvm not loaded when the CDI spec was generated, or a wrong major in it)",
    802: "the system is not ready: on an NVSwitch host nvidia-fabricmanager is not running "
    "(a host fault, seen in every sandbox)",
    803: "the CUDA user-mode driver does not match the kernel driver "
    "(stale CDI spec or driver libraries from another version)",
    804: "forward compatibility (cuda-compat libraries) is not supported on this GPU",
}


def _init_failure(doc: Mapping[str, Any], smi_count: int | None = None) -> str:
    cuda = doc.get("cuda", {})
    error = cuda.get("error") or "no error text"
    smi = f"nvidia-smi lists {smi_count} GPU(s) but " if smi_count else ""
    cause = CUDA_INIT_CAUSES.get(cuda.get("error_code")) if isinstance(cuda.get("error_code"), int) else None
    return f"{smi}CUDA failed to initialise: {error}" + (f"; {cause}" if cause else "")


PROBE_IMAGE_REMEDY = "pass --probe-image IMAGE with python3, numpy and cupy (see images/probe)"
HOST_REMEDY = (
    "run the harness from an interpreter with cupy (pip install 'gpuconform[cuda]') "
    "or name one with --driver-opt host.python=PATH"
)
CU_ERROR_STUB_LIBRARY = 34
_INSUFFICIENT_DRIVER = "cudaErrorInsufficientDriver"


def environment_gap(
    doc: Mapping[str, Any],
    *,
    needs_cupy: bool,
    simulated_host: bool,
    remedy: str = PROBE_IMAGE_REMEDY,
) -> Judgement | None:
    """On a real host, what the probe environment lacks for this case, as ``skip``/``error``.

    The probe reports its ``stack`` (interpreter, cupy) and what libcuda said. No cupy is a
    missing precondition (``skip``: the default images carry numpy only); cupy that does not
    import, a libcuda that cannot be loaded or is the toolkit's stub, and a cupy runtime newer
    than the host driver are a broken environment (``error``). None of them says anything about
    the driver under test, so none is a ``fail``. On a simulated host the probe computes with
    numpy and the simulated injection is what is judged: no gap there. ``needs_cupy`` is false for
    cuda.init and cuda.uuid, which the driver API answers alone.
    """
    stack = doc.get("stack")
    if simulated_host or _simulated(doc) or not isinstance(stack, Mapping):
        return None
    cupy, libcuda = stack.get("cupy") or {}, stack.get("libcuda") or {}
    driver_api = doc.get("driver_api") or {}
    cuda = doc.get("cuda", {})
    where = f"the probe environment (python {stack.get('python')})"
    parsed = {"stack": dict(stack), "mode": doc.get("mode"), "cuda_error": cuda.get("error")}
    if not cuda.get("ok") and not libcuda.get("loaded"):
        return Judgement(
            ERROR,
            f"{where} cannot load {libcuda.get('library', 'libcuda.so.1')}: {driver_api.get('error')}; "
            "the driver's user-space library comes in with the GPU (CDI spec, or "
            "NVIDIA_DRIVER_CAPABILITIES=compute under the legacy hook): check the injection and the image",
            parsed,
        )
    if not cuda.get("ok") and driver_api.get("error_code") == CU_ERROR_STUB_LIBRARY:
        return Judgement(
            ERROR,
            f"{where} loads the CUDA toolkit's stub libcuda, not the driver's: {driver_api.get('error')} "
            "(hint: the image's library path puts .../cuda/lib64/stubs before the injected driver library)",
            parsed,
        )
    too_new = str(cuda.get("error") or "").startswith(_INSUFFICIENT_DRIVER)
    if doc.get("mode") == "cupy" and too_new and driver_api.get("ok"):
        return Judgement(
            ERROR,
            f"cupy in {where} is built for CUDA runtime {cuda.get('runtime_version')}, newer than the "
            f"host driver supports (CUDA {driver_api.get('driver_version')}), while the driver API "
            f"initialises: {cuda.get('error')}; {remedy} built for the host's CUDA version",
            parsed,
        )
    if not needs_cupy:
        return None
    if not cupy.get("present"):
        return Judgement(SKIP, f"precondition: {where} has no cupy: {remedy}", parsed)
    if not cupy.get("usable"):
        return Judgement(ERROR, f"cupy in {where} does not import ({cupy.get('error')}): {remedy}", parsed)
    return None


def judge_init(
    doc: Mapping[str, Any], granted: frozenset[str] | None, expected_count: int, smi_count: int | None = None
) -> Judgement:
    """cuda.init: CUDA initialises and counts exactly the grant. ``smi_count`` (GPUs nvidia-smi
    listed in the same sandbox, when known) sharpens the message for "nvidia-smi works, CUDA not"."""
    parsed = _base(doc, granted)
    count = int(doc["cuda"].get("device_count") or 0)
    if expected_count == 0 and count == 0:
        return Judgement(PASS, "CUDA sees no device, and none was granted", parsed)
    if not doc["cuda"]["ok"]:
        return Judgement(FAIL, _init_failure(doc, smi_count), parsed)
    if count != expected_count:
        return Judgement(FAIL, f"CUDA sees {count} device(s), expected {expected_count} (the grant)", parsed)
    return Judgement(PASS, f"CUDA initialised with {count} device(s), as granted{_note(doc)}", parsed)


def judge_uuid(
    doc: Mapping[str, Any],
    granted: frozenset[str] | None,
    expected_count: int,
    inventory_uuids: Collection[str] = frozenset(),
) -> Judgement:
    """cuda.uuid: CUDA's UUIDs equal the granted set; without a known grant (kubernetes chooses),
    exactly ``expected_count`` distinct UUIDs, all in the inventory."""
    parsed = _base(doc, granted)
    if not doc["cuda"]["ok"]:
        return Judgement(FAIL, f"no CUDA UUIDs to compare: {_init_failure(doc)}", parsed)
    seen = _uuids(doc)
    if any(not isinstance(u, str) or not u for u in seen):
        return Judgement(FAIL, f"CUDA reported a device without a UUID: {seen}", parsed)
    norm = {str(u).lower(): str(u) for u in seen}
    if len(norm) != len(seen):
        return Judgement(FAIL, f"CUDA reported the same UUID twice: {sorted(map(str, seen))}", parsed)
    if granted is not None:
        want = {u.lower(): u for u in granted}
        extra = sorted(norm[u] for u in norm.keys() - want.keys())
        missing = sorted(want[u] for u in want.keys() - norm.keys())
        if extra or missing:
            return Judgement(
                FAIL,
                f"CUDA's UUIDs differ from the grant: not granted but seen {extra}, "
                f"granted but not seen {missing}",
                parsed,
            )
        return Judgement(PASS, f"CUDA sees exactly the {len(want)} granted UUID(s){_note(doc)}", parsed)
    inventory = {u.lower() for u in inventory_uuids}
    unknown = sorted(norm[u] for u in norm.keys() - inventory)
    if unknown:
        return Judgement(FAIL, f"CUDA reports UUID(s) not in the host inventory: {unknown}", parsed)
    if len(norm) != expected_count:
        return Judgement(FAIL, f"CUDA sees {len(norm)} distinct UUID(s), expected {expected_count}", parsed)
    return Judgement(
        PASS, f"CUDA sees {len(norm)} distinct inventory UUID(s), as requested{_note(doc)}", parsed
    )


def _check_failure(name: str, uuid: str, result: Mapping[str, Any]) -> str:
    if result.get("error"):
        return f"{name} on {uuid} raised {result['error']}"
    if name == "matmul":
        return (
            f"matmul on {uuid}: relative error {result.get('max_rel_err')} exceeds the tolerance "
            f"{result.get('tolerance')} (n={result.get('n')})"
        )
    if name == "vectoradd":
        return (
            f"vectoradd on {uuid}: {result.get('mismatches')} of {result.get('n')} elements wrong, "
            f"max abs error {result.get('max_abs_err')} (expected exact)"
        )
    return f"{name} on {uuid}: {dict(result)}"


def _judge_check(
    name: str, doc: Mapping[str, Any], granted: frozenset[str] | None, expected_count: int
) -> Judgement:
    """A check passes only when it ran, and was right, on every granted device."""
    parsed = _base(doc, granted)
    if not doc["cuda"]["ok"]:
        return Judgement(FAIL, f"{name} could not run: {_init_failure(doc)}", parsed)
    by_uuid = {str(d.get("uuid")).lower(): d for d in doc["devices"]}
    if granted is not None:
        absent = sorted(u for u in granted if u.lower() not in by_uuid)
        if absent:
            return Judgement(
                FAIL, f"{name} did not run on granted GPU(s) {absent}: CUDA does not see them", parsed
            )
        targets = [by_uuid[u.lower()] for u in sorted(granted)]
    else:
        targets = list(doc["devices"])
        if len(targets) != expected_count:
            return Judgement(
                FAIL, f"{name} ran on {len(targets)} device(s), expected {expected_count}", parsed
            )
    results = {str(d.get("uuid")): (d.get("checks") or {}).get(name) for d in targets}
    parsed["results"] = results
    for uuid, result in results.items():
        if not isinstance(result, Mapping):
            return Judgement(FAIL, f"{name} did not run on {uuid}: the probe reports no result", parsed)
        if result.get("ok") is not True:
            return Judgement(FAIL, _check_failure(name, uuid, result), parsed)
    return Judgement(PASS, f"{name} correct on {len(results)} device(s){_note(doc)}", parsed)


def judge_vectoradd(doc: Mapping[str, Any], granted: frozenset[str] | None, expected_count: int) -> Judgement:
    """cuda.vectoradd: the RawKernel result equals numpy's exactly on every granted device."""
    return _judge_check("vectoradd", doc, granted, expected_count)


def judge_matmul(doc: Mapping[str, Any], granted: frozenset[str] | None, expected_count: int) -> Judgement:
    """cuda.matmul: within the probe's stated relative tolerance on every granted device."""
    return _judge_check("matmul", doc, granted, expected_count)


def _median(device: Mapping[str, Any], metric: str) -> float | None:
    figure = (device.get("bandwidth") or {}).get(metric) or {}
    value = figure.get("median")
    return float(value) if isinstance(value, int | float) and value > 0 else None


def judge_bandwidth(
    sandbox_doc: Mapping[str, Any],
    host_doc: Mapping[str, Any],
    thresholds: Mapping[str, float] = DEFAULT_THRESHOLDS,
) -> Judgement:
    """cuda.bandwidth: per GPU (paired by UUID) and metric, sandbox median / bare-host median,
    failing below the metric's threshold. Never judged on a simulated host: numpy copies say
    nothing about PCIe or HBM, so that is a skip, not a pass."""
    unknown = sorted(set(thresholds) - set(BANDWIDTH_METRICS))
    if unknown:
        raise ValueError(f"unknown bandwidth metric(s) {unknown}, expected some of {list(BANDWIDTH_METRICS)}")
    parsed: dict[str, Any] = {
        "thresholds": dict(thresholds),
        "ratios": {},
        "sandbox": {},
        "host": {},
        "simulated": _simulated(sandbox_doc) or _simulated(host_doc),
    }
    if parsed["simulated"]:
        return Judgement(SKIP, "bandwidth parity is not judged on a simulated host", parsed)
    if not host_doc["cuda"]["ok"]:
        return Judgement(ERROR, f"the bare-host baseline has no figures: {_init_failure(host_doc)}", parsed)
    if not sandbox_doc["cuda"]["ok"]:
        return Judgement(FAIL, f"no bandwidth in the sandbox: {_init_failure(sandbox_doc)}", parsed)
    host_by_uuid = {str(d.get("uuid")).lower(): d for d in host_doc["devices"]}
    failures: list[str] = []
    for device in sandbox_doc["devices"]:
        uuid = str(device.get("uuid"))
        host = host_by_uuid.get(uuid.lower())
        if host is None:
            return Judgement(
                ERROR,
                f"the bare-host baseline did not measure {uuid} (hint: restrict the "
                "baseline with CUDA_VISIBLE_DEVICES to the sandbox's GPUs)",
                parsed,
            )
        for who, dev in (("sandbox", device), ("host", host)):
            error = (dev.get("bandwidth") or {}).get("error")
            if error or not dev.get("bandwidth"):
                verdict = FAIL if who == "sandbox" else ERROR
                return Judgement(
                    verdict, f"{who} bandwidth on {uuid} was not measured: {error or 'skipped'}", parsed
                )
        for metric, threshold in thresholds.items():
            mine, base = _median(device, metric), _median(host, metric)
            parsed["sandbox"].setdefault(uuid, {})[metric] = mine
            parsed["host"].setdefault(uuid, {})[metric] = base
            if mine is None or base is None:
                return Judgement(
                    INCONCLUSIVE, f"{metric} on {uuid} has no median (sandbox {mine}, host {base})", parsed
                )
            ratio = mine / base
            parsed["ratios"].setdefault(uuid, {})[metric] = ratio
            if ratio < threshold:
                failures.append(
                    f"{metric} on {uuid}: sandbox {mine:.1f} GB/s is {ratio:.2f} of the host's "
                    f"{base:.1f} GB/s (threshold {threshold:.2f})"
                )
    if not sandbox_doc["devices"]:
        return Judgement(FAIL, "the sandbox reports no CUDA device to measure", parsed)
    if failures:
        return Judgement(FAIL, "; ".join(failures), parsed)
    lows = {m: min(r[m] for r in parsed["ratios"].values()) for m in thresholds}
    summary = ", ".join(f"{m} {v:.2f}" for m, v in lows.items())
    return Judgement(PASS, f"every sandbox/host ratio at or above its threshold (lowest: {summary})", parsed)


def bandwidth_ratios(
    sandbox_doc: Mapping[str, Any], host_doc: Mapping[str, Any], metrics: Iterable[str] = BANDWIDTH_METRICS
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per GPU and metric: the sandbox and host medians and their ratio, judged or not.

    On a simulated host these are numpy copy speeds (the harness's own overhead, not PCIe or
    HBM): recorded for the benchmark's report, never turned into a verdict.
    """
    host_by_uuid = {str(d.get("uuid")).lower(): d for d in host_doc.get("devices", [])}
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for device in sandbox_doc.get("devices", []):
        uuid = str(device.get("uuid"))
        host = host_by_uuid.get(uuid.lower(), {})
        for metric in metrics:
            mine, base = _median(device, metric), _median(host, metric)
            ratio = mine / base if mine is not None and base is not None else None
            out.setdefault(uuid, {})[metric] = {"sandbox": mine, "host": base, "ratio": ratio}
    return out
