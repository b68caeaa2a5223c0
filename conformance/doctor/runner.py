"""Gather the ground truth, run each driver's checks, assemble the report.

Without a GPU, doctor checks a simulated host: one started with ``gpuconform sim up --name X``
(``sim_instance``), or one it brings up for the check and removes afterwards.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gpuconform.conformance.doctor import cdi_lint, cluster, engines, vm
from gpuconform.conformance.doctor.hostfacts import DEFAULT_CDI_DIRS, HostFacts, host_checks
from gpuconform.conformance.doctor.model import Check, DoctorReport, DriverReport, note, wrong
from gpuconform.drivers.base import HarnessError

DEFAULT_SIM_PROFILE = "h100x4"


class DoctorError(HarnessError):
    """Doctor cannot start (an unknown simulated instance, a bad option)."""


@dataclass(frozen=True)
class DoctorOptions:
    drivers: tuple[str, ...] | None = None
    sim: str = "auto"
    sim_instance: str | None = None
    cdi_dirs: tuple[Path, ...] = ()
    driver_options: Mapping[str, str] = field(default_factory=dict)
    sim_base: Path | None = None  # where simulated instances live (tests use their own)


def run_doctor(opts: DoctorOptions) -> DoctorReport:
    from gpuconform.drivers.registry import known_drivers

    names = opts.drivers or tuple(known_drivers())
    unknown = sorted(set(names) - set(known_drivers()))
    if unknown:
        raise DoctorError(
            f"unknown driver {unknown[0]!r}", hint=f"one of {', '.join(known_drivers())} (gpuconform drivers)"
        )
    with _facts(opts) as facts:
        host = host_checks(facts)
        host_ready = not any(c.status.blocking for c in host)
        vfio_only = facts.inventory is None and not facts.simulated and facts.presence().all_on_vfio
        cache: dict[str, tuple[list[Check], engines.Engine | None]] = {}
        reports = []
        for name in names:
            checks = _driver_checks(name, facts, opts, cache)
            if vfio_only and not name.startswith("qemu") and name != "kubernetes":
                blocker = wrong("host", "every GPU is bound to vfio-pci", "only the qemu columns run here")
                checks = [blocker, *checks]
            elif not host_ready and name != "kubernetes":
                blocker = wrong(
                    "host", "the host's GPU stack is not ready (see the host lines)", "fix those first"
                )
                checks = [blocker, *checks]
            reports.append(DriverReport(name, tuple(checks)))
        facts_doc = {
            "simulated": facts.simulated,
            "sim": facts.sim_label,
            "gpus": len(facts.inventory.gpus) if facts.inventory else 0,
            "cdi_kind": facts.inventory.cdi_kind if facts.inventory else None,
            "cdi_dirs": [str(d) for d in facts.cdi_dirs],
            "driver_version": facts.driver_version,
        }
        return DoctorReport(tuple(host), tuple(reports), facts.simulated, facts_doc)


def _driver_checks(
    name: str,
    facts: HostFacts,
    opts: DoctorOptions,
    cache: dict[str, tuple[list[Check], engines.Engine | None]],
) -> list[Check]:
    options = opts.driver_options

    def once(
        key: str, work: Callable[[], tuple[list[Check], engines.Engine | None]]
    ) -> tuple[list[Check], engines.Engine | None]:
        if key not in cache:
            cache[key] = work()
        return cache[key]

    if name == "host":
        return [
            note("isolation", "the bare-host baseline: no isolation, GPUs chosen by CUDA_VISIBLE_DEVICES")
        ]
    if name == "podman":
        checks, engine = once("podman", lambda: engines.podman_checks(facts))
        return checks + (cdi_lint.lint_specs(facts.cdi_dirs, facts.inventory, engine) if engine else [])
    if name.startswith("docker"):
        host = options.get(f"{name}.host") or options.get("docker.host")
        checks, engine = once(name, lambda: engines.docker_checks(facts, name, host))
        if engines.docker_path(name) == "cdi" and engine is not None:
            dirs = engine.cdi_dirs or facts.cdi_dirs
            checks = checks + cdi_lint.lint_specs(dirs, facts.inventory, engine)
        return checks
    if name == "kubernetes":
        return cluster.kubernetes_checks(
            facts, options.get("kubernetes.kubeconfig"), options.get("kubernetes.context")
        )
    if name.startswith("qemu"):
        return vm.qemu_checks(
            facts, options.get(f"{name}.binary") or options.get("qemu.binary") or "qemu-system-x86_64"
        )
    return [
        note(
            "checks",
            f"doctor has no checks for {name}; `gpuconform run --drivers {name}` reports its availability",
        )
    ]


@contextlib.contextmanager
def _facts(opts: DoctorOptions) -> Iterator[HostFacts]:
    """The real host, an existing simulated instance, or one brought up (and down) for the check."""
    from gpuconform.fixtures.sim.environment import discover_real_inventory
    from gpuconform.fixtures.sim.simgpu.host import DEFAULT_SIM_BASE, SimHost

    dirs = opts.cdi_dirs or DEFAULT_CDI_DIRS
    if opts.sim_instance:
        sim = SimHost.find(opts.sim_instance, opts.sim_base or DEFAULT_SIM_BASE)
        if sim is None:
            raise DoctorError(
                f"no simulated host named {opts.sim_instance!r} is up",
                hint=f"gpuconform sim up --name {opts.sim_instance}",
            )
        yield _sim_facts(sim, dirs, f"{sim.instance} ({sim.profile})")
        return
    if opts.sim in ("auto", "none"):
        real = discover_real_inventory()
        if real is not None or opts.sim == "none" or HostFacts(None).presence().present:
            yield HostFacts(real, cdi_dirs=dirs)
            return
    profile = DEFAULT_SIM_PROFILE if opts.sim in ("auto", "none") else opts.sim
    sim = SimHost.up(profile, instance=f"doctor{os.getpid()}", cdi_dir=dirs[-1], owner_pid=os.getpid())
    try:
        yield _sim_facts(sim, dirs, f"{profile}, brought up for this check")
    finally:
        sim.down()


def _sim_facts(sim: object, dirs: tuple[Path, ...], label: str) -> HostFacts:
    from gpuconform.fixtures.sim.simgpu.host import SimHost

    assert isinstance(sim, SimHost)
    spec_dir = sim.cdi_spec_path.parent
    return HostFacts(
        sim.inventory,
        simulated=True,
        sim_root=sim.root,
        sim_label=label,
        cdi_dirs=dirs if spec_dir in dirs else (*dirs, spec_dir),
        smi_argv=(str(sim.nvidia_smi_path),),
        smi_env=sim.host_env,
    )
