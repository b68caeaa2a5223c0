"""Command-line options -> Settings, and the one-line usage errors for options that cannot be used."""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from gpuconform.drivers.registry import known_drivers
from gpuconform.fixtures.settings import Settings

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]


def _plugin_args() -> list[str]:
    """``-p fixtures.plugin`` unless the installed package already loads the plugin."""
    installed = any(ep.name == "gpuconform" for ep in entry_points(group="pytest11"))
    return [] if installed else ["-p", "gpuconform.fixtures.plugin"]


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
    settings = _settings(pytester, "--drivers", "podman, docker", "--drivers", "host,")
    assert settings.drivers == ("podman", "docker", "host")


def test_required_drivers_are_added_to_an_explicit_driver_list(pytester: pytest.Pytester) -> None:
    settings = _settings(pytester, "--drivers", "podman", "--require-driver", "qemu,docker")
    assert settings.required == {"qemu", "docker"}
    assert settings.drivers == ("podman", "docker", "qemu")


def test_required_driver_without_a_driver_list_keeps_all_drivers(pytester: pytest.Pytester) -> None:
    settings = _settings(pytester, "--require-driver", "docker")
    assert settings.drivers is None
    assert settings.required == {"docker"}


def test_pairs_thresholds_images_and_paths(pytester: pytest.Pytester, tmp_path: Path) -> None:
    settings = _settings(
        pytester,
        "--driver-opt", "docker.host=unix:///x.sock", "--driver-opt", "docker.gpu_path = cdi",
        "--bandwidth-threshold", "h2d_gbps=0.5", "--image", "busybox=my/busybox:1",
        "--probe-image", "my/probe:2", "--sim", "single", "--sim-fault", "wrong-gpu:1,extra-gpu:0",
        "--out", str(tmp_path / "o"), "--lease-dir", str(tmp_path / "l"), "--provision-timeout", "2.5",
        "--cdi-dir", str(tmp_path / "cdi"),
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
    line = _usage_error(usage, "--drivers", "nosuch")
    assert line == f"ERROR: unknown driver 'nosuch' (hint: expected one of: {', '.join(known_drivers())})"
    assert {"docker", "host", "kubernetes", "podman", "qemu"} <= set(known_drivers())


def test_driver_opt_without_a_value_is_a_one_line_usage_error(usage: pytest.Pytester) -> None:
    line = _usage_error(usage, "--driver-opt", "novalue")
    assert line == (
        "ERROR: --driver-opt takes KEY=VALUE, got 'novalue' (hint: e.g. --driver-opt docker.host=unix:///x)"
    )


def test_bandwidth_threshold_not_a_number_is_a_one_line_usage_error(usage: pytest.Pytester) -> None:
    line = _usage_error(usage, "--bandwidth-threshold", "h2d_gbps=abc")
    assert line == "ERROR: --bandwidth-threshold h2d_gbps: 'abc' is not a number (hint: e.g. h2d_gbps=0.9)"


def test_bandwidth_threshold_unknown_metric_is_a_one_line_usage_error(usage: pytest.Pytester) -> None:
    line = _usage_error(usage, "--bandwidth-threshold", "fps=1")
    assert line == (
        "ERROR: --bandwidth-threshold: unknown metric 'fps' (hint: one of h2d_gbps, d2h_gbps, d2d_gbps)"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "--provision-timeout takes seconds, got 'abc' (hint: e.g. --provision-timeout 300)"),
        ("0", "--provision-timeout must be greater than 0, got '0' (hint: e.g. --provision-timeout 300)"),
    ],
    ids=["text", "zero"],
)
def test_bad_provision_timeout_is_a_one_line_usage_error(
    usage: pytest.Pytester, value: str, message: str
) -> None:
    assert _usage_error(usage, "--provision-timeout", value) == f"ERROR: {message}"


def test_usage_errors_leave_no_run_directory(usage: pytest.Pytester, tmp_path: Path) -> None:
    _usage_error(usage, "--drivers", "nosuch")
    _usage_error(usage, "--driver-opt", "=x")
    assert not (tmp_path / "state" / "runs").exists() or not any((tmp_path / "state" / "runs").iterdir())
