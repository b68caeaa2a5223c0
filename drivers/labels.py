"""The labels the harness puts on everything it creates, and what an engine's labels say.

Every container, pod, namespace and VM carries the run id (and worker, case, owner and host), so
``leftovers`` and ``gc`` find them by label and the reaper can tell whose runs an engine holds.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

LABEL_PREFIX = "dev.gpuconform"
LABEL_RUN = f"{LABEL_PREFIX}.run"
LABEL_WORKER = f"{LABEL_PREFIX}.worker"
LABEL_CASE = f"{LABEL_PREFIX}.case"
LABEL_OWNER = f"{LABEL_PREFIX}.owner"
LABEL_HOST = f"{LABEL_PREFIX}.host"


def host_label() -> str:
    """This machine's name as a label value (Kubernetes-safe: [A-Za-z0-9._-], <= 63 chars), so a
    run's resources on an engine shared by several hosts say whose they are."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", socket.gethostname())[:63].strip("-._") or "host"


@dataclass(frozen=True)
class LabelledRun:
    """A run id found on an engine's resources, with the host label they carry ("" on resources
    made before the host label existed) and when its newest one was created (epoch seconds; 0.0
    when the engine does not say)."""

    run_id: str
    host: str = ""
    created: float = 0.0


def merge_runs(found: Iterable[tuple[Mapping[str, str], float]]) -> list[LabelledRun]:
    """One LabelledRun per (run, host) from resources' (labels, created) pairs, newest time kept."""
    runs: dict[tuple[str, str], float] = {}
    for labels, created in found:
        run_id = labels.get(LABEL_RUN, "")
        if run_id:
            key = (run_id, labels.get(LABEL_HOST, ""))
            runs[key] = max(runs.get(key, 0.0), created)
    return [LabelledRun(run_id, host, created) for (run_id, host), created in sorted(runs.items())]
