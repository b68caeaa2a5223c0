"""Compute probe run inside a sandbox: does CUDA work there, on which GPUs, and how fast.

Self-contained on purpose: the harness copies this one file into a sandbox and runs it with the
sandbox's ``python3`` (Debian's 3.11 + numpy 1.24 in CI), so it imports nothing from the
repository and imports cupy only when it runs, never at import time.

    python3 cuda_probe.py [--sizes KEY=N ...] [--repeats N] [--skip-bandwidth] [--no-cupy]

It prints exactly one JSON document (``probe_version`` 1) and exits 0 even when a check fails,
because the document says what failed; a non-zero exit means the probe itself broke.

Modes: ``cupy`` (a real CUDA device through cupy), ``driver`` (no cupy, but libcuda: CUDA's
initialisation and the devices' identities through the driver API, no checks), ``simulated`` (the
simulated GPU host's nodes and descriptors, see fixtures/sim/simgpu/layout.py; checks run on numpy
and every result is marked simulated, timings are reported with ``judged: false``), ``none``
(neither). Identity always comes from the driver API where libcuda loads (``cuDeviceGetUuid_v2``
into 16 bytes; cupy's properties UUID loses everything after a zero byte). Every document says
what the interpreter has (``stack``) and what libcuda answered (``driver_api``), so the harness
can tell a probe environment without a CUDA stack from a sandbox whose CUDA is broken.

Both real and simulated checks go through one :class:`Backend` (an array module plus copy and
kernel hooks and a :class:`Timer`), so the cupy path's logic runs in CI on a numpy twin.
Figures: ``*_gbps`` are 10^9 bytes/s (a device-local copy counts each byte twice, read and
write); ``spread`` is (max - min) / median of the samples; ``tflops`` is 2 n^3 / s / 10^12.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PROBE_VERSION = 1
# Mirrors fixtures/sim/simgpu/layout.py (a unit test keeps them equal; this file cannot import it).
DEFAULT_DEV_DIR = "/dev"
DEFAULT_DESC_DIR = "/run/gpuconform-sim/gpus"
ENV_DEV_DIR = "SIMGPU_DEV_DIR"
ENV_DESC_DIR = "SIMGPU_DESC_DIR"

MATMUL_RTOL = 1e-3  # ||C - C_ref||_F / ||C_ref||_F for float32 (room for TF32 tensor cores)
CUDA_DEFAULTS = {
    "vector": 1 << 22,
    "matmul": 512,
    "reduction": 1 << 21,
    "copy_mib": 256,
    "bench_matmul": 4096,
}
SIM_DEFAULTS = {"vector": 1 << 16, "matmul": 128, "reduction": 1 << 16, "copy_mib": 8, "bench_matmul": 256}
SIZE_LIMITS = {
    "vector": 1 << 28,
    "matmul": 8192,
    "reduction": 1 << 21,
    "copy_mib": 8192,
    "bench_matmul": 16384,
}

VECTOR_ADD_SRC = r"""
extern "C" __global__ void vector_add(const float* a, const float* b, float* out, unsigned long long n) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}
"""
# Every CUDA C++ kernel the probe compiles, by entry name: the one place cupy_backend takes its
# sources from, and what tests/unit/test_nvrtc_kernels.py compiles with NVRTC for KERNEL_ARCHS.
KERNELS: dict[str, str] = {"vector_add": VECTOR_ADD_SRC}
# The architectures the probe claims its kernels compile for (CI proves it with NVRTC 13, which
# dropped everything below compute_75): T4, A100, A10/A40, L4/L40S, H100/H200, B200, RTX Blackwell.
KERNEL_ARCHS = (
    "compute_75",
    "compute_80",
    "compute_86",
    "compute_89",
    "compute_90",
    "compute_100",
    "compute_120",
)
THREADS_PER_BLOCK = 256

# ---- the CUDA driver API through ctypes ------------------------------------------------------
# cupy's getDeviceProperties()["uuid"] is a Cython conversion of char[16] that stops at the first
# zero byte (6% of UUIDs have one), so identity comes from cuDeviceGetUuid_v2 into a 16-byte
# buffer. The driver API also answers "does CUDA initialise" where no cupy is installed.
LIBCUDA = "libcuda.so.1"
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
# CUresult names (cuda.h) for when cuGetErrorName itself is unusable (a unit test checks them
# against cuda.h where the toolkit is installed).
CU_ERROR_NAMES: dict[int, str] = {
    1: "CUDA_ERROR_INVALID_VALUE",
    2: "CUDA_ERROR_OUT_OF_MEMORY",
    3: "CUDA_ERROR_NOT_INITIALIZED",
    4: "CUDA_ERROR_DEINITIALIZED",
    34: "CUDA_ERROR_STUB_LIBRARY",
    46: "CUDA_ERROR_DEVICE_UNAVAILABLE",
    100: "CUDA_ERROR_NO_DEVICE",
    101: "CUDA_ERROR_INVALID_DEVICE",
    102: "CUDA_ERROR_DEVICE_NOT_LICENSED",
    201: "CUDA_ERROR_INVALID_CONTEXT",
    214: "CUDA_ERROR_ECC_UNCORRECTABLE",
    303: "CUDA_ERROR_SHARED_OBJECT_INIT_FAILED",
    304: "CUDA_ERROR_OPERATING_SYSTEM",
    800: "CUDA_ERROR_NOT_PERMITTED",
    801: "CUDA_ERROR_NOT_SUPPORTED",
    802: "CUDA_ERROR_SYSTEM_NOT_READY",
    803: "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
    804: "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE",
    999: "CUDA_ERROR_UNKNOWN",
}


class CudaDriverError(RuntimeError):
    """A CUresult other than CUDA_SUCCESS, with the call that returned it."""

    def __init__(self, call: str, code: int, name: str, text: str) -> None:
        super().__init__(f"{name} ({code}) from {call}: {text}" if text else f"{name} ({code}) from {call}")
        self.call, self.code, self.name = call, code, name


class DriverApi:
    """The few libcuda entry points the probe needs, each checked; ``lib`` is a loaded CDLL."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib

    @classmethod
    def load(cls, name: str = LIBCUDA) -> DriverApi:
        """Raises OSError (dlopen's message) when the library is not there."""
        return cls(ctypes.CDLL(name))

    def error_text(self, code: int) -> tuple[str, str]:
        """(name, description) of a CUresult, from libcuda itself where it knows the code."""
        name, text = CU_ERROR_NAMES.get(code, f"CUresult {code}"), ""
        for fn, slot in (("cuGetErrorName", 0), ("cuGetErrorString", 1)):
            out = ctypes.c_char_p()
            try:
                if getattr(self.lib, fn)(ctypes.c_int(code), ctypes.byref(out)) == 0 and out.value:
                    value = out.value.decode("utf-8", "replace")
                    name, text = (value, text) if slot == 0 else (name, value)
            except AttributeError:
                pass
        return name, text

    def call(self, fn: str, *args: Any) -> None:
        code = int(getattr(self.lib, fn)(*args))
        if code != 0:
            raise CudaDriverError(fn, code, *self.error_text(code))

    def first(self, names: Sequence[str], *args: Any) -> str:
        """Call the first of ``names`` libcuda exports (newest ABI first); the name used."""
        for fn in names:
            if hasattr(self.lib, fn):
                self.call(fn, *args)
                return fn
        missing = "libcuda exports none of " + ", ".join(names)
        raise CudaDriverError(names[-1], 500, "CUDA_ERROR_NOT_FOUND", missing)

    def init(self) -> None:
        self.call("cuInit", ctypes.c_uint(0))

    def driver_version(self) -> int:
        out = ctypes.c_int()
        self.call("cuDriverGetVersion", ctypes.byref(out))
        return out.value

    def device_count(self) -> int:
        out = ctypes.c_int()
        self.call("cuDeviceGetCount", ctypes.byref(out))
        return out.value

    def device(self, ordinal: int) -> int:
        out = ctypes.c_int()
        self.call("cuDeviceGet", ctypes.byref(out), ctypes.c_int(ordinal))
        return out.value

    def uuid(self, dev: int) -> tuple[str, str]:
        """(nvidia-smi form, the entry point that gave it): all 16 bytes, zeros included."""
        buf = (ctypes.c_ubyte * 16)()
        used = self.first(("cuDeviceGetUuid_v2", "cuDeviceGetUuid"), ctypes.byref(buf), ctypes.c_int(dev))
        return format_uuid(bytes(buf)), used

    def name(self, dev: int) -> str:
        buf = ctypes.create_string_buffer(256)
        self.call("cuDeviceGetName", buf, ctypes.c_int(len(buf)), ctypes.c_int(dev))
        return _text(buf.value)

    def total_mem_mib(self, dev: int) -> int:
        out = ctypes.c_size_t()
        self.first(("cuDeviceTotalMem_v2", "cuDeviceTotalMem"), ctypes.byref(out), ctypes.c_int(dev))
        return int(out.value) // (1 << 20)

    def compute_capability(self, dev: int) -> str:
        major, minor = ctypes.c_int(), ctypes.c_int()
        for out, attr in (
            (major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
            (minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
        ):
            self.call("cuDeviceGetAttribute", ctypes.byref(out), ctypes.c_int(attr), ctypes.c_int(dev))
        return f"{major.value}.{minor.value}"

    def pci_bus_id(self, dev: int) -> str:
        buf = ctypes.create_string_buffer(64)
        self.call("cuDeviceGetPCIBusId", buf, ctypes.c_int(len(buf)), ctypes.c_int(dev))
        return _text(buf.value)

    def open_context(self, dev: int) -> None:
        """Create (and drop) the primary context: where a broken stack fails, as cudaFree(0) does."""
        ctx = ctypes.c_void_p()
        self.call("cuDevicePrimaryCtxRetain", ctypes.byref(ctx), ctypes.c_int(dev))
        self.first(("cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease"), ctypes.c_int(dev))


def read_driver(library: str = LIBCUDA) -> dict[str, Any]:
    """What the CUDA driver API says: init, version, and every device's identity.

    Never raises: a missing library is ``loaded: false`` with dlopen's message, a CUresult is
    ``error`` (``NAME (code) from call: text``) with ``error_name`` and ``error_code``.
    """
    out: dict[str, Any] = {
        "library": library,
        "loaded": False,
        "ok": False,
        "error": None,
        "error_name": None,
        "error_code": None,
        "driver_version": None,
        "device_count": 0,
        "devices": [],
    }
    try:
        api = DriverApi.load(library)
    except OSError as exc:
        out["error"] = f"{library} could not be loaded: {exc}"
        return out
    out["loaded"] = True
    try:
        out["driver_version"] = api.driver_version()  # answers before cuInit, even without a GPU
    except CudaDriverError:
        pass
    try:
        api.init()
        count = api.device_count()
        devices = []
        for i in range(count):
            dev = api.device(i)
            uuid, source = api.uuid(dev)
            devices.append(
                {
                    "ordinal": i,
                    "uuid": uuid,
                    "uuid_source": source,
                    "name": api.name(dev),
                    "memory_total_mib": api.total_mem_mib(dev),
                    "compute_capability": api.compute_capability(dev),
                    "pci_bus_id": api.pci_bus_id(dev),
                }
            )
            api.open_context(dev)
    except CudaDriverError as exc:
        out.update(error=str(exc), error_name=exc.name, error_code=exc.code)
        return out
    out.update(ok=True, device_count=count, devices=devices)
    return out


class Timer:
    """Times ``fn`` ``repeats`` times after one untimed warm-up call; seconds per call."""

    def measure(self, fn: Callable[[], object], repeats: int) -> list[float]:
        fn()
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        return samples


class CudaEventTimer(Timer):
    """CUDA events on the current stream: device time, not host time (``cuda`` is cupy.cuda)."""

    def __init__(self, cuda: Any) -> None:
        self._cuda = cuda

    def measure(self, fn: Callable[[], object], repeats: int) -> list[float]:
        fn()
        samples = []
        for _ in range(repeats):
            start, end = self._cuda.Event(), self._cuda.Event()
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(float(self._cuda.get_elapsed_time(start, end)) / 1000.0)
        return samples


@dataclass(frozen=True)
class Backend:
    """What the checks need from a device: cupy on a GPU, numpy on a simulated one or in tests."""

    xp: Any
    timer: Timer
    to_device: Callable[[np.ndarray], Any]
    to_host: Callable[[Any], np.ndarray]
    vector_add: Callable[[Any, Any], Any]
    host_buffer: Callable[[int], np.ndarray]  # float32 host buffer (pinned with cupy)
    h2d: Callable[[np.ndarray, Any], object]
    d2h: Callable[[Any, np.ndarray], object]
    d2d: Callable[[Any, Any], object]


def numpy_backend(timer: Timer | None = None) -> Backend:
    def copy(src: Any, dst: Any) -> None:
        np.copyto(dst, src)

    return Backend(
        xp=np,
        timer=timer or Timer(),
        to_device=lambda a: np.array(a, copy=True),
        to_host=lambda a: np.array(a, copy=True),
        vector_add=np.add,
        host_buffer=lambda count: np.empty(count, dtype=np.float32),
        h2d=copy,
        d2h=lambda dev, host: copy(dev, host),
        d2d=copy,
    )


def cupy_backend(cp: Any) -> Backend:
    """The real path: the vector add is a CUDA kernel compiled by NVRTC, not a library call."""
    kernel = cp.RawKernel(KERNELS["vector_add"], "vector_add")

    def vector_add(a: Any, b: Any) -> Any:
        out = cp.empty_like(a)
        n = int(a.size)
        kernel(
            ((n + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK,),
            (THREADS_PER_BLOCK,),
            (a, b, out, np.uint64(n)),
        )
        return out

    def host_buffer(count: int) -> np.ndarray:
        return np.frombuffer(cp.cuda.alloc_pinned_memory(count * 4), dtype=np.float32, count=count)

    return Backend(
        xp=cp,
        timer=CudaEventTimer(cp.cuda),
        to_device=cp.asarray,
        to_host=cp.asnumpy,
        vector_add=vector_add,
        host_buffer=host_buffer,
        h2d=lambda host, dev: dev.set(host),
        d2h=lambda dev, host: dev.get(out=host),
        d2d=lambda src, dst: cp.copyto(dst, src),
    )


def describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def check_vectoradd(b: Backend, n: int) -> dict[str, Any]:
    """Integer-valued float32 below 2^24: every sum is exact, so equality is the right test."""
    out: dict[str, Any] = {"ok": False, "n": n, "max_abs_err": None, "mismatches": None, "error": None}
    try:
        idx = np.arange(n, dtype=np.int64)
        a, c = (idx % 65521).astype(np.float32), ((idx * 7) % 65519).astype(np.float32)
        want = a + c
        got = np.asarray(b.to_host(b.vector_add(b.to_device(a), b.to_device(c))))
        if got.shape != want.shape:
            raise ValueError(f"result has shape {got.shape}, expected {want.shape}")
        mismatches = int(np.count_nonzero(got != want))
        out.update(
            mismatches=mismatches,
            ok=mismatches == 0,
            max_abs_err=float(np.max(np.abs(got.astype(np.float64) - want))),
        )
    except Exception as exc:
        out["error"] = describe(exc)
    return out


def check_matmul(b: Backend, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ok": False,
        "n": n,
        "dtype": "float32",
        "max_rel_err": None,
        "tolerance": MATMUL_RTOL,
        "rel_err_norm": "frobenius",
        "error": None,
    }
    try:
        rng = np.random.default_rng(20240601)
        a = rng.uniform(-1.0, 1.0, (n, n)).astype(np.float32)
        c = rng.uniform(-1.0, 1.0, (n, n)).astype(np.float32)
        want = a.astype(np.float64) @ c.astype(np.float64)
        got = np.asarray(b.to_host(b.xp.matmul(b.to_device(a), b.to_device(c))), dtype=np.float64)
        if got.shape != want.shape:
            raise ValueError(f"result has shape {got.shape}, expected {want.shape}")
        rel = float(np.linalg.norm(got - want) / np.linalg.norm(want))
        out.update(max_rel_err=rel, ok=math.isfinite(rel) and rel <= MATMUL_RTOL)
    except Exception as exc:
        out["error"] = describe(exc)
    return out


def check_reduction(b: Backend, n: int) -> dict[str, Any]:
    """Sum of integers 0..7 as float32, n <= 2^21: every partial sum is exact in any order."""
    out: dict[str, Any] = {"ok": False, "n": n, "value": None, "expected": None, "error": None}
    try:
        values = np.random.default_rng(7).integers(0, 8, n).astype(np.float32)
        want = int(values.astype(np.int64).sum())
        got = float(np.asarray(b.to_host(b.xp.sum(b.to_device(values)))))
        out.update(value=got, expected=want, ok=got == want)
    except Exception as exc:
        out["error"] = describe(exc)
    return out


def rate_stats(seconds: Sequence[float], work: float) -> dict[str, Any]:
    rates = [work / s for s in seconds if s > 0]
    if not rates:
        return {"median": None, "spread": None, "samples": []}
    med = statistics.median(rates)
    return {"median": med, "spread": (max(rates) - min(rates)) / med if med else None, "samples": rates}


def measure_bandwidth(b: Backend, nbytes: int, repeats: int, judged: bool) -> dict[str, Any]:
    count = nbytes // 4
    host = b.host_buffer(count)
    host[...] = 1.0
    src, dst = b.to_device(host), b.to_device(host)
    gb = count * 4 / 1e9
    return {
        "bytes": count * 4,
        "judged": judged,
        "error": None,
        "h2d_gbps": rate_stats(b.timer.measure(lambda: b.h2d(host, src), repeats), gb),
        "d2h_gbps": rate_stats(b.timer.measure(lambda: b.d2h(src, host), repeats), gb),
        "d2d_gbps": rate_stats(b.timer.measure(lambda: b.d2d(src, dst), repeats), 2 * gb),
    }


def measure_matmul_tflops(b: Backend, n: int, repeats: int, judged: bool) -> dict[str, Any]:
    rng = np.random.default_rng(3)
    a = b.to_device(rng.standard_normal((n, n)).astype(np.float32))
    c = b.to_device(rng.standard_normal((n, n)).astype(np.float32))
    res = b.xp.matmul(a, c)
    stats = rate_stats(b.timer.measure(lambda: b.xp.matmul(a, c, out=res), repeats), 2.0 * n**3 / 1e12)
    return {"n": n, "dtype": "float32", "judged": judged, **stats}


def run_checks(
    b: Backend, sizes: Mapping[str, int], repeats: int, timed: bool, judged: bool
) -> dict[str, Any]:
    """Every check for the current device; timing failures are recorded, never raised."""
    out: dict[str, Any] = {
        "checks": {
            "vectoradd": check_vectoradd(b, sizes["vector"]),
            "matmul": check_matmul(b, sizes["matmul"]),
            "reduction": check_reduction(b, sizes["reduction"]),
        },
        "bandwidth": None,
        "matmul_tflops": None,
    }
    if timed:
        benches: tuple[tuple[str, Callable[[], Any]], ...] = (
            ("bandwidth", lambda: measure_bandwidth(b, sizes["copy_mib"] << 20, repeats, judged)),
            ("matmul_tflops", lambda: measure_matmul_tflops(b, sizes["bench_matmul"], repeats, judged)),
        )
        for key, fn in benches:
            try:
                out[key] = fn()
            except Exception as exc:
                out[key] = {"judged": judged, "error": describe(exc)}
    return out


def format_uuid(raw: bytes | str) -> str:
    """cudaDeviceProp.uuid (16 bytes) in nvidia-smi's form GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx."""
    if isinstance(raw, str):
        return raw if raw.startswith("GPU-") else f"GPU-{raw}"
    h = bytes(raw).hex()
    if len(h) != 32:
        raise ValueError(f"device UUID has {len(h) // 2} bytes, expected 16")
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _text(value: Any) -> str:
    return value.rstrip(b"\0").decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def document(
    mode: str,
    cuda: Mapping[str, Any],
    devices: list[dict[str, Any]],
    errors: list[str],
    params: Mapping[str, Any],
) -> dict[str, Any]:
    base = {"ok": False, "error": None, "device_count": 0, "driver_version": None, "runtime_version": None}
    return {
        "probe_version": PROBE_VERSION,
        "mode": mode,
        "simulated": mode == "simulated",
        "cuda": {**base, **cuda},
        "devices": devices,
        "errors": errors,
        "params": dict(params),
    }


def probe_cupy(
    cp: Any,
    sizes: Mapping[str, int],
    repeats: int,
    timed: bool,
    driver: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The real path; ``cp`` is the cupy module (a numpy-backed twin in the unit tests).

    ``driver`` is :func:`read_driver`'s result: where it counted the same devices, the UUIDs come
    from it (all 16 bytes), not from cupy's truncating ``getDeviceProperties()["uuid"]``.
    """
    rt = cp.cuda.runtime
    errors: list[str] = []
    params = {"sizes": dict(sizes), "repeats": repeats}
    versions: dict[str, Any] = {}
    try:
        count = int(rt.getDeviceCount())
        for i in range(count):  # cudaFree(0) forces context creation: where a broken stack fails
            rt.setDevice(i)
            rt.free(0)
    except Exception as exc:  # CUDARuntimeError's text is already "cudaErrorX: message"
        error = str(exc) if isinstance(exc, rt.CUDARuntimeError) else describe(exc)
        status = getattr(exc, "status", None)  # the cudaError_t (802, 803, 999 ... share CUresult's numbers)
        if isinstance(status, int) and not isinstance(status, bool):
            versions["error_code"] = status
        for key, fn in (("runtime_version", rt.runtimeGetVersion),):
            try:  # answers without a driver: says which CUDA the image's cupy was built for
                versions[key] = int(fn())
            except Exception:
                pass
        return document("cupy", {"error": error, **versions}, [], errors, params)
    for key, fn in (("driver_version", rt.driverGetVersion), ("runtime_version", rt.runtimeGetVersion)):
        try:
            versions[key] = int(fn())
        except Exception as exc:
            errors.append(f"{key}: {describe(exc)}")
    if count == 0:
        return document(
            "cupy",
            {"error": "cudaErrorNoDevice: no CUDA-capable device is detected", **versions},
            [],
            errors,
            params,
        )
    identities: list[Mapping[str, Any]] = []
    if driver and driver.get("ok"):
        if driver.get("device_count") == count:
            identities = list(driver["devices"])
        else:
            errors.append(
                f"the driver API counts {driver.get('device_count')} device(s), cupy {count}: "
                "UUIDs from cupy's device properties"
            )
    devices = [
        cupy_device(cp, i, sizes, repeats, timed, errors, identities[i] if identities else None)
        for i in range(count)
    ]
    return document("cupy", {"ok": True, "device_count": count, **versions}, devices, errors, params)


def cupy_device(
    cp: Any,
    i: int,
    sizes: Mapping[str, int],
    repeats: int,
    timed: bool,
    errors: list[str],
    identity: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Identity and checks of CUDA device ``i``; each failure is recorded, the probe goes on."""
    rt = cp.cuda.runtime
    dev: dict[str, Any] = {
        "ordinal": i,
        "uuid": None,
        "uuid_source": None,
        "name": None,
        "pci_bus_id": None,
        "simulated": False,
        "compute_capability": None,
        "memory_total_mib": None,
    }
    if identity is not None:
        dev.update(uuid=identity.get("uuid"), uuid_source=identity.get("uuid_source"))
    try:
        props = rt.getDeviceProperties(i)
        dev.update(
            name=_text(props["name"]),
            compute_capability=f"{props['major']}.{props['minor']}",
            memory_total_mib=int(props["totalGlobalMem"]) // (1 << 20),
            pci_bus_id=str(rt.deviceGetPCIBusId(i)),
        )
        if identity is None:  # no driver API: cupy's conversion, refused when it was cut short
            dev.update(uuid=format_uuid(props["uuid"]), uuid_source="cudaDeviceProp")
    except Exception as exc:
        errors.append(f"device {i} properties: {describe(exc)}")
    try:
        with cp.cuda.Device(i):
            dev.update(run_checks(cupy_backend(cp), sizes, repeats, timed, judged=True))
    except Exception as exc:  # the kernel would not compile, or the context is gone
        errors.append(f"device {i} checks: {describe(exc)}")
    return dev


def probe_driver(driver: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """No cupy, but libcuda: CUDA's initialisation and identities, no checks (they need cupy)."""
    cuda: dict[str, Any] = {"driver_version": driver.get("driver_version"), "error": driver.get("error")}
    if driver.get("error_code") is not None:  # the CUresult, for the judge to name its cause
        cuda.update(error_code=driver["error_code"], error_name=driver.get("error_name"))
    if driver.get("ok") and driver.get("device_count"):
        cuda.update(ok=True, device_count=driver["device_count"])
    elif driver.get("ok"):
        cuda["error"] = "CUDA_ERROR_NO_DEVICE (100) from cuDeviceGetCount: no CUDA-capable device is detected"
    none = {"simulated": False, "checks": None, "bandwidth": None, "matmul_tflops": None}
    devices = [{**d, **none} for d in driver.get("devices", [])] if cuda.get("ok") else []
    return document("driver", cuda, devices, [], params)


def probe_environment(use_cupy: bool) -> tuple[dict[str, Any], Any]:
    """What this interpreter has (python, numpy, cupy) and the cupy module when it imports."""
    cupy_state: dict[str, Any] = {"present": False, "usable": False, "version": None, "error": None}
    module = None
    if not use_cupy:
        cupy_state["error"] = "not tried (--no-cupy)"
    else:
        try:
            import cupy  # type: ignore[import-not-found,unused-ignore]
        except ModuleNotFoundError as exc:
            cupy_state["present"] = exc.name != "cupy"  # a dependency of cupy is what is missing
            cupy_state["error"] = describe(exc)
        except Exception as exc:  # installed without a usable CUDA library
            cupy_state.update(present=True, error=describe(exc))
        else:
            module = cupy
            cupy_state.update(present=True, usable=True, version=str(getattr(cupy, "__version__", "")))
    stack = {
        "python": sys.executable,
        "python_version": platform.python_version(),
        "numpy": np.__version__,
        "cupy": cupy_state,
    }
    return stack, module


def parse_descriptor(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def _pci_key(gpu: Mapping[str, str]) -> tuple[int, ...]:
    m = re.match(r"^([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+)\.([0-7])$", gpu.get("PCI", ""))
    parts = tuple(int(g, 16) for g in m.groups()) if m else (1 << 32, 0, 0, 0)
    return (*parts, int(gpu["MINOR"]))


def discover_simulated(desc_dir: str, dev_dir: str, errors: list[str]) -> list[dict[str, str]] | None:
    """GPUs injected into this sandbox (node AND descriptor), in PCI bus order; None: not a sim host."""
    if not os.path.isdir(desc_dir):
        return None
    gpus = []
    for name in sorted(os.listdir(desc_dir)):
        if not name.isdigit() or not os.path.exists(os.path.join(dev_dir, f"nvidia{name}")):
            continue
        try:
            with open(os.path.join(desc_dir, name), encoding="utf-8") as fh:
                fields = parse_descriptor(fh.read())
        except OSError as exc:
            errors.append(f"descriptor {name}: {describe(exc)}")
            continue
        gpus.append({**fields, "MINOR": name})
    return sorted(gpus, key=_pci_key)


def apply_visible_devices(gpus: list[dict[str, str]], value: str | None) -> list[dict[str, str]]:
    """CUDA_VISIBLE_DEVICES as CUDA reads it: indices or (unique prefixes of) UUIDs, in the order
    given; the first invalid (or repeated) entry ends the list; an empty value hides every GPU."""
    if value is None:
        return list(gpus)
    chosen: list[dict[str, str]] = []
    for entry in (e.strip() for e in value.split(",")) if value.strip() else ():
        if entry.isdigit():
            hits = [gpus[int(entry)]] if int(entry) < len(gpus) else []
        elif entry.upper().startswith("GPU-"):
            hits = [g for g in gpus if g.get("UUID", "").lower().startswith(entry.lower())]
        else:
            hits = []
        if len(hits) != 1 or hits[0] in chosen:
            break
        chosen.append(hits[0])
    return chosen


# How a simulated GPU's CUDA fails, by its descriptor's CUDA= state (the faults no-uvm,
# cuda-mismatch and no-fabric-manager, fixtures/sim/simgpu/faults.py): the CUresult cuInit returns
# on real hardware for that cause, with cuGetErrorString's text and the cause the probe names.
SIM_CUDA_STATES: dict[str, tuple[int, str, str]] = {
    "no-uvm": (999, "unknown error", "/dev/nvidia-uvm is {uvm} (the nvidia-uvm node CUDA needs)"),
    "driver-mismatch": (
        803,
        "system has unsupported display driver / cuda driver combination",
        "the CUDA user-mode driver does not match the kernel driver",
    ),
    "no-fabric-manager": (
        802,
        "system not yet initialized",
        "the NVSwitch fabric is not initialised (nvidia-fabricmanager is not running)",
    ),
}


def simulated_cuda_failure(gpu: Mapping[str, str], dev_dir: str) -> dict[str, Any] | None:
    """The cuda block of a simulated GPU whose descriptor names a CUDA failure, or None."""
    state = gpu.get("CUDA", "ok")
    if state == "ok":
        return None
    where = f"{gpu.get('UUID', '?')} at minor {gpu['MINOR']}"
    if state not in SIM_CUDA_STATES:
        return {
            "error": "cudaErrorInitializationError: initialization error "
            f"(simulated: {where} has CUDA={state})"
        }
    code, text, cause = SIM_CUDA_STATES[state]
    uvm = "present" if os.path.exists(os.path.join(dev_dir, "nvidia-uvm")) else "missing"
    name = CU_ERROR_NAMES[code]
    why = f"simulated: {cause.format(uvm=uvm)}; {where} has CUDA={state}"
    return {
        "error": f"{name} ({code}) from cuInit: {text} ({why})",
        "error_code": code,
        "error_name": name,
    }


def probe_simulated(
    gpus: list[dict[str, str]],
    env: Mapping[str, str],
    sizes: Mapping[str, int],
    repeats: int,
    timed: bool,
    errors: list[str],
) -> dict[str, Any]:
    params = {"sizes": dict(sizes), "repeats": repeats}
    visible = apply_visible_devices(gpus, env.get("CUDA_VISIBLE_DEVICES"))
    dev_dir = env.get(ENV_DEV_DIR, DEFAULT_DEV_DIR)
    for gpu in visible:  # one unusable GPU fails initialisation for the whole process, as on hardware
        where = f"{gpu.get('UUID', '?')} at minor {gpu['MINOR']}"
        if gpu.get("STATE", "ok") == "lost":
            return document(
                "simulated",
                {
                    "error": "cudaErrorNoDevice: no CUDA-capable device is detected "
                    f"(simulated: {where} has STATE=lost)"
                },
                [],
                errors,
                params,
            )
        failure = simulated_cuda_failure(gpu, dev_dir)
        if failure is not None:
            return document("simulated", failure, [], errors, params)
    if not visible:
        why = "CUDA_VISIBLE_DEVICES hides every GPU" if gpus else "no GPU injected"
        return document(
            "simulated",
            {"error": f"cudaErrorNoDevice: no CUDA-capable device is detected (simulated: {why})"},
            [],
            errors,
            params,
        )
    devices = []
    for i, gpu in enumerate(visible):
        mem = gpu.get("MEMORY_MIB", "")
        dev = {
            "ordinal": i,
            "uuid": gpu.get("UUID"),
            "name": gpu.get("NAME"),
            "pci_bus_id": gpu.get("PCI"),
            "compute_capability": None,
            "memory_total_mib": int(mem) if mem.isdigit() else None,
            "simulated": True,
            "minor": int(gpu["MINOR"]),
        }
        dev.update(run_checks(numpy_backend(), sizes, repeats, timed, judged=False))
        devices.append(dev)
    return document("simulated", {"ok": True, "device_count": len(devices)}, devices, errors, params)


def probe(
    env: Mapping[str, str],
    overrides: Mapping[str, int],
    repeats: int,
    timed: bool,
    use_cupy: bool,
    library: str = LIBCUDA,
) -> dict[str, Any]:
    """Pick the mode: working CUDA (cupy, else the driver API alone) wins; a simulated host never
    shadows a real GPU. Every document carries ``stack`` (what this interpreter has) and
    ``driver_api`` (what libcuda said), so the judge can tell a missing CUDA stack from a broken one."""
    stack, cupy = probe_environment(use_cupy)
    driver = read_driver(library)
    stack["libcuda"] = {"library": library, "loaded": driver["loaded"]}
    errors: list[str] = [] if cupy or not use_cupy else [f"cupy not usable: {stack['cupy']['error']}"]
    params = {"sizes": {**CUDA_DEFAULTS, **overrides}, "repeats": repeats}

    def finish(doc: dict[str, Any]) -> dict[str, Any]:
        return {**doc, "errors": errors + doc["errors"], "stack": stack, "driver_api": driver}

    real = None
    if cupy is not None:
        real = probe_cupy(cupy, {**CUDA_DEFAULTS, **overrides}, repeats, timed, driver)
    elif driver["loaded"]:
        real = probe_driver(driver, params)
    if real is not None:
        if real["cuda"]["ok"]:
            return finish(real)
        errors.append(f"{real['mode']}: {real['cuda']['error']}")
    desc_dir, dev_dir = env.get(ENV_DESC_DIR, DEFAULT_DESC_DIR), env.get(ENV_DEV_DIR, DEFAULT_DEV_DIR)
    gpus = discover_simulated(desc_dir, dev_dir, errors)
    if gpus is not None:
        return finish(probe_simulated(gpus, env, {**SIM_DEFAULTS, **overrides}, repeats, timed, []))
    if real is not None:
        return finish(real)
    cupy_state = "cupy is not usable" if use_cupy else "cupy was not tried (--no-cupy)"
    return finish(
        document(
            "none",
            {
                "error": f"no CUDA device: {cupy_state}, {LIBCUDA} is not loadable, "
                f"and no simulated GPU host at {desc_dir}"
            },
            [],
            [],
            {"sizes": dict(overrides), "repeats": repeats},
        )
    )


def clean(value: Any) -> Any:
    """Plain JSON: numpy scalars become Python numbers, non-finite floats become null."""
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def parse_sizes(items: Sequence[str]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for item in (part for raw in items for part in raw.split(",") if part):
        key, _, num = item.partition("=")
        if key not in SIZE_LIMITS:
            raise ValueError(f"bad size {item!r}: expected KEY=N with KEY one of {sorted(SIZE_LIMITS)}")
        if not num.isdigit() or not 1 <= int(num) <= SIZE_LIMITS[key]:
            raise ValueError(f"bad size {item!r}: expected an integer N with 1 <= N <= {SIZE_LIMITS[key]}")
        sizes[key] = int(num)
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gpuconform compute probe: prints one JSON document")
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=[],
        metavar="KEY=N",
        help=f"problem sizes, keys {sorted(SIZE_LIMITS)} (copy_mib in MiB)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per figure (1-1000)")
    parser.add_argument(
        "--skip-bandwidth", action="store_true", help="skip copy bandwidth and matmul throughput"
    )
    parser.add_argument(
        "--no-cupy", action="store_true", help="never try cupy (the simulated/none paths only)"
    )
    args = parser.parse_args(argv)
    try:
        sizes = parse_sizes(args.sizes)
    except ValueError as exc:
        parser.error(str(exc))
    if not 1 <= args.repeats <= 1000:
        parser.error(f"--repeats must be between 1 and 1000, got {args.repeats}")
    doc = probe(os.environ, sizes, args.repeats, not args.skip_bandwidth, not args.no_cupy)
    sys.stdout.write(json.dumps(clean(doc), allow_nan=False, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
