"""What a QEMU guest is booted with: its image (built or a runner's own) and its fw_cfg payload.

The payload carries the per-VM SSH keys and, on the simulated host, the granted GPUs: the
simulated host's plan (faults already applied) says which device nodes and files each GPU
injects (descriptors, the ``nvidia-smi`` ELF and its ``libnvidia-ml.so.1``), and the guest's /init
recreates them from fw_cfg, so the guest ends up with the same layout as a container
(fixtures/sim/simgpu/layout.py) and runs the binary with its own glibc, as a real guest would.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuconform.drivers.base import AdapterContext, Deadline, InfrastructureError
from gpuconform.drivers.inventory import GpuRecord
from gpuconform.drivers.simulated import NVML_SONAME, SANDBOX_DESC_DIR, SANDBOX_NVIDIA_SMI
from gpuconform.drivers.ssh import SshKeys
from gpuconform.fixtures.build.guestimage import (
    DEFAULT_CACHE_DIR,
    GuestImage,
    build_guest_image,
    build_python_disk,
)

SUPPLIED_APPEND = "console=ttyS0 panic=-1"
PYDISK_FLAG = "gpuconform.pydisk"


@dataclass(frozen=True)
class GuestPayload:
    """What the guest's /init creates from fw_cfg: the manifest, and the files it names."""

    manifest: str
    files: tuple[tuple[str, Path], ...] = field(default_factory=tuple)  # (fw_cfg name, host file)
    gpu_minors: tuple[int, ...] = ()


def guest_payload(injections: Iterable[Mapping[str, Any]]) -> GuestPayload:
    """Translate simulated-host injections (plan.json entries, faults applied) into a manifest.

    Entries are merged by sandbox path, as a container runtime merges CDI edits, so two granted
    GPUs injecting the same file (a fault) yield it once.
    """
    nodes: dict[str, Mapping[str, Any]] = {}
    mounts: dict[str, Mapping[str, Any]] = {}
    for inj in injections:
        for node in inj.get("nodes", []):
            nodes.setdefault(str(node["path"]), node)
        for mount in inj.get("mounts", []):
            mounts.setdefault(str(mount["containerPath"]), mount)
    lines, files, minors = [], [], []
    for path, node in sorted(nodes.items()):
        lines.append(f"node {path} {node.get('type', 'c')} {int(node['major'])} {int(node['minor'])}")
    for i, (path, mount) in enumerate(sorted(mounts.items())):
        host = Path(str(mount["hostPath"]))
        if not host.is_file():
            raise InfrastructureError(
                f"simulated host file {host} (for {path}) is missing",
                hint="is the simulated host still up? `gpuconform sim status`",
            )
        if path.startswith(SANDBOX_DESC_DIR + "/"):
            minor = path.rsplit("/", 1)[1]
            name = f"gpu{minor}"
            minors.append(int(minor))
        elif path == SANDBOX_NVIDIA_SMI:
            name = "nvidia-smi"
        elif path.rsplit("/", 1)[-1] == NVML_SONAME:
            name = "libnvidia-ml"  # the ELF nvidia-smi's library: the guest's loader finds it by RUNPATH
        else:
            name = f"file{i}"
        lines.append(f"file {name} {path} {host.stat().st_mode & 0o777:o}")
        files.append((name, host))
    return GuestPayload("".join(f"{line}\n" for line in lines), tuple(files), tuple(sorted(minors)))


def sim_payload(ctx: AdapterContext, gpus: Sequence[GpuRecord]) -> GuestPayload:
    """The payload for ``gpus`` from the simulated host in the adapter's context."""
    sim = ctx.sim
    if sim is None:
        raise InfrastructureError(
            "the inventory is simulated but the adapter's context holds no simulated host",
            hint="gpuconform sim up, or pass --driver-opt sim.root=<dir>",
        )
    injections = []
    for gpu in gpus:
        inj = sim.injection(str(gpu.index))
        if inj is None:
            raise InfrastructureError(f"simulated host {sim.root} has no injection for GPU {gpu.index}")
        injections.append(inj)
    return guest_payload(injections)


def write_keys(vm_dir: Path, keys: SshKeys) -> list[tuple[str, Path]]:
    """The per-VM key files, as fw_cfg entries (the host key readable by its owner only)."""
    host_key, authorized = vm_dir / "hostkey", vm_dir / "authorized_keys"
    host_key.touch(mode=0o600)
    host_key.write_bytes(keys.host_key_dropbear)
    authorized.write_text(keys.client_public_line + "\n")
    return [("hostkey", host_key), ("authorized_keys", authorized)]


def resolve_image(options: Mapping[str, str], deadline: Deadline) -> GuestImage:
    """``qemu.kernel`` + ``qemu.initrd`` (a runner's own guest), else the built, cached image."""
    kernel, initrd = options.get("qemu.kernel", ""), options.get("qemu.initrd", "")
    if not (kernel or initrd):
        cache = Path(options.get("qemu.guest_cache") or DEFAULT_CACHE_DIR)
        return build_guest_image(cache, deadline=deadline)
    if not (kernel and initrd and Path(kernel).is_file() and Path(initrd).is_file()):
        raise InfrastructureError(
            f"qemu.kernel={kernel!r} and qemu.initrd={initrd!r} must both name existing files",
            hint="see images/guest/README.md",
        )
    append = options.get("qemu.append") or SUPPLIED_APPEND
    return GuestImage(Path(kernel), Path(initrd), "supplied", Path(kernel).name, append, "supplied")


def boot_disks(
    options: Mapping[str, str], image: GuestImage, kind: str, deadline: Deadline
) -> tuple[tuple[Path, ...], str]:
    """Disks for an image kind, and what to add to the kernel command line for them.

    A runner's own disk (``qemu.disk``) is always attached; the built guest gets the Python
    disk only for the ``python`` kind, so the other VMs boot without one.
    """
    if options.get("qemu.disk"):
        return (Path(options["qemu.disk"]),), ""
    if kind != "python" or image.source != "built":
        return (), ""
    rootfs = options.get("qemu.python_rootfs")
    if rootfs:
        tarball = Path(rootfs)
    else:
        from gpuconform.fixtures.build.images import rootfs_tarball  # builds it with debootstrap on first use

        tarball = rootfs_tarball("python", deadline)
    cache = Path(options.get("qemu.guest_cache") or DEFAULT_CACHE_DIR)
    return (build_python_disk(tarball, cache, deadline=deadline),), f" {PYDISK_FLAG}"
