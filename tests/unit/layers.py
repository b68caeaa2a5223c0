"""The layer map of gpuconform, written down once: which layer each module belongs to, and the
import-direction check that ``test_layers.py`` runs over every module of the five folders.

A module may import from its own layer and the layers below it only (``REFINED`` narrows that for
a layer that must read less). docs/ARCHITECTURE.md ("Layers") describes the same order in words
and points here; this table is the one that is enforced.

Modules are named relative to the ``gpuconform`` namespace (``drivers.base`` is
``gpuconform.drivers.base``, from ``drivers/base.py``). A ``MODULES`` key ending in ``.*`` covers
a package and everything under it; the most specific key wins (an exact name before any prefix,
a longer prefix before a shorter one).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

#: Bottom to top.
LAYERS: tuple[str, ...] = (
    "model",  # 0: request, inventory, catalogue, evidence records and their schemas: plain data
    "parsers",  # 1: what runs inside sandboxes and the parsers of what comes back
    "builders",  # 2: images, the QEMU guest and kernel, glibc: know nothing of adapters
    "adapters",  # 3: drivers; never the simulator or the plugin (that reaches them by context)
    "environments",  # 4: the simulated GPU host, the Kubernetes double, kind, the fake sysfs
    "plugin",  # 5: the pytest plugin, cells, settings, runtime, reaper
    "suites",  # 6: the conformance cases, which talk only to their cell
    "reports",  # 7: the matrix, diff/gate, renderers, junit, allure: evidence and catalogue only
    "cli",  # 8: the command line and doctor
)

FOLDERS: tuple[str, ...] = ("conformance", "drivers", "fixtures", "reports", "workloads")

MODULES: Mapping[str, str] = {
    # The top-level package markers hold a docstring only; importing any module runs them.
    "conformance": "model",
    "drivers": "model",
    "fixtures": "model",
    "reports": "model",
    "workloads": "model",
    # 0 model
    "drivers.request": "model",
    "drivers.inventory": "model",
    "drivers.errors": "model",  # the harness's error types and Deadline: every layer raises them
    "workloads.cdi_spec": "model",  # the CDI spec reader the inventory names GPUs with; pure data
    "conformance.catalogue": "model",
    "reports.evidence": "model",
    "reports.schemas": "model",
    # 1 parsers and the probe
    "workloads.*": "parsers",
    # 2 builders
    "fixtures.build.*": "builders",
    # 3 adapters
    "drivers.*": "adapters",
    # 4 simulated environments
    "fixtures.sim.*": "environments",
    "fixtures.hostgpus": "environments",  # the real host's side: NVIDIA hardware or not, sysfs
    # 5 the plugin and cells
    "fixtures.*": "plugin",
    # 6 suites
    "conformance.*": "suites",
    # 7 reports
    "reports.*": "reports",
    # 8 the command line
    "conformance.cli": "cli",
    "conformance.doctor.*": "cli",
}

#: Layers that may import less than everything below them: the reports read evidence records and
#: the catalogue (the model layer) and their own modules, never the plugin, adapters or suites, so
#: a results file renders the same on a machine that has none of the engines.
REFINED: Mapping[str, frozenset[str]] = {
    "reports": frozenset({"model", "reports"}),
}

#: Files whose ``importlib.import_module("gpuconform....")`` strings are data, not dependencies:
#: the registry names adapter modules that it imports lazily by name. Their import statements are
#: still checked.
DYNAMIC_IMPORTS_AS_DATA: frozenset[str] = frozenset({"drivers/registry.py"})

NAMESPACE = "gpuconform"


@dataclass(frozen=True)
class Violation:
    """One import that goes upward (or sideways out of a refined layer)."""

    path: str
    line: int
    module: str
    layer: str
    imported: str
    imported_layer: str

    def __str__(self) -> str:
        return (
            f"{self.path}:{self.line}: {self.module} ({self.layer}, layer {LAYERS.index(self.layer)}) "
            f"imports {self.imported} ({self.imported_layer}, layer "
            f"{LAYERS.index(self.imported_layer)}); a module imports its own layer and lower ones "
            "only (tests/unit/layers.py)"
        )


def layer_of(module: str, modules: Mapping[str, str] = MODULES) -> str | None:
    """The layer of ``module`` (relative to the namespace), or None when no key covers it."""
    if module in modules:
        return modules[module]
    parts = module.split(".")
    for cut in range(len(parts), 0, -1):
        key = ".".join(parts[:cut]) + ".*"
        if key in modules:
            return modules[key]
    return None


def may_import(layer: str, other: str) -> bool:
    """Whether a module of ``layer`` may import one of ``other``."""
    if layer in REFINED:
        return other in REFINED[layer]
    return LAYERS.index(other) <= LAYERS.index(layer)


def module_name(root: Path, path: Path) -> str:
    """``drivers/base.py`` -> ``drivers.base``; ``fixtures/sim/__init__.py`` -> ``fixtures.sim``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(root: Path) -> Iterator[Path]:
    """Every Python module of the five folders (the installed product), sorted."""
    for folder in FOLDERS:
        yield from sorted(p for p in (root / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _relative_to_namespace(name: str) -> str | None:
    prefix = NAMESPACE + "."
    return name[len(prefix) :] if name.startswith(prefix) else None


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, target] if target else base)


