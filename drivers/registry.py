"""Adapters by name, from a lazy registry: a missing optional dependency only matters when used.

Built-in adapters are named by module path and imported on first use; third-party adapters
register through the ``gpuconform.adapters`` entry point group (``name = "pkg.module:Class"``).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from gpuconform.drivers.base import Adapter, AdapterContext, HarnessError

BUILTIN: dict[str, str] = {
    "host": "gpuconform.drivers.host:HostAdapter",
    "podman": "gpuconform.drivers.podman:PodmanAdapter",
    "docker-legacy": "gpuconform.drivers.docker:DockerLegacyAdapter",
    "docker-cdi": "gpuconform.drivers.docker:DockerCdiAdapter",
    "kubernetes": "gpuconform.drivers.kubernetes:KubernetesAdapter",
    "qemu": "gpuconform.drivers.qemu:QemuAdapter",
    "qemu-single": "gpuconform.drivers.qemu:QemuSingleAdapter",
}
# Names kept for compatibility: accepted by --drivers and reaped, never a column of a default run
# (it would repeat its target's column). ``docker`` is ``docker-legacy`` (drivers.docker_payload).
ALIASES: dict[str, str] = {"docker": "gpuconform.drivers.docker:DockerAdapter"}
ENTRY_POINT_GROUP = "gpuconform.adapters"


class UnknownDriver(HarnessError):
    """A driver name that no built-in adapter or entry point provides."""


def _targets() -> dict[str, str]:
    targets = {**BUILTIN, **ALIASES}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        targets.setdefault(ep.name, ep.value)
    return targets


def known_drivers() -> list[str]:
    return sorted(_targets())


VM_PASSTHROUGH: frozenset[str] = frozenset({"qemu", "qemu-single"})


def default_drivers(real_gpus: bool) -> list[str]:
    """The drivers a run without ``--drivers`` covers: built-ins first, then entry points.

    With ``real_gpus`` (a host driver holds this machine's real GPUs) the VM pass-through drivers
    are left out: they unbind GPUs from the host driver, so they run only when named
    (``--drivers qemu``). On a simulated host they bind a fake sysfs and stay in.
    """
    builtin = list(BUILTIN)
    names = builtin + [d for d in known_drivers() if d not in builtin and d not in ALIASES]
    return [d for d in names if not (real_gpus and d in VM_PASSTHROUGH)]


def load_adapter_class(name: str) -> type[Adapter]:
    targets = _targets()
    if name not in targets:
        raise UnknownDriver(
            f"unknown driver {name!r}",
            hint=f"expected one of: {', '.join(sorted(targets))}",
        )
    module_name, _, attr = targets[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownDriver(
            f"driver {name!r} could not be loaded: {exc}",
            hint=f"install its extra: pip install 'gpuconform[{name}]'",
        ) from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise UnknownDriver(f"driver {name!r}: {targets[name]} is not an Adapter subclass")
    return cls


def create_adapter(name: str, ctx: AdapterContext) -> Adapter:
    return load_adapter_class(name)(ctx)
