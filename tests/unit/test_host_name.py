"""--host-name: the stable name a fleet knows a host by, in evidence and so in merge/diff/gate."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from gpuconform.drivers.inventory import Inventory
from gpuconform.fixtures.settings import Settings, SettingsError
from gpuconform.reports.diff import diff
from gpuconform.reports.evidence import Evidence, Verdict
from gpuconform.reports.matrix import Matrix, build_matrix, merge

pytest_plugins = ["pytester"]


def _settings(pytester: pytest.Pytester, *args: str) -> Settings:
    installed = any(ep.name == "gpuconform" for ep in entry_points(group="pytest11"))
    config = pytester.parseconfig(*([] if installed else ["-p", "gpuconform.fixtures.plugin"]), *args)
    return Settings.from_config(config)


INVENTORY = Inventory(host="runner-7f3a9c", gpus=(), simulated=True, source="test")


def test_host_name_replaces_the_machine_name_and_keeps_it_beside(pytester: pytest.Pytester) -> None:
    settings = _settings(pytester, "--gpuconform-host-name", "gpu-h100-a")
    identity = settings.host_identity(INVENTORY)
    assert (identity["host"], identity["machine"]) == ("gpu-h100-a", "runner-7f3a9c")


def test_without_host_name_the_machine_name_is_the_key(pytester: pytest.Pytester) -> None:
    identity = _settings(pytester).host_identity(INVENTORY)
    assert identity["host"] == "runner-7f3a9c"
    assert "machine" not in identity


@pytest.mark.parametrize("bad", ["", "a/b", "has space", "-leading", "x" * 64])
def test_unusable_host_names_are_refused_before_anything_runs(pytester: pytest.Pytester, bad: str) -> None:
    with pytest.raises(SettingsError, match="is not a usable host name") as info:
        _settings(pytester, f"--gpuconform-host-name={bad}")
    assert "hint: letters, digits" in str(info.value)


def _matrix(host: str, machine: str, verdict: Verdict) -> Matrix:
    identity = {"host": host, "machine": machine, "simulated": True}
    return build_matrix(
        {"host": identity}, [Evidence(case="count.1", driver="podman", verdict=verdict, reason="r")]
    )


def test_ephemeral_runners_with_one_host_name_compare_cell_by_cell() -> None:
    baseline = _matrix("gpu-a", "runner-1111", Verdict.PASS)
    current = _matrix("gpu-a", "runner-2222", Verdict.FAIL)
    d = diff(baseline, current)
    assert [c.key for c in d.regressions] == [("gpu-a", "podman", "count.1")]
    assert d.new_cells == ()


def test_two_runner_labels_merge_into_two_fleet_hosts() -> None:
    fleet = merge([_matrix("runner-a", "m1", Verdict.PASS), _matrix("runner-b", "m1", Verdict.FAIL)])
    assert list(fleet.hosts) == ["runner-a", "runner-b"]
    assert fleet.hosts["runner-b"]["machine"] == "m1"
