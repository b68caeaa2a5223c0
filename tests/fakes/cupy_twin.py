"""A numpy twin of the part of cupy the compute probe uses (no GPU here): arrays with cupy's copy
methods, a runtime with CUDA error types, CUDA events with a fake clock, RawKernel launches.

``getDeviceProperties()["uuid"]`` is cut at the first zero byte as cupy's own Cython conversion
of ``char[16]`` cuts it (cupy_backends/cuda/api/runtime.pyx), so a twin UUID with a zero byte
fails exactly as cupy does on hardware.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np


class TwinArray(np.ndarray):
    """A numpy array with cupy.ndarray's copy methods."""

    def set(self, host: np.ndarray) -> None:
        np.copyto(self, host)

    def get(self, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            return np.array(self)
        np.copyto(out, self)
        return out


class CUDARuntimeError(RuntimeError):
    pass


class FakeRuntime:
    CUDARuntimeError = CUDARuntimeError

    def __init__(self, count: int, fail_at: str | None, uuid_bytes: bytes) -> None:
        self.count, self.fail_at, self.uuid_bytes, self.current = count, fail_at, uuid_bytes, 0

    def _maybe_fail(self, where: str) -> None:
        if self.fail_at == where:
            raise CUDARuntimeError("cudaErrorSystemNotReady: system not yet initialized")

    def getDeviceCount(self) -> int:
        self._maybe_fail("count")
        return self.count

    def setDevice(self, i: int) -> None:
        self.current = i

    def free(self, ptr: int) -> None:
        assert ptr == 0
        self._maybe_fail("context")

    def getDeviceProperties(self, i: int) -> dict[str, Any]:
        uuid = (self.uuid_bytes[:-1] + bytes([i])).split(b"\0")[0]  # as cupy's char[16] -> bytes
        return {
            "name": b"NVIDIA H100 80GB HBM3",
            "uuid": uuid,
            "major": 9,
            "minor": 0,
            "totalGlobalMem": 81559 * 1048576,
        }

    def deviceGetPCIBusId(self, i: int) -> str:
        return f"0000:{0x18 + i:02X}:00.0"

    def driverGetVersion(self) -> int:
        return 12080

    def runtimeGetVersion(self) -> int:
        return 12060


class FakeEvent:
    clock_ms = 0.0

    def record(self) -> None:
        FakeEvent.clock_ms += 1.0  # every timed span lasts exactly 1 ms
        self.at = FakeEvent.clock_ms

    def synchronize(self) -> None:
        pass


class FakeCuda:
    def __init__(self, runtime: FakeRuntime) -> None:
        self.runtime = runtime
        self.Event = FakeEvent

    @contextmanager
    def Device(self, i: int) -> Iterator[None]:
        self.runtime.current = i
        yield

    @staticmethod
    def get_elapsed_time(start: FakeEvent, end: FakeEvent) -> float:
        return end.at - start.at

    @staticmethod
    def alloc_pinned_memory(nbytes: int) -> bytearray:
        return bytearray(nbytes)


class FakeCupy:
    """cupy's surface as the probe uses it, computing with numpy; ``offset`` breaks the kernel,
    ``skew`` breaks matmul, ``sum_error`` breaks the reduction."""

    def __init__(
        self,
        count: int = 2,
        fail_at: str | None = None,
        offset: float = 0.0,
        skew: float = 0.0,
        sum_error: float = 0.0,
        uuid_bytes: bytes = bytes(range(0xA0, 0xB0)),
    ) -> None:
        self.cuda = FakeCuda(FakeRuntime(count, fail_at, uuid_bytes))
        self.offset, self.skew, self.sum_error = offset, skew, sum_error
        self.launches: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def asarray(self, a: Any) -> TwinArray:
        return np.array(a).view(TwinArray)

    def asnumpy(self, a: Any) -> np.ndarray:
        return np.array(a)

    def empty_like(self, a: Any) -> TwinArray:
        return np.empty_like(np.asarray(a)).view(TwinArray)

    def copyto(self, dst: Any, src: Any) -> None:
        np.copyto(dst, src)

    def matmul(self, a: Any, b: Any, out: Any = None) -> Any:
        res = np.matmul(a, b, out=out)
        return res * np.float32(1 + self.skew) if self.skew else res

    def sum(self, a: Any) -> Any:
        return np.sum(a) + np.float32(self.sum_error)

    def RawKernel(self, src: str, name: str) -> Any:
        assert f'extern "C" __global__ void {name}(' in src
        twin = self

        def launch(grid: tuple[int, ...], block: tuple[int, ...], args: tuple[Any, ...]) -> None:
            a, b, out, n = args
            assert isinstance(n, np.uint64)
            assert grid[0] * block[0] >= int(n) > (grid[0] - 1) * block[0]
            twin.launches.append((grid, block))
            out[: int(n)] = a[: int(n)] + b[: int(n)] + np.float32(twin.offset)

        return launch
