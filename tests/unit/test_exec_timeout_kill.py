"""A command that times out inside a sandbox is killed there (drivers/inside.py, Sandbox.exec).

The base's ``exec`` runs every command under a pid-recording shell wrapper and, when it times
out, sends a second command that kills the recorded pid with its tree. These tests check what
the base sends (a recording sandbox), that the user's argv never becomes shell text, and that the
two scripts really do their job in a local POSIX shell (dash, and busybox where installed) with
the process tree an engine gives an exec: a session leader whose client is killed on timeout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from gpuconform.drivers import base, inside
from gpuconform.drivers.base import AdapterContext
from gpuconform.drivers.host import HostAdapter
from gpuconform.drivers.inventory import SCHEME_LEGACY, Inventory
from gpuconform.drivers.leases import GpuLeases
from gpuconform.drivers.procgroup import run_in_group
from gpuconform.drivers.request import GpuRequest
from gpuconform.drivers.subproc import run_command
from gpuconform.fixtures.sim.simgpu.profiles import get_profile

KIND = "sim.gpuconform.dev/timeoutkill"
HOSTILE = ["echo", "$(touch /tmp/pwned)", "'; kill -9 -1; '", "a b", "*", "--", ""]


class Recorder(base.Sandbox):
    """Records every raw_exec; answers from a queue of results (default: exit 0)."""

    adapter: Engine

    def raw_exec(self, argv: Sequence[str], *, timeout: float, stdin: bytes | None = None) -> base.ExecResult:
        self.adapter.calls.append((list(argv), timeout))
        answer = self.adapter.answers.pop(0) if self.adapter.answers else None
        if isinstance(answer, Exception):
            raise answer
        return answer or base.ExecResult(tuple(argv), 0, "", "", 0.01)

    def teardown(self) -> None:
        pass


class SelfKilling(Recorder):
    timeout_kill = "self"


class Engine(base.Adapter):
    name = "recorder"
    id_scheme = SCHEME_LEGACY

    def __init__(self, ctx: base.AdapterContext, box: type[Recorder] = Recorder) -> None:
        super().__init__(ctx)
        self.calls: list[tuple[list[str], float]] = []
        self.answers: list[base.ExecResult | Exception | None] = []
        self.box = box

    @property
    def profile(self) -> base.Profile:
        return base.Profile("recorder")

    def available(self) -> base.Availability:
        return base.Availability(True)

    def start(self, launch: base.Launch) -> base.Sandbox:
        return self.box(self, launch)

    def leftovers(self, labels: Mapping[str, str]) -> list[str]:
        return []

    def gc(self, run_id: str | None = None) -> list[str]:
        return []

    def labelled_runs(self) -> list[base.LabelledRun]:
        return []


def sandbox(tmp_path: Path, box: type[Recorder] = Recorder) -> tuple[Engine, base.Sandbox]:
    inv = Inventory(
        host="h", gpus=get_profile("h100x2").records(KIND), simulated=True, source="t", cdi_kind=KIND
    )
    engine = Engine(base.AdapterContext(inv, GpuLeases(tmp_path / "leases"), "run-1", host=""), box)
    return engine, engine.provision(GpuRequest.none(), image="img", labels={}, deadline=base.Deadline(10))


def timed_out(stderr: str = "") -> base.ExecResult:
    return base.ExecResult(("engine",), None, "partial", stderr, 2.0, timed_out=True)


def test_a_command_runs_under_the_wrapper_with_its_argv_as_separate_arguments(tmp_path: Path) -> None:
    engine, box = sandbox(tmp_path)
    result = box.exec(HOSTILE, timeout=7)
    assert result.ok and result.argv == tuple(HOSTILE)
    [(argv, timeout)] = engine.calls  # finished in time: no second command
    assert timeout == 7
    assert argv[:3] == ["sh", "-c", inside.WRAP_SCRIPT] and argv[3] == "sh"
    assert argv[4].startswith(base.SANDBOX_SCRATCH + "/") and argv[4].endswith(".pid")
    assert argv[5:] == HOSTILE  # verbatim, one argument each; the script is the constant
    assert not any(word in inside.WRAP_SCRIPT for word in ("touch", "kill", "pwned"))


def test_a_timed_out_command_is_killed_through_its_own_pid_file(tmp_path: Path) -> None:
    engine, box = sandbox(tmp_path)
    engine.answers = [timed_out("slow"), base.ExecResult(("k",), 0, "killed 41 42 \n", "", 0.1)]
    result = box.exec(["sleep", "300"], timeout=2)
    assert result.timed_out and result.exit_code is None and result.argv == ("sleep", "300")
    assert result.stdout == "partial"
    assert result.stderr == "slow\n[gpuconform: timed out; killed inside: pid 41 42]"
    (run, _), (kill, kill_timeout) = engine.calls
    assert kill == ["sh", "-c", inside.KILL_SCRIPT, "sh", run[4]]  # the same pid file, as an argument
    assert kill_timeout == inside.KILL_TIMEOUT_S


def test_every_command_gets_its_own_pid_file(tmp_path: Path) -> None:
    engine, box = sandbox(tmp_path)
    box.exec(["true"], timeout=1)
    box.exec(["true"], timeout=1)
    assert engine.calls[0][0][4] != engine.calls[1][0][4]


@pytest.mark.parametrize(
    ("kill", "note"),
    [
        (base.ExecResult(("k",), 0, "gone\n", "", 0.1), "the command had already ended inside"),
        (
            base.ExecResult(("k",), 3, "no pid\n", "", 0.1),
            "NOT known to be killed inside: the wrapper recorded no pid",
        ),
        (
            base.ExecResult(("k",), None, "", "", 5.0, timed_out=True),
            "NOT known to be killed inside: the kill command itself timed out",
        ),
        (
            base.ExecResult(("k",), 126, "", "sh: not found\n", 0.1),
            "the kill command failed (exit 126): sh: not found",
        ),
        (
            base.InfrastructureError("VM vm-1 is not running"),
            "the kill command could not run: VM vm-1 is not running",
        ),
    ],
)
def test_what_the_kill_found_is_said_and_never_raised(
    tmp_path: Path, kill: base.ExecResult | Exception, note: str
) -> None:
    engine, box = sandbox(tmp_path)
    engine.answers = [timed_out(), kill]
    result = box.exec(["sleep", "300"], timeout=2)
    assert result.timed_out and note in result.stderr
    assert result.stderr.count("\n") == 0  # one line when the command said nothing


def test_after_a_kill_that_got_no_answer_no_more_kills_are_waited_for(tmp_path: Path) -> None:
    """A frozen engine answers no kill either: each later timeout would wait 5 s more for nothing."""
    engine, box = sandbox(tmp_path)
    engine.answers = [timed_out(), base.ExecResult(("k",), None, "", "", 5.0, timed_out=True), timed_out()]
    box.exec(["sleep", "300"], timeout=2)
    second = box.exec(["sleep", "300"], timeout=2)
    assert len(engine.calls) == 3  # command, kill, command: no second kill
    assert "not tried: an earlier kill in this sandbox got no answer" in second.stderr


def test_a_sandbox_that_kills_by_itself_gets_the_bare_argv_and_no_second_command(tmp_path: Path) -> None:
    engine, box = sandbox(tmp_path, SelfKilling)
    engine.answers = [timed_out()]
    result = box.exec(["sleep", "300"], timeout=2)
    assert result.timed_out and result.stderr == ""
    assert engine.calls == [(["sleep", "300"], 2)]


def test_put_file_is_not_wrapped(tmp_path: Path) -> None:
    engine, box = sandbox(tmp_path)
    box.put_file("/tmp/gpuconform/x", b"data")
    [(argv, _)] = engine.calls
    assert argv == base.put_file_argv("/tmp/gpuconform/x", 4, 0o755)


# -- the scripts themselves, in a local shell --------------------------------------------------
SHELLS = [["sh"]] + ([["busybox", "sh"]] if shutil.which("busybox") else [])


def marker_processes(marker: str) -> list[str]:
    """The ``sleep`` processes whose command line carries ``marker`` (zombies excluded: dead)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if cmdline.startswith("sleep ") and marker in cmdline and state != "Z":
            found.append(f"{proc.name}: {cmdline}")
    return found


