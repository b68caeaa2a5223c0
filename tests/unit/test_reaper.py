"""gpuconform gc: which runs are dead, what it says, and that it goes through the adapter contract.

The engines are doubles (an in-memory store of labelled resources behind a real Adapter subclass)
so that a sweep can never touch the shared engines of this machine; the VFIO case runs the real
QEMU adapter's gc against a fake sysfs kept at a custom path, as a killed run leaves it.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import gpuconform.fixtures.gccalls as gccalls
import gpuconform.fixtures.reaper as reaper
import gpuconform.fixtures.sweep as sweep
from gpuconform.conformance import cli
from gpuconform.drivers.base import (
    AdapterContext,
    DriverUnavailable,
    InfrastructureError,
    LabelledRun,
    host_label,
)
from gpuconform.drivers.registry import ALIASES, BUILTIN, UnknownDriver
from gpuconform.fixtures.runrecord import (
    RunRecord,
    live_runs,
    owner_alive,
    process_start,
    read_record,
    run_options,
    write_record,
)
from tests.unit.fakesandbox import FakeAdapter, inventory

HOUR = 3600.0


@dataclass
class Store:
    """A double of one engine: resources by name, each with its run, host label and age."""

    resources: dict[str, tuple[str, str, float]] = field(default_factory=dict)
    unavailable: str = ""
    refuse: str = ""
    contexts: list[AdapterContext] = field(default_factory=list)

    def add(self, name: str, run_id: str, host: str = "", created: float = 0.0) -> None:
        self.resources[name] = (run_id, host, created)


STORES: dict[str, Store] = {}


class StoreAdapter(FakeAdapter):
    """A registered adapter whose engine is ``STORES[name]``."""

    def __init__(self, ctx: AdapterContext, name: str) -> None:
        super().__init__(inventory())
        self.ctx = ctx
        self.name = name
        self.store = STORES[name]
        self.store.contexts.append(ctx)

    def _engine(self) -> Store:
        if self.store.unavailable:
            raise DriverUnavailable(self.store.unavailable)
        return self.store

    def labelled_runs(self) -> list[LabelledRun]:
        return [LabelledRun(r, h, c) for r, h, c in self._engine().resources.values()]

    def leftovers(self, labels: Mapping[str, str]) -> list[str]:
        run = labels.get("dev.gpuconform.run")
        return sorted(n for n, (r, _, _) in self._engine().resources.items() if r == run)

    def gc(self, run_id: str | None = None) -> list[str]:
        store = self._engine()
        if store.refuse:
            raise InfrastructureError(store.refuse)
        gone = sorted(n for n, (r, _, _) in store.resources.items() if run_id in (None, r))
        for name in gone:
            del store.resources[name]
        return gone


@pytest.fixture
def engines(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Store]]:
    """Two registered engines, ``alpha`` and ``beta``; nothing of this machine is swept."""
    STORES.clear()
    STORES.update(alpha=Store(), beta=Store())

    def create(name: str, ctx: AdapterContext) -> StoreAdapter:
        return StoreAdapter(ctx, name)

    monkeypatch.setattr(gccalls, "create_adapter", create)
    monkeypatch.setattr(gccalls, "registered_drivers", lambda: sorted(STORES))
    monkeypatch.setattr(reaper, "_orphan_environments", reaper.GcReport)
    yield STORES
    STORES.clear()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait(timeout=10)
    return proc.pid


def run_folder(
    state: Path,
    run_id: str,
    *,
    pid: int | None = None,
    drivers: tuple[str, ...] = (),
    options: Mapping[str, str] | None = None,
) -> Path:
    """A run folder as the plugin leaves it: owner.pid, and run.json written at start."""
    run_dir = state / "runs" / run_id
    run_dir.mkdir(parents=True)
    owner = dead_pid() if pid is None else pid
    (run_dir / "owner.pid").write_text(str(owner))
    record = RunRecord(run_id, owner, process_start(owner), "h", time.time(), drivers, dict(options or {}))
    write_record(run_dir, record, owners=None)
    return run_dir


def gc_cli(state: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = cli.main(["gc", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state base of its own, also for ``gpuconform gc`` run in this process."""
    base = tmp_path / "state"
    real = reaper.reap_dead_runs

    def reap(state_base: Path = base, **kwargs: Any) -> reaper.GcReport:
        return real(base, **{"owners": tmp_path / "owners", **kwargs})

    monkeypatch.setattr(reaper, "reap_dead_runs", reap)
    return base


