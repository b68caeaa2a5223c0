"""The front door: every bad input of ``gpuconform run`` (and of the commands that read result
files) is one line on stderr, exit status 2, no traceback, pytest never started, and the previous
results directory untouched byte for byte, with nothing created beside it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from gpuconform.conformance import cli

RESULTS_DOC = {"schema": 1, "run_id": "prev", "records": []}


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its content hash (directories as 'dir')."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding the results of a previous run, and pytest made unstartable."""
    prev = tmp_path / "results"
    prev.mkdir()
    (prev / "results.json").write_text(json.dumps(RESULTS_DOC))
    (prev / "matrix.md").write_text("| previous | run |\n")
    (tmp_path / "a-file").write_text("not a directory\n")
    crowded = tmp_path / "crowded"
    crowded.mkdir()
    (crowded / "notes.txt").write_text("someone's files\n")
    monkeypatch.chdir(tmp_path)

    def refuse(*args: object, **kwargs: object) -> int:
        raise AssertionError(f"pytest started despite a bad input: {args}")

    monkeypatch.setattr(pytest, "main", refuse)
    return tmp_path


def _one_line_error(capsys: pytest.CaptureFixture[str], call: Callable[[], int]) -> str:
    code = call()
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, captured
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    assert lines[0].startswith("gpuconform: error: "), lines[0]
    assert "(hint: " in lines[0], lines[0]
    return lines[0]


# (arguments after ``run``, a fragment the line must contain: the bad value named)
BAD_RUNS: list[tuple[list[str], str]] = [
    # from issue 12
    (["--sim-fault", "bogus:1"], "'bogus:1'"),
    (["--sim-fault", "wrong-gpu"], "'wrong-gpu' has no GPU index"),
    (["--sim", "h100x99"], "'h100x99'"),
    (["--sim-instance", "nosuch"], "--sim-instance nosuch"),
    (["--driver-opt", "docker.gpu_path=banana"], "docker.gpu_path=banana"),
    (["--driver-opt", "docker.nosuchkey=1"], "'docker.nosuchkey'"),
    (["--image", "nosuchkind=busybox:1"], "'nosuchkind'"),
    (["-n", "-3"], "-n -3"),
    (["--out", "a-file"], "--out a-file is a file"),
    (["--out", "/proc/gpuconform"], "/proc"),
    # found since
    (["--sim-fault", "wrong-gpu:7"], "wrong-gpu:7 names GPU 7"),
    (["--sim", "single", "--sim-fault", "wrong-gpu:0"], "needs a second GPU"),
    (["--sim-fault", "cuda-unusable:1", "--sim-fault", "cuda-unusable:1"], "cuda-unusable:1 given twice"),
    (["--sim-fault", "wrong-gpu:1", "--sim-fault", "extra-gpu:1"], "wrong-gpu:1 and extra-gpu:1"),
    (["--sim", "none", "--sim-fault", "wrong-gpu:1"], "--sim-fault wrong-gpu:1 with --sim none"),
    (["--sim-instance", "Bad_Name"], "'Bad_Name'"),
    (["--sim-instance", ""], "--sim-instance needs a name"),
    (["--sim", ""], "profile ''"),
    (["--drivers", "nosuch"], "'nosuch'"),
    (["--drivers", "podman,nosuch"], "'nosuch'"),
    (["--drivers", ","], "--drivers names no driver"),
    (["--require-driver", "nosuch"], "'nosuch'"),
    (["--driver-opt", "novalue"], "--driver-opt takes KEY=VALUE, got 'novalue'"),
    (["--driver-opt", "=1"], "'=1'"),
    (["--driver-opt", "nodot=1"], "'nodot'"),
    (["--driver-opt", "sim.root=/tmp/x"], "sim.root=/tmp/x"),
    (["--driver-opt", "image.nosuch=x"], "'nosuch'"),
    (["--driver-opt", "nosuchdriver.key=1"], "'nosuchdriver.key'"),
    (["--driver-opt", "qemu.memory=lots"], "qemu.memory=lots"),
    (["--driver-opt", "qemu.cpus=0"], "qemu.cpus=0"),
    (["--driver-opt", "qemu.accel=turbo"], "qemu.accel=turbo"),
    (["--driver-opt", "qemu.single=yes"], "qemu.single=yes"),
    (["--driver-opt", "qemu-single.memory=1"], "'qemu-single.memory'"),
    (["--driver-opt", "kubernetes.image_pull_policy=Sometimes"], "Sometimes"),
    (["--driver-opt", "kubernetes.unschedulable_wait=-1"], "unschedulable_wait=-1"),
    (["--driver-opt", "kubernetes.ground_truth=guess"], "ground_truth=guess"),
    (["--driver-opt", "docker-cdi.timeout=soon"], "docker-cdi.timeout=soon"),
    (["--driver-opt", "podman.binary="], "podman.binary="),
    (["--driver-opt", "podman.unavailable=1"], "'podman.unavailable'"),
    (["--image", "busybox"], "'busybox'"),
    (["--image", "busybox="], "busybox="),
    (["--image", "busybox=has space"], "'has space'"),
    (["--probe-image", "two words"], "'two words'"),
    (["-n", "many"], "-n many"),
    (["-n", "1.5"], "-n 1.5"),
    (["-k", "podman and ("], "podman and ("),
    (["-k", "podman", "and", "count"], "'and'"),
    (["--out", "/sys/results"], "/sys"),
    (["--out", "/dev/null"], "/dev"),
    (["--out", "/"], "--out /"),
    (["--out", "a-file/results"], "a-file is a file"),
    (["--out", "crowded"], "--out crowded"),
    (["--out", "."], "--out ."),
    (["--allure", "a-file"], "--allure a-file"),
    (["--", "--provision-timeout", "abc"], "'abc'"),
    (["--", "--provision-timeout", "0"], "'0'"),
    (["--", "--bandwidth-threshold", "h2d_gbps=fast"], "'fast'"),
    (["--", "--bandwidth-threshold", "nosuch=1"], "'nosuch'"),
    # the plugin's options named as gpuconform run spells them (pytest's are --gpuconform-NAME)
    (["--provision-timeout", "abc"], "--provision-timeout takes seconds, got 'abc'"),
    (["--bandwidth-threshold", "h2d_gbps"], "--bandwidth-threshold takes KEY=VALUE"),
    (["--host-name", "a/b"], "--host-name 'a/b' is not a usable host name"),
    (["--host-name=-leading"], "--host-name '-leading' is not a usable host name"),
    (["--", "--sim-fault=wrong-gpu:9"], "--sim-fault: fault wrong-gpu:9"),
]


