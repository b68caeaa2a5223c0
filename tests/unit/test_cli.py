"""The gpuconform command line, called in-process: help texts, one-line errors, harmless no-ops."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuconform.conformance.cli import main
from gpuconform.drivers.registry import BUILTIN
from gpuconform.fixtures.settings import OPTIONS

VERDICT_WORDS = ("pass", "rejected", "fail", "unsupported", "skip", "error", "inconclusive")


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"]], ids=["top", "run"])
def test_help_shows_examples_and_verdicts(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    out = _help(argv, capsys)
    assert "examples:\n  gpuconform run --out results/" in out
    assert "gpuconform run --drivers podman -k count" in out
    verdicts = out[out.index("verdicts:") :]
    for word in VERDICT_WORDS:
        assert f" {word}" in verdicts or f"{word} (" in verdicts, word


def test_run_help_lists_the_run_options(capsys: pytest.CaptureFixture[str]) -> None:
    out = _help(["run", "--help"], capsys)
    for option in ("--drivers", "--require-driver", "--sim", "--sim-fault", "--driver-opt", "--out"):
        assert option in out
    assert "Anything after -- goes to pytest unchanged, except the options above" in out


def test_run_offers_every_plugin_option_spelled_short(capsys: pytest.CaptureFixture[str]) -> None:
    """One table (fixtures/settings.py OPTIONS) feeds both command lines: none is pytest-only."""
    out = _help(["run", "--help"], capsys)
    for option in OPTIONS:
        assert f"  --{option.name} {option.metavar}" in out, option.name
    assert "--gpuconform-" not in out.split("examples:")[0]


def test_run_gives_pytest_the_prefixed_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``gpuconform run`` keeps its short options; pytest gets ours under the prefix, including a
    plugin option written short after ``--``, while pytest's own arguments pass unchanged."""
    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(list(argv))
        return 0

    monkeypatch.setattr(pytest, "main", fake_main)
    monkeypatch.setenv("GPUCONFORM_STATE", str(tmp_path / "state"))
    code = main(
        ["run", "--drivers", "host", "--sim", "single", "--out", str(tmp_path / "out"), "-n", "0",
         "--image", "busybox=localhost/b:1", "--provision-timeout", "60",
         "--", "--lease-dir", str(tmp_path / "leases"), "--bandwidth-threshold=h2d_gbps=0.5", "-x"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr()
    [argv] = seen
    for given in (
        "--gpuconform-drivers=host",
        "--gpuconform-sim=single",
        f"--gpuconform-out={tmp_path / 'out'}",
        "--gpuconform-image=busybox=localhost/b:1",
        "--gpuconform-provision-timeout=60",
    ):
        assert given in argv, (given, argv)
    after = argv.index("--gpuconform-lease-dir")  # after --: translated, the rest as given
    assert argv[after + 1] == str(tmp_path / "leases")
    assert "--gpuconform-bandwidth-threshold=h2d_gbps=0.5" in argv and argv[-1] == "-x"
    short = {f"--{option.name}" for option in OPTIONS}
    assert not [a for a in argv if a.split("=", 1)[0] in short], argv


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("gpuconform: error: ")
    return lines[0]


def test_matrix_of_a_missing_file_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["matrix", "/nonexistent.json"]) == 2
    assert _one_line_error(capsys) == (
        "gpuconform: error: no such file: /nonexistent.json "
        "(hint: give a results.json or matrix.json that gpuconform wrote)"
    )


def test_matrix_of_a_non_json_file_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "results.json"
    bad.write_text("{oops\n")
    assert main(["matrix", str(bad)]) == 2
    assert _one_line_error(capsys).startswith(f"gpuconform: error: {bad} is not JSON (")


def test_matrix_of_json_that_is_no_result_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    assert main(["matrix", str(other)]) == 2
    assert "is neither a results.json" in _one_line_error(capsys)


def test_sim_down_of_an_unknown_instance_is_harmless(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "down", "--name", "doesnotexist"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "no simulated host named doesnotexist is up\n"
    assert captured.err == ""
    assert not Path("/run/gpuconform/sim/doesnotexist").exists()


def test_drivers_lists_the_builtin_adapters(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["drivers"]) == 0
    listed = capsys.readouterr().out.split()
    for name in ("host", "podman", "docker", "kubernetes", "qemu"):
        assert name in listed
    assert set(BUILTIN) <= set(listed)
    assert listed == sorted(listed)


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'frobnicate'" in err
    assert "Traceback" not in err


def _write_run(path: Path, rows: dict[tuple[str, str], str]) -> Path:
    """A results.json of one host with the given (driver, case) -> verdict cells."""
    from gpuconform.reports.evidence import Evidence, Verdict, write_results

    records = [
        Evidence(case=c, driver=d, verdict=Verdict(v), reason=f"{d} {c}") for (d, c), v in rows.items()
    ]
    meta = {"run_id": path.parent.name, "host": {"host": "runner-a", "simulated": False}}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_results(path, records, meta)
    return path


def test_gate_with_drivers_lists_only_that_columns_regressions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full = {(d, c): "pass" for d in ("docker", "podman", "qemu") for c in ("smi.default", "count.1")}
    baseline = _write_run(tmp_path / "baseline" / "results.json", full)
    current = _write_run(
        tmp_path / "current" / "results.json",
        {("docker", "smi.default"): "fail", ("docker", "count.1"): "pass"},
    )
    assert main(["gate", str(baseline), str(current)]) == 1
    unscoped = capsys.readouterr().out
    assert "runner-a/podman/count.1: pass -> missing" in unscoped
    assert main(["gate", str(baseline), str(current), "--drivers", "docker"]) == 1
    out = capsys.readouterr().out
    blocking = [line for line in out.splitlines() if "BLOCKING" in line]
    assert blocking == ["  BLOCKING runner-a/docker/smi.default: pass -> fail (docker smi.default)"]
    assert main(["diff", str(baseline), str(current), "--drivers", "docker"]) == 0
    assert "podman" not in capsys.readouterr().out
    assert main(["gate", str(baseline), str(current), "--drivers", "podman"]) == 1  # podman missing now
    assert "BLOCKING runner-a/podman/count.1: pass -> missing" in capsys.readouterr().out


def test_gate_with_an_unknown_driver_is_a_one_line_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _write_run(tmp_path / "r" / "results.json", {("docker", "count.1"): "pass"})
    assert main(["gate", str(run), str(run), "--drivers", "dokcer"]) == 2
    assert "no such column in either matrix (hint: columns are docker)" in _one_line_error(capsys)