# -- what gc says ---------------------------------------------------------------------------------


def test_an_engine_that_is_not_here_says_nothing_and_gc_exits_0(
    engines: dict[str, Store], state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engines["beta"].unavailable = "no socket at unix:///var/run/docker.sock"
    engines["alpha"].add("c1", "deadrun")
    run_folder(state, "deadrun", drivers=("alpha", "beta"))
    rc, out, err = gc_cli(state, capsys)
    assert rc == 0, err
    assert "alpha: removed c1" in out and "removed run deadrun" in out
    assert "fail" not in out + err and "beta" not in out + err
    assert not engines["alpha"].resources and not (state / "runs" / "deadrun").exists()


def test_verbose_gc_names_the_engine_that_was_not_here(
    engines: dict[str, Store], state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engines["beta"].unavailable = "no kubeconfig"
    rc, out, _ = gc_cli(state, capsys, "-v")
    assert rc == 0
    assert "beta: skipped: engine not here (no kubeconfig)" in out.splitlines()
    assert "nothing to remove" in out


def test_a_refused_removal_is_said_exits_1_and_keeps_the_folder_for_a_retry(
    engines: dict[str, Store], state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engines["alpha"].add("c1", "deadrun")
    engines["alpha"].refuse = "removal of c1 refused: device busy"
    run_dir = run_folder(state, "deadrun", drivers=("alpha",), options={"alpha.path": "/x"})
    rc, out, err = gc_cli(state, capsys)
    assert rc == 1
    assert "alpha: gc failed for run deadrun: removal of c1 refused: device busy" in err
    assert read_record(run_dir) is not None, "the folder (and its options) must stay for the retry"
    engines["alpha"].refuse = ""
    rc, out, err = gc_cli(state, capsys)
    assert rc == 0, err
    assert "alpha: removed c1" in out and not run_dir.exists()
    used = [c.options.get("alpha.path") for c in engines["alpha"].contexts if c.run_id == "deadrun"]
    assert used and set(used) == {"/x"}, "the retry used the options the run recorded"


def test_a_refusal_by_an_engine_that_went_down_with_the_run_leaves_nothing_and_is_no_failure(
    engines: dict[str, Store], state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frozen private daemon times out on removal; the run's environment then stops and purges
    it with every container in it: asked again, nothing of the run is left, so gc succeeds."""
    engines["alpha"].add("c1", "frozenrun")
    engines["alpha"].refuse = "docker ps timed out"

    def teardown(run_dir: Path) -> list[str]:
        engines["alpha"].resources.clear()  # purged with the daemon's data root
        engines["alpha"].unavailable = "no socket"
        return ["stopped private dockerd"]

    monkeypatch.setattr(reaper, "teardown_environment", teardown)
    run_dir = run_folder(state, "frozenrun", drivers=("alpha",))
    report = reaper.reap_dead_runs(state, grace_s=HOUR)
    assert report.ok, report
    assert "stopped private dockerd" in report.removed and not run_dir.exists()
    assert any("docker ps timed out; nothing of it is left" in line for line in report.skipped)


def test_gc_refuses_a_bad_grace_in_one_line(
    engines: dict[str, Store], state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for bad in ("soon", "-5", "nan"):
        rc, out, err = gc_cli(state, capsys, "--grace", bad)
        assert rc == 2 and out == ""
        assert err.count("\n") == 1 and f"--grace takes seconds >= 0, got {bad!r}" in err


# -- which runs are dead ------------------------------------------------------------------------


def test_a_live_runs_resources_stay_a_dead_runs_go_even_when_young(
    engines: dict[str, Store], state: Path
) -> None:
    now = time.time()
    run_folder(state, "livefolder", pid=os.getpid())
    run_folder(state, "deadfolder")
    engines["alpha"].add("live", "livefolder", host_label(), now)
    engines["alpha"].add("young-dead", "deadfolder", host_label(), now)  # its folder says dead
    report = reaper.reap_dead_runs(state, grace_s=HOUR, now=now)
    assert set(engines["alpha"].resources) == {"live"}, report
    assert "alpha: removed young-dead" in report.removed
    assert (state / "runs" / "livefolder").exists() and not (state / "runs" / "deadfolder").exists()


def test_runs_without_a_folder_go_after_the_grace_unless_another_host_made_them(
    engines: dict[str, Store], state: Path
) -> None:
    now = time.time()
    here = host_label()
    store = engines["beta"]
    store.add("old-here", "gone1", here, now - 2 * HOUR)
    store.add("old-unlabelled", "gone2", "", now - 2 * HOUR)
    store.add("unknown-age", "gone3", here, 0.0)
    store.add("young-here", "gone4", here, now - 60)
    store.add("old-elsewhere", "gone5", "other-runner", now - 2 * HOUR)
    report = reaper.reap_dead_runs(state, grace_s=HOUR, now=now)
    assert set(store.resources) == {"unknown-age", "young-here", "old-elsewhere"}, report
    verbose = "\n".join(report.lines(verbose=True))
    assert "beta: left run gone3: no run folder here, and its engine does not say how old" in verbose
    assert "beta: left run gone4: no run folder here, but its newest resource is 60s old" in verbose
    assert "beta: left run gone5: made by host other-runner" in verbose
    assert report.ok


def test_a_run_with_any_resource_of_unknown_age_or_of_another_host_stays(
    engines: dict[str, Store], state: Path
) -> None:
    now = time.time()
    engines["alpha"].add("old", "mixed", "", now - 2 * HOUR)
    engines["alpha"].add("ageless", "mixed", "", 0.0)
    engines["alpha"].add("ours", "shared", host_label(), now - 2 * HOUR)
    engines["alpha"].add("theirs", "shared", "other-runner", now - 2 * HOUR)
    reaper.reap_dead_runs(state, grace_s=HOUR, now=now)
    assert set(engines["alpha"].resources) == {"old", "ageless", "ours", "theirs"}


def test_a_live_run_of_another_state_base_is_not_swept(
    engines: dict[str, Store], state: Path, tmp_path: Path
) -> None:
    """Its folder is elsewhere (another GPUCONFORM_STATE); the host-wide copy of its record says
    its owner runs. The copy of a dead owner's record is dropped on the way."""
    me = os.getpid()
    write_record(
        tmp_path / "other" / "elsewhere",
        RunRecord("elsewhere", me, process_start(me)),
        owners=tmp_path / "owners",
    )
    write_record(tmp_path / "other" / "gone", RunRecord("gone", dead_pid()), owners=tmp_path / "owners")
    engines["alpha"].add("theirs", "elsewhere", host_label(), 1.0)
    engines["alpha"].add("stale", "gone", host_label(), 1.0)
    report = reaper.reap_dead_runs(state, grace_s=0)
    assert set(engines["alpha"].resources) == {"theirs"}, report
    assert "alpha: left run elsewhere: its run is alive" in report.skipped
    assert not (tmp_path / "owners" / "gone.json").exists()


def test_a_run_is_as_young_as_its_newest_resource(engines: dict[str, Store], state: Path) -> None:
    now = time.time()
    engines["alpha"].add("first", "slow", "", now - 2 * HOUR)
    engines["alpha"].add("latest", "slow", "", now - 30)
    reaper.reap_dead_runs(state, grace_s=HOUR, now=now)
    assert set(engines["alpha"].resources) == {"first", "latest"}


def test_a_kubernetes_style_label_value_matches_its_live_folder(
    engines: dict[str, Store], state: Path
) -> None:
    """A run id a label cannot hold verbatim ("it:1" -> "it-1") still finds its live folder."""
    run_folder(state, "it:1", pid=os.getpid())
    engines["alpha"].add("pod", "it-1", host_label(), 1.0)
    reaper.reap_dead_runs(state, grace_s=0, now=time.time())
    assert set(engines["alpha"].resources) == {"pod"}


def test_owner_alive_only_while_the_same_process_runs(tmp_path: Path) -> None:
    me = os.getpid()
    live = run_folder(tmp_path, "live", pid=me)
    assert owner_alive(live, grace_s=0)
    reused = run_folder(tmp_path, "reused", pid=me)
    record = read_record(reused)
    assert record is not None and record.owner_start is not None
    write_record(reused, RunRecord("reused", me, record.owner_start - 1, "h", 0.0), owners=None)
    assert not owner_alive(reused, grace_s=0), "a reused pid is not the run's owner"
    assert not owner_alive(run_folder(tmp_path, "dead"), grace_s=HOUR)
    starting = tmp_path / "runs" / "starting"
    starting.mkdir()
    assert owner_alive(starting, grace_s=HOUR), "a folder without an owner yet is a run being created"
    assert not owner_alive(starting, grace_s=HOUR, now=time.time() + 2 * HOUR)


def test_a_run_folder_without_a_record_is_reaped_on_every_registered_engine(
    engines: dict[str, Store], state: Path
) -> None:
    old = state / "runs" / "oldharness"
    old.mkdir(parents=True)
    (old / "owner.pid").write_text(str(dead_pid()))
    engines["alpha"].add("a", "oldharness")
    engines["beta"].add("b", "oldharness")
    report = reaper.reap_dead_runs(state, grace_s=HOUR)
    assert {"alpha: removed a", "beta: removed b", "removed run oldharness"} <= set(report.removed)


def test_a_used_column_without_its_adapter_here_keeps_the_run_folder_and_says_so(
    engines: dict[str, Store],
    state: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The run used a third-party column whose adapter this gc cannot load: nothing may be
    declared gone, so the folder stays for a gc that has the adapter. A column the run found
    unavailable (it could have created nothing) does not hold the folder."""
    run_dir = run_folder(state, "used", drivers=("alpha", "missing", "unloadable"))
    (run_dir / "drivers").mkdir()
    (run_dir / "drivers" / "missing.json").write_text('{"available": true}')
    (run_dir / "drivers" / "unloadable.json").write_text('{"available": false}')
    engines["alpha"].add("a1", "used")

    def create(name: str, ctx: AdapterContext) -> StoreAdapter:
        if name not in engines:
            raise UnknownDriver(f"driver {name!r} could not be loaded: No module named 'x'")
        return StoreAdapter(ctx, name)

    monkeypatch.setattr(gccalls, "create_adapter", create)
    rc, out, err = gc_cli(state, capsys)
    assert rc == 0, err
    assert "run used kept: its column missing has no adapter here" in out
    assert "unloadable" not in out and "alpha: removed a1" in out
    assert run_dir.exists() and "removed run used" not in out


def test_the_record_keeps_the_options_and_columns_the_run_was_given(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    record = RunRecord.for_this_process("r1", ["podman", "qemu"], {"qemu.vfio_state": "/v/b.json"})
    path = write_record(run_dir, record, owners=tmp_path / "owners")
    assert read_record(run_dir) == record
    assert path.stat().st_mode & 0o077 == 0, "options may name private paths: root only"
    assert live_runs(tmp_path / "owners") == {"r1"}
    (run_dir / "env.json").write_text('{"options": {"sim.root": "/run/s", "qemu.vfio_state": "env"}}')
    assert run_options(run_dir) == {"sim.root": "/run/s", "qemu.vfio_state": "/v/b.json"}


# -- every adapter, named by nobody -------------------------------------------------------------


@pytest.mark.parametrize("module", [reaper, gccalls, sweep], ids=lambda m: m.__name__)
def test_gc_names_no_driver(module: ModuleType) -> None:
    source = Path(str(module.__file__)).read_text()
    named = [d for d in (*BUILTIN, *ALIASES) if re.search(rf"[\"']{re.escape(d)}[\"'.]", source)]
    assert named == [], f"{module.__name__} names drivers: {named}"


def test_an_entry_point_adapter_of_a_dead_run_is_collected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Registered only through the ``gpuconform.adapters`` entry point group, as a third party's."""
    site = tmp_path / "site"
    dist = site / "unitstore_adapter-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: unitstore-adapter\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[gpuconform.adapters]\nunitstore = unitstore_adapter:UnitStoreAdapter\n"
    )
    (site / "unitstore_adapter.py").write_text(
        "from tests.unit.test_reaper import StoreAdapter\n\n"
        "class UnitStoreAdapter(StoreAdapter):\n"
        "    def __init__(self, ctx):\n"
        "        super().__init__(ctx, 'unitstore')\n"
    )
    monkeypatch.syspath_prepend(str(site))
    STORES.clear()
    STORES["unitstore"] = Store()
    STORES["unitstore"].add("left-1", "epdead")
    assert "unitstore" in gccalls.registered_drivers()
    builtin = set(BUILTIN) | set(ALIASES)
    real_registered = gccalls.registered_drivers
    # the sweep would otherwise ask this machine's real engines too
    monkeypatch.setattr(
        gccalls, "registered_drivers", lambda: [d for d in real_registered() if d not in builtin]
    )
    monkeypatch.setattr(reaper, "_orphan_environments", reaper.GcReport)
    state = tmp_path / "state"
    run_dir = state / "runs" / "epdead"
    run_dir.mkdir(parents=True)
    (run_dir / "owner.pid").write_text(str(dead_pid()))
    (run_dir / "drivers").mkdir()
    (run_dir / "drivers" / "unitstore.json").write_text("{}")
    report = reaper.reap_dead_runs(state, grace_s=HOUR, owners=tmp_path / "owners")
    assert "unitstore: removed left-1" in report.removed, report
    assert not STORES["unitstore"].resources and not run_dir.exists()
    STORES.clear()


# -- a dead run's VFIO binding at the paths its options named -------------------------------------


def test_gc_gives_back_a_binding_kept_at_a_dead_runs_custom_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run chose ``--driver-opt qemu.sysfs_root=... qemu.vfio_state=...`` and was killed with a
    GPU on vfio-pci: the real QEMU adapter's gc finds the binding only through the run's record."""
    from gpuconform.drivers import vfio
    from gpuconform.drivers.base import Deadline
    from gpuconform.fixtures.sim.fakesysfs import FakeKernel, FakeSysfs

    monkeypatch.setattr(gccalls, "registered_drivers", lambda: [])  # no sweep of this machine
    monkeypatch.setattr(reaper, "_orphan_environments", reaper.GcReport)
    gpu = "0000:18:00.0"
    tree = FakeSysfs.for_gpus(tmp_path / "custom" / "sys", [gpu])
    before = tree.snapshot()
    state_file = tmp_path / "custom" / "bindings.json"
    kernel = FakeKernel(tree)
    vfio.bind(
        gpu,
        sysfs_root=tree.root,
        state=vfio.BindingState(state_file),
        deadline=Deadline(10),
        run_id="vfiodead",
        writer=kernel,
        sleep=kernel.sleep,
        pid=dead_pid(),
    )
    assert FakeSysfs.load(tree.root).driver_of(gpu) == "vfio-pci"
    options = {"qemu.sysfs_root": str(tree.root), "qemu.vfio_state": str(state_file)}
    state = tmp_path / "state"

    unrecorded = run_folder(state, "vfiodead", drivers=("qemu",))  # as before: options not kept
    reaper.reap_dead_runs(state, grace_s=HOUR, owners=tmp_path / "owners")
    assert not unrecorded.exists()
    assert FakeSysfs.load(tree.root).driver_of(gpu) == "vfio-pci", "found without the options?"

    run_folder(state, "vfiodead", drivers=("qemu",), options=options)
    report = reaper.reap_dead_runs(state, grace_s=HOUR, owners=tmp_path / "owners")
    assert report.ok, report
    assert FakeSysfs.load(tree.root).snapshot() == before, report
    assert vfio.BindingState(state_file).entries() == []
    assert any("restored" in line and gpu in line for line in report.removed), report