def imports_of(
    tree: ast.AST, module: str, is_package: bool, known: frozenset[str], *, dynamic: bool = True
) -> Iterator[tuple[int, str]]:
    """(line, module relative to the namespace) for every gpuconform import anywhere in the tree:
    top level, inside functions, under ``if TYPE_CHECKING`` (a type is a dependency too), and
    ``importlib.import_module("gpuconform....")`` with a constant string (unless ``dynamic`` is
    false). ``from a import b`` names ``a.b`` when that is a module, else ``a``.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = _relative_to_namespace(alias.name)
                if name is not None:
                    yield node.lineno, name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base: str | None = _resolve_relative(module, is_package, node.level, node.module)
            else:
                base = _relative_to_namespace(node.module or "")
            if base is None:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield node.lineno, sub if sub in known else base
        elif dynamic and isinstance(node, ast.Call) and _is_import_module(node.func):
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                name = _relative_to_namespace(arg.value)
                if name is not None:
                    yield node.lineno, name


def _is_import_module(func: ast.expr) -> bool:
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return isinstance(func, ast.Name) and func.id == "import_module"


def _with_parents(name: str) -> Iterator[str]:
    """Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first: each is imported too."""
    parts = name.split(".")
    for cut in range(1, len(parts) + 1):
        yield ".".join(parts[:cut])


def check_file(
    root: Path, path: Path, known: frozenset[str], modules: Mapping[str, str] = MODULES
) -> list[str]:
    """The problems of one module: upward imports, and any module the map does not place."""
    rel = path.relative_to(root).as_posix()
    module = module_name(root, path)
    layer = layer_of(module, modules)
    if layer is None:
        return [f"{rel}:1: {module} has no layer; add it to MODULES in tests/unit/layers.py"]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
    problems: list[str] = []
    dynamic = rel not in DYNAMIC_IMPORTS_AS_DATA
    found = dict.fromkeys(imports_of(tree, module, path.name == "__init__.py", known, dynamic=dynamic))
    for line, imported in sorted(found):
        # The module itself first, then the packages it runs: one problem per imported module.
        for name in reversed(list(_with_parents(imported))):
            if name == module:
                continue
            other = layer_of(name, modules)
            if other is None:
                problems.append(
                    f"{rel}:{line}: {module} imports {name}, which has no layer in tests/unit/layers.py"
                )
                break
            if not may_import(layer, other):
                problems.append(str(Violation(rel, line, module, layer, name, other)))
                break
    return problems


def check_tree(root: Path, modules: Mapping[str, str] = MODULES) -> list[str]:
    """Every problem in the five folders under ``root``, in file order."""
    files = list(source_files(root))
    known = frozenset(module_name(root, p) for p in files)
    return [problem for path in files for problem in check_file(root, path, known, modules)]
