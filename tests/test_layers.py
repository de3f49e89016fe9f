"""The package's layering, checked on the source: imports only run down a layer, cli stays thin.

cli -> tasks / training / sweeps / evaluation / server -> data / runs / models -> core (the top-level modules). Lazy imports
inside functions count too: they are dependencies all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "aistudio"
LAYERS = {"cli": 3, "tasks": 2, "training": 2, "sweeps": 2, "evaluation": 2, "server": 2, "data": 1, "runs": 1,
          "models": 1, "plots": 1}
CORE = 0  # aistudio/__init__.py, config.py, devices.py, overrides.py, run_layout.py
MAX_CLI_FUNCTION_LINES = 60


def layer_of(module: str) -> int:
    """``aistudio.runs.session`` -> 1; a top-level module (``aistudio.config``) -> core."""
    parts = module.split(".")
    return LAYERS.get(parts[1], CORE) if len(parts) > 1 else CORE


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, module) of every aistudio import in the source of ``module``, relative ones resolved."""
    tree = ast.parse(source)
    package = module if is_package else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
    return [(line, name) for line, name in found if name == "aistudio" or name.startswith("aistudio.")]


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_import_runs_up_a_layer():
    upward = []
    for path in sources():
        own = module_name(path)
        for line, imported in imported_modules(path.read_text(encoding="utf-8"), own, path.name == "__init__.py"):
            if layer_of(imported) > layer_of(own):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {imported} "
                              f"(layer {layer_of(imported)} > {layer_of(own)})")
    assert sources() and not upward, "\n".join(upward)


def test_the_layer_rule_sees_lazy_and_relative_imports():
    """The checker itself: imports inside functions and relative ones are found and placed in their layer."""
    source = "import os\ndef f():\n    from aistudio.cli.train import main\n    from ..cli import resume_args\n"
    found = imported_modules(source, "aistudio.data.bad")
    assert found == [(3, "aistudio.cli.train"), (4, "aistudio.cli")]
    assert [layer_of(name) for _, name in found] == [3, 3] and layer_of("aistudio.data.bad") == 1
    assert layer_of("aistudio.run_layout") == CORE == layer_of("aistudio")


def test_cli_functions_stay_short():
    """cli/ is argument handling; the work lives in the layers below."""
    long = []
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_CLI_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.lineno} {node.name}() has {lines} lines")
    assert not long, "\n".join(long)
