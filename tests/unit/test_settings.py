"""Command-line options -> Settings, and the one-line usage errors for options that cannot be used."""

from __future__ import annotations

import os
import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from gpuconform.drivers.registry import known_drivers
from gpuconform.fixtures.settings import (
    OPTIONS,
    PYTEST,
    SHORT,
    Settings,
    SettingsError,
    add_options,
    prefixed_argv,
)

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]


def _plugin_args() -> list[str]:
    """``-p fixtures.plugin`` unless the installed package already loads the plugin."""
    installed = any(ep.name == "gpuconform" for ep in entry_points(group="pytest11"))
    return (
        [] if installed else ["-p", "gpuconform.fixtures.plugin", "-p", "gpuconform.reports.pytest_reports"]
    )


def _settings(pytester: pytest.Pytester, *args: str) -> Settings:
    config = pytester.parseconfig(*_plugin_args(), *args)
    return Settings.from_config(config)


def test_defaults(pytester: pytest.Pytester) -> None:
    settings = _settings(pytester)
    assert settings.drivers is None
    assert settings.required == frozenset()
    assert settings.sim == "auto"
    assert settings.provision_timeout == 300.0
    assert settings.thresholds == {"h2d_gbps": 0.9, "d2h_gbps": 0.9, "d2d_gbps": 0.9}
    assert settings.driver_options == {}
    assert settings.cdi_dir == Path("/var/run/cdi")


def test_drivers_are_comma_separated_and_repeatable(pytester: pytest.Pytester) -> None:
    settings = _settings(pytester, "--gpuconform-drivers", "podman, docker", "--gpuconform-drivers", "host,")
    assert settings.drivers == ("podman", "docker", "host")


def test_required_drivers_are_added_to_an_explicit_driver_list(pytester: pytest.Pytester) -> None:
    settings = _settings(
        pytester, "--gpuconform-drivers", "podman", "--gpuconform-require-driver", "qemu,docker"
    )
    assert settings.required == {"qemu", "docker"}
    assert settings.drivers == ("podman", "docker", "qemu")


def test_required_driver_without_a_driver_list_keeps_all_drivers(pytester: pytest.Pytester) -> None:
    settings = _settings(pytester, "--gpuconform-require-driver", "docker")
    assert settings.drivers is None
    assert settings.required == {"docker"}


def test_pairs_thresholds_images_and_paths(pytester: pytest.Pytester, tmp_path: Path) -> None:
    settings = _settings(
        pytester,
        "--gpuconform-driver-opt", "docker.host=unix:///x.sock",
        "--gpuconform-driver-opt", "docker.gpu_path = cdi",
        "--gpuconform-bandwidth-threshold", "h2d_gbps=0.5", "--gpuconform-image", "busybox=my/busybox:1",
        "--gpuconform-probe-image", "my/probe:2", "--gpuconform-sim", "single",
        "--gpuconform-sim-fault", "wrong-gpu:1,extra-gpu:0",
        "--gpuconform-out", str(tmp_path / "o"), "--gpuconform-lease-dir", str(tmp_path / "l"),
        "--gpuconform-provision-timeout", "2.5", "--gpuconform-cdi-dir", str(tmp_path / "cdi"),
    )  # fmt: skip
    assert settings.driver_options == {"docker.host": "unix:///x.sock", "docker.gpu_path": "cdi"}
    assert settings.thresholds == {"h2d_gbps": 0.5, "d2h_gbps": 0.9, "d2d_gbps": 0.9}
    assert settings.images == {"busybox": "my/busybox:1", "python": "my/probe:2"}
    assert settings.sim == "single"
    assert settings.faults == ("wrong-gpu:1", "extra-gpu:0")
    assert (settings.out_dir, settings.lease_dir) == (tmp_path / "o", tmp_path / "l")
    assert settings.provision_timeout == 2.5
    assert settings.cdi_dir == tmp_path / "cdi"


