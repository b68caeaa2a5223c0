"""Adapters by name, from a lazy registry: a missing optional dependency only matters when used.

Built-in adapters are named by module path and imported on first use; third-party adapters
register through the ``gpuconform.adapters`` entry point group (``name = "pkg.module:Class"``).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from drivers.base import Adapter, AdapterContext, HarnessError

BUILTIN: dict[str, str] = {
    "host": "drivers.host:HostAdapter",
    "podman": "drivers.podman:PodmanAdapter",
    "docker": "drivers.docker:DockerAdapter",
    "kubernetes": "drivers.kubernetes:KubernetesAdapter",
    "qemu": "drivers.qemu:QemuAdapter",
    "qemu-single": "drivers.qemu:QemuSingleAdapter",
}
ENTRY_POINT_GROUP = "gpuconform.adapters"


class UnknownDriver(HarnessError):
    """A driver name that no built-in adapter or entry point provides."""


def _targets() -> dict[str, str]:
    targets = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        targets.setdefault(ep.name, ep.value)
    return targets


def known_drivers() -> list[str]:
    return sorted(_targets())


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
