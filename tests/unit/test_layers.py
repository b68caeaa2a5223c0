"""Layers import downward only: every module of the five folders against the one layer map
(tests/unit/layers.py), and the check itself against fake trees that import upward, so it is
known to fail when it should."""

from __future__ import annotations

import re
import shutil
import subprocess
import textwrap
import tomllib
from pathlib import Path

import pytest

from tests.unit import layers

REPO = Path(__file__).resolve().parents[2]


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    """A fake repository: the five folders with package markers, plus ``files``."""
    for folder in layers.FOLDERS:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text('"""A package marker."""\n')
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def test_every_module_imports_its_own_layer_or_lower() -> None:
    problems = layers.check_tree(REPO)
    assert not problems, "upward imports:\n" + "\n".join(problems)


def test_the_check_covers_every_folder_of_the_product() -> None:
    files = list(layers.source_files(REPO))
    names = {layers.module_name(REPO, p) for p in files}
    # A scan that silently found nothing (a moved folder, a wrong root) would pass every tree.
    assert {"drivers.base", "fixtures.plugin", "fixtures.sim.environment", "reports.matrix"} <= names
    assert {"conformance.cli", "workloads.nvidia_smi", "fixtures.build.images"} <= names
    assert all(layers.layer_of(n) is not None for n in names)


def test_every_package_the_map_covers_is_installed() -> None:
    """A layer check over modules a wheel leaves out would pass while the installed plugin cannot
    import them: every folder of the five that holds modules is a package in pyproject's list."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {p.parent for p in layers.source_files(REPO)}
    missing = sorted(
        f"{layers.NAMESPACE}.{'.'.join(d.relative_to(REPO).parts)}"
        for d in folders
        if f"{layers.NAMESPACE}.{'.'.join(d.relative_to(REPO).parts)}" not in listed
    )
    assert not missing, f"packages missing from [tool.setuptools] packages in pyproject.toml: {missing}"
    assert all((d / "__init__.py").is_file() for d in folders)


def test_no_module_of_the_product_is_ignored_by_git() -> None:
    """An ignored module exists in this checkout but not in a fresh clone (``build/`` once
    swallowed fixtures/build/__init__.py)."""
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        [git, "ls-files", "--others", "--ignored", "--exclude-standard", "--", *layers.FOLDERS],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()  # fmt: skip
    ignored = [p for p in listed if p.endswith(".py") and "__pycache__" not in p]
    assert not ignored, f"product modules ignored by .gitignore (a fresh clone lacks them): {ignored}"


def test_an_upward_import_fails_naming_file_line_and_both_layers(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "fixtures/plugin.py": '"""The plugin."""\n',
            "drivers/newengine.py": """\
                \"\"\"An adapter that reaches into the plugin.\"\"\"
                from __future__ import annotations

                from gpuconform.fixtures.plugin import something
            """,
        },
    )
    problems = layers.check_tree(root)
    assert len(problems) == 1
    assert problems[0].startswith("drivers/newengine.py:4: drivers.newengine (adapters, layer 3) ")
    assert "imports fixtures.plugin (plugin, layer 5)" in problems[0]


def test_a_downward_and_a_same_layer_import_pass(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "drivers/request.py": '"""Model."""\n',
            "drivers/subproc.py": '"""An adapter helper."""\n',
            "drivers/newengine.py": """\
                from gpuconform.drivers import subproc
                from gpuconform.drivers.request import GpuRequest
                import json
            """,
        },
    )
    assert layers.check_tree(root) == []


@pytest.mark.parametrize(
    ("body", "line"),
    [
        pytest.param("def f():\n    from gpuconform.reports import matrix\n", 2, id="function-level"),
        pytest.param("import gpuconform.reports.matrix\n", 1, id="plain-import"),
        pytest.param("from gpuconform.reports import matrix\n", 1, id="from-package-import-module"),
        pytest.param(
            "import typing\nif typing.TYPE_CHECKING:\n    from gpuconform.reports.matrix import M\n",
            3,
            id="type-checking",
        ),
        pytest.param(
            "import importlib\n\ndef f():\n    return importlib.import_module('gpuconform.reports.matrix')\n",
            4,
            id="import-module-string",
        ),
        pytest.param("from ..reports.matrix import Matrix\n", 1, id="relative"),
    ],
)
def test_every_form_of_import_is_seen(tmp_path: Path, body: str, line: int) -> None:
    root = _tree(tmp_path, {"reports/matrix.py": '"""Reports."""\n', "fixtures/plugin.py": body})
    problems = layers.check_tree(root)
    assert [p.split(" (", 1)[0] for p in problems] == [f"fixtures/plugin.py:{line}: fixtures.plugin"]
    assert "imports reports.matrix (reports, layer 7)" in problems[0]


def test_importing_a_module_counts_the_packages_it_runs(tmp_path: Path) -> None:
    """``conformance.doctor.model`` would be fine on its own terms only if the map said so; its
    package's ``__init__`` (CLI layer) runs on import, so a suite importing it goes upward."""
    root = _tree(
        tmp_path,
        {
            "conformance/doctor/__init__.py": "from gpuconform.conformance.doctor.model import X\n",
            "conformance/doctor/model.py": '"""Doctor model."""\n',
            "conformance/test_counts.py": "from gpuconform.conformance.doctor.model import X\n",
        },
    )
    problems = layers.check_tree(root, {**layers.MODULES, "conformance.doctor.model": "model"})
    assert len(problems) == 1
    assert problems[0].startswith("conformance/test_counts.py:1: conformance.test_counts (suites, layer 6)")
    assert "imports conformance.doctor (cli, layer 8)" in problems[0]


