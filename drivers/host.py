"""The bare host: the baseline every sandbox is compared with. It isolates nothing.

nvidia-smi on the host always sees every GPU, so the profile honestly declares the selection
cases (default, none, counts, device ids, exclusivity) unsupported. CUDA does honour
CUDA_VISIBLE_DEVICES, so the compute cases run here restricted to the granted GPUs; that is the
bandwidth baseline. On a simulated host, the simulated nvidia-smi and the probe are pointed at
the host-side copies of the simulated nodes and descriptors.

``python3`` in a host command is the harness's own interpreter (``sys.executable``: the one that
has the harness's numpy, and cupy where the ``cuda`` extra is installed), or the one named with
``--driver-opt host.python=PATH``; never whichever ``python3`` happens to be first on PATH.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from gpuconform.drivers.base import (
    Adapter,
    AdapterContext,
    Availability,
    Deadline,
    ExecResult,
    Expectation,
    InfrastructureError,
    OptionSpec,
    Profile,
    Sandbox,
)
from gpuconform.drivers.inventory import SCHEME_HOST
from gpuconform.drivers.request import GpuRequest
from gpuconform.drivers.selection import Selection, select_gpus
from gpuconform.drivers.subproc import run_command
from gpuconform.fixtures.sim.simgpu.layout import ENV_DESC_DIR, ENV_DEV_DIR, SANDBOX_SCRATCH

NOT_ISOLATED: Expectation = "unsupported"
OPT_PYTHON = "host.python"


class HostSandbox(Sandbox):
    """Commands run directly on the host; files the harness copies go to a private scratch dir."""

    def __init__(self, adapter: HostAdapter, req: GpuRequest, selection: Selection) -> None:
        self.id = f"host-{adapter.ctx.run_id}-{secrets.token_hex(3)}"
        self.driver = "host"
        self.request = req
        self.granted = selection.granted
        self.versions = dict(adapter.versions)
        self.timings: dict[str, float] = {}
        self._selection = selection
        self._scratch = Path(tempfile.mkdtemp(prefix="gpuconform-host-"))
        self._env = adapter.base_env()
        self._python = adapter.python()
        if req.gpu:
            self._env["CUDA_VISIBLE_DEVICES"] = ",".join(sorted(selection.granted))
        self._closed = False

    def _map(self, arg: str) -> str:
        if arg.startswith(SANDBOX_SCRATCH + "/"):
            return str(self._scratch / arg[len(SANDBOX_SCRATCH) + 1 :])
        return arg

    def exec(self, argv: Sequence[str], *, timeout: float) -> ExecResult:
        mapped = [self._map(a) for a in argv]
        if mapped and mapped[0] == "python3":
            mapped[0] = self._python
        result = run_command(mapped, timeout=timeout, env=self._env)
        return ExecResult(
            tuple(argv), result.exit_code, result.stdout, result.stderr, result.duration_s, result.timed_out
        )

    def put_file(self, path: str, data: bytes, mode: int = 0o755) -> None:
        target = Path(self._map(path))
        if not str(target).startswith(str(self._scratch)):
            raise InfrastructureError(
                f"the host sandbox only takes files under {SANDBOX_SCRATCH}, not {path}"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(mode)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        start = time.monotonic()
        shutil.rmtree(self._scratch, ignore_errors=True)
        self._selection.release()
        self.timings["teardown_s"] = round(time.monotonic() - start, 3)


class HostAdapter(Adapter):
    name = "host"
    OPTIONS = {
        "host.python": OptionSpec("interpreter that runs the compute probe on the host", "path"),
        "host.uuid_map": OptionSpec("CSV of pci.bus_id,uuid saved before GPUs went to vfio-pci", "path"),
    }
    id_scheme = SCHEME_HOST

    def __init__(self, ctx: AdapterContext) -> None:
        super().__init__(ctx)
        self.versions: dict[str, str] = {}

    @property
    def profile(self) -> Profile:
        return Profile(
            driver="host",
            cases={
                "smi.default": NOT_ISOLATED,
                "smi.none": NOT_ISOLATED,
                "smi.nodes": NOT_ISOLATED,
                "count.*": NOT_ISOLATED,
                "count.zero": "supported",
                "device.*": NOT_ISOLATED,
                "device.duplicate": "supported",
                "device.mismatch": "supported",
                "device.empty": "supported",
                "exclusive.*": NOT_ISOLATED,
                "env.*": NOT_ISOLATED,
                "release": NOT_ISOLATED,
            },
            exclusive=False,
            oversubscribe="shared",
            notes="bare-metal baseline: no isolation; CUDA cases restricted with CUDA_VISIBLE_DEVICES",
        )

    def sim_root(self) -> Path | None:
        root = self.ctx.options.get("sim.root")
        return Path(root) if root else None

    def python(self) -> str:
        """The interpreter host commands run as ``python3``: the named one, else the harness's own."""
        return self.ctx.options.get(OPT_PYTHON) or sys.executable

    def base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        root = self.sim_root()
        if root is not None:
            env["PATH"] = f"{root / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
            env[ENV_DEV_DIR] = str(root / "dev")
            env[ENV_DESC_DIR] = str(root / "gpus")
        return env

    def available(self) -> Availability:
        python = self.python()
        if not (os.path.isfile(python) and os.access(python, os.X_OK)):
            return Availability(
                False,
                f"{OPT_PYTHON}={python} is not an executable file "
                f"(hint: --driver-opt {OPT_PYTHON}=/path/to/bin/python3 with numpy and cupy)",
            )
        result = run_command(["nvidia-smi", "-L"], timeout=20, env=self.base_env())
        if result.exit_code == 127:
            return Availability(False, "nvidia-smi is not on the host's PATH (no NVIDIA driver)")
        if not result.ok:
            why = "timed out" if result.timed_out else (result.stderr or result.stdout).strip()[:200]
            return Availability(False, f"nvidia-smi failed on the host (exit {result.exit_code}): {why}")
        self.versions = {
            "engine": "bare host",
            "simulated": str(self.ctx.inventory.simulated).lower(),
            "python": python,
        }
        return Availability(True, versions=dict(self.versions))

    def provision(
        self,
        req: GpuRequest,
        *,
        image: str,
        labels: Mapping[str, str],
        deadline: Deadline,
        env: Mapping[str, str] | None = None,
    ) -> Sandbox:
        req.validate()
        start = time.monotonic()
        selection = select_gpus(self.ctx, req, SCHEME_HOST, deadline, leased=False)
        sandbox = HostSandbox(self, req, selection)
        sandbox.timings["provision_s"] = round(time.monotonic() - start, 3)
        return sandbox
