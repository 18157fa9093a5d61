"""Every Slicer name BrainTumorSegmentation.py uses exists in Slicer (../shared/slicer-api), none is deprecated.

Slicer cannot run here, so the module's syntax tree is checked against the inventory of
Slicer's Python utilities, MRML classes and widgets read from Slicer's source.
"""

from __future__ import annotations

import ast
import unittest

from slicer_api import (
    all_widget_classes,
    any_class_has_method,
    class_has_method,
    dotted,
    module_tree,
    mrml_enums,
    parameter_node_fields,
    python_module_names,
    renamed,
    util_names,
    vtk_classes,
)

# Qt classes the module creates that are not widgets (widgets.txt lists widget classes only).
QT_NON_WIDGETS = {"QTimer", "QTableWidgetItem", "Qt", "QSettings"}
# Modules of other Slicer extensions / Slicer modules the inventory does not cover, with the names used from them.
OTHER_MODULES = {
    "PyTorchUtils": {"PyTorchUtilsLogic"},  # SlicerPyTorch extension
}
PYTORCH_LOGIC_METHODS = {"torchInstalled", "installTorch"}  # PyTorchUtilsLogic, SlicerPyTorch


def nodes() -> list[ast.AST]:
    return list(ast.walk(module_tree()))


def imported_names() -> dict[str, str]:
    """Local name -> fully qualified name of every import in the module."""
    out = {}
    for node in nodes():
        if isinstance(node, ast.Import):
            for alias in node.names:
                out[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                out[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return out


def module_level_names() -> set[str]:
    """Names the module defines or imports at top level (classes, functions, constants)."""
    tree = module_tree()
    names = set(imported_names())
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def class_members(module: str, cls: str) -> set[str]:
    """Members of ``cls`` listed in python-modules.txt as ``"<module> <cls>.<member>"``."""
    prefix = f"{module} {cls}."
    return {line[len(prefix) :] for line in python_module_names() if line.startswith(prefix)}


def test_slicer_util_functions_exist():
    used = {node.attr for node in nodes() if isinstance(node, ast.Attribute) and dotted(node.value) == "slicer.util"}
    used |= {name.removeprefix("slicer.util.") for name in imported_names().values() if name.startswith("slicer.util.")}
    assert used, "the module should use slicer.util"
    assert used - util_names() == set()


def test_imports_from_slicer_python_modules_exist():
    checked = 0
    for qualified in imported_names().values():
        for module in ("slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "slicer.i18n", "slicer.packaging"):
            if qualified.startswith(module + "."):
                name = qualified[len(module) + 1 :]
                assert f"{module} {name}" in python_module_names(), qualified
                checked += 1
    assert checked >= 6


def test_slicer_packaging_and_sample_data_calls_exist():
    """``packaging.X`` (slicer.packaging), ``SampleData.SampleDataLogic.X`` and ``SampleDataLogic().X`` are real."""
    used = []
    for node in nodes():
        name = dotted(node) if isinstance(node, ast.Attribute) else None
        if name and name.startswith("packaging.") and name.count(".") == 1:
            used.append(("slicer.packaging", name.split(".")[1]))
        if name and name.startswith("SampleData.") and name.count(".") == 1:
            used.append(("SampleData", name.split(".")[1]))
        if name and name.startswith("SampleData.SampleDataLogic."):
            used.append(("SampleData", "SampleDataLogic." + name.split(".")[2]))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Call):
            if dotted(node.value.func) == "SampleData.SampleDataLogic":
                used.append(("SampleData", "SampleDataLogic." + node.attr))
        if name == "logic.registerCustomSampleDataCategory" or name == "logic.registerCustomSampleDataSource":
            used.append(("SampleData", "SampleDataLogic." + name.split(".")[1]))
    assert {("slicer.packaging", "pip_ensure"), ("slicer.packaging", "load_requirements")} <= set(used)
    assert ("SampleData", "SampleDataLogic.downloadSamples") in used
    assert ("SampleData", "SampleDataLogic.registerCustomSampleDataSource") in used
    missing = [f"{module} {name}" for module, name in used if f"{module} {name}" not in python_module_names()]
    assert missing == []


def test_slicer_classes_exist():
    """``slicer.vtkX``, ``from slicer import vtkX`` and class names passed as strings are real Slicer classes."""
    used = {node.attr for node in nodes() if isinstance(node, ast.Attribute) and dotted(node.value) == "slicer"}
    used = {name for name in used if name.startswith("vtk")}
    used |= {q.removeprefix("slicer.") for q in imported_names().values() if q.startswith("slicer.vtk")}
    for node in nodes():
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in {"AddNewNodeByClass", "getNodesByClass", "IsA", "GetFirstNodeByClass"} and node.args:
                if isinstance(node.args[0], ast.Constant):
                    used.add(node.args[0].value)
    assert {"vtkMRMLSegmentationNode", "vtkMRMLScalarVolumeNode", "vtkMRMLSubjectHierarchyNode"} <= used
    assert used - vtk_classes() == set()


def test_scene_methods_and_events_exist():
    """Calls on ``slicer.mrmlScene`` are vtkMRMLScene methods; its events are vtkMRMLScene enumerators."""
    methods, events = set(), set()
    for node in nodes():
        if isinstance(node, ast.Attribute) and dotted(node.value) == "slicer.mrmlScene":
            (events if node.attr.endswith("Event") else methods).add(node.attr)
    assert methods and events
    assert {m for m in methods if not class_has_method("vtkMRMLScene", m)} == set()
    assert events - mrml_enums()["vtkMRMLScene"] == set()


def test_vtk_style_method_calls_exist_on_some_mrml_class():
    """Every ``x.Method(...)`` call (capitalised, VTK style) on an object is a method of some MRML / VTK class.

    The receiver's class is not known statically, so the check is that the name exists on at least one
    class of the inventory (or on every VTK object); calls on the module's own names and on Qt/VTK
    modules are not VTK methods and are left out.
    """
    ours = module_level_names() - {"slicer"}
    called = set()
    for node in nodes():
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr[:1].isupper()):
            continue
        receiver = dotted(node.func.value) or ""
        root = node.func.value
        while isinstance(root, ast.Attribute | ast.Call):
            root = root.func if isinstance(root, ast.Call) else root.value
        if isinstance(root, ast.Name) and root.id in ours:
            continue  # the module's own classes, enums, qt / vtk modules
        if receiver.startswith("slicer.") and not receiver.startswith(("slicer.mrmlScene", "slicer.vtk")):
            continue
        called.add(node.func.attr)
    assert {"SetReferenceImageGeometryParameterFromVolumeNode", "CopySegmentFromSegmentation", "SetItemParent"} <= called
    assert {m for m in called if not any_class_has_method(m)} == set()


def test_specific_mrml_calls_are_on_the_right_class():
    """The calls that matter most for the result, checked on the class they are made on."""
    expected = {
        ("vtkMRMLSegmentationNode", "SetReferenceImageGeometryParameterFromVolumeNode"),
        ("vtkMRMLSegmentationNode", "CreateClosedSurfaceRepresentation"),
        ("vtkMRMLSegmentationNode", "RemoveClosedSurfaceRepresentation"),
        ("vtkMRMLSegmentationNode", "GetSegmentation"),
        ("vtkMRMLSegmentationNode", "CreateDefaultDisplayNodes"),
        ("vtkMRMLSegmentationNode", "SetAttribute"),
        ("vtkMRMLSegmentationNode", "GetReferenceImageGeometryReferenceRole"),
        ("vtkSegmentation", "CopySegmentFromSegmentation"),
        ("vtkSegmentation", "GetSegmentIdBySegmentName"),
        ("vtkSegmentation", "RemoveSegment"),
        ("vtkSegmentation", "GetNthSegmentID"),
        ("vtkSegment", "SetTerminology"),
        ("vtkSegment", "GetTerminologyEntryTagName"),
        ("vtkSegment", "SetTag"),
        ("vtkSegment", "SetColor"),
        ("vtkMRMLSubjectHierarchyNode", "GetSubjectHierarchyNode"),
        ("vtkMRMLSubjectHierarchyNode", "GetItemByDataNode"),
        ("vtkMRMLSubjectHierarchyNode", "GetItemParent"),
        ("vtkMRMLSubjectHierarchyNode", "SetItemParent"),
    }
    source = {node.attr for node in nodes() if isinstance(node, ast.Attribute)}
    assert {method for _, method in expected} - source == set(), "the module no longer makes these calls"
    assert {(cls, m) for cls, m in expected if not class_has_method(cls, m)} == set()


def test_no_deprecated_or_renamed_names():
    used = {node.attr for node in nodes() if isinstance(node, ast.Attribute)}
    used |= {node.id for node in nodes() if isinstance(node, ast.Name)}
    used |= {node.value for node in nodes() if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    deprecated = {name: renamed()[name] for name in used if name in renamed()}
    assert deprecated == {}


def test_qt_ctk_and_mrml_widget_classes_exist():
    used = {}
    for node in nodes():
        name = dotted(node) if isinstance(node, ast.Attribute) else None
        if name and name.count(".") >= 1 and name.split(".")[0] in ("qt", "ctk", "slicer"):
            head, cls = name.split(".")[:2]
            if head == "qt" or head == "ctk" or cls.startswith(("qMRML", "qSlicer")):
                used[cls] = head
    assert "QTimer" in used
    unknown = {cls for cls, head in used.items() if cls not in all_widget_classes() and cls not in QT_NON_WIDGETS}
    assert unknown == set()


def test_models_folder_is_an_application_setting_read_and_written_under_one_key():
    """Read with slicer.util.settingsValue, written with qt.QSettings().setValue, both under MODELS_FOLDER_SETTING."""
    calls = {}
    for node in nodes():
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            if dotted(node.func) == "slicer.util.settingsValue" or node.func.attr == "setValue":
                calls.setdefault(dotted(node.func) or node.func.attr, []).append(dotted(node.args[0]))
    assert set(calls["slicer.util.settingsValue"]) == {"MODELS_FOLDER_SETTING"}
    assert calls["setValue"] == ["MODELS_FOLDER_SETTING"]
    assert not {f for f in parameter_node_fields() if "folder" in f.lower()}, "the models folder is not part of the scene"


def test_other_extension_names_are_the_documented_ones():
    used = {node.attr for node in nodes() if isinstance(node, ast.Attribute) and dotted(node.value) in OTHER_MODULES}
    assert used <= set().union(*OTHER_MODULES.values())
    torch_calls = {
        node.func.attr
        for node in nodes()
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and dotted(node.func.value) == "torchLogic"
    }
    assert torch_calls == PYTORCH_LOGIC_METHODS


def test_base_class_members_used_through_self_exist():
    """``self.X`` in the Widget / Logic / Test classes: defined in the class, or a member of Slicer's base class."""
    tree = module_tree()
    unittest_members = set(dir(unittest.TestCase))
    mixin = class_members("slicer.util", "VTKObservationMixin")
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        bases = [dotted(b) for b in cls.bases]
        base = next((b for b in bases if b and b.startswith("ScriptedLoadableModule")), None)
        if base is None:
            continue
        own = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
        own |= {
            t.attr
            for n in ast.walk(cls)
            if isinstance(n, ast.Assign)
            for t in n.targets
            if isinstance(t, ast.Attribute) and dotted(t.value) == "self"
        }
        used = {n.attr for n in ast.walk(cls) if isinstance(n, ast.Attribute) and dotted(n.value) == "self"}
        inherited = used - own
        known = class_members("slicer.ScriptedLoadableModule", base)
        extra = mixin if "VTKObservationMixin" in bases else set()
        extra |= unittest_members if base == "ScriptedLoadableModuleTest" else set()
        assert inherited - known - extra == set(), cls.name


def test_module_does_not_import_torch_or_monai_at_import_time():
    for node in module_tree().body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not any(n.split(".")[0] in {"torch", "monai", "nibabel", "SimpleITK", "scipy"} for n in names)
