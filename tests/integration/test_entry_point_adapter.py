"""A third-party adapter, registered only through the ``gpuconform.adapters`` entry point group,
runs a whole column through ``gpuconform run`` and is reaped by ``gpuconform gc``.

The adapter is tests/thirdparty/podctl/: one module (the podman CLI on a container store of its
own) and a ``.dist-info`` folder, found by importlib.metadata because that folder is on the
subprocesses' PYTHONPATH; nothing is installed, and nothing in the harness names ``podctl``.
Its store is invisible to the built-in podman column, so a leftover there is collected by podctl's
own ``gc`` or by nothing: the gc test cannot pass through the podman adapter.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuconform.drivers.base import LABEL_RUN
from tests.integration.conftest import REPO, podman_containers

pytestmark = pytest.mark.integration

SITE = REPO / "tests" / "thirdparty" / "podctl"
# The adapter's default store (gpuconform_podctl.STORE), read here from the outside.
STORE = Path("/var/lib/gpuconform-podctl")
PODCTL = ["podman", "--root", f"{STORE}/root", "--runroot", f"{STORE}/run"]
PODCTL += ["--storage-opt", "overlay.imagestore=/var/lib/containers/storage"]
STATE_BASE = Path(os.environ.get("GPUCONFORM_STATE", "/tmp/gpuconform"))
SETTLED = {"pass", "rejected", "unsupported"}


def _env(site: bool, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if site:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SITE), os.environ.get("PYTHONPATH")]))
    return {**env, **extra}


def _cli(
    *args: str, site: bool = True, timeout: float = 300, **extra: str
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "gpuconform.conformance.cli", *args]
    return subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=_env(site, **extra)
    )


def podctl_containers(label: str) -> list[str]:
    """Containers in podctl's own store carrying ``label`` (``key`` or ``key=value``)."""
    argv = [*PODCTL, "ps", "-a", "--filter", f"label={label}", "--format", "{{.Names}}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    return proc.stdout.split()


def test_the_driver_exists_only_through_its_entry_point() -> None:
    with_site, without = _cli("drivers"), _cli("drivers", site=False)
    assert with_site.returncode == without.returncode == 0, with_site.stderr + without.stderr
    assert "podctl" in with_site.stdout.split(), with_site.stdout
    assert "podctl" not in without.stdout.split(), without.stdout
    refused = _cli("run", "--drivers", "podctl", "--out", "/nonexistent/never-made", site=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "unknown driver 'podctl'" in refused.stderr, refused.stderr


def test_its_declared_options_are_checked_at_the_front_door(tmp_path: Path) -> None:
    out = tmp_path / "never-made"
    for opt, said in (
        ("podctl.bogus=1", "unknown option 'podctl.bogus'"),
        ("podctl.store=", "must be a path"),
    ):
        refused = _cli("run", "--drivers", "podctl", "--driver-opt", opt, "--out", str(out))
        assert refused.returncode == 2 and said in refused.stderr, refused.stdout + refused.stderr
    assert not out.exists()


class Column:
    """One ``gpuconform run`` of the podman and podctl columns, read back from its outputs."""

    def __init__(self, out: Path, run_id: str, proc: subprocess.CompletedProcess[str]) -> None:
        self.out, self.run_id, self.proc = out, run_id, proc
        self.output = proc.stdout + proc.stderr

    def doc(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.out / name).read_text())
        return data

    def verdicts(self, driver: str) -> dict[str, tuple[str, str]]:
        records = self.doc("results.json")["records"]
        return {r["case"]: (r["verdict"], r.get("reason", "")) for r in records if r["driver"] == driver}


@pytest.fixture(scope="module")
def column(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Column]:
    base = tmp_path_factory.mktemp("podctl")
    run_id = "ep" + secrets.token_hex(4)
    argv = ["run", "--drivers", "podman,podctl", "--require-driver", "podctl", "--out", str(base / "out")]
    # A private lease directory: other runs on this machine simulate GPUs with the same UUIDs.
    argv += ["--lease-dir", str(base / "leases")]
    proc = _cli(*argv, timeout=1200, GPUCONFORM_RUN_ID=run_id)
    yield Column(base / "out", run_id, proc)
    for name in podctl_containers(f"{LABEL_RUN}={run_id}"):
        subprocess.run([*PODCTL, "rm", "-f", "-t", "0", name], capture_output=True, timeout=60)


def test_the_column_runs_every_case_like_the_podman_column(column: Column) -> None:
    assert column.proc.returncode == 0, column.output[-4000:]
    podctl, podman = column.verdicts("podctl"), column.verdicts("podman")
    assert podctl and set(podctl) == set(podman), column.output[-4000:]
    for case, (verdict, reason) in podctl.items():
        assert verdict in SETTLED or (verdict == "skip" and reason), (case, verdict, reason)
        assert verdict == podman[case][0], (case, podctl[case], podman[case])
    assert sum(v == "pass" for v, _ in podctl.values()) >= len(podctl) // 2, podctl
    info = column.doc("results.json")["drivers"]["podctl"]
    assert info["available"] and info["versions"]["engine"].startswith("podman "), info


def test_the_column_is_in_the_matrix(column: Column) -> None:
    matrix = column.doc("matrix.json")
    assert "podctl" in matrix["drivers"], matrix["drivers"]
    (host,) = matrix["cells"]
    cells = matrix["cells"][host]
    assert {c: cell["verdict"] for c, cell in cells["podctl"].items()} == {
        c: cell["verdict"] for c, cell in cells["podman"].items()
    }
    assert "podctl" in (column.out / "matrix.md").read_text()


def test_nothing_labelled_with_the_run_is_left(column: Column) -> None:
    label = f"{LABEL_RUN}={column.run_id}"
    records = [r for r in column.doc("results.json")["records"] if r["driver"] == "podctl"]
    made = {c.get("sandbox", "") for r in records for c in r.get("commands", [])}
    assert len(made - {""}) >= 5, f"podctl made too few sandboxes for this to prove anything: {made}"
    assert not podctl_containers(label), column.output[-2000:]
    assert not podman_containers(label), column.output[-2000:]


def test_gc_reaps_a_dead_runs_leftover_in_podctls_store(image: str) -> None:
    """A dead run (its owner process is gone) that ran podctl: only podctl's gc can see the
    container it left, so gc removes it only when the entry point is honoured; without it, gc
    keeps the run for later rather than forget it."""
    run_id = "epdead" + secrets.token_hex(3)
    dead = subprocess.Popen(["true"])
    dead.wait(timeout=10)
    run_dir = STATE_BASE / "runs" / run_id
    (run_dir / "drivers").mkdir(parents=True)
    (run_dir / "owner.pid").write_text(str(dead.pid))
    (run_dir / "drivers" / "podctl.json").write_text(json.dumps({"available": True}))
    name = f"gpuconform-{run_id}-left"
    label = f"{LABEL_RUN}={run_id}"
    try:
        started = subprocess.run(
            [*PODCTL, "run", "-d", "--name", name, "--label", label, image, "sleep", "600"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert started.returncode == 0, started.stderr
        assert podctl_containers(label) == [name]
        assert not podman_containers(label), "podctl's store leaks into podman's: the test proves nothing"
        # Without the adapter installed nothing can collect it: the run is kept for a later gc.
        blind = _cli("gc", site=False)
        assert podctl_containers(label) == [name], blind.stdout + blind.stderr
        assert run_dir.exists() and f"run {run_id} kept" in blind.stdout, blind.stdout + blind.stderr
        gc = _cli("gc")
        assert gc.returncode == 0, gc.stdout + gc.stderr
        assert not podctl_containers(label), gc.stdout
        assert f"podctl: removed {name}" in gc.stdout, gc.stdout
        assert not run_dir.exists(), gc.stdout
    finally:
        subprocess.run([*PODCTL, "rm", "-f", "-t", "0", name], capture_output=True, timeout=60)
        shutil.rmtree(run_dir, ignore_errors=True)
