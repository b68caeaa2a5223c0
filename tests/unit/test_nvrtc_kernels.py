"""Every CUDA kernel of the compute probe compiles with NVRTC for every architecture it claims.

The probe's real path compiles its kernels on the GPU host (cupy's RawKernel through NVRTC), so a
typo in a kernel would first show as a failed cuda.vectoradd on hardware, blamed on the driver
under test. Here the same sources (``cuda_probe.KERNELS``, the dict ``cupy_backend`` takes them
from) meet NVRTC in CI, without a GPU: libnvrtc is called through ctypes (PyPI's
``nvidia-cuda-nvrtc``, no cupy needed), the PTX must define each kernel under its unmangled
name (what ``RawKernel(src, name)`` looks up), and a compile error fails with the compiler's log.
NVRTC missing is a skip on a workstation and a failure under CI=true.
"""

from __future__ import annotations

import ast
import ctypes
import ctypes.util
import importlib.util
import os
from pathlib import Path

import pytest

from gpuconform.workloads import cuda_probe

ENV_NVRTC = "GPUCONFORM_NVRTC"
# Where PyPI's wheels put the library (nvidia-cuda-nvrtc 13.x; -cu12 12.x), then a CUDA toolkit.
WHEEL_PATHS = ("cu13/lib/libnvrtc.so.13", "cuda_nvrtc/lib/libnvrtc.so.12")
TOOLKIT_PATHS = ("/usr/local/cuda/lib64/libnvrtc.so", "/usr/local/cuda/lib/libnvrtc.so")
NVRTC_SUCCESS = 0


def find_nvrtc() -> str | None:
    named = os.environ.get(ENV_NVRTC)
    if named:
        return named
    spec = importlib.util.find_spec("nvidia")  # the namespace package PyPI's CUDA wheels share
    bases = list(spec.submodule_search_locations or []) if spec is not None else []
    for base in bases:
        for rel in WHEEL_PATHS:
            if (Path(base) / rel).is_file():
                return str(Path(base) / rel)
    found = ctypes.util.find_library("nvrtc")
    return found or next((p for p in TOOLKIT_PATHS if Path(p).is_file()), None)


class Nvrtc:
    """The NVRTC C API, just enough to compile one program to PTX and read its log."""

    def __init__(self, path: str) -> None:
        # libnvrtc dlopens libnvrtc-builtins by soname at compile time; the 13.0 wheels carry no
        # $ORIGIN rpath, so load the one beside it first (already loaded, dlopen finds it).
        for builtins in sorted(Path(path).parent.glob("libnvrtc-builtins.so.*")):
            ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
        self.lib = ctypes.CDLL(path)
        self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p

    def version(self) -> tuple[int, int]:
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        return major.value, minor.value

    def _check(self, code: int, call: str) -> None:
        if code != NVRTC_SUCCESS:
            raise RuntimeError(f"{call}: {self.lib.nvrtcGetErrorString(code).decode()} ({code})")

    def _read(self, prog: ctypes.c_void_p, size_fn: str, read_fn: str) -> str:
        size = ctypes.c_size_t()
        self._check(getattr(self.lib, size_fn)(prog, ctypes.byref(size)), size_fn)
        buf = ctypes.create_string_buffer(size.value)
        self._check(getattr(self.lib, read_fn)(prog, buf), read_fn)
        return buf.value.decode("utf-8", "replace")

    def compile(self, source: str, name: str, options: list[str]) -> tuple[int, str, str]:
        """(nvrtcResult of the compile, the compiler's log, the PTX or "")."""
        prog = ctypes.c_void_p()
        self._check(
            self.lib.nvrtcCreateProgram(
                ctypes.byref(prog), source.encode(), f"{name}.cu".encode(), 0, None, None
            ),
            "nvrtcCreateProgram",
        )
        try:
            opts = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
            code = int(self.lib.nvrtcCompileProgram(prog, len(options), opts))
            log = self._read(prog, "nvrtcGetProgramLogSize", "nvrtcGetProgramLog")
            ptx = self._read(prog, "nvrtcGetPTXSize", "nvrtcGetPTX") if code == NVRTC_SUCCESS else ""
            return code, log, ptx
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


@pytest.fixture(scope="module")
def nvrtc() -> Nvrtc:
    path = find_nvrtc()
    if path is None:
        why = (
            "no libnvrtc: pip install 'nvidia-cuda-nvrtc>=13,<14' (or name the library with "
            f"{ENV_NVRTC}=PATH)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why)
        pytest.skip(why)
    try:
        return Nvrtc(path)
    except OSError as exc:  # found or named, but not loadable: never a silent skip
        pytest.fail(f"libnvrtc at {path} does not load: {exc}")


@pytest.mark.parametrize("arch", cuda_probe.KERNEL_ARCHS)
@pytest.mark.parametrize("name", sorted(cuda_probe.KERNELS))
def test_probe_kernel_compiles_for_every_claimed_architecture(nvrtc: Nvrtc, name: str, arch: str) -> None:
    code, log, ptx = nvrtc.compile(cuda_probe.KERNELS[name], name, [f"--gpu-architecture={arch}"])
    assert code == NVRTC_SUCCESS, f"NVRTC {nvrtc.version()} refused kernel {name} for {arch}:\n{log}"
    assert f".entry {name}(" in ptx, f'the PTX has no unmangled entry {name!r} (extern "C"?)'
    assert f".target sm_{arch.removeprefix('compute_')}" in ptx


def test_a_broken_kernel_is_refused_with_the_compilers_message(nvrtc: Nvrtc) -> None:
    broken = cuda_probe.KERNELS["vector_add"].replace("a[i] + b[i]", "a[i] + c[i]")
    code, log, ptx = nvrtc.compile(broken, "vector_add", ["--gpu-architecture=compute_90"])
    assert code != NVRTC_SUCCESS
    assert 'identifier "c" is undefined' in log
    assert ptx == ""


def test_nvrtc_accepts_the_architectures_the_probe_claims(nvrtc: Nvrtc) -> None:
    count = ctypes.c_int()
    assert nvrtc.lib.nvrtcGetNumSupportedArchs(ctypes.byref(count)) == NVRTC_SUCCESS
    archs = (ctypes.c_int * count.value)()
    assert nvrtc.lib.nvrtcGetSupportedArchs(archs) == NVRTC_SUCCESS
    claimed = {int(a.removeprefix("compute_")) for a in cuda_probe.KERNEL_ARCHS}
    assert claimed <= set(archs), f"NVRTC {nvrtc.version()} supports {list(archs)}"


def test_every_kernel_source_in_the_probe_is_one_this_test_compiles() -> None:
    """No kernel escapes: each __global__ string is in KERNELS, and each RawKernel takes KERNELS[...]."""
    tree = ast.parse(Path(cuda_probe.__file__).read_text())
    global_strings = [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and "__global__" in n.value
    ]
    assert global_strings
    assert set(global_strings) <= set(cuda_probe.KERNELS.values())
    launches = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "RawKernel"
    ]
    assert launches
    for call in launches:
        source, entry = call.args[0], call.args[1]
        assert isinstance(source, ast.Subscript) and ast.unparse(source.value) == "KERNELS", ast.unparse(call)
        assert isinstance(entry, ast.Constant) and ast.unparse(source.slice) == repr(entry.value)
