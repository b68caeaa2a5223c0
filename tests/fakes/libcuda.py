"""Building tests/fakes/libcuda.c into a ``libcuda.so.1`` with the machine's C compiler.

The probe loads ``libcuda.so.1`` by its soname, so a test puts the fake in a directory of its own
and either loads that path directly or runs the probe with ``LD_LIBRARY_PATH`` naming it, which
is how the dynamic loader would find a real one injected into a sandbox.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SOURCE = Path(__file__).with_name("libcuda.c")
SONAME = "libcuda.so.1"
COMPILE_TIMEOUT_S = 120


def build(out_dir: Path, *, uuid_v2: bool = True) -> Path:
    """``out_dir/libcuda.so.1`` built from the fake's source (with or without cuDeviceGetUuid_v2).

    Without a C compiler the test is skipped on a workstation and fails under CI=true, so CI can
    never pass without having run the driver-API tests.
    """
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        why = "no C compiler (gcc) to build the fake libcuda: apt-get install gcc"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why)
        pytest.skip(why)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / SONAME
    argv = [gcc, "-shared", "-fPIC", "-O1", "-Wall", "-Wextra", "-Werror", f"-Wl,-soname,{SONAME}"]
    argv += [] if uuid_v2 else ["-DFAKE_NO_UUID_V2"]
    proc = subprocess.run(
        [*argv, "-o", str(target), str(SOURCE)],
        capture_output=True,
        text=True,
        timeout=COMPILE_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"building the fake libcuda failed (exit {proc.returncode}):\n{proc.stderr}")
    return target


def hex_uuid(uuid: str) -> str:
    """``GPU-xxxxxxxx-...`` to the 32 hex digits FAKE_CUDA_UUIDS takes."""
    return uuid.removeprefix("GPU-").replace("-", "")
