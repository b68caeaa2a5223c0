"""Podman and Docker: the engine itself, its CDI support, and Docker's legacy hook.

The CDI spec lint itself is in ``cdi_lint``; this module says which spec directories and which
``cdiVersion`` each engine's vendored CDI library reads.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuconform.conformance.doctor.hostfacts import HostFacts
from gpuconform.conformance.doctor.model import Check, missing, note, ok, wrong
from gpuconform.drivers.base import HarnessError
from gpuconform.drivers.subproc import run_command

ENGINE_TIMEOUT_S = 15.0
HOOK_NAME = "nvidia-container-runtime-hook"

#: The newest cdiVersion each engine's vendored CDI library accepts (a newer spec makes every
#: device of that spec unresolvable). Podman 4.3's limit was checked against the real engine
#: here (fixtures/sim/simgpu/cdi.py); the others follow the library version each release vendors.
PODMAN_CDI_MAX: tuple[tuple[tuple[int, int], str], ...] = (
    ((5, 3), "0.8.0"),
    ((5, 1), "0.7.0"),
    ((4, 7), "0.6.0"),
    ((4, 0), "0.5.0"),
)
DOCKER_CDI_MAX: tuple[tuple[tuple[int, int], str], ...] = (
    ((28, 0), "0.8.0"),
    ((27, 0), "0.7.0"),
    ((25, 0), "0.6.0"),
)
CDI_MIN_VERSION = "0.3.0"


@dataclass(frozen=True)
class Engine:
    """An engine as doctor found it: name, version, CDI dirs and newest cdiVersion it reads."""

    name: str
    version: str
    cdi_dirs: tuple[Path, ...]
    cdi_max: str | None


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def cdi_max_for(table: tuple[tuple[tuple[int, int], str], ...], version: str) -> str | None:
    have = version_tuple(version)[:2]
    return next((cdi for since, cdi in table if have >= since), None)


def podman_checks(facts: HostFacts) -> tuple[list[Check], Engine | None]:
    result = run_command(["podman", "version", "--format", "json"], timeout=ENGINE_TIMEOUT_S)
    if result.exit_code == 127:
        return [missing("podman", "podman is not on PATH", "apt-get install podman")], None
    if not result.ok:
        why = "timed out" if result.timed_out else result.stderr.strip()[-200:]
        return [
            wrong("podman", f"`podman version` failed: {why}", "run `podman info` and fix what it says")
        ], None
    try:
        version = str(json.loads(result.stdout).get("Client", {}).get("Version", "?"))
    except (json.JSONDecodeError, AttributeError):
        return [wrong("podman", "`podman version --format json` printed no JSON", "reinstall podman")], None
    cdi_max = cdi_max_for(PODMAN_CDI_MAX, version)
    engine = Engine(f"podman {version}", version, facts.cdi_dirs, cdi_max)
    checks = [ok("podman", f"podman {version} (its CDI library reads cdiVersion <= {cdi_max})")]
    if cdi_max is None:
        checks.append(wrong("podman CDI", f"podman {version} predates CDI", "upgrade to podman >= 4.0"))
    return checks, engine


def docker_path(column: str) -> str:
    """The GPU path a Docker column fixes: ``docker-cdi`` is CDI, ``docker``/``docker-legacy`` the hook."""
    return "cdi" if column.endswith("-cdi") else "legacy"


def docker_checks(
    facts: HostFacts, column: str, docker_host: str | None
) -> tuple[list[Check], Engine | None]:
    """The engine a run would drive; on a simulated host, what the run's private dockerd needs."""
    path = docker_path(column)
    if facts.simulated:
        return _sim_docker_checks(facts, path)
    try:
        import docker
    except ImportError:
        return [
            missing("docker SDK", "the docker Python package is missing", "pip install 'gpuconform[docker]'")
        ], None
    url = docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.DockerClient(base_url=url, timeout=ENGINE_TIMEOUT_S)
        try:
            version, info = client.api.version(), client.api.info()
        finally:
            client.close()
    except Exception as exc:  # the SDK raises DockerException, requests' and socket errors alike
        why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return [
            missing("docker engine", f"{url} is not reachable: {why}", "start dockerd or set DOCKER_HOST")
        ], None
    return engine_lines(version, info, path, shutil.which(HOOK_NAME))


