"""The Podman adapter: containers with CDI device injection, through the podman CLI.

Podman resolves CDI names itself (``--device nvidia.com/gpu=1``) from /etc/cdi and /var/run/cdi.
The CLI verbs, labels, leftovers and gc are drivers.cli_engine's; this module says what is
Podman's own: its versions, the texts with which it refuses devices, and its images.
"""

from __future__ import annotations

import json

from gpuconform.drivers import reload
from gpuconform.drivers.base import Deadline, Sandbox
from gpuconform.drivers.cli_engine import CliEngineAdapter
from gpuconform.drivers.profile import Availability, OptionSpec, Profile
from gpuconform.fixtures.build.images import ensure_image


class PodmanAdapter(CliEngineAdapter):
    name = "podman"
    OPTIONS = {
        "podman.binary": OptionSpec("the podman executable", "path"),
        "cdi.dirs": OptionSpec("comma-separated CDI spec directories podman resolves names from"),
        "podman.privileged": OptionSpec(
            "1: run every sandbox --privileged (the GPU cases must fail)", "flag"
        ),
        **reload.allow_option("podman"),
    }
    rejection_markers = ("unresolvable CDI devices", "failed to inject devices", "unknown CDI device")
    remove_args = ("rm", "-f", "-t", "0")

    @property
    def profile(self) -> Profile:
        return Profile(
            driver="podman",
            cases={"device.unsupported": "unsupported"},
            exclusive=True,
            oversubscribe="reject",
            notes="CDI device names; the harness leases GPUs for default and count requests",
        )

    def reload_event(self, sandbox: Sandbox, *, timeout: float) -> tuple[str, str]:
        """lifecycle.persist: podman has no daemon; the node's systemd daemon-reload."""
        return reload.node_reload(self.ctx.options, self.name, self.ctx.sim, timeout=timeout)

    def available(self) -> Availability:
        result = self.cli(["version", "--format", "json"], timeout=15)
        if result.exit_code == 127:
            return Availability(False, "podman is not installed (podman not on PATH)")
        if not result.ok:
            why = "timed out" if result.timed_out else result.stderr.strip().splitlines()[-1:]
            return Availability(False, f"podman is not usable: {why}")
        try:
            client = json.loads(result.stdout).get("Client", {})
        except json.JSONDecodeError:
            return Availability(False, "podman version printed something that is not JSON")
        self.versions = {
            "engine": f"podman {client.get('Version', '?')}",
            "api": str(client.get("APIVersion", "")),
        }
        info = self.cli(
            ["info", "--format", "{{.Host.OCIRuntime.Name}} {{.Host.OCIRuntime.Version}}"], timeout=15
        )
        if info.ok:
            self.versions["runtime"] = info.stdout.strip().splitlines()[0] if info.stdout.strip() else ""
        problem = self.cdi_problem()
        if problem:
            return Availability(False, problem, versions=dict(self.versions))
        return Availability(True, versions=dict(self.versions))

    def local_image(self, kind: str, deadline: Deadline) -> str:
        return ensure_image("podman", kind, deadline=deadline)