@pytest.mark.parametrize(("args", "named"), BAD_RUNS, ids=[" ".join(a) or "(empty)" for a, _ in BAD_RUNS])
def test_bad_run_input_is_one_line_exit_2_and_leaves_results_alone(
    workdir: Path, capsys: pytest.CaptureFixture[str], args: list[str], named: str
) -> None:
    out = [] if any(a in ("--out",) for a in args) else ["--out", "results"]
    before = _snapshot(workdir)
    line = _one_line_error(capsys, lambda: cli.main(["run", *out, *args]))
    assert named in line, line
    assert "--gpuconform-" not in line, "an option named as pytest spells it, not as typed here"
    assert _snapshot(workdir) == before, "a refused run created, changed or removed something"


def test_at_least_thirty_bad_inputs_are_covered() -> None:
    assert len(BAD_RUNS) >= 30  # the ten and twenty more


def test_a_fault_with_an_instance_is_refused(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An instance keeps the faults it was started with; --sim-fault beside it would be ignored."""
    from gpuconform.fixtures.sim.simgpu.host import SimHost

    monkeypatch.setattr(SimHost, "find", classmethod(lambda cls, name, base=None: object()))
    line = _one_line_error(
        capsys, lambda: cli.main(["run", "--sim-instance", "dev", "--sim-fault", "wrong-gpu:1"])
    )
    assert "--sim-fault wrong-gpu:1 with --sim-instance dev" in line


def test_a_fault_on_a_real_gpu_machine_is_refused(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gpuconform.fixtures import preflight
    from gpuconform.fixtures.settings import Settings

    with pytest.raises(preflight.PreflightError, match="real NVIDIA GPUs") as exc:
        preflight.check_simulation(Settings(faults=("wrong-gpu:1",)), real_gpus=lambda: True)
    assert "--sim h100x4" in str(exc.value)
    preflight.check_simulation(Settings(faults=("wrong-gpu:1",)), real_gpus=lambda: False)


# -- files read by matrix, diff, gate, merge ------------------------------------------------------


def _results(path: Path, **fields: object) -> Path:
    path.write_text(json.dumps({**RESULTS_DOC, **fields}))
    return path


@pytest.mark.parametrize(
    ("command", "named"),
    [
        (lambda d: ["matrix", str(d / "s99.json")], "schema version 99"),
        (lambda d: ["matrix", str(d / "nosuch.json")], "nosuch.json"),
        (lambda d: ["matrix", str(d / "notjson.json")], "notjson.json"),
        (lambda d: ["matrix", str(d / "s99.json"), "-o", str(d / "out.md")], "schema version 99"),
        (lambda d: ["diff", str(d / "s99.json"), str(d / "ok.json")], "schema version 99"),
        (lambda d: ["diff", str(d / "ok.json"), str(d / "s99.json")], "schema version 99"),
        (lambda d: ["gate", str(d / "s99.json"), str(d / "ok.json")], "schema version 99"),
        (lambda d: ["gate", str(d / "ok.json"), str(d / "partial.json")], "partial"),
        (lambda d: ["merge", str(d / "ok.json"), str(d / "s99.json"), "-o", str(d / "fleet.json")], "99"),
    ],
    ids=[
        "matrix-s99",
        "matrix-missing",
        "matrix-notjson",
        "matrix-o",
        "diff-base",
        "diff-cur",
        "gate",
        "gate-partial",
        "merge",
    ],
)
def test_bad_result_files_are_one_line_exit_2_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: Callable[[Path], list[str]], named: str
) -> None:
    _results(tmp_path / "s99.json", schema=99)
    _results(tmp_path / "ok.json")
    _results(tmp_path / "partial.json", partial=True, missing=["podman-count.2"])
    (tmp_path / "notjson.json").write_text("{ not json")
    before = _snapshot(tmp_path)
    line = _one_line_error(capsys, lambda: cli.main(command(tmp_path)))
    assert named in line, line
    assert _snapshot(tmp_path) == before
