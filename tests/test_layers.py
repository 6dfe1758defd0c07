"""The package's layers, read from its imports: no import runs from a lower layer to a higher one, and no cycle.

The layer order is written twice on purpose, here and in docs/architecture.md ("Layers"), and the test holds the
two together: a change of the architecture is a change of both.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fgcli"
#: top to bottom; a module belongs to the first layer with a prefix of its dotted name
LAYERS = (
    ("fgcli.cli", "fgcli.__main__", "fgcli.demo"),
    ("fgcli.report",),
    ("fgcli.export",),
    ("fgcli.calibration",),
    ("fgcli.runtime",),
    ("fgcli.training",),
    ("fgcli.models", "fgcli.data"),
    ("fgcli.formats", "fgcli.devices", "fgcli.torch_files", "fgcli.utils", "fgcli.console", "fgcli.errors", "fgcli"),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    for index, prefixes in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py")


def fgcli_imports(path: Path) -> set[str]:
    """Every fgcli module ``path`` imports, at the top or inside a function (``from fgcli.a import b`` counts as
    ``fgcli.a.b`` when that is a module, else as ``fgcli.a``), but its own packages: Python imports those before
    the module anyway (``models.registry`` imports ``fgcli.models`` only to find the method files in it)."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names if alias.name.split(".")[0] == "fgcli")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "fgcli":
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (ROOT / Path(*candidate.split("."))).with_suffix(".py").is_file() or \
                    (ROOT / Path(*candidate.split("."))).is_dir()
                imported.add(candidate if is_module else node.module)
    own_packages = {module_name(path).rsplit(".", i)[0] for i in range(1, module_name(path).count(".") + 1)}
    return imported - own_packages


GRAPH = {module_name(path): fgcli_imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_import_runs_down_the_layers():
    upward = [f"{importer} (layer {layer_of(importer)}) imports {imported} (layer {layer_of(imported)})"
              for importer, targets in GRAPH.items() for imported in sorted(targets)
              if layer_of(imported) < layer_of(importer)]
    assert upward == []


def test_no_import_cycle():
    cycles, state = [], {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in GRAPH:
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_layers_of_the_architecture_document_are_these():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- layers -->\n```\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md has no ```-block after <!-- layers -->"
    documented = [tuple(re.findall(r"fgcli(?:\.[\w]+)?", line.split("|")[0])) for line in
                  block.group(1).splitlines() if line.strip().startswith(tuple(f"{i}" for i in range(1, 10)))]
    assert documented == list(LAYERS)


def test_a_format_name_is_spelled_in_fgcli_formats_only():
    """Every other module names a format by its constant (``fgcli.formats``), so the table is the one place that
    says what a format is called (docstrings and help text may mention them)."""
    from fgcli.formats import FORMATS

    names = {fmt.name for fmt in FORMATS}
    spelled = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in names:
                spelled.setdefault(node.value, set()).add(module_name(path))
    assert {name: modules for name, modules in spelled.items() if modules != {"fgcli.formats"}} == {}


@pytest.mark.parametrize("module", ["fgcli.runtime.onnx_meta", "fgcli.runtime.comparator", "fgcli.runtime.timing",
                                    "fgcli.formats", "fgcli.devices", "fgcli.export.options"])
def test_the_shared_deployment_modules_import_without_torch(module):
    import subprocess
    import sys

    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
