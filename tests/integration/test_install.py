"""The installed distribution squats no import names and changes no other project's test runs.

A wheel of this repository goes into a fresh virtualenv that already holds a distribution named
``fixtures`` (PyPI's name too). Both stay importable; site-packages gets ``gpuconform/`` and
nothing generic; a small unrelated project with its own ``fixtures`` package and its own
``--out`` option runs under pytest with the gpuconform plugin loaded (an entry point) but
inactive; and ``gpuconform run`` works from site-packages, suites included.

The stand-in ``fixtures`` is a wheel written here, not PyPI's ``fixtures``: the property under
test is the name clash, which any distribution owning the top-level ``fixtures`` import name
reproduces, and a test must not depend on a third party's release or on the network at run time.
Our dependencies come from the project venv through a ``.pth`` line (no download, seconds); only
the wheel build may fetch the build backend that pyproject.toml names.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GENERIC = ("conformance", "workloads", "fixtures", "drivers", "reports")
STAND_IN = 'MARKER = "stand-in fixtures distribution"\n\n\nclass Fixture:\n    """PyPI fixtures\' base."""\n'


def _run(
    argv: list[str], timeout: float, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd, env=env
    )


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{proc.args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _source_copy(dest: Path) -> Path:
    """The files a commit of this working tree would hold (tracked and new, not ignored), so the
    build neither writes build/ into the shared tree nor picks up caches and results."""
    listed = _ok(_run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], 60, cwd=REPO))
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _stand_in_wheel(dest: Path) -> Path:
    """A minimal valid wheel of a distribution named ``fixtures`` owning the ``fixtures`` package."""
    info = "fixtures-4.1.0.dist-info"
    files = {
        "fixtures/__init__.py": STAND_IN.encode(),
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: fixtures\nVersion: 4.1.0\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: gpuconform-tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
        f"{info}/top_level.txt": b"fixtures\n",
    }
    record = "".join(f"{name},{_hash(data)},{len(data)}\n" for name, data in files.items())
    wheel = dest / "fixtures-4.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{info}/RECORD", record + f"{info}/RECORD,,\n")
    return wheel


