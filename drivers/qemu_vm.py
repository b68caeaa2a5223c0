"""One QEMU process: its command line, the accelerator probe, the guest payload, start and stop.

Kept apart from the adapter (drivers.qemu) so the command line and the fw_cfg payload are pure
functions that unit tests check without booting anything. Every VM is named
``gpuconform-<run>-<vm>`` on its command line and has a pidfile in a run-labelled directory, so
``gc`` finds the QEMU processes of a dead run by name even when its directory is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from gpuconform.drivers import pci_bars
from gpuconform.drivers.base import InfrastructureError

NAME_PREFIX = "gpuconform-"
FW_CFG_PREFIX = "opt/gpuconform"
KVM_PROBE_S = 5.0
TERM_GRACE_S = 5.0
_PROBES: dict[tuple[str, str], tuple[bool, str]] = {}
# Where a KVM probe's verdict is kept for the rest of this boot of the machine: a KVM that hangs
# does not start working without a reboot or a module reload, and asking again costs every
# process of every run the whole probe timeout (5 s each on a host with a hanging nested KVM).
PROBE_CACHE = Path("/run/gpuconform/kvm-probe")


@dataclass(frozen=True)
class VmSpec:
    """Everything a VM is started with; ``qemu_argv`` turns it into a command line."""

    name: str
    binary: str
    accel: str  # "kvm" or "tcg"
    memory_mib: int
    cpus: int
    kernel: Path
    initrd: Path
    append: str
    ssh_port: int
    console_log: Path
    pidfile: Path
    vfio_bdfs: tuple[str, ...] = ()
    fw_cfg: tuple[tuple[str, Path], ...] = ()
    disks: tuple[Path, ...] = ()  # copy-on-write (snapshot=on): the shared base is never written
    pci_hole64: int | None = None  # bytes of 64-bit MMIO for the GPUs' BARs; None keeps QEMU's 32 GiB
    # The guest CPU model; empty: the host's under KVM, TCG_CPU under TCG.
    cpu_model: str = ""


# Under TCG, a model without AVX: glibc and the kernel then take their SSE paths, which TCG runs
# natively-ish, instead of AVX2/AVX-512 ones it emulates op by op (measured: a guest reaches sshd
# about 20% sooner than with "max"). Nehalem is x86-64-v2, the baseline of current distributions'
# Python and numpy builds.
TCG_CPU = "Nehalem"


def _opt(value: object) -> str:
    """QEMU option values escape a comma by doubling it."""
    return str(value).replace(",", ",,")


def qemu_argv(spec: VmSpec) -> list[str]:
    """The QEMU command line: q35, user-mode network with SSH forwarded to loopback only,
    serial console to a file, one PCIe root port per passed-through GPU with a 64-bit hole sized
    for their BARs, disks copy-on-write (``snapshot=on``: the guest may write, in a temporary
    overlay, while the base image shared by concurrent VMs stays untouched), fw_cfg payload."""
    argv = [
        spec.binary,
        "-name",
        _opt(spec.name),
        "-machine",
        "q35",
        "-accel",
        "kvm" if spec.accel == "kvm" else "tcg,thread=multi",
        "-cpu",
        spec.cpu_model or ("host" if spec.accel == "kvm" else TCG_CPU),
        "-smp",
        str(spec.cpus),
        "-m",
        str(spec.memory_mib),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        _opt(spec.kernel),
        "-initrd",
        _opt(spec.initrd),
        "-append",
        spec.append,
        "-serial",
        f"file:{spec.console_log}",
        "-pidfile",
        str(spec.pidfile),
        "-netdev",
        f"user,id=net0,hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22",
        "-device",
        # No option ROM: iPXE only network-boots, the guest boots from -kernel, and the firmware
        # running it costs ~0.2 s of every boot under TCG.
        "virtio-net-pci,netdev=net0,romfile=",
        "-device",
        "virtio-rng-pci",
    ]
    if spec.pci_hole64:
        argv += ["-global", f"q35-pcihost.pci-hole64-size={pci_bars.qemu_size(spec.pci_hole64)}"]
    for i, bdf in enumerate(spec.vfio_bdfs):
        argv += [
            "-device",
            f"pcie-root-port,id=gpuport{i},bus=pcie.0,chassis={i + 1},slot={i + 1}",
            "-device",
            f"vfio-pci,host={bdf},bus=gpuport{i}",
        ]
    for i, disk in enumerate(spec.disks):
        argv += [
            "-drive",
            f"file={_opt(disk)},if=none,id=disk{i},format=raw,snapshot=on",
            "-device",
            f"virtio-blk-pci,drive=disk{i}",
        ]
    for name, path in spec.fw_cfg:
        argv += ["-fw_cfg", f"name={FW_CFG_PREFIX}/{name},file={_opt(path)}"]
    return argv


def free_port() -> int:
    """A loopback port free right now (QEMU binds it; a lost race is retried by the caller)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def qemu_version(binary: str, timeout: float = 10.0) -> str | None:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"version (\S+)", out.stdout)
    return match.group(1) if match and out.returncode == 0 else None