@pytest.fixture
def usage(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.Pytester:
    """A pytester whose subprocess runs keep their state under tmp_path and can import the repo."""
    monkeypatch.setenv("GPUCONFORM_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    return pytester


def _usage_error(pytester: pytest.Pytester, *args: str) -> str:
    result = pytester.runpytest_subprocess(*_plugin_args(), "-p", "no:cacheprovider", *args, timeout=60)
    text = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, text
    assert "Traceback" not in text and "INTERNALERROR" not in text, text
    lines = [line for line in result.stderr.lines if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_unknown_driver_is_a_one_line_usage_error(usage: pytest.Pytester) -> None:
    line = _usage_error(usage, "--gpuconform-drivers", "nosuch")
    assert line == f"ERROR: unknown driver 'nosuch' (hint: expected one of: {', '.join(known_drivers())})"
    assert {"docker", "host", "kubernetes", "podman", "qemu"} <= set(known_drivers())


def test_driver_opt_without_a_value_is_a_one_line_usage_error(usage: pytest.Pytester) -> None:
    line = _usage_error(usage, "--gpuconform-driver-opt", "novalue")
    assert line == (
        "ERROR: --gpuconform-driver-opt takes KEY=VALUE, got 'novalue' "
        "(hint: e.g. --gpuconform-driver-opt docker.host=unix:///x)"
    )


def test_bandwidth_threshold_not_a_number_is_a_one_line_usage_error(usage: pytest.Pytester) -> None:
    line = _usage_error(usage, "--gpuconform-bandwidth-threshold", "h2d_gbps=abc")
    assert line == (
        "ERROR: --gpuconform-bandwidth-threshold h2d_gbps: 'abc' is not a number (hint: e.g. h2d_gbps=0.9)"
    )


def test_bandwidth_threshold_unknown_metric_is_a_one_line_usage_error(usage: pytest.Pytester) -> None:
    line = _usage_error(usage, "--gpuconform-bandwidth-threshold", "fps=1")
    assert line == (
        "ERROR: --gpuconform-bandwidth-threshold: unknown metric 'fps' "
        "(hint: one of h2d_gbps, d2h_gbps, d2d_gbps)"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "abc",
            "--gpuconform-provision-timeout takes seconds, got 'abc' "
            "(hint: e.g. --gpuconform-provision-timeout 300)",
        ),
        (
            "0",
            "--gpuconform-provision-timeout must be greater than 0, got '0' "
            "(hint: e.g. --gpuconform-provision-timeout 300)",
        ),
    ],
    ids=["text", "zero"],
)
def test_bad_provision_timeout_is_a_one_line_usage_error(
    usage: pytest.Pytester, value: str, message: str
) -> None:
    assert _usage_error(usage, "--gpuconform-provision-timeout", value) == f"ERROR: {message}"


def test_usage_errors_leave_no_run_directory(usage: pytest.Pytester, tmp_path: Path) -> None:
    _usage_error(usage, "--gpuconform-drivers", "nosuch")
    _usage_error(usage, "--gpuconform-driver-opt", "=x")
    assert not (tmp_path / "state" / "runs").exists() or not any((tmp_path / "state" / "runs").iterdir())


def test_pytest_help_shows_only_prefixed_options_in_a_gpuconform_group(usage: pytest.Pytester) -> None:
    """Installed, the plugin is in every pytest session of the environment: its options carry our
    prefix, so a project's own --out or --image (or another plugin's) never meets ours."""
    result = usage.runpytest_subprocess(*_plugin_args(), "-p", "no:cacheprovider", "--help", timeout=60)
    assert result.ret == pytest.ExitCode.OK, result.stderr.str()
    lines = result.outlines
    start = lines.index("GPU sandbox conformance (gpuconform):")
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].strip())
    group = {m.group(1) for line in lines[start + 1 : end] if (m := re.match(r"  (--[\w-]+)", line))}
    assert group == {PYTEST.flag(option.name) for option in OPTIONS}
    short = {SHORT.flag(option.name) for option in OPTIONS}
    offered = {m.group(1) for line in lines if (m := re.match(r"\s+(--[\w-]+)", line))}
    assert not offered & short, sorted(offered & short)


def test_a_short_spelling_is_no_pytest_option(usage: pytest.Pytester) -> None:
    """``--drivers`` is gpuconform run's spelling; pytest refuses it rather than guessing."""
    result = usage.runpytest_subprocess(*_plugin_args(), "-p", "no:cacheprovider", "--drivers", "host")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unrecognized arguments: --drivers" in result.stderr.str()


def test_errors_name_the_option_in_the_spelling_given() -> None:
    parser = pytest.Parser(_ispytest=True)
    add_options(parser)
    namespace = parser.parse_known_args(["--gpuconform-provision-timeout", "0"])
    with pytest.raises(SettingsError, match=r"^--provision-timeout must be greater than 0"):
        Settings.from_options(namespace, SHORT)
    with pytest.raises(SettingsError, match=r"^--gpuconform-provision-timeout must be greater than 0"):
        Settings.from_options(namespace, PYTEST)


def test_short_option_names_in_messages_are_rewritten_for_pytest() -> None:
    text = "--sim-fault wrong-gpu:1 with --sim none (hint: drop --sim none; gpuconform sim up --fault x)"
    assert PYTEST.rewrite(text) == (
        "--gpuconform-sim-fault wrong-gpu:1 with --gpuconform-sim none "
        "(hint: drop --gpuconform-sim none; gpuconform sim up --fault x)"
    )
    assert PYTEST.rewrite("--outer --out-dir x--out --out.") == "--outer --out-dir x--out --gpuconform-out."
    assert SHORT.rewrite(text) == text


def test_gpuconform_run_spelling_translates_to_pytest_and_leaves_the_rest() -> None:
    argv = ["--out", "r", "--sim-instance=dev", "-k", "count", "--outer", "-x", "--gpuconform-sim", "single"]
    assert prefixed_argv(argv) == [
        "--gpuconform-out", "r", "--gpuconform-sim-instance=dev", "-k", "count", "--outer", "-x",
        "--gpuconform-sim", "single",
    ]  # fmt: skip
