"""The import graph of ``mlr`` and ``mlr_kernels``: no cycle, the commands imported only by the CLI,
``mlr.data`` below everything else, the three stage folders side by side, ``mlr run`` on top of
the stages it joins, and imports at the top of each file except optional heavy dependencies."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"mlr": ROOT / "python" / "mlr", "mlr_kernels": ROOT / "mlr_kernels"}
# Imported where they are used, so that importing mlr does not pay for them.
LAZY_ALLOWED = ("peft", "datasets", "matplotlib", "gguf", "torch.distributed.checkpoint")
# Stage folders that share what they need through the modules below them, never through each other.
STAGES = ("mlr.analysis", "mlr.tuning", "mlr.evaluation")
# The exceptions: evaluation reads the analysis's results, the probe it scores on the evaluated
# model and Mods_Robust's stability the report states.
ACROSS_STAGES = {("mlr.evaluation", "mlr.analysis.probe"), ("mlr.evaluation", "mlr.analysis.stability")}


def module_files() -> dict[str, Path]:
    """{dotted module name: file} of every module of both packages."""
    modules = {}
    for package, directory in PACKAGES.items():
        for path in directory.rglob("*.py"):
            parts = [package, *path.relative_to(directory).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


MODULES = module_files()
# Compiled modules (setup.py): imported as ``from mlr_kernels import _cpu``, which names them, not
# the package.
EXTENSIONS = {"mlr_kernels._cpu", "mlr_kernels._host"}


def imports(path: Path, module: str) -> list[tuple[str, bool]]:
    """(imported module, at the top level of the file) of every import in ``path``; ``from a
    import b`` names ``a.b`` when that is a module, else ``a``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES.keys() | EXTENSIONS else base
                     for alias in node.names]
        else:
            continue
        found += [(name, id(node) in top) for name in names]
    return found


def internal_graph() -> dict[str, set[str]]:
    return {module: {name for name, _ in imports(path, module) if name in MODULES and name != module}
            for module, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
    assert find_cycle(internal_graph()) is None


def test_only_the_cli_imports_the_commands():
    offenders = sorted(module for module, targets in internal_graph().items()
                       if not module.startswith(("mlr.commands", "mlr.cli"))
                       and any(t.startswith("mlr.commands") for t in targets))
    assert offenders == []


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_data_imports_nothing_of_mlr_but_the_errors():
    """Data is text: it is read and checked below the models, features and stages that use it."""
    offenders = sorted((module, target) for module, targets in internal_graph().items()
                       if in_package(module, "mlr.data") for target in targets
                       if not in_package(target, "mlr.data") and target != "mlr.errors")
    assert offenders == []


def stage_of(module: str) -> str | None:
    return next((stage for stage in STAGES if in_package(module, stage)), None)


def test_the_stages_do_not_import_each_other():
    offenders = sorted(
        (module, target) for module, targets in internal_graph().items() for target in targets
        if stage_of(module) and stage_of(target) not in (None, stage_of(module))
        and (stage_of(module), target) not in ACROSS_STAGES)
    assert offenders == []


def test_only_the_commands_import_the_run_package():
    # mlr.run joins the stages; a stage or helper that reached up into it would tie them together.
    offenders = sorted(module for module, targets in internal_graph().items()
                       if not in_package(module, "mlr.run") and not in_package(module, "mlr.commands")
                       and any(in_package(t, "mlr.run") for t in targets))
    assert offenders == []


def test_only_the_run_package_imports_analysis_tuning_and_evaluation_together():
    # The stages meet in mlr.run, in the order of its pipeline, and nowhere else.
    def joins_the_stages(module: str, targets: set[str]) -> bool:
        return all(any(in_package(t, stage) and not in_package(module, stage) for t in targets)
                   for stage in STAGES)

    offenders = sorted(module for module, targets in internal_graph().items()
                       if not in_package(module, "mlr.run") and joins_the_stages(module, targets))
    assert offenders == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("mlr.")))
def test_imports_sit_at_the_top(module):
    inner = [name for name, at_top in imports(MODULES[module], module)
             if not at_top and not name.startswith(LAZY_ALLOWED)]
    assert inner == []
