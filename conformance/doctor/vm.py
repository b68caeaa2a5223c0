"""QEMU with VFIO: KVM usable, IOMMU on, each GPU's IOMMU group and companions, vfio-pci loadable.

On a simulated host VFIO runs against a fake sysfs and the guest may run under TCG, so KVM and
the IOMMU are notes there, never failures.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from gpuconform.conformance.doctor.hostfacts import HostFacts
from gpuconform.conformance.doctor.model import Check, missing, note, ok, wrong
from gpuconform.drivers.subproc import run_command
from gpuconform.drivers.vfio import discover

KVM_GET_API_VERSION = 0xAE00
TIMEOUT_S = 15.0


def qemu_checks(facts: HostFacts, binary: str = "qemu-system-x86_64") -> list[Check]:
    out: list[Check] = []
    found = shutil.which(binary)
    if found is None:
        out.append(missing("qemu", f"{binary} not on PATH", "apt-get install qemu-system-x86"))
    else:
        version = run_command([found, "--version"], timeout=TIMEOUT_S)
        first = version.stdout.splitlines()[0] if version.ok and version.stdout else "version unknown"
        out.append(ok("qemu", f"{found}: {first}"))
    out += _guest()
    out.append(_kvm(facts))
    if facts.simulated:
        out.append(note("IOMMU", "simulated host: VFIO runs against a fake sysfs tree in each run"))
        return out
    out.append(_iommu(facts.sysfs))
    out += _groups(facts)
    out.append(_vfio_pci(facts.sysfs))
    return out


def _guest() -> list[Check]:
    """What the guest image is built from (fixtures/build/guestimage.py), and whether one is cached."""
    from gpuconform.fixtures.build.guestimage import BUSYBOX, DEFAULT_CACHE_DIR, DROPBEAR

    out = []
    for path, package in ((BUSYBOX, "busybox-static"), (DROPBEAR, "dropbear-bin")):
        if path.is_file():
            out.append(ok(f"guest {path.name}", str(path)))
        else:
            out.append(missing(f"guest {path.name}", f"{path} is missing", f"apt-get install {package}"))
    cached = sorted(p.name for p in DEFAULT_CACHE_DIR.glob("*") if p.is_dir() and p.name != "debs")
    if cached:
        out.append(ok("guest image", f"{len(cached)} cached build(s) in {DEFAULT_CACHE_DIR}"))
    else:
        out.append(
            note(
                "guest image",
                f"none cached in {DEFAULT_CACHE_DIR}: the first qemu run builds one (apt access, minutes)",
                "gpuconform images build --guest builds it ahead",
            )
        )
    return out


def _kvm(facts: HostFacts) -> Check:
    dev = Path("/dev/kvm")
    lacking = missing if not facts.simulated else _note3
    if not dev.exists():
        return lacking(
            "KVM", "/dev/kvm does not exist", "enable virtualisation in the BIOS; modprobe kvm_intel/kvm_amd"
        )
    try:
        fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return lacking("KVM", f"/dev/kvm cannot be opened: {exc.strerror}", "add the user to group kvm")
    try:
        api = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as exc:
        return lacking("KVM", f"KVM_GET_API_VERSION failed: {exc.strerror}", "check dmesg for kvm errors")
    finally:
        os.close(fd)
    return ok("KVM", f"/dev/kvm usable (API {api}); a guest that hangs under nested KVM falls back to TCG")


def _note3(what: str, detail: str, hint: str) -> Check:
    return note(what, f"{detail}; the simulated host's guest runs under TCG")


def _iommu(sysfs: Path) -> Check:
    groups = sysfs / "kernel/iommu_groups"
    count = len(list(groups.iterdir())) if groups.is_dir() else 0
    if count:
        return ok("IOMMU", f"on ({count} groups)")
    return missing(
        "IOMMU",
        "off (no IOMMU groups)",
        "add intel_iommu=on (or amd_iommu=on) iommu=pt to the kernel command line",
    )


def _groups(facts: HostFacts) -> list[Check]:
    wanted = {g.pci_bus_id.lower() for g in facts.inventory.gpus} if facts.inventory else None
    out: list[Check] = []
    for gpu in discover(facts.sysfs):
        if wanted is not None and gpu.bdf.lower() not in wanted:
            continue
        if gpu.iommu_group is None:
            out.append(wrong(f"IOMMU group {gpu.bdf}", "the GPU has no IOMMU group", "turn the IOMMU on"))
            continue
        companions = ", ".join(c.describe() for c in gpu.companions) or "none"
        bound = gpu.function.driver or "no driver"
        out.append(
            ok(
                f"IOMMU group {gpu.bdf}",
                f"group {gpu.iommu_group}, bound to {bound}; passed through with it: {companions}",
            )
        )
    if not out:
        out.append(
            missing(
                "IOMMU groups",
                "no NVIDIA GPU found under /sys/bus/pci",
                "is the GPU on the bus (lspci -d 10de:)?",
            )
        )
    return out


def _vfio_pci(sysfs: Path) -> Check:
    if (sysfs / "bus/pci/drivers/vfio-pci").is_dir():
        return ok("vfio-pci", "loaded")
    probe = run_command(["modprobe", "-n", "vfio-pci"], timeout=TIMEOUT_S)
    if probe.ok:
        return ok("vfio-pci", "loadable (modprobe -n vfio-pci succeeds); the qemu adapter loads it")
    why = (
        "modprobe missing"
        if probe.exit_code == 127
        else (probe.stderr.strip()[:160] or f"exit {probe.exit_code}")
    )
    return missing(
        "vfio-pci", f"not loadable: {why}", "install the kernel's vfio modules (linux-modules-extra)"
    )
