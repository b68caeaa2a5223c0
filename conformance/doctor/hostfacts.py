"""The ground truth doctor checks against: the real GPUs, or a simulated host it was pointed at.

Doctor never simulates on a machine that has NVIDIA GPUs: when ``nvidia-smi`` fails there, the
broken driver is the finding, not a reason to fall back to a simulated host.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from gpuconform.conformance.doctor.model import Check, missing, note, ok, wrong
from gpuconform.drivers.inventory import Inventory
from gpuconform.drivers.subproc import run_command
from gpuconform.fixtures.hostgpus import NvidiaPresence, detect_nvidia
from gpuconform.workloads.nvidia_smi import SmiParseError, parse_list

SYSFS = Path("/sys")
SMI_TIMEOUT_S = 20.0
DEFAULT_CDI_DIRS = (Path("/etc/cdi"), Path("/var/run/cdi"))


@dataclass(frozen=True)
class HostFacts:
    """What the driver checks need to know about the machine."""

    inventory: Inventory | None
    simulated: bool = False
    sim_root: Path | None = None
    sim_label: str = ""
    cdi_dirs: tuple[Path, ...] = DEFAULT_CDI_DIRS
    sysfs: Path = SYSFS
    dev_root: Path = Path("/dev")
    smi_argv: tuple[str, ...] = ("nvidia-smi",)
    smi_env: dict[str, str] = field(default_factory=dict)

    @property
    def driver_version(self) -> str | None:
        if self.inventory is None:
            return None
        versions = sorted({g.driver_version for g in self.inventory.gpus})
        return versions[0] if len(versions) == 1 else None

    def presence(self) -> NvidiaPresence:
        """What the kernel shows of NVIDIA hardware: the one test of "GPU host or not" (the
        harness's own, fixtures/hostgpus.py), never whether nvidia-smi happens to work."""
        return detect_nvidia(self.sysfs, self.dev_root)


def host_checks(facts: HostFacts) -> list[Check]:
    """The host driver and nvidia-smi, which every driver column depends on."""
    out: list[Check] = []
    inv = facts.inventory
    if facts.simulated and inv is not None:
        out.append(
            note(
                "host driver",
                f"simulated GPU host {facts.sim_label}: driver {facts.driver_version or '?'} "
                "(simulated; never counts as hardware evidence)",
            )
        )
    elif inv is not None:
        out.append(_proc_driver_version(facts))
    else:
        presence = facts.presence()
        if presence.all_on_vfio:
            out.append(
                note(
                    "host driver",
                    f"every NVIDIA GPU is bound to vfio-pci ({presence.describe()}): only the qemu "
                    "columns can run",
                    "pass --driver-opt host.uuid_map=FILE (pci.bus_id,uuid saved before binding)",
                )
            )
            return out
        out.append(
            missing(
                "host driver",
                f"nvidia-smi does not work, though the kernel shows NVIDIA hardware ({presence.describe()})"
                if presence.present
                else "nvidia-smi does not work and no NVIDIA GPU is on the PCI bus",
                "install the NVIDIA driver and check `nvidia-smi -L`"
                if presence.present
                else "on a machine without a GPU run `gpuconform doctor --sim h100x4`",
            )
        )
    out.append(_nvidia_smi(facts))
    return out


def _proc_driver_version(facts: HostFacts) -> Check:
    path = Path("/proc/driver/nvidia/version")
    version = facts.driver_version
    try:
        text = path.read_text()
    except OSError:
        return note("host driver", f"driver {version}; {path} is not readable")
    if version and version not in text:
        return wrong(
            "host driver",
            f"nvidia-smi reports driver {version} but the loaded kernel module says "
            f"{text.splitlines()[0].strip() if text else '?'}",
            "reboot or reload the nvidia kernel modules after a driver upgrade",
        )
    return ok("host driver", f"NVIDIA driver {version} loaded")


def _nvidia_smi(facts: HostFacts) -> Check:
    env = {**os.environ, **facts.smi_env} if facts.smi_env else None
    result = run_command([*facts.smi_argv, "-L"], timeout=SMI_TIMEOUT_S, env=env)
    where = facts.smi_argv[0]
    if result.exit_code == 127:
        return missing("nvidia-smi", f"{where} is not on PATH", "install the NVIDIA driver utilities")
    if not result.ok:
        why = "timed out" if result.timed_out else (result.stderr or result.stdout).strip()[:160]
        return wrong("nvidia-smi", f"`{where} -L` exited {result.exit_code}: {why}", "see `nvidia-smi -q`")
    try:
        listed = {g.uuid for g in parse_list(result.stdout)}
    except SmiParseError as exc:
        return wrong(
            "nvidia-smi", f"`{where} -L` printed something unparseable: {exc}", "see `nvidia-smi -L`"
        )
    if facts.inventory is None:
        return ok("nvidia-smi", f"lists {len(listed)} GPU(s)")
    expected = facts.inventory.uuids
    if listed != expected:
        return wrong(
            "nvidia-smi",
            f"`-L` lists {len(listed)} GPU(s) but the inventory has {len(expected)}; "
            f"missing {sorted(expected - listed)}, extra {sorted(listed - expected)}",
            "a GPU fell off the bus or is bound to another driver (check dmesg)",
        )
    return ok("nvidia-smi", f"lists all {len(listed)} inventory GPU(s)")