@dataclass(frozen=True)
class Installed:
    source: Path
    venv: Path
    site: Path
    wheel: Path

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def env(self, state: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)  # the entry point must load, as for any user
        env.pop("PYTEST_ADDOPTS", None)
        return {**env, "GPUCONFORM_STATE": str(state), "PATH": f"{self.venv / 'bin'}:{env.get('PATH', '')}"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("install")
    source = _source_copy(base / "src")
    dist = base / "dist"
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)], 300)
    _ok(build)
    [wheel] = dist.glob("gpuconform-*.whl")
    venv = base / "venv"
    # From the project's interpreter, so the new venv has the same Python as the packages it borrows.
    _ok(_run([sys.executable, "-m", "venv", "--without-pip", str(venv)], 120))
    site = Path(
        _ok(
            _run(
                [
                    str(venv / "bin" / "python"),
                    "-c",
                    "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                ],
                60,
            )
        ).strip()
    )
    # The dependencies (pytest, numpy, ...) from the project venv, after this venv's own packages.
    (site / "zz_gpuconform_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(venv / "bin" / "python"),
        "install",
        "-q",
        "--no-index",
    ]
    _ok(_run([*pip, str(_stand_in_wheel(base))], 120))  # the environment already has a `fixtures`
    _ok(_run([*pip, "--no-deps", str(wheel)], 120))
    return Installed(source, venv, site, wheel)


def test_site_packages_gets_gpuconform_and_no_generic_name(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as zf:
        tops = {name.split("/", 1)[0] for name in zf.namelist()}
        names = set(zf.namelist())
    assert tops == {"gpuconform", "gpuconform-0.1.0.dist-info"}, tops
    # Every folder of Python modules a fresh clone has is a package in the wheel (listed in
    # pyproject.toml, with its __init__.py committed).
    packages = {
        f"gpuconform/{module.parent.relative_to(installed.source).as_posix()}"
        for folder in GENERIC
        for module in (installed.source / folder).rglob("*.py")
    }
    missing = sorted(p for p in packages if f"{p}/__init__.py" not in names)
    assert not missing, (
        f"packages left out of the wheel (pyproject.toml [tool.setuptools] packages): {missing}"
    )
    for name in GENERIC:
        if name == "fixtures":  # the stand-in's, untouched: its one module and nothing of ours
            files = {p.name for p in (installed.site / name).iterdir() if p.name != "__pycache__"}
            assert files == {"__init__.py"}, files
            assert (installed.site / name / "__init__.py").read_text() == STAND_IN
        else:
            assert not (installed.site / name).exists(), name
    assert not (installed.site / "gpuconform" / "__init__.py").exists()  # a PEP 420 namespace


def test_both_fixtures_distributions_import_and_work(installed: Installed, tmp_path: Path) -> None:
    probe = (
        "import json, fixtures, gpuconform.fixtures.plugin as plugin, gpuconform.fixtures.settings as s\n"
        "from importlib.metadata import distribution, entry_points\n"
        "[ep] = {e.value: e for e in entry_points(group='pytest11') if e.name == 'gpuconform'}.values()\n"
        "print(json.dumps({'marker': fixtures.MARKER, 'fixture': fixtures.Fixture.__name__,\n"
        "  'fixtures_file': fixtures.__file__, 'plugin_file': plugin.__file__, 'entry_point': ep.value,\n"
        "  'options': [o.name for o in s.OPTIONS], 'version': distribution('fixtures').version}))\n"
    )
    found = json.loads(
        _ok(_run([installed.python, "-c", probe], 60, cwd=tmp_path, env=installed.env(tmp_path)))
    )
    assert (found["marker"], found["fixture"], found["version"]) == (
        "stand-in fixtures distribution",
        "Fixture",
        "4.1.0",
    )
    assert Path(found["fixtures_file"]) == installed.site / "fixtures" / "__init__.py"
    assert Path(found["plugin_file"]) == installed.site / "gpuconform" / "fixtures" / "plugin.py"
    assert found["entry_point"] == "gpuconform.fixtures.plugin"
    assert "drivers" in found["options"]


PROJECT_CONFTEST = """
def pytest_addoption(parser):
    # the generic names gpuconform's plugin took before its options carried a prefix
    parser.addoption("--out", default="unset")
    parser.addoption("--image", default="unset")
"""

PROJECT_TEST = """
import fixtures


def test_the_projects_own_fixtures_package(request):
    assert fixtures.PROJECT == "mine", fixtures.__file__
    assert request.config.getoption("--out") == "elsewhere"
    assert request.config.getoption("--image") == "mine:1"
    # loaded, as in every session of the environment (the entry point)...
    assert request.config.pluginmanager.has_plugin("gpuconform")


def test_a_plain_fixture(tmp_path):
    assert tmp_path.is_dir()
"""


def test_an_unrelated_project_with_its_own_fixtures_runs_untouched(
    installed: Installed, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    (project / "fixtures").mkdir(parents=True)
    (project / "fixtures" / "__init__.py").write_text('PROJECT = "mine"\n')
    (project / "results").mkdir()
    (project / "results" / "mine.txt").write_text("keep\n")
    (project / "conftest.py").write_text(PROJECT_CONFTEST)
    (project / "test_project.py").write_text(PROJECT_TEST)
    state = tmp_path / "state"
    proc = _run(
        [
            installed.python,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-v",
            "--out",
            "elsewhere",
            "--image",
            "mine:1",
        ],
        180,
        cwd=project,
        env=installed.env(state),
    )
    out = _ok(proc)
    assert "2 passed" in out, out
    # ...but inactive: no run of ours started, nothing written, the project's results untouched.
    assert not (state / "runs").exists() or not any((state / "runs").iterdir())
    assert not (project / "elsewhere").exists()
    assert sorted(p.name for p in (project / "results").iterdir()) == ["mine.txt"]
    # pytest --help there: our options in their own group, every one under the prefix.
    helptext = _ok(
        _run([installed.python, "-m", "pytest", "--help"], 120, cwd=project, env=installed.env(state))
    )
    lines = helptext.splitlines()
    start = lines.index("GPU sandbox conformance (gpuconform):")
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].strip())
    flags = [line.split()[0].split("=")[0] for line in lines[start + 1 : end] if line.startswith("  --")]
    assert flags and all(flag.startswith("--gpuconform-") for flag in flags), flags


@pytest.mark.root
def test_gpuconform_run_works_from_the_wheel(installed: Installed, tmp_path: Path) -> None:
    """The suites, the simulated host's sources and the schemas all come from site-packages."""
    out = tmp_path / "out"
    proc = _run(
        [str(installed.venv / "bin" / "gpuconform"), "run", "--drivers", "host", "--sim", "single",
         "-k", "smi", "-n", "0", "--out", str(out), "--cdi-dir", str(tmp_path / "cdi"),
         "--lease-dir", str(tmp_path / "leases")],
        300,
        cwd=tmp_path,
        env={**installed.env(tmp_path / "state"), "GPUCONFORM_RUN_ID": "inst" + os.urandom(3).hex()},
    )  # fmt: skip
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    assert f"rootdir: {installed.site / 'gpuconform'}" in proc.stdout, proc.stdout[:2000]
    records = json.loads((out / "results.json").read_text())["records"]
    cases = {r["case"]: r["verdict"] for r in records if r["driver"] == "host"}
    assert cases and all(case.startswith("smi.") for case in cases), cases
    # judged, as from the checkout: nothing broke, nothing skipped for want of a file
    assert "pass" in cases.values() and set(cases.values()) <= {"pass", "rejected", "unsupported"}, cases
