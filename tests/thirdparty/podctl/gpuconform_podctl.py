"""podctl: a third-party gpuconform adapter, written as an outside project would write one.

It drives the podman CLI on a container store of its own (``--root``/``--runroot``; images are
read from podman's default store through ``overlay.imagestore``, read-only), so its containers are
invisible to the built-in podman column: only this module's ``leftovers``/``gc`` can find them.
GPUs are injected by CDI name. It is registered through the ``gpuconform.adapters`` entry point
(see the ``.dist-info`` folder beside it) and imports nothing of gpuconform but the adapter
contract and the image builder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from gpuconform.drivers import reload
from gpuconform.drivers.base import (
    AdapterContext,
    Availability,
    Deadline,
    ExecResult,
    OptionSpec,
    Profile,
    Sandbox,
)
from gpuconform.drivers.cli_engine import CliEngineAdapter
from gpuconform.fixtures.build.images import ensure_image

STORE = "/var/lib/gpuconform-podctl"
IMAGE_STORE = "/var/lib/containers/storage"


class PodctlAdapter(CliEngineAdapter):
    name = "podctl"
    default_binary = "podman"
    OPTIONS = {
        "podctl.binary": OptionSpec("the podman executable podctl drives", "path"),
        "podctl.store": OptionSpec(f"podctl's own container store (default {STORE})", "path"),
        "podctl.imagestore": OptionSpec(f"podman's store read for images (default {IMAGE_STORE})", "path"),
        **reload.allow_option("podctl"),
    }
    rejection_markers = ("unresolvable CDI devices", "failed to inject devices", "unknown CDI device")
    remove_args = ("rm", "-f", "-t", "0")

    def __init__(self, ctx: AdapterContext) -> None:
        super().__init__(ctx)
        store = ctx.options.get("podctl.store", STORE)
        images = ctx.options.get("podctl.imagestore", IMAGE_STORE)
        self.store_args = ["--root", f"{store}/root", "--runroot", f"{store}/run"]
        self.store_args += ["--storage-opt", f"overlay.imagestore={images}"]

    def cli(self, args: Sequence[str], *, timeout: float, input_data: bytes | None = None) -> ExecResult:
        """Every podman call, on podctl's own store."""
        return super().cli([*self.store_args, *args], timeout=timeout, input_data=input_data)

    @property
    def profile(self) -> Profile:
        return Profile(
            driver=self.name,
            cases={"device.unsupported": "unsupported"},
            notes="podman CLI on its own container store; CDI names; harness leases for counts",
        )

    def reload_event(self, sandbox: Sandbox, *, timeout: float) -> tuple[str, str]:
        """lifecycle.persist: podman has no daemon, so the host's systemd daemon-reload."""
        return reload.node_reload(self.ctx.options, self.name, self.ctx.sim, timeout=timeout)

    def available(self) -> Availability:
        result = self.cli(["version", "--format", "json"], timeout=15)
        if not result.ok:
            said = result.stderr.strip().splitlines() or [
                f"exit {result.exit_code}, timed out {result.timed_out}"
            ]
            return Availability(False, f"{self.binary} is not usable: {said[-1]}")
        try:
            version = json.loads(result.stdout)["Client"]["Version"]
        except (ValueError, KeyError, TypeError):
            return Availability(False, f"{self.binary} version printed no Client.Version JSON")
        self.versions = {"engine": f"podman {version}", "store": self.store_args[1]}
        problem = self.cdi_problem()
        return Availability(not problem, problem, versions=dict(self.versions))

    def local_image(self, kind: str, deadline: Deadline) -> str:
        """The harness's local image, built into podman's default store (podctl reads it there)."""
        return ensure_image("podman", kind, deadline=deadline)
