"""The base adapter and sandbox (drivers/base.py): what every adapter gets without writing it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from gpuconform.drivers import base
from gpuconform.drivers.cli_engine import raise_for_start
from gpuconform.drivers.errors import DriverUnavailable
from gpuconform.drivers.inventory import SCHEME_LEGACY, Inventory
from gpuconform.drivers.leases import GpuLeases
from gpuconform.drivers.request import GpuRequest
from gpuconform.fixtures.sim.simgpu.profiles import get_profile

KIND = "sim.gpuconform.dev/contract"


class Box(base.Sandbox):
    adapter: Tiny

    def raw_exec(self, argv: Sequence[str], *, timeout: float, stdin: bytes | None = None) -> base.ExecResult:
        self.adapter.stdin.append(stdin)
        return base.ExecResult(("engine", "exec", self.id, *argv), self.adapter.exit_code, "out", "err", 0.5)

    def teardown(self) -> None:
        self.adapter.teardowns += 1
        if self.adapter.teardown_error:
            raise base.InfrastructureError("stuck")


class Tiny(base.Adapter):
    """The least an adapter writes: profile, available, start, leftovers, gc, labelled_runs."""

    name = "tiny"
    id_scheme = SCHEME_LEGACY

    def __init__(self, ctx: base.AdapterContext) -> None:
        super().__init__(ctx)
        self.stdin: list[bytes | None] = []
        self.exit_code = 0
        self.teardowns = 0
        self.teardown_error = False
        self.start_error: Exception | None = None
        self.launches: list[base.Launch] = []
        self.left: list[str] = []

    @property
    def profile(self) -> base.Profile:
        return base.Profile("tiny")

    def available(self) -> base.Availability:
        return base.Availability(True)

    def start(self, launch: base.Launch) -> base.Sandbox:
        self.launches.append(launch)
        if self.start_error is not None:
            raise self.start_error
        return Box(self, launch)

    def leftovers(self, labels: Mapping[str, str]) -> list[str]:
        return list(self.left)

    def gc(self, run_id: str | None = None) -> list[str]:
        return []

    def labelled_runs(self) -> list[base.LabelledRun]:
        return []


@pytest.fixture
def tiny(tmp_path: Path) -> Tiny:
    inv = Inventory(
        host="h", gpus=get_profile("h100x2").records(KIND), simulated=True, source="t", cdi_kind=KIND
    )
    return Tiny(base.AdapterContext(inv, GpuLeases(tmp_path / "leases"), "run-1", worker="gw0", host="box"))


def provision(adapter: base.Adapter, req: GpuRequest) -> base.Sandbox:
    return adapter.provision(
        req, image="img", labels={base.LABEL_CASE: "c"}, deadline=base.Deadline(5), env={"A": "1"}
    )


def test_provision_hands_start_one_launch_with_leased_native_ids_and_every_label(tiny: Tiny) -> None:
    sandbox = provision(tiny, GpuRequest.of_count(2))
    (launch,) = tiny.launches
    assert launch.selection.ids == ("0", "1")
    assert sandbox.granted == frozenset(g.uuid for g in tiny.ctx.inventory.gpus)
    assert launch.labels == {
        base.LABEL_RUN: "run-1",
        "dev.gpuconform.worker": "gw0",
        base.LABEL_HOST: "box",
        base.LABEL_CASE: "c",
        base.LABEL_OWNER: "gpuconform",
    }
    assert (launch.image, dict(launch.env)) == ("img", {"A": "1"})
    assert launch.name.startswith("gpuconform-run-1-")
    assert sandbox.id == launch.name and sandbox.driver == "tiny" and sandbox.labels == launch.labels
    assert "provision_s" in sandbox.timings
    sandbox.close()


def test_a_count_beyond_the_host_is_refused_before_start(tiny: Tiny) -> None:
    with pytest.raises(base.RequestRejected):
        provision(tiny, GpuRequest.of_count(3))
    assert tiny.launches == []


def test_a_failed_start_gives_its_gpus_back(tiny: Tiny) -> None:
    tiny.start_error = base.InfrastructureError("engine broke")
    with pytest.raises(base.InfrastructureError):
        provision(tiny, GpuRequest.of_count(2))
    tiny.start_error = None
    provision(tiny, GpuRequest.of_count(2)).close()  # waits forever (base.Deadline 5) if still leased


def test_close_runs_teardown_once_releases_the_lease_and_times_it_even_when_teardown_fails(
    tiny: Tiny,
) -> None:
    tiny.teardown_error = True
    sandbox = provision(tiny, GpuRequest.of_count(2))
    with pytest.raises(base.InfrastructureError, match="stuck"):
        sandbox.close()
    sandbox.close()
    assert (tiny.teardowns, sandbox.closed) == (1, True)
    assert "teardown_s" in sandbox.timings
    tiny.teardown_error = False
    provision(tiny, GpuRequest.of_count(2)).close()  # the GPUs are free again (else: a 5 s wait, refused)
    assert len(tiny.launches) == 2


def test_exec_names_the_callers_argv_not_the_engines_wrapper(tiny: Tiny) -> None:
    with provision(tiny, GpuRequest.default()) as sandbox:
        result = sandbox.exec(["nvidia-smi", "-L"], timeout=5)
    assert result.argv == ("nvidia-smi", "-L") and result.stdout == "out" and result.exit_code == 0


def test_put_file_sends_the_data_on_stdin_and_the_path_as_an_argument(tiny: Tiny) -> None:
    with provision(tiny, GpuRequest.default()) as sandbox:
        sandbox.put_file("/tmp/a dir/$(x).py", b"data", 0o640)
        assert tiny.stdin == [b"data"]
        tiny.exit_code = 1
        with pytest.raises(base.InfrastructureError, match="copying 4 bytes"):
            sandbox.put_file("/tmp/b", b"data")
    argv = base.put_file_argv("/tmp/a dir/$(x).py", 4, 0o640)
    assert "$(x)" not in argv[2] and argv[4:] == ["/tmp/a dir/$(x).py", "4", "640"]


def test_put_file_argv_writes_exactly_the_bytes_given(tmp_path: Path) -> None:
    import subprocess

    target = tmp_path / "sub dir" / "f"
    argv = base.put_file_argv(str(target), 3, 0o600)
    subprocess.run(argv, input=b"abcdef", check=True, timeout=10)
    assert target.read_bytes() == b"abc" and target.stat().st_mode & 0o777 == 0o600


def test_hooks_default_to_what_hides_nothing(tiny: Tiny) -> None:
    with pytest.raises(base.InfrastructureError, match="names no image for 'busybox'"):
        tiny.image("busybox", deadline=base.Deadline(1))
    sandbox = provision(tiny, GpuRequest.default())
    sandbox.close()
    tiny.left = ["container x"]
    assert tiny.release_problems(sandbox) == ["container x"]
    assert sandbox.console_log is None and sandbox.diagnostics() == {}
    error = base.InfrastructureError("pod failed", diagnostics={"events": ["FailedScheduling"]})
    assert tiny.diagnostics(error, [sandbox]) == {"events": ["FailedScheduling"]}


def test_an_image_option_wins_over_the_adapters_own(tmp_path: Path) -> None:
    inv = Inventory(host="h", gpus=(), simulated=True, source="t")
    ctx = base.AdapterContext(inv, GpuLeases(tmp_path), "r", options={"image.busybox": "mine:1"})
    assert Tiny(ctx).image("busybox", deadline=base.Deadline(1)) == "mine:1"


def test_a_context_without_a_host_leaves_the_host_label_off(tmp_path: Path) -> None:
    inv = Inventory(host="h", gpus=(), simulated=True, source="t")
    assert base.LABEL_HOST not in base.AdapterContext(inv, GpuLeases(tmp_path), "r", host="").labels
    assert base.AdapterContext(inv, GpuLeases(tmp_path), "r").labels[base.LABEL_HOST]


def test_merge_runs_keeps_one_entry_per_run_and_host_with_the_newest_time() -> None:
    found = [
        ({base.LABEL_RUN: "a", base.LABEL_HOST: "h1"}, 10.0),
        ({base.LABEL_RUN: "a", base.LABEL_HOST: "h1"}, 30.0),
        ({base.LABEL_RUN: "a"}, 5.0),
        ({"other": "x"}, 1.0),
    ]
    assert base.merge_runs(found) == [base.LabelledRun("a", "", 5.0), base.LabelledRun("a", "h1", 30.0)]


@pytest.mark.parametrize(
    ("result", "error", "text"),
    [
        (base.ExecResult(("e",), None, "", "", 120.0, timed_out=True), base.InfrastructureError, "timed out"),
        (base.ExecResult(("e",), 127, "", "", 0.1), DriverUnavailable, "not installed"),
        (
            base.ExecResult(("e",), 125, "", "Error: unresolvable CDI devices x=9", 0.1),
            base.RequestRejected,
            "x=9",
        ),
        (base.ExecResult(("e",), 125, "", "Error: disk full", 0.1), base.InfrastructureError, "disk full"),
    ],
)
def test_a_failed_engine_start_is_classified(
    result: base.ExecResult, error: type[Exception], text: str
) -> None:
    with pytest.raises(error, match=text):
        raise_for_start(result, "engine", ("unresolvable CDI devices",))
