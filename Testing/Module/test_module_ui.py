"""The panel's .ui loads with a real Qt loader and has every widget the module code uses."""
import ast
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "LesionDetector"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "LesionDetector.ui"
MODULE_FILE = MODULE_DIR / "LesionDetector.py"


def used_ui_names():
    return set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))


def parameter_fields():
    """Field names of LesionDetectorParameterNode, read from the source (the wrapper needs Slicer)."""
    tree = ast.parse(MODULE_FILE.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "LesionDetectorParameterNode":
            return {stmt.target.id for stmt in node.body if isinstance(stmt, ast.AnnAssign)}
    raise AssertionError("LesionDetectorParameterNode not found")


def test_ui_loads_and_has_every_widget_the_module_uses():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    QtUiTools = pytest.importorskip("PySide6.QtUiTools")
    from PySide6.QtCore import QFile, QIODevice
    from PySide6.QtWidgets import QApplication, QWidget

    app = QApplication.instance() or QApplication([])
    f = QFile(str(UI_FILE))
    assert f.open(QIODevice.ReadOnly)
    widget = QtUiTools.QUiLoader().load(f)
    f.close()
    assert widget is not None, "QUiLoader could not build the panel"
    missing = sorted(name for name in used_ui_names() if widget.findChild(QWidget, name) is None)
    assert not missing, f"widgets used in LesionDetector.py but absent from the .ui: {missing}"
    assert widget.findChild(QWidget, "detectButton").text() == "Detect"
    combo = widget.findChild(QWidget, "operatingPointComboBox")
    assert [combo.itemText(i) for i in range(combo.count())] == [
        "Sensitivity 0.95", "Sensitivity 0.90", "1 FP per scan", "4 FP per scan"]
    widget.deleteLater()
    app.processEvents()


def test_parameter_names_in_ui_match_the_parameter_node():
    root = ET.parse(UI_FILE).getroot()
    bound = {}
    for w in root.iter("widget"):
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = w.get("name")
    assert set(bound) == parameter_fields()


def test_combo_box_texts_are_the_logic_choices():
    import sys

    sys.path.insert(0, str(MODULE_DIR))
    import LesionDetector as module

    root = ET.parse(UI_FILE).getroot()

    def items(name):
        w = next(w for w in root.iter("widget") if w.get("name") == name)
        return [i.find("property/string").text for i in w.findall("item")]

    assert items("deviceComboBox") == list(module.DEVICES)
    assert items("operatingPointComboBox") == list(module.OPERATING_POINTS)
    assert set(module.OPERATING_POINTS.values()) == {"sensitivity_0.90", "sensitivity_0.95", "fp_per_scan_1", "fp_per_scan_4"}