def kvm_usable(binary: str, kernel: Path, timeout: float = KVM_PROBE_S) -> tuple[bool, str]:
    """Whether KVM really runs a guest here (cached per process).

    /dev/kvm can exist while nested KVM hangs, so this boots the guest kernel without a root
    file system under KVM: it panics at once and, with ``-no-reboot``, QEMU exits 0. A hang past
    ``timeout`` means KVM does not work here.
    """
    key = (binary, str(kernel))
    if key in _PROBES:
        return _PROBES[key]
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        result = (False, "no read-write access to /dev/kvm")
    elif (kept := _kept_probe(binary, kernel)) is not None:
        result = kept
    else:
        argv = [
            binary,
            "-machine",
            "q35",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "128",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "none",
            "-kernel",
            _opt(kernel),
            "-append",
            "panic=-1 loglevel=0",
        ]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
            why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            result = (
                (True, "kvm probe booted")
                if proc.returncode == 0
                else (False, f"kvm probe failed: {why[-120:]}")
            )
        except subprocess.TimeoutExpired:
            result = (False, f"kvm probe hung for {timeout:.0f}s (nested KVM?)")
        except OSError as exc:
            result = (False, f"kvm probe could not start: {exc}")
        _keep_probe(binary, kernel, result)
    _PROBES[key] = result
    return result


def _probe_file(binary: str, kernel: Path) -> Path | None:
    """The cache file of a probe of this QEMU with this kernel on this boot of the machine (a
    changed binary, kernel or /dev/kvm, or a reboot, names another file), or None."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        found = shutil.which(binary) or binary
        parts = [boot, found, str(kernel)]
        parts += [f"{os.stat(p).st_mtime_ns}:{os.stat(p).st_ino}" for p in (found, kernel, "/dev/kvm")]
    except OSError:
        return None
    return PROBE_CACHE / (hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24] + ".json")


def _kept_probe(binary: str, kernel: Path) -> tuple[bool, str] | None:
    path = _probe_file(binary, kernel)
    try:
        doc = json.loads(path.read_text()) if path is not None else None
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("ok"), bool):
        return None
    return bool(doc["ok"]), f"{doc.get('why', '')} (kept from an earlier probe on this boot)"


def _keep_probe(binary: str, kernel: Path, result: tuple[bool, str]) -> None:
    path = _probe_file(binary, kernel)
    if path is None:
        return
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"ok": result[0], "why": result[1]}))
        tmp.replace(path)


def launch(spec: VmSpec, stderr_log: Path) -> subprocess.Popen[bytes]:
    """Start QEMU in its own session (a Ctrl-C to the harness is not delivered to it directly)."""
    with open(stderr_log, "wb") as err:
        try:
            return subprocess.Popen(
                qemu_argv(spec),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        except OSError as exc:
            raise InfrastructureError(
                f"cannot start {spec.binary}: {exc}", hint="apt-get install qemu-system-x86"
            ) from None


def stop(proc: subprocess.Popen[bytes], grace: float = TERM_GRACE_S) -> None:
    """SIGTERM, then SIGKILL after ``grace``; returns once the process is reaped."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)


def vm_processes(prefix: str) -> dict[int, str]:
    """QEMU processes whose ``-name`` starts with ``prefix``: pid -> name."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not args or not os.path.basename(args[0].decode(errors="replace")).startswith("qemu-system"):
            continue
        for flag, value in zip(args, args[1:], strict=False):
            if flag == b"-name" and value.decode(errors="replace").startswith(prefix):
                found[int(entry.name)] = value.decode(errors="replace")
    return found


def kill_vm(pid: int, name: str, grace: float = TERM_GRACE_S) -> bool:
    """Stop the QEMU process ``pid`` if it is still the VM ``name``; True when one was stopped."""
    if vm_processes(name).get(pid) != name:
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        end = time.monotonic() + grace
        while time.monotonic() < end:
            if pid not in vm_processes(name):
                return True
            time.sleep(0.1)
    return pid not in vm_processes(name)


def log_tail(path: Path, lines: int = 3, limit: int = 400) -> str:
    """The last lines of a log, joined on one line for an error message."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept)[-limit:]


def describe_exit(proc: subprocess.Popen[bytes], stderr_log: Path, console_log: Path) -> str | None:
    """None while QEMU runs; else why it is gone, with the last words of QEMU and the guest."""
    code = proc.poll()
    if code is None:
        return None
    parts = [f"QEMU exited with {code}"]
    if err := log_tail(stderr_log, 2):
        parts.append(f"stderr: {err}")
    if con := log_tail(console_log, 3):
        parts.append(f"console: {con}")
    return "; ".join(parts)
