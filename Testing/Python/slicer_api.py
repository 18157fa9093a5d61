"""Shared helpers of the Slicer-facing tests: the Slicer API name inventory and the module's syntax tree.

The inventory (``../shared/slicer-api`` next to the repository, or ``$SLICER_API_DIR``) lists the
names that exist in 3D Slicer; Slicer itself cannot run here, so the module is checked against it.
"""

from __future__ import annotations

import ast
import os
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_FILE = ROOT / "BrainTumorSegmentation.py"
UI_FILE = ROOT / "Resources" / "UI" / "BrainTumorSegmentation.ui"
API_DIR = Path(os.environ.get("SLICER_API_DIR", ROOT.parent / "shared" / "slicer-api"))


def api_lines(name: str) -> list[str]:
    path = API_DIR / name
    if not path.is_file():
        pytest.skip(f"Slicer API inventory not found at {API_DIR} (set SLICER_API_DIR)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


@cache
def util_names() -> frozenset[str]:
    return frozenset(api_lines("python-util.txt"))


@cache
def python_module_names() -> frozenset[str]:
    """``"module name"`` lines, e.g. ``"slicer.packaging pip_ensure"``."""
    return frozenset(api_lines("python-modules.txt"))


@cache
def mrml_methods() -> dict[str, set[str]]:
    """Methods declared by each MRML / Slicer VTK class (without inheritance)."""
    out: dict[str, set[str]] = {}
    for line in api_lines("mrml-methods.txt"):
        parts = line.split()
        if parts[1] != "__base__":
            out.setdefault(parts[0], set()).add(parts[1])
    return out


@cache
def mrml_bases() -> dict[str, str]:
    return {line.split()[0]: line.split()[2] for line in api_lines("mrml-methods.txt") if " __base__ " in line}


@cache
def mrml_enums() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for line in api_lines("mrml-enums.txt"):
        cls, name = line.split()
        out.setdefault(cls, set()).add(name.split(".")[-1])
    return out


@cache
def common_methods() -> frozenset[str]:
    return frozenset(api_lines("vtk-common-methods.txt"))


@cache
def vtk_classes() -> frozenset[str]:
    return frozenset(api_lines("vtk-classes.txt"))


@cache
def renamed() -> dict[str, str]:
    return dict(line.split()[:2] for line in api_lines("renamed.txt"))


@cache
def widget_groups() -> list[set[str]]:
    """The groups of widgets.txt, in file order (see its README)."""
    path = API_DIR / "widgets.txt"
    if not path.is_file():
        pytest.skip(f"Slicer API inventory not found at {API_DIR}")
    groups: list[set[str]] = []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            groups.append(set())
        elif line.strip():
            groups[-1].add(line.strip())
    return groups


def ui_loadable_classes() -> set[str]:
    """Classes a .ui file loaded by slicer.util.loadUI can create: groups 1-5 (group 6 has no designer plugin)."""
    return set().union(*widget_groups()[:5])


def all_widget_classes() -> set[str]:
    return set().union(*widget_groups())


def class_has_method(cls: str, method: str) -> bool:
    """Whether ``cls`` or one of its bases declares ``method``; classes outside Slicer end in the common VTK methods."""
    methods, bases = mrml_methods(), mrml_bases()
    seen = set()
    while cls and cls not in seen:
        seen.add(cls)
        if method in methods.get(cls, ()):
            return True
        cls = bases.get(cls, "")
    return method in common_methods()


def any_class_has_method(method: str) -> bool:
    return method in common_methods() or any(method in methods for methods in mrml_methods().values())


@cache
def module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(), filename=str(MODULE_FILE))


def dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attribute accesses on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def parameter_node_fields() -> dict[str, str]:
    """Fields of the module's ``@parameterNodeWrapper`` class: name -> annotation source."""
    for node in ast.walk(module_tree()):
        if isinstance(node, ast.ClassDef) and any(dotted(d) == "parameterNodeWrapper" for d in node.decorator_list):
            return {
                item.target.id: ast.unparse(item.annotation)
                for item in node.body
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            }
    raise AssertionError("no @parameterNodeWrapper class in BrainTumorSegmentation.py")


def ui_widgets() -> dict[str, str]:
    """Widget name -> class of every widget in the .ui file."""
    return {m.group(2): m.group(1) for m in re.finditer(r'<widget class="(\w+)" name="(\w+)"', UI_FILE.read_text())}
