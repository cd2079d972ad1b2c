"""The package's layout: subpackages by concern, no import circle, no reach into another
subpackage's private parts, and a root that holds only the estimators and shared modules.

The import graph is read from the source (module-level and function-level imports; those under
``if TYPE_CHECKING:`` never run and are left out), so a circle is found even where the order of
imports happens to hide it at run time.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG_DIR = ROOT / "embetter_plug"

SUBPACKAGES = {"extraction", "arch", "inputs", "attention", "store", "labelling", "probe",
               "models", "tuners", "recipes", "cli", "testing"}
# the estimators, the axes' names and the modules every subpackage shares
ROOT_MODULES = {"__init__", "encoder", "_encoder_load", "pooler", "layout", "datasets",
                "_utils", "_output", "_progress", "_pages", "_lazy", "_constraints"}
# documented module paths that moved into a subpackage: they only re-export its names
REEXPORTS = {"cache", "io", "streaming", "distributed", "samples", "image_folder"}


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    out = {}
    for path in sorted(PKG_DIR.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if parts[-1] == "__main__":
            continue  # runs the command line when executed; importing it would run it
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def _imports(name: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every package import of ``name``."""
    path, is_pkg = MODULES[name]
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    package = name if is_pkg else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names
                    if a.name.split(".")[0] == "embetter_plug"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "embetter_plug":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub, None, node.lineno) if sub in MODULES
                           else (target, a.name, node.lineno))
    return out


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name in MODULES:
        graph[name] = set()
        for target, _, _ in _imports(name):
            while target not in MODULES and "." in target:  # `import a.b.c` names a.b.c
                target = target.rsplit(".", 1)[0]
            if target != name:
                graph[name].add(target)
    return graph


def _owner(module: str) -> str:
    """The subpackage a module belongs to ('' for the package root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in SUBPACKAGES) else ""


def test_graph_reader_sees_relative_and_function_level_imports():
    graph = _graph()
    # `from . import _ray` and `from embetter_plug.store.distributed import ...` inside
    # functions, and a module-level relative import of the encoder
    assert "embetter_plug.cli._ray" in graph["embetter_plug.cli.extract"]
    assert "embetter_plug.store.distributed" in graph["embetter_plug.cli._ray"]
    assert "embetter_plug.layout" in graph["embetter_plug.encoder"]
    assert _owner("embetter_plug.store.cache") == "store"
    assert _owner("embetter_plug.store") == "store"
    assert _owner("embetter_plug._utils") == ""


def test_no_import_circle():
    graph = _graph()
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_no_private_name_or_module_of_another_subpackage():
    wrong = []
    for name in MODULES:
        here = _owner(name)
        for target, imported, line in _imports(name):
            there = _owner(target)
            if there == here:
                continue
            inner = target.split(".")[2 if there else 1:]
            if there and any(p.startswith("_") for p in inner):
                wrong.append(f"{name}:{line} imports the private module {target}")
            if imported and imported.startswith("_") and not imported.startswith("__"):
                wrong.append(f"{name}:{line} imports the private name {target}.{imported}")
    assert not wrong, "\n".join(wrong)


def test_root_holds_the_estimators_shared_modules_and_subpackages():
    entries = {p.name for p in PKG_DIR.iterdir() if p.name != "__pycache__"}
    modules = {e.removesuffix(".py") for e in entries if e.endswith(".py")}
    folders = {e for e in entries if (PKG_DIR / e).is_dir()}
    data = entries - {e for e in entries if e.endswith(".py")} - folders
    assert modules == ROOT_MODULES | REEXPORTS
    assert folders - {"data"} == SUBPACKAGES
    assert not data, f"unexpected files at the package root: {sorted(data)}"
    for sub in SUBPACKAGES:
        assert (PKG_DIR / sub / "__init__.py").is_file(), sub


def test_reexport_modules_only_reexport():
    for name in REEXPORTS:
        tree = ast.parse((PKG_DIR / f"{name}.py").read_text())
        kinds = {type(n).__name__ for n in tree.body}
        assert kinds <= {"Expr", "ImportFrom", "Assign"}, (name, kinds)


_IMPORT_ALL = r"""
import importlib, json, sys
names, failed, unresolved, optional = json.loads(sys.argv[1]), {}, {}, []
for name in names:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:  # an optional extra (ray, ...) that is not installed
        if (exc.name or "").split(".")[0] == "embetter_plug":
            failed[name] = repr(exc)
        else:
            optional.append(name)
        continue
    except Exception as exc:
        failed[name] = repr(exc)
        continue
    for public in getattr(module, "__all__", []):
        try:
            getattr(module, public)
        except ModuleNotFoundError:
            optional.append(f"{name}.{public}")
        except Exception as exc:
            unresolved[f"{name}.{public}"] = repr(exc)
print(json.dumps({"failed": failed, "unresolved": unresolved, "optional": optional}))
"""


@pytest.mark.parametrize("order", ["sorted", "reversed"])
def test_every_module_imports_in_a_fresh_interpreter(order):
    names = sorted(MODULES)
    names = names if order == "sorted" else names[::-1]
    run = subprocess.run([sys.executable, "-c", _IMPORT_ALL, json.dumps(names)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert not out["failed"], out["failed"]
    assert not out["unresolved"], out["unresolved"]


def test_no_module_of_the_root_shadows_a_public_name():
    """A submodule shares no name with a public name of the package: importing
    ``embetter_plug.<name>`` sets that attribute of the package to the module, so a function of
    the same name (``embetter_plug.image_attention``) would turn into a module."""
    import embetter_plug

    modules = {p.stem for p in PKG_DIR.glob("*.py")} | {
        p.name for p in PKG_DIR.iterdir() if (p / "__init__.py").exists()}
    assert not modules & set(embetter_plug.__all__), sorted(modules & set(embetter_plug.__all__))
