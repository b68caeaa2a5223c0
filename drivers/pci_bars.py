"""How much 64-bit MMIO space the passed-through GPUs need in the guest.

QEMU's q35 machine reserves a 64-bit PCI hole of 32 GiB by default; an H100's BAR1 alone is
128 GiB, so a VM with the default hole cannot map it (the guest's driver then fails to load or
the BAR is left unassigned). The hole is sized from the GPUs' own BARs, read from the sysfs
``resource`` file (one ``start end flags`` line per resource, the first six are the BARs), and
passed as ``-global q35-pcihost.pci-hole64-size=...``.
"""

from __future__ import annotations

from pathlib import Path

IORESOURCE_MEM = 0x00000200
IORESOURCE_MEM_64 = 0x00100000
BAR_COUNT = 6
GIB = 1 << 30
QEMU_DEFAULT_HOLE64 = 32 * GIB


def bar_sizes(bdf: str, sysfs_root: Path = Path("/sys")) -> list[int]:
    """Sizes of the 64-bit memory BARs of ``bdf`` (the ones that go above 4 GiB), in bytes."""
    path = Path(sysfs_root) / "bus/pci/devices" / bdf / "resource"
    try:
        lines = path.read_text().splitlines()[:BAR_COUNT]
    except OSError:
        return []
    sizes = []
    for line in lines:
        try:
            start, end, flags = (int(v, 16) for v in line.split())
        except ValueError:
            continue
        if end > start and flags & IORESOURCE_MEM and flags & IORESOURCE_MEM_64:
            sizes.append(end - start + 1)
    return sizes


def hole64_size(total: int) -> int:
    """A power of two at least half again as large as ``total``, and never below QEMU's default."""
    want = total + total // 2
    size = 1
    while size < want:
        size <<= 1
    return max(size, QEMU_DEFAULT_HOLE64)


def hole64_for(bdfs: tuple[str, ...], sysfs_root: Path = Path("/sys")) -> int | None:
    """The hole for passing ``bdfs`` through, or None when they have no 64-bit BAR (keep QEMU's)."""
    total = sum(size for bdf in bdfs for size in bar_sizes(bdf, sysfs_root))
    return hole64_size(total) if total else None


def qemu_size(size: int) -> str:
    """A size in QEMU's notation (``256G``); sizes here are whole GiB."""
    return f"{size // GIB}G" if size % GIB == 0 else str(size)
