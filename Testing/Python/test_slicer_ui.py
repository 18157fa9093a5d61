"""The panel's .ui file: known widget classes, every widget the module uses exists, and the parameter node binds to it."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET

from slicer_api import UI_FILE, dotted, module_tree, parameter_node_fields, ui_loadable_classes, ui_widgets

from BrainTumorSeg import segment_choices


def ui_root() -> ET.Element:
    return ET.parse(UI_FILE).getroot()


def used_ui_names() -> set[str]:
    """Every ``self.ui.<name>`` the module reads."""
    return {node.attr for node in ast.walk(module_tree()) if isinstance(node, ast.Attribute) and dotted(node.value) == "self.ui"}


def parameter_bindings() -> dict[str, str]:
    """Widget name -> SlicerParameterName of every widget bound to the parameter node."""
    out = {}
    for widget in ui_root().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                out[widget.get("name")] = prop.findtext("string")
    return out


def test_ui_file_is_well_formed_with_a_qmrmlwidget_top():
    root = ui_root()
    assert root.tag == "ui"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget"  # uiWidget.setMRMLScene(...) in setup() needs it
    assert root.findtext("class") == top.get("name") == "BrainTumorSegmentation"


def test_widget_and_layout_classes_can_be_created_by_load_ui():
    text = UI_FILE.read_text()
    classes = set(re.findall(r'<(?:widget|layout) class="(\w+)"', text))
    classes |= {el.findtext("class") for el in ui_root().iter("customwidget")}
    classes |= {el.findtext("extends") for el in ui_root().iter("customwidget")}
    assert {"qMRMLNodeComboBox", "ctkCollapsibleButton", "QProgressBar", "QTableWidget"} <= classes
    assert classes - ui_loadable_classes() == set()


def test_custom_widgets_are_declared():
    declared = {el.findtext("class") for el in ui_root().iter("customwidget")}
    used = set(ui_widgets().values())
    assert {c for c in used if c.startswith(("qMRML", "ctk"))} - declared == set()


def test_widget_names_are_unique():
    names = re.findall(r'<widget class="\w+" name="(\w+)"', UI_FILE.read_text())
    assert len(names) == len(set(names))


def test_every_widget_the_module_uses_exists():
    used = used_ui_names()
    assert {"applyButton", "progressBar", "statusLabel", "logTextEdit", "volumesTable", "modelComboBox"} <= used
    assert used - set(ui_widgets()) == set()


def test_panel_has_what_issue_7_asks_for():
    widgets = ui_widgets()
    for name in ("t1Selector", "t1ceSelector", "t2Selector", "flairSelector", "outputSegmentationSelector"):
        assert widgets[name] == "qMRMLNodeComboBox"
    assert widgets["volumesTable"] == "QTableWidget"
    assert widgets["progressBar"] == "QProgressBar"
    for name in ("applyButton", "show3DButton", "editButton", "loadSampleButton"):
        assert widgets[name] == "QPushButton"
    advanced = next(w for w in ui_root().iter("widget") if w.get("name") == "advancedCollapsibleButton")
    inside = {w.get("name") for w in advanced.iter("widget")}
    assert {"axisComboBox", "modeComboBox", "ttaComboBox", "postprocessComboBox", "modelsFolderPathLineEdit"} <= inside


def test_models_folder_selector_picks_a_folder_and_is_not_in_the_parameter_node():
    """An application setting (QSettings), not scene state; its tooltip says what the folder holds."""
    widget = next(w for w in ui_root().iter("widget") if w.get("name") == "modelsFolderPathLineEdit")
    assert widget.get("class") == "ctkPathLineEdit"
    props = {p.get("name"): p for p in widget.findall("property")}
    # Q_PROPERTYs of ctkPathLineEdit (CTK Libs/Widgets/ctkPathLineEdit.h) and QWidget's toolTip.
    assert set(props) <= {"toolTip", "filters", "showHistoryButton", "showBrowseButton", "label", "nameFilters"}
    assert props["filters"].findtext("set") == "ctkPathLineEdit::Dirs"
    assert "modelsFolderPathLineEdit" not in parameter_bindings()
    tip = props["toolTip"].findtext("string")
    assert "<id>.json" in tip and "<id>.safetensors" in tip and "brain-tumor-seg train" in tip


# Signals the module connects to, from the Qt and CTK headers (the inventory lists widget classes, not their signals).
WIDGET_SIGNALS = {
    "QPushButton": {"clicked(bool)", "toggled(bool)"},
    "QComboBox": {"currentIndexChanged(int)"},
    "ctkPathLineEdit": {"currentPathChanged(QString)", "validInputChanged(bool)"},
}


def test_connected_signals_exist_on_the_widget_class():
    widgets, connected = ui_widgets(), []
    for node in ast.walk(module_tree()):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "connect":
            receiver = node.func.value
            if isinstance(receiver, ast.Attribute) and dotted(receiver.value) == "self.ui":
                connected.append((receiver.attr, node.args[0].value))
    assert ("modelsFolderPathLineEdit", "currentPathChanged(QString)") in connected
    assert [(name, signal) for name, signal in connected if signal not in WIDGET_SIGNALS[widgets[name]]] == []


def test_slicer_parameter_names_match_parameter_node_fields():
    fields = parameter_node_fields()
    bindings = parameter_bindings()
    assert set(bindings.values()) - set(fields) == set()
    # Every field is bound to a widget, except the model, whose combo box the widget fills from the model cards.
    assert set(fields) - set(bindings.values()) == {"modelId"}
    assert len(bindings.values()) == len(set(bindings.values())), "a parameter bound to two widgets"


def test_bound_widgets_have_a_connector_for_the_field_type():
    """parameterNodeWrapper connects qMRMLNodeComboBox to node fields and QComboBox to Enum fields."""
    fields, widgets = parameter_node_fields(), ui_widgets()
    for widget, field in parameter_bindings().items():
        annotation = fields[field]
        if widgets[widget] == "qMRMLNodeComboBox":
            assert annotation.startswith("vtkMRML"), (widget, annotation)
        elif widgets[widget] == "QComboBox":
            enum_type = getattr(segment_choices, annotation)
            assert issubclass(enum_type, segment_choices.enum.Enum), (widget, annotation)
        else:
            raise AssertionError(f"no connector checked for {widgets[widget]} ({widget})")


def test_node_selectors_accept_the_field_node_types():
    fields = parameter_node_fields()
    for widget in ui_root().iter("widget"):
        if widget.get("class") != "qMRMLNodeComboBox":
            continue
        node_types = [s.text for p in widget.findall("property") if p.get("name") == "nodeTypes" for s in p.iter("string")]
        field = parameter_bindings()[widget.get("name")]
        assert node_types == [fields[field]], widget.get("name")


def test_node_selectors_get_the_scene():
    """Each qMRMLNodeComboBox receives mrmlSceneChanged from the top widget, or it stays empty in Slicer."""
    connected = {
        c.findtext("receiver")
        for c in ui_root().iter("connection")
        if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)" and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    selectors = {name for name, cls in ui_widgets().items() if cls == "qMRMLNodeComboBox"}
    assert selectors and selectors - connected == set()


def test_output_selector_creates_a_new_node_by_default():
    selector = next(w for w in ui_root().iter("widget") if w.get("name") == "outputSegmentationSelector")
    props = {p.get("name"): p for p in selector.findall("property")}
    assert props["noneEnabled"].findtext("bool") == "true"
    assert "new" in props["noneDisplay"].findtext("string").lower()
