"""The "reload" event of lifecycle.persist: what a host does to sandboxes that are already running.

A container that saw its GPU at start can lose it later: a ``systemctl daemon-reload`` makes
systemd re-apply each unit's device rules, and with the systemd cgroup driver the rules for the
NVIDIA nodes that the hook or CDI injected are not among them, so NVML inside then fails "Failed
to initialize NVML: Unknown Error" (nvidia-container-toolkit#48, failure class 14). Each adapter
declares its event through ``Adapter.reload_event``; the helpers here hold what the engines share.

An outcome is ``(status, text)``: ``done`` (text: what ran), ``skip`` (text: why not here; on a
real host anything that touches the system waits for the ``<driver>.allow_reload=1`` option) or
``unsupported`` (text: why the driver has no such event). On a simulated host the harness
triggers the event itself (``SimulatedHost.reload_event``): the fault ``revocable:N`` turns it into
lost access for GPU N in the sandboxes running at that moment.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from pathlib import Path

from gpuconform.drivers.errors import InfrastructureError
from gpuconform.drivers.profile import OptionSpec
from gpuconform.drivers.simulated import SimulatedHost
from gpuconform.drivers.subproc import run_command

DONE = "done"
SKIP = "skip"
UNSUPPORTED = "unsupported"
Outcome = tuple[str, str]

ALLOW = "allow_reload"
# sd_booted(3): this directory exists exactly when systemd is the init system.
SYSTEMD_RUN_DIR = Path("/run/systemd/system")
SYSTEMCTL_TIMEOUT_S = 60.0


ALLOW_SPEC = OptionSpec(
    "1: lifecycle.persist may reload this real host (systemctl daemon-reload or the engine's config "
    "reload) while a sandbox runs",
    "flag",
)


def allow_option(driver: str) -> dict[str, OptionSpec]:
    """The ``<driver>.allow_reload`` entry of an adapter's OPTIONS."""
    return {f"{driver}.{ALLOW}": ALLOW_SPEC}


def allowed(options: Mapping[str, str], *drivers: str) -> bool:
    """Whether ``<driver>.allow_reload=1`` is set for any of ``drivers`` (a column, then its family)."""
    return any(options.get(f"{d}.{ALLOW}") == "1" for d in drivers)


def refused(driver: str, event: str) -> Outcome:
    return (
        SKIP,
        f"the {driver} reload event ({event}) would touch this real host: opt in with "
        f"--driver-opt {driver}.{ALLOW}=1",
    )


def simulated(sim: SimulatedHost, event: str) -> Outcome:
    """The event on the simulated host: GPUs marked revocable are lost to running sandboxes."""
    revoked = sim.reload_event()
    return (
        DONE,
        f"{event} on the simulated host (revoked for running sandboxes: {', '.join(revoked) or 'none'})",
    )


def systemd_booted() -> bool:
    return SYSTEMD_RUN_DIR.is_dir()


def unit_active(unit: str) -> bool:
    return (
        run_command(["systemctl", "is-active", "--quiet", unit], timeout=SYSTEMCTL_TIMEOUT_S).exit_code == 0
    )


def daemon_reload(timeout: float) -> Outcome:
    """``systemctl daemon-reload`` on this host; InfrastructureError when it does not succeed."""
    result = run_command(["systemctl", "daemon-reload"], timeout=min(timeout, SYSTEMCTL_TIMEOUT_S))
    if not result.ok:
        why = "timed out" if result.timed_out else f"exit {result.exit_code}: {result.stderr.strip()[:200]}"
        raise InfrastructureError(f"systemctl daemon-reload failed ({why})", hint="run it as root")
    return DONE, "systemctl daemon-reload"


def dockerd_pid(base_url: str) -> int | None:
    """The dockerd serving ``unix://<dir>/docker.sock``: its pidfile ``<dir>/docker.pid`` (dockerd's
    default beside its default socket, and the simulated host's private daemons'), checked against
    /proc; None for a remote engine or a pidfile that names no dockerd."""
    if not base_url.startswith("unix://"):
        return None
    pidfile = Path(base_url.removeprefix("unix://")).with_name("docker.pid")
    try:
        pid = int(pidfile.read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == "dockerd" else None


def sighup_dockerd(base_url: str) -> Outcome:
    """dockerd's config reload (SIGHUP); ``unsupported`` when the daemon is not on this machine."""
    pid = dockerd_pid(base_url)
    if pid is None:
        return (
            UNSUPPORTED,
            f"no local dockerd with a pidfile beside {base_url}: its reload cannot be triggered",
        )
    os.kill(pid, signal.SIGHUP)
    return DONE, f"SIGHUP to dockerd {pid} (configuration reload)"


def docker_reload(
    options: Mapping[str, str], column: str, base_url: str, sim: SimulatedHost | None, *, timeout: float
) -> Outcome:
    """Docker: ``systemctl daemon-reload`` where systemd manages dockerd, else dockerd's config
    reload. The simulated host's private dockerd is a real one: it gets its SIGHUP for real."""
    if sim is not None:
        _, hup = sighup_dockerd(base_url)
        return DONE, f"{hup}; {simulated(sim, 'a simulated daemon-reload')[1]}"
    if not allowed(options, column, "docker"):
        return refused(column, "systemctl daemon-reload or a dockerd SIGHUP")
    if systemd_booted() and unit_active("docker.service"):
        return daemon_reload(timeout)
    return sighup_dockerd(base_url)


def node_reload(
    options: Mapping[str, str], driver: str, sim: SimulatedHost | None, *, timeout: float
) -> Outcome:
    """Podman (no daemon): the systemd reload of this host, where systemd is the init."""
    if sim is not None:
        return simulated(sim, "a simulated daemon-reload")
    if not systemd_booted():
        return UNSUPPORTED, "systemd is not this host's init: no daemon-reload can rewrite device rules here"
    if not allowed(options, driver):
        return refused(driver, "systemctl daemon-reload")
    return daemon_reload(timeout)