def in_shell(shell: list[str], argv: list[str]) -> list[str]:
    """Our argv (``["sh", "-c", SCRIPT, ...]``) run by the given shell instead of ``sh``."""
    assert argv[:2] == ["sh", "-c"]
    return [*shell, *argv[1:]]


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
@pytest.mark.parametrize("leader_survives", [True, False], ids=["leader-alive", "leader-killed"])
def test_the_scripts_kill_a_timed_out_tree(tmp_path: Path, shell: list[str], leader_survives: bool) -> None:
    """An engine starts the exec as a session leader and, on timeout, kills only its client: the
    leader may live on (podman, docker) or die with the client, its children re-parented."""
    marker = f"{os.getpid()}{time.monotonic_ns() % 100000}"
    sleep = f"sleep 3{marker}"  # a unique, harmless command line to look for
    pidfile = inside.pid_file(str(tmp_path / "scratch"))
    command = ["sh", "-c", f"{sleep} & {sleep} & (sh -c '{sleep} & wait') & wait", "tree"]
    wrapped = in_shell(shell, inside.wrapped(command, pidfile))
    proc = subprocess.Popen(wrapped, start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if len(marker_processes(marker)) >= 3:
                break
            time.sleep(0.1)
        assert len(marker_processes(marker)) == 3, "the tree did not start"
        if not leader_survives:
            proc.kill()  # the leader dies with the client; its children live on, re-parented
            proc.wait()
            time.sleep(0.2)
            assert len(marker_processes(marker)) == 3
        result = run_command(in_shell(shell, inside.killer(pidfile)), timeout=10)
        report = inside.read_report(result.exit_code, result.stdout, result.stderr, result.timed_out)
        assert len(report.killed) >= 3, (result, report)
        for _ in range(50):
            if not marker_processes(marker):
                break
            time.sleep(0.1)
        assert marker_processes(marker) == []
        assert not Path(pidfile).exists()  # the killer removes what it used
    finally:
        if marker_processes(marker):
            os.killpg(proc.pid, 9)
        proc.wait(timeout=10)


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_the_wrapper_keeps_exit_status_output_and_stdin(tmp_path: Path, shell: list[str]) -> None:
    pidfile = inside.pid_file(str(tmp_path / "scratch"))
    argv = in_shell(
        shell, inside.wrapped(["sh", "-c", 'cat; echo "$1" >&2; exit 7', "x", "$HOME 'q'"], pidfile)
    )
    result = run_command(argv, timeout=10, input_data=b"in")
    assert (result.exit_code, result.stdout, result.stderr) == (7, "in", "$HOME 'q'\n")
    assert Path(pidfile).read_text().strip().isdigit()


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_an_unwritable_scratch_dir_does_not_stop_the_command(tmp_path: Path, shell: list[str]) -> None:
    (tmp_path / "file").write_text("")
    argv = in_shell(shell, inside.wrapped(["echo", "ran"], str(tmp_path / "file" / "x.pid")))
    result = run_command(argv, timeout=10)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "ran\n", "")
    killed = run_command(in_shell(shell, inside.killer(str(tmp_path / "file" / "x.pid"))), timeout=10)
    assert "no pid" in inside.read_report(killed.exit_code, killed.stdout, killed.stderr, False).note


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_a_command_that_ended_is_reported_gone(tmp_path: Path, shell: list[str]) -> None:
    pidfile = inside.pid_file(str(tmp_path / "scratch"))
    assert run_command(in_shell(shell, inside.wrapped(["true"], pidfile)), timeout=10).ok
    result = run_command(in_shell(shell, inside.killer(pidfile)), timeout=10)
    assert inside.read_report(result.exit_code, result.stdout, result.stderr, False).gone


