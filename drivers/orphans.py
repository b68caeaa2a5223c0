"""Processes a killed engine client leaves behind: conmon monitors and their children.

When ``podman run`` is killed while it creates a container, conmon (and the container's
``runc init``) can outlive it with no container in podman's store, so ``podman rm`` finds nothing
to remove. They are found by the container name on conmon's command line (``-n NAME``), which the
harness chose with the run id in it, and killed with their descendants.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def _cmdline(pid_dir: Path) -> list[str]:
    try:
        return pid_dir.joinpath("cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _children(proc: Path) -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            stat = pid_dir.joinpath("stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(pid_dir.name))
    return tree


def conmon_pids(name_prefix: str, proc: Path = Path("/proc")) -> dict[int, str]:
    """conmon processes monitoring a container whose name starts with ``name_prefix``."""
    found: dict[int, str] = {}
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        argv = _cmdline(pid_dir)
        if not argv or os.path.basename(argv[0]) != "conmon":
            continue
        for flag, value in zip(argv, argv[1:], strict=False):
            if flag in ("-n", "--name") and value.startswith(name_prefix):
                found[int(pid_dir.name)] = value
    return found


def kill_orphans(name_prefix: str, proc: Path = Path("/proc")) -> list[str]:
    """SIGKILL every conmon of ``name_prefix`` and its descendants; describe what was killed."""
    monitors = conmon_pids(name_prefix, proc)
    if not monitors:
        return []
    tree = _children(proc)
    killed: list[str] = []
    for pid, name in monitors.items():
        family, todo = [], [pid]
        while todo:
            current = todo.pop()
            family.append(current)
            todo += tree.get(current, [])
        for member in family:
            try:
                os.kill(member, signal.SIGKILL)
            except ProcessLookupError:
                continue
        killed.append(f"conmon of {name} (pids {', '.join(map(str, family))})")
    return killed
