"""The PVH kernel: found inside a bzImage, kept only with a PVH entry note, refused when malformed."""

from __future__ import annotations

import gzip
import io
import lzma
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from gpuconform.fixtures.build.guestkernel import KernelFormatError, has_pvh_note, pvh_vmlinux

DEBS = Path("/var/cache/gpuconform/guest/debs")


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def _note(name: bytes, kind: int, desc: bytes) -> bytes:
    name += b"\0"
    return struct.pack("<III", len(name), len(desc), kind) + _pad(name) + _pad(desc)


def _elf(notes: bytes, machine: int = 62) -> bytes:
    """A minimal ELF64 with one PT_NOTE program header holding ``notes``."""
    phoff, phentsize = 64, 56
    note_at = phoff + phentsize
    header = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    header += struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, 0, phoff, 0, 0, 64, phentsize, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 4, 4, note_at, 0, 0, len(notes), len(notes), 4)
    return header + phdr + notes


PVH = _note(b"Xen", 6, b"linux\0") + _note(b"Xen", 18, struct.pack("<Q", 0x1000850))
NOT_PVH = _note(b"Xen", 6, b"linux\0") + _note(b"GNU", 18, b"abcd")


def _bzimage(payload: bytes, version: int = 0x20F, sects: int = 2) -> bytes:
    setup = bytearray((sects + 1) * 512)
    setup[0x1F1] = sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    struct.pack_into("<II", setup, 0x248, 0x100, len(payload))
    return bytes(setup) + b"\x90" * 0x100 + payload + b"\0\0\0\0"


def test_the_note_is_found_by_name_and_type_only() -> None:
    assert has_pvh_note(_elf(PVH))
    assert not has_pvh_note(_elf(NOT_PVH))
    assert not has_pvh_note(_elf(PVH, machine=3))  # i386
    assert not has_pvh_note(b"\x7fELF" + b"\0" * 60)


@pytest.mark.parametrize(
    "compress",
    [gzip.compress, lambda b: lzma.compress(b, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)],
    ids=["gzip", "xz"],
)
def test_the_elf_comes_out_of_the_bzimage_payload(compress: object) -> None:
    assert callable(compress)
    elf = _elf(PVH)
    assert pvh_vmlinux(_bzimage(compress(elf))) == elf
    assert pvh_vmlinux(_bzimage(compress(_elf(NOT_PVH)))) is None  # boots as a bzImage instead


def test_malformed_kernels_are_refused_with_a_reason() -> None:
    with pytest.raises(KernelFormatError, match="HdrS"):
        pvh_vmlinux(b"\0" * 4096)
    with pytest.raises(KernelFormatError, match="boot protocol 2.6"):
        pvh_vmlinux(_bzimage(gzip.compress(b"x"), version=0x206))
    with pytest.raises(KernelFormatError, match="unknown kernel compression"):
        pvh_vmlinux(_bzimage(b"\x00\x01\x02\x03payload"))
    truncated = _bzimage(gzip.compress(_elf(PVH)))[:-40]
    with pytest.raises(KernelFormatError):
        pvh_vmlinux(truncated)


def test_the_distribution_kernel_has_a_pvh_entry(tmp_path: Path) -> None:
    """The kernel the guest image is built from, when this machine has fetched its package."""
    debs = sorted(DEBS.glob("linux-image-*.deb")) if DEBS.is_dir() else []
    if not debs:
        pytest.skip(f"no kernel package under {DEBS} (`gpuconform images build --guest` fetches it)")
    tar = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(debs[-1])], capture_output=True, timeout=120, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        member = next(m for m in archive.getmembers() if m.name.startswith("./boot/vmlinuz-"))
        extracted = archive.extractfile(member)
        assert extracted is not None
        bzimage = extracted.read()
    elf = pvh_vmlinux(bzimage)
    assert elf is not None and len(elf) > 4 * len(bzimage) // 2


def test_the_boot_shortcuts_leave_what_vfio_needs_alone() -> None:
    """The command line may skip probing the VM lacks, never ACPI, PCI, MSI, the APIC or the IOMMU."""
    from gpuconform.fixtures.build.guestimage import DEFAULT_APPEND

    tokens = DEFAULT_APPEND.split()
    assert "console=ttyS0" in tokens and "panic=-1" in tokens
    forbidden = ("acpi=", "noapic", "nolapic", "pci=", "nomsi", "iommu", "lpj=", "nosmp", "maxcpus=")
    assert not [t for t in tokens if t.startswith(forbidden)], tokens