def test_the_local_group_runner_kills_the_whole_group_on_timeout() -> None:
    """The bare host's way (drivers/procgroup.py): subprocess.run would kill only the shell."""
    marker = f"{os.getpid()}{time.monotonic_ns() % 100000}"
    result = run_in_group(["sh", "-c", f"sleep 4{marker} & sleep 4{marker} & wait"], timeout=1)
    assert result.timed_out and result.exit_code is None
    time.sleep(0.3)
    assert marker_processes(marker) == []


def test_the_local_group_runner_is_run_command_otherwise() -> None:
    result = run_in_group(["sh", "-c", "cat; echo e >&2; exit 3"], timeout=10, input_data=b"x")
    assert (result.exit_code, result.stdout, result.stderr, result.timed_out) == (3, "x", "e\n", False)
    missing = run_in_group(["/nonexistent/binary"], timeout=10)
    assert missing.exit_code == 127 and "not found" in missing.stderr


def test_the_bare_hosts_timed_out_command_leaves_nothing_on_the_host(tmp_path: Path) -> None:
    """The host opts out of the wrapper because its own exec kills the whole process group."""
    inv = Inventory(
        host="h", gpus=get_profile("h100x2").records(KIND), simulated=True, source="t", cdi_kind=KIND
    )
    host = HostAdapter(
        AdapterContext(inv, GpuLeases(tmp_path / "leases"), "hk1", state_dir=tmp_path / "state")
    )
    marker = f"{os.getpid()}{time.monotonic_ns() % 100000}"
    with host.provision(GpuRequest.none(), image="python", labels={}, deadline=base.Deadline(5)) as box:
        assert box.timeout_kill == "self"
        result = box.exec(["sh", "-c", f"sleep 5{marker} & sleep 5{marker} & wait"], timeout=1)
        assert result.timed_out and result.argv[0] == "sh"
        time.sleep(0.3)
        assert marker_processes(marker) == []
