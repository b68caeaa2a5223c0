"""What the harness costs on the docker-cdi column: its provision/exec against plain docker CLI calls.

One simulated host and one private Engine 26 (CDI on), as a run brings them up; then, interleaved
for ``--rounds`` rounds, the same sandbox two ways:

- harness: ``DockerCdiAdapter.provision`` (lease, testcontainers create+start), one
  ``exec nvidia-smi -L`` through the adapter's deadline-bounded exec, ``close`` (rm -f);
- plain: ``docker run -d --network none --device <kind>=<i> IMAGE sleep ...``,
  ``docker exec ID nvidia-smi -L``, ``docker rm -f ID`` (the 28.2 CLI against the same daemon).

Prints one JSON document: medians per step and the harness/plain ratios. A measurement, not a
test: nothing here asserts a time. Run as root: ``python3 -m tests.bench.docker_cdi_overhead``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpuconform.drivers.base import AdapterContext, Deadline
from gpuconform.drivers.docker import DockerCdiAdapter
from gpuconform.drivers.leases import GpuLeases
from gpuconform.drivers.request import GpuRequest
from gpuconform.fixtures.sim.simgpu.dockerd import PrivateDockerd
from gpuconform.fixtures.sim.simgpu.host import SimHost

CLI_TIMEOUT_S = 60


def _timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - start, value


def _cli(argv: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed: {proc.stderr.strip()[:300]}")
    return proc.stdout


def measure(rounds: int, base: Path) -> dict[str, Any]:
    host = SimHost.up(
        "h100x4", instance=f"b{secrets.token_hex(4)}", base=base, cdi_dir=base / "cdi", owner_pid=os.getpid()
    )
    try:
        daemon = PrivateDockerd.start(
            host.root,
            deadline=Deadline(90),
            data_root=base / "data",
            flavour="cdi",
            cdi_spec_dirs=[base / "cdi"],
        )
        try:
            return _rounds(rounds, base, host, daemon)
        finally:
            daemon.stop(purge=True)
    finally:
        host.down()


def _rounds(rounds: int, base: Path, host: SimHost, daemon: PrivateDockerd) -> dict[str, Any]:
    ctx = AdapterContext(
        inventory=host.inventory,
        leases=GpuLeases(base / "leases"),
        run_id=f"bench{secrets.token_hex(3)}",
        worker="bench",
        options={"docker-cdi.host": daemon.socket_url},
    )
    adapter = DockerCdiAdapter(ctx)
    availability = adapter.available()
    if not availability.ok:
        raise SystemExit(f"docker-cdi unavailable: {availability.reason}")
    image = adapter.image("busybox", deadline=Deadline(900))
    env = {**os.environ, "DOCKER_HOST": daemon.socket_url}
    steps: dict[str, list[float]] = {k: [] for k in ("harness_provision", "harness_exec", "harness_close")}
    steps.update({k: [] for k in ("plain_run", "plain_exec", "plain_rm")})
    for i in range(rounds + 1):  # round 0 warms both paths up and is not counted
        t_prov, sandbox = _timed(
            lambda: adapter.provision(
                GpuRequest.default(), image=image, labels=ctx.labels, deadline=Deadline(120)
            )
        )
        t_exec, result = _timed(sandbox.exec, ["nvidia-smi", "-L"], timeout=30)
        if result.exit_code != 0:
            raise SystemExit(f"harness exec failed: {result.stderr.strip()}")
        t_close, _ = _timed(sandbox.close)
        device = f"{host.cdi_kind}={i % len(host.inventory.gpus)}"
        run_argv = [
            "docker",
            "run",
            "-d",
            "--network",
            "none",
            "--device",
            device,
            image,
            "sleep",
            "2147483647",
        ]
        t_run, out = _timed(_cli, run_argv, env)
        cid = out.strip()
        t_pexec, _ = _timed(_cli, ["docker", "exec", cid, "nvidia-smi", "-L"], env)
        t_rm, _ = _timed(_cli, ["docker", "rm", "-f", cid], env)
        if i == 0:
            continue
        for key, value in zip(steps, (t_prov, t_exec, t_close, t_run, t_pexec, t_rm), strict=True):
            steps[key].append(value)
    med = {k: round(statistics.median(v), 4) for k, v in steps.items()}
    return {
        "engine": availability.versions.get("engine"),
        "rounds": rounds,
        "median_s": med,
        "ratio_provision": round(med["harness_provision"] / med["plain_run"], 2),
        "ratio_exec": round(med["harness_exec"] / med["plain_exec"], 2),
        "ratio_teardown": round(med["harness_close"] / med["plain_rm"], 2),
        "ratio_total": round(
            (med["harness_provision"] + med["harness_exec"] + med["harness_close"])
            / (med["plain_run"] + med["plain_exec"] + med["plain_rm"]),
            2,
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or shutil.which("docker") is None:
        print("error: needs root and the docker CLI", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="gcb-", dir="/tmp"))
    try:
        print(json.dumps(measure(args.rounds, base), indent=1))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
