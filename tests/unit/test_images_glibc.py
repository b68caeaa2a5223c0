"""The busybox image trees: with glibc the injected nvidia-smi ELF runs, without it it cannot.

Builds the two root filesystems the images are made of into temporary directories and runs the
simulated nvidia-smi in them through chroot (root only), injected as the CDI spec injects it:
the binary and its library, no loader.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gpuconform.drivers.base import Deadline
from gpuconform.fixtures.build import images
from gpuconform.fixtures.build.glibc import elf_interpreter, host_glibc, parse_ldconfig
from gpuconform.fixtures.sim.simgpu.layout import sandbox_nvml_path
from gpuconform.fixtures.sim.simgpu.smi_build import ensure_built

LDCONFIG_SAMPLE = """\
1234 libs found in cache `/etc/ld.so.cache'
\tlibm.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libm.so.6
\tlibm.so.6 (libc6) => /lib/i386-linux-gnu/libm.so.6
\tlibc.so.6 (libc6,x86-64, OS ABI: Linux 3.2.0) => /lib/x86_64-linux-gnu/libc.so.6
\tlibc.so.6 (libc6) => /lib/i386-linux-gnu/libc.so.6
"""


def test_parse_ldconfig_keeps_libc_abi_only() -> None:
    found = parse_ldconfig(LDCONFIG_SAMPLE, ("libc.so.6", "libm.so.6"))
    assert found == {
        "libc.so.6": Path("/lib/x86_64-linux-gnu/libc.so.6"),
        "libm.so.6": Path("/lib/x86_64-linux-gnu/libm.so.6"),
    }


def test_elf_interpreter_of_dynamic_and_static_programs() -> None:
    assert elf_interpreter(Path("/bin/ls")) == str(host_glibc().loader)
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox-static is not installed")
    assert elf_interpreter(Path(busybox)) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
@pytest.mark.parametrize(("rootfs", "runs"), [("busybox-glibc", True), ("busybox-static", False)])
def test_injected_nvidia_smi_runs_only_where_the_image_has_glibc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rootfs: str, runs: bool
) -> None:
    monkeypatch.setenv("GPUCONFORM_CACHE", str(tmp_path / "cache"))
    tarball = images.rootfs_tarball(rootfs, Deadline(120))
    assert tarball.name.startswith(f"{rootfs}-") and tarball.parent == tmp_path / "cache" / "images"
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "-xf", str(tarball)], check=True, timeout=60)
    smi = ensure_built(tmp_path / "smi")
    for source, inside in (
        (smi.binary, "/usr/bin/nvidia-smi"),
        (smi.library, sandbox_nvml_path(smi.multiarch)),
    ):
        target = root / inside.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    env = {"PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [chroot, str(root), "/usr/bin/nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, env=env
    )
    if runs:
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "No devices found.\n", "")
    else:
        assert proc.returncode == 127
        assert "No such file or directory" in proc.stderr
        shell = subprocess.run(
            ["chroot", str(root), "/bin/sh", "-c", "command -v nvidia-smi"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert shell.stdout.strip() == "/usr/bin/nvidia-smi", "present although it cannot execute"
    assert images.rootfs_tarball(rootfs, Deadline(5)) == tarball, "cached by its inputs"
