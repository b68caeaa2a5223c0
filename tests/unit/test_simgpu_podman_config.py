"""The containers.conf writer: writes when absent, keeps a conforming file, never clobbers another."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gpuconform.fixtures.sim.simgpu.podman_config import (
    PodmanConfigError,
    ensure_containers_conf,
    main,
    missing_settings,
)


def test_writes_the_required_settings_when_absent(tmp_path: Path) -> None:
    path = tmp_path / "containers" / "containers.conf"
    assert ensure_containers_conf(path) == "written"
    conf = tomllib.loads(path.read_text())
    assert conf["engine"]["runtime"] == "runc"
    assert conf["engine"]["cgroup_manager"] == "cgroupfs"
    assert conf["containers"]["default_ulimits"] == ["nofile=1024:1024", "nproc=4096:4096"]
    assert path.stat().st_mode & 0o777 == 0o644
    assert ensure_containers_conf(path) == "kept"


def test_keeps_a_foreign_file_that_already_has_the_settings(tmp_path: Path) -> None:
    path = tmp_path / "containers.conf"
    text = (
        '[containers]\nlog_size_max = 100\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n'
        '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
    )
    path.write_text(text)
    assert ensure_containers_conf(path) == "kept"
    assert path.read_text() == text


def test_refuses_to_clobber_a_different_file(tmp_path: Path) -> None:
    path = tmp_path / "containers.conf"
    text = '[engine]\nruntime = "crun"\n'
    path.write_text(text)
    with pytest.raises(PodmanConfigError) as info:
        ensure_containers_conf(path)
    message = str(info.value)
    assert 'engine.runtime = "runc"' in message
    assert "refusing to overwrite" in message
    assert "\n" not in message
    assert path.read_text() == text
    assert main(["--path", str(path)]) == 1


def test_refuses_an_unparseable_file(tmp_path: Path) -> None:
    path = tmp_path / "containers.conf"
    path.write_text("[engine\n")
    with pytest.raises(PodmanConfigError, match="not valid TOML"):
        ensure_containers_conf(path)


def test_missing_settings_names_each_one() -> None:
    assert missing_settings({}) == [
        'engine.runtime = "runc"',
        'engine.cgroup_manager = "cgroupfs"',
        'containers.default_ulimits has "nofile=1024:1024"',
        'containers.default_ulimits has "nproc=4096:4096"',
    ]
