"""What the QEMU guest is built from and carries: the kernel package per distribution, built-in
modules, glibc in the initramfs tree, and the simulated nvidia-smi's library in the payload."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpuconform.drivers.base import Deadline
from gpuconform.drivers.qemu_guest import guest_payload
from gpuconform.fixtures.build import guestimage
from gpuconform.fixtures.build.glibc import host_glibc
from gpuconform.fixtures.build.guestimage import (
    GuestImageError,
    builtin_modules,
    kernel_meta_package,
    parse_os_release,
)
from gpuconform.fixtures.sim.simgpu.host import SimHost

DEBIAN_12 = """PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
ID=debian
"""
UBUNTU_2404 = """PRETTY_NAME="Ubuntu 24.04.1 LTS"
NAME="Ubuntu"
VERSION_ID="24.04"
ID=ubuntu
ID_LIKE=debian
"""
MINT = 'NAME="Linux Mint"\nID=linuxmint\nID_LIKE="ubuntu debian"\n'
FEDORA = 'NAME="Fedora Linux"\nID=fedora\nPRETTY_NAME="Fedora Linux 40"\n'


def test_parse_os_release_unquotes() -> None:
    assert parse_os_release(UBUNTU_2404)["PRETTY_NAME"] == "Ubuntu 24.04.1 LTS"
    assert parse_os_release(MINT)["ID_LIKE"] == "ubuntu debian"


@pytest.mark.parametrize(
    ("text", "package"),
    [(DEBIAN_12, "linux-image-amd64"), (UBUNTU_2404, "linux-image-virtual"), (MINT, "linux-image-virtual")],
)
def test_kernel_meta_package_by_distribution(text: str, package: str) -> None:
    assert kernel_meta_package(parse_os_release(text)) == package


def test_unknown_distribution_is_refused_with_a_hint() -> None:
    with pytest.raises(GuestImageError, match="Fedora Linux 40") as caught:
        kernel_meta_package(parse_os_release(FEDORA))
    assert "qemu.kernel" in str(caught.value)


def test_this_machine_gets_a_versioned_kernel_package() -> None:
    if not Path("/etc/debian_version").exists():
        pytest.skip("not a Debian-family machine")
    assert guestimage.kernel_package(Deadline(60)).startswith("linux-image-")


def test_builtin_modules_are_not_loaded(tmp_path: Path) -> None:
    (tmp_path / "modules.builtin").write_text(
        "kernel/drivers/virtio/virtio_pci.ko\nkernel/fs/ext4/ext4.ko\nkernel/crypto/crc32c_generic.ko\n"
    )
    assert builtin_modules(tmp_path) == {"virtio_pci", "ext4", "crc32c_generic"}
    assert builtin_modules(tmp_path / "none") == set()


def test_staged_tree_has_the_loader_where_binaries_ask_for_it(tmp_path: Path) -> None:
    from gpuconform.fixtures.build.glibc import install_glibc

    glibc = host_glibc()
    install_glibc(tmp_path, glibc)
    loader = tmp_path / str(glibc.loader).lstrip("/")
    assert loader.read_bytes() == glibc.loader.read_bytes()
    for lib in glibc.libraries:
        assert (tmp_path / str(lib).lstrip("/")).is_file(), lib
    assert (tmp_path / "lib").is_symlink() and os.readlink(tmp_path / "lib") == "usr/lib"


@pytest.mark.skipif(os.geteuid() != 0, reason="the simulated host needs root (mknod)")
def test_payload_carries_nvidia_smi_and_its_library(tmp_path: Path) -> None:
    cdi_dir = tmp_path / "cdi"
    cdi_dir.mkdir()
    sim = SimHost.up("h100x2", instance="pay", base=tmp_path / "sim", cdi_dir=cdi_dir, owner_pid=os.getpid())
    try:
        inj = sim.injection("1")
        assert inj is not None
        payload = guest_payload([inj])
        lines = payload.manifest.splitlines()
        library = f"/usr/lib/{sim.state['multiarch']}/libnvidia-ml.so.1"
        assert "file nvidia-smi /usr/bin/nvidia-smi 755" in lines
        assert f"file libnvidia-ml {library} 755" in lines
        assert dict(payload.files)["libnvidia-ml"] == sim.nvml_library_path
        assert not any("ld-linux" in line or "libc.so" in line for line in lines), "never a loader or libc"
    finally:
        sim.down()