def engine_lines(
    version: dict[str, Any], info: dict[str, Any], path: str, hook: str | None
) -> tuple[list[Check], Engine]:
    """What one engine offers the column's GPU path: CDI spec dirs, or the legacy hook/runtime."""
    name = str(version.get("Version") or info.get("ServerVersion") or "?")
    dirs = tuple(Path(d) for d in info.get("CDISpecDirs") or [])
    cdi_max = cdi_max_for(DOCKER_CDI_MAX, name) if dirs else None
    checks = [ok("docker engine", f"Docker Engine {name} (API {version.get('ApiVersion', '?')})")]
    runtimes = info.get("Runtimes") or {}
    legacy = hook is not None or (isinstance(runtimes, dict) and "nvidia" in runtimes)
    lacking = missing if path == "cdi" else note
    if dirs:
        checks.append(
            ok("docker CDI", f"enabled; spec dirs {', '.join(map(str, dirs))}; cdiVersion <= {cdi_max}")
        )
    elif version_tuple(name)[:1] >= (25,):
        checks.append(
            lacking(
                "docker CDI",
                f"engine {name} has CDI disabled",
                'add {"features": {"cdi": true}} to daemon.json',
            )
        )
    else:
        checks.append(
            lacking("docker CDI", f"engine {name} predates CDI (needs >= 25)", "upgrade Docker Engine")
        )
    lacking = missing if path == "legacy" else note
    if legacy:
        checks.append(ok("docker legacy hook", f"{hook or 'the nvidia runtime'} (the --gpus path)"))
    else:
        checks.append(
            lacking(
                "docker legacy hook",
                f"neither {HOOK_NAME} on PATH nor an nvidia runtime: the --gpus path injects nothing",
                "install nvidia-container-toolkit",
            )
        )
    return checks, Engine(f"docker {name}", name, dirs if path == "cdi" else (), cdi_max)


def _sim_docker_checks(facts: HostFacts, path: str) -> tuple[list[Check], Engine | None]:
    from gpuconform.fixtures.sim.simgpu import dockerd

    checks: list[Check] = []
    try:
        import docker  # noqa: F401
    except ImportError:
        checks.append(
            missing("docker SDK", "the docker Python package is missing", "pip install 'gpuconform[docker]'")
        )
    if path == "cdi":
        try:
            binary = dockerd.engine26_binary()
        except HarnessError as exc:
            return [*checks, missing("dockerd (CDI)", exc.message, exc.hint)], None
        result = run_command([str(binary), "--version"], timeout=ENGINE_TIMEOUT_S)
        found = re.search(r"version (\d[^\s,]*)", result.stdout) if result.ok else None
        version = found.group(1) if found else "?"
        cdi_max = cdi_max_for(DOCKER_CDI_MAX, version)
        checks.append(
            ok("dockerd (CDI)", f"Engine {version} at {binary}; each run starts a private daemon with CDI on")
        )
        return checks, Engine(f"docker {version}", version, facts.cdi_dirs, cdi_max)
    plain = shutil.which("dockerd")
    if plain is None:
        checks.append(
            missing(
                "dockerd",
                "dockerd is not on PATH (each run starts a private one)",
                "apt-get install docker.io",
            )
        )
    else:
        checks.append(ok("dockerd", f"{plain}: each run starts a private daemon with the simulated hook"))
    hook = dockerd.LEGACY_HOOK
    if hook.is_file():
        checks.append(ok("docker legacy hook", f"simulated {HOOK_NAME} ({hook.name})"))
    else:
        checks.append(missing("docker legacy hook", f"{hook} is missing", "reinstall gpuconform"))
    return checks, None
