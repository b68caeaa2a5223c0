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

import json
import os
import secrets
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from gpuconform.drivers.base import SANDBOX_SCRATCH, Adapter, ExecResult, Launch, Sandbox
from gpuconform.drivers.errors import Deadline, InfrastructureError
from gpuconform.drivers.inventory import SCHEME_HOST
from gpuconform.drivers.labels import LABEL_RUN, LabelledRun, merge_runs
from gpuconform.drivers.procgroup import run_in_group
from gpuconform.drivers.profile import Availability, Expectation, OptionSpec, Profile
from gpuconform.drivers.subproc import run_command

NOT_ISOLATED: Expectation = "unsupported"
OPT_PYTHON = "host.python"
LABELS_FILE = "labels.json"


class HostSandbox(Sandbox):
    """Commands run directly on the host; files the harness copies go to a private scratch dir
    (under the run's state dir, with the sandbox's labels beside it for ``leftovers``)."""

    adapter: HostAdapter
    timeout_kill = "self"  # raw_exec runs each command in its own process group, killed whole

    def __init__(self, adapter: HostAdapter, launch: Launch) -> None:
        super().__init__(adapter, launch, f"host-{adapter.ctx.run_id}-{secrets.token_hex(3)}")
        self.dir = adapter.scratch_base(adapter.ctx.run_id) / self.id
        self._scratch = self.dir / "scratch"
        self._scratch.mkdir(parents=True)
        (self.dir / LABELS_FILE).write_text(json.dumps(self.labels))
        self._env = adapter.base_env()
        self._python = adapter.python()
        if launch.request.gpu and self.granted is not None:
            self._env["CUDA_VISIBLE_DEVICES"] = ",".join(sorted(self.granted))

    def _map(self, arg: str) -> str:
        if arg.startswith(SANDBOX_SCRATCH + "/"):
            return str(self._scratch / arg[len(SANDBOX_SCRATCH) + 1 :])
        return arg

    def raw_exec(self, argv: Sequence[str], *, timeout: float, stdin: bytes | None = None) -> ExecResult:
        mapped = [self._map(a) for a in argv]
        if mapped and mapped[0] == "python3":
            mapped[0] = self._python
        return run_in_group(mapped, timeout=timeout, env=self._env, input_data=stdin)

    def put_file(self, path: str, data: bytes, mode: int = 0o755) -> None:
        target = Path(self._map(path))
        if not str(target).startswith(str(self._scratch)):
            raise InfrastructureError(
                f"the host sandbox only takes files under {SANDBOX_SCRATCH}, not {path}"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(mode)

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.dir.exists():
            raise InfrastructureError(f"could not remove the host sandbox's directory {self.dir}")


class HostAdapter(Adapter):
    name = "host"
    OPTIONS = {
        "host.python": OptionSpec("interpreter that runs the compute probe on the host", "path"),
        "host.uuid_map": OptionSpec("CSV of pci.bus_id,uuid saved before GPUs went to vfio-pci", "path"),
    }
    id_scheme = SCHEME_HOST
    leases_gpus = False  # an observer: it must see GPUs other sandboxes hold
    provision_weight = 0.1  # a process on this machine

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
                "mig.*": NOT_ISOLATED,
                "lifecycle.*": NOT_ISOLATED,  # the host's own access: no sandbox to lose it
            },
            exclusive=False,
            oversubscribe="shared",
            notes="bare-metal baseline: no isolation; CUDA cases restricted with CUDA_VISIBLE_DEVICES",
        )

    def python(self) -> str:
        """The interpreter host commands run as ``python3``: the named one, else the harness's own."""
        return self.ctx.options.get(OPT_PYTHON) or sys.executable

    def base_env(self) -> dict[str, str]:
        """This process's environment; on a simulated host, pointed at the simulated GPUs."""
        env = dict(os.environ)
        if self.ctx.sim is not None:
            extra = self.ctx.sim.host_env()
            path = extra.pop("PATH", "")
            env.update(extra)
            if path:
                env["PATH"] = f"{path}:{env.get('PATH', '/usr/bin:/bin')}"
        return env

    def scratch_base(self, run_id: str) -> Path:
        return Path(self.ctx.state_dir) / "host" / run_id

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

    def start(self, launch: Launch) -> Sandbox:
        return HostSandbox(self, launch)

    def local_image(self, kind: str, deadline: Deadline) -> str:
        return kind  # commands run in this machine's own environment: the kind names no image

    def _sandboxes(self, run_id: str | None) -> list[Path]:
        base = self.scratch_base(run_id) if run_id else self.scratch_base("-").parent
        return sorted(base.glob("*/" + LABELS_FILE) if run_id else base.glob("*/*/" + LABELS_FILE))

    def leftovers(self, labels: Mapping[str, str]) -> list[str]:
        """Scratch directories of host sandboxes carrying all of ``labels`` (nothing else is made)."""
        found = []
        for path in self._sandboxes(labels.get(LABEL_RUN, self.ctx.run_id)):
            own = self._labels_of(path)
            if all(own.get(k) == v for k, v in labels.items()):
                found.append(f"host sandbox directory {path.parent}")
        return found

    def labelled_runs(self) -> list[LabelledRun]:
        return merge_runs((self._labels_of(path), path.stat().st_mtime) for path in self._sandboxes(None))

    def _labels_of(self, path: Path) -> dict[str, str]:
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}

    def gc(self, run_id: str | None = None) -> list[str]:
        gone = []
        for path in self._sandboxes(run_id):
            shutil.rmtree(path.parent, ignore_errors=True)
            gone.append(f"host sandbox directory {path.parent}")
        return gone
