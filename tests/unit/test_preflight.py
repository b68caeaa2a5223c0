"""fixtures/preflight.py on its own: adapter options are judged by what the adapter declares,
a third-party adapter's as a built-in one's; and ``gpuconform run`` loads only its own plugins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpuconform.drivers.base import Adapter, OptionSpec
from gpuconform.fixtures import preflight
from gpuconform.fixtures.settings import Settings

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]


class AcmeAdapter(Adapter):
    """A third party's adapter: only its declaration matters here."""

    name = "acme"
    OPTIONS = {
        "acme.mode": OptionSpec("how", "choice", ("fast", "safe")),
        "acme.slots": OptionSpec("how many", "int"),
        "acme.legacy": OptionSpec(removed="acme 2 always uses slots"),
    }


@pytest.fixture
def acme(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuconform.drivers import registry

    monkeypatch.setattr(registry, "ALIASES", {**registry.ALIASES, "acme": f"{__name__}:AcmeAdapter"})


@pytest.mark.usefixtures("acme")
@pytest.mark.parametrize(
    ("option", "named"),
    [
        ("acme.mode=turbo", "acme.mode must be one of fast, safe"),
        ("acme.slots=-2", "acme.slots must be a whole number > 0"),
        ("acme.legacy=1", "acme.legacy is no longer read: acme 2 always uses slots"),
        ("acme.colour=red", "unknown option 'acme.colour' (hint: acme takes: acme.mode, acme.slots)"),
    ],
)
def test_a_third_party_adapters_declared_options_are_checked(option: str, named: str) -> None:
    key, _, value = option.partition("=")
    with pytest.raises(preflight.PreflightError) as exc:
        preflight.check_driver_options({key: value}, ["podman"])  # acme not run: checked by its name
    assert named in str(exc.value)


@pytest.mark.usefixtures("acme")
def test_a_third_party_adapters_good_options_pass() -> None:
    preflight.check_driver_options({"acme.mode": "safe", "acme.slots": "4"}, ["acme"])


def test_every_builtin_adapter_declares_the_options_it_reads() -> None:
    """The keys the adapters read (grep options.get in drivers/) are all declared somewhere."""
    from gpuconform.drivers.registry import BUILTIN, load_adapter_class

    declared = {key for name in BUILTIN for key in load_adapter_class(name).OPTIONS}
    for key in (
        "host.python", "host.uuid_map", "podman.binary", "cdi.dirs", "docker.host", "docker-cdi.host",
        "docker.timeout", "docker-legacy.legacy_hook", "kubernetes.kubeconfig", "kubernetes.context",
        "kubernetes.namespace", "kubernetes.registry", "qemu.binary", "qemu.accel", "qemu.memory",
        "qemu.kernel", "qemu.initrd", "qemu.single", "qemu.sysfs_root", "qemu.vfio_state",
    ):  # fmt: skip
        assert key in declared, key


def test_a_real_gpu_machine_refuses_faults_without_a_profile() -> None:
    with pytest.raises(preflight.PreflightError, match="real NVIDIA GPUs"):
        preflight.check_simulation(Settings(faults=("extra-gpu:0",)), real_gpus=lambda: True)


def test_out_may_be_new_empty_or_a_results_directory(tmp_path: Path) -> None:
    preflight.check_out_dir(tmp_path / "new" / "results")
    (tmp_path / "empty").mkdir()
    preflight.check_out_dir(tmp_path / "empty")
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "results.json").write_text("{}")
    preflight.check_out_dir(tmp_path / "res")


@pytest.mark.skipif(os.geteuid() != 0, reason="the simulated host lives under /run (root only)")
def test_gpuconform_run_loads_only_its_own_plugins(tmp_path: Path) -> None:
    """No globally installed plugin (pytest-benchmark here) prints into a run, and pytest does not
    warn that a module of this package was imported before it could be rewritten."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "GPUCONFORM_STATE": str(tmp_path / "state")}
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
    proc = subprocess.run(
        [sys.executable, "-m", "gpuconform.conformance.cli",
            "run", "--drivers", "host", "--sim", "single", "-n", "0",
         "-k", "count.zero", "--out", str(tmp_path / "out"), "--", "--cdi-dir", str(tmp_path / "cdi"),
         "--lease-dir", str(tmp_path / "state" / "leases")],
        capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path,
    )  # fmt: skip
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert "host-count.zero] REJECTED" in text
    assert "benchmark" not in text.lower(), text
    assert "PytestAssertRewriteWarning" not in text and "already imported" not in text, text
    assert "warnings summary" not in text, text


def test_promote_never_replaces_a_folder_that_holds_no_results(tmp_path: Path) -> None:
    from gpuconform.fixtures.outdir import promote, staging_dir

    out = tmp_path / "results"
    out.mkdir()
    (out / "thesis.tex").write_text("someone's work\n")
    staging = staging_dir(out, "abcd")
    staging.mkdir()
    (staging / "results.json").write_text("{}")
    with pytest.raises(OSError, match="not a results directory"):
        promote(staging, out)
    assert (out / "thesis.tex").read_text() == "someone's work\n" and (staging / "results.json").exists()


def test_promote_replaces_a_results_folder_whole(tmp_path: Path) -> None:
    from gpuconform.fixtures.outdir import promote, staging_dir

    out = tmp_path / "results"
    out.mkdir()
    (out / "results.json").write_text('{"old": 1}')
    (out / "stale.md").write_text("old\n")
    staging = staging_dir(out, "abcd")
    staging.mkdir()
    (staging / "results.json").write_text('{"new": 1}')
    promote(staging, out)
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]
    assert (out / "results.json").read_text() == '{"new": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_another_projects_session_is_not_stopped_but_a_conformance_one_is(pytester: pytest.Pytester) -> None:
    """The plugin is an entry point, loaded into every session of the environment: a project's
    own ./results folder stops a gpuconform run (it would be replaced) and nothing else."""
    (pytester.path / "results").mkdir()
    (pytester.path / "results" / "mine.txt").write_text("keep\n")
    pytester.makepyfile(test_other="def test_other():\n    assert True\n")
    other = pytester.runpytest_subprocess("-p", "no:cacheprovider", "test_other.py", timeout=60)
    assert other.ret == pytest.ExitCode.OK, other.stdout.str() + other.stderr.str()
    suites = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--co", str(REPO / "conformance"), "--rootdir", str(REPO), timeout=60
    )
    assert suites.ret == pytest.ExitCode.USAGE_ERROR, suites.stdout.str() + suites.stderr.str()
    assert "--gpuconform-out results is a directory that holds no results.json" in suites.stderr.str()
    assert (pytester.path / "results" / "mine.txt").read_text() == "keep\n"