def test_reports_read_the_model_and_their_own_modules_only(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "drivers/registry.py": '"""Adapters by name."""\n',
            "reports/evidence.py": '"""Records."""\n',
            "conformance/catalogue.py": '"""Cases."""\n',
            "reports/matrix.py": """\
                from gpuconform.reports.evidence import Evidence
                from gpuconform.conformance.catalogue import CATALOGUE
                from gpuconform.drivers.registry import BUILTIN
            """,
        },
    )
    problems = layers.check_tree(root)
    assert len(problems) == 1
    assert problems[0].startswith("reports/matrix.py:3: reports.matrix (reports, layer 7)")
    assert "imports drivers.registry (adapters, layer 3)" in problems[0]


def test_a_module_outside_the_map_fails(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"drivers/newengine.py": '"""New."""\n'})
    problems = layers.check_tree(root, {k: v for k, v in layers.MODULES.items() if k != "drivers.*"})
    assert problems == [
        "drivers/newengine.py:1: drivers.newengine has no layer; add it to MODULES in tests/unit/layers.py"
    ]


def test_the_registry_names_adapter_modules_as_data_but_its_imports_are_checked(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "drivers/registry.py": """\
                import importlib
                importlib.import_module('gpuconform.fixtures.plugin')
                from gpuconform.fixtures.plugin import X
            """,
            "fixtures/plugin.py": '"""The plugin."""\n',
        },
    )
    problems = layers.check_tree(root)
    assert [p.split(" (", 1)[0] for p in problems] == ["drivers/registry.py:3: drivers.registry"]


def test_the_most_specific_key_wins() -> None:
    assert layers.layer_of("drivers.request") == "model"
    assert layers.layer_of("drivers.podman") == "adapters"
    assert layers.layer_of("fixtures.sim.simgpu.layout") == "environments"
    assert layers.layer_of("fixtures.build.images") == "builders"
    assert layers.layer_of("fixtures.cell") == "plugin"
    assert layers.layer_of("conformance.doctor.model") == "cli"
    assert layers.layer_of("conformance.test_counts") == "suites"
    assert layers.layer_of("elsewhere.module") is None


def test_the_map_names_only_known_layers() -> None:
    assert set(layers.MODULES.values()) <= set(layers.LAYERS)
    for layer, allowed in layers.REFINED.items():
        assert layer in layers.LAYERS
        assert allowed <= set(layers.LAYERS)


def test_the_architecture_document_lists_the_same_layers_in_the_same_order() -> None:
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\s*(\d+)\.?\s+\*\*(\w+)\*\*", section, re.MULTILINE)
    assert [(int(n), name) for n, name in listed] == list(enumerate(layers.LAYERS))
    assert "tests/unit/layers.py" in section
