"""3D Slicer module: segment glioma sub-regions in T1, T1ce, T2 and FLAIR MRI.

Thin on purpose: the network, the pre- and postprocessing and the file outputs live in the
Slicer-free package ``BrainTumorSeg``; this module writes the four input volumes to a temporary
folder, runs ``brain-tumor-seg segment --progress json`` in a child process of Slicer's Python
(so the GUI stays responsive and Cancel can kill it), and imports the result as a segmentation
node. Nothing here imports PyTorch: it is installed (after asking) on the first Apply.
Models a user trained with ``brain-tumor-seg train`` are offered too, from a models folder kept
in the application settings (Advanced > Models folder).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from BrainTumorSeg.cli_events import CliEvent, volume_rows
from BrainTumorSeg.cli_process import CliProcess
from BrainTumorSeg.dependencies import TORCH_REQUIREMENT, missing_requirements, requirements_file, torch_too_old
from BrainTumorSeg.edit_check import voxel_digest
from BrainTumorSeg.labels import SEGMENTS
from BrainTumorSeg.models.card import available_models
from BrainTumorSeg.resources import sample_case_dir
from BrainTumorSeg.segment_choices import (
    Device,
    InferenceMode,
    Mirroring,
    OfferedModels,
    Postprocessing,
    SegmentChoices,
    SliceAxis,
    offered_models,
    segment_arguments,
)
from BrainTumorSeg.slicer_inputs import (
    MODALITIES,
    assign_modalities,
    input_file_name,
    model_label,
    model_tooltip,
    repeated_input,
)

MODALITY_TITLES = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}
SAMPLE_CATEGORY = "BrainTumorSegmentation"
SAMPLE_NAME = "BrainTumorSegmentationSample"
FINGERPRINT_ATTRIBUTE = "BrainTumorSegmentation.ResultFingerprint"
# The user's models folder is an application setting (QSettings), not part of the scene.
MODELS_FOLDER_SETTING = "BrainTumorSegmentation/ModelsFolder"


#
# BrainTumorSegmentation
#


class BrainTumorSegmentation(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Brain Tumor Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["BrainTumorSeg developers"]
        self.parent.helpText = _("""
Segments a glioma into necrotic and non-enhancing tumor core, edema and enhancing tumor from four
co-registered MRI sequences (T1, T1 post-contrast, T2, FLAIR) with a deep network, on the CPU or a GPU.
Select the four volumes (they are guessed from the volume names), pick a model, click Apply.
The result is a segmentation that can be corrected in Segment Editor; the volumes of the segments are
shown in millilitres. The same networks run outside Slicer with the <code>brain-tumor-seg</code> command.
<p>Models and the papers they follow:</p>
<ul>
<li>U-Net: Ronneberger, Fischer, Brox. U-Net: Convolutional Networks for Biomedical Image Segmentation. MICCAI 2015.</li>
<li>TwoPathCNN and cascade CNNs: Havaei et al. Brain Tumor Segmentation with Deep Neural Networks.
Medical Image Analysis 35, 2017.</li>
<li>FC-DenseNet: Jegou et al. The One Hundred Layers Tiramisu: Fully Convolutional DenseNets for Semantic Segmentation.
CVPR Workshops 2017.</li>
<li>PSPNet: Zhao et al. Pyramid Scene Parsing Network. CVPR 2017.</li>
<li>SegResNet: Myronenko. 3D MRI Brain Tumor Segmentation Using Autoencoder Regularization. BrainLes 2018.</li>
</ul>
<p>Data and labels: Menze et al. The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS). IEEE TMI 34(10), 2015;
Bakas et al. Advancing The Cancer Genome Atlas glioma MRI collections with expert segmentation labels and radiomic features.
Scientific Data 4, 2017.</p>
<p>Research use only; not for clinical diagnosis.</p>
""")
        self.parent.acknowledgementText = _("""
The models were trained on the BraTS 2018 training data (Menze et al. 2015, Bakas et al. 2017,
Bakas et al. 2018, arXiv:1811.02629).
The bundled sample case Brats18_CBICA_AQP_1 comes from the same collection. The module's structure follows
3D Slicer's scripted module template; it uses MONAI and PyTorch (through the SlicerPyTorch extension).
""")
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Register sample data sets in Sample Data module
#


def sampleFiles() -> dict[str, Path]:
    """The bundled sample case's image of each modality (BraTS names)."""
    folder = sample_case_dir()
    return {m: folder / f"{folder.name}_{m}.nii.gz" for m in MODALITIES}


def registerSampleData() -> None:
    """Offer the bundled case (four sequences) in the Sample Data module."""
    import SampleData

    files = sampleFiles()
    logic = SampleData.SampleDataLogic
    if hasattr(logic, "registerCustomSampleDataCategory"):  # Slicer >= 5.12
        logic.registerCustomSampleDataCategory(SAMPLE_CATEGORY, title=_("Brain Tumor Segmentation"))
    logic.registerCustomSampleDataSource(
        category=SAMPLE_CATEGORY,
        sampleName=SAMPLE_NAME,
        thumbnailFileName=str(Path(__file__).parent / "Resources" / "Icons" / "BrainTumorSegmentation.png"),
        uris=[path.as_uri() for path in files.values()],
        fileNames=[path.name for path in files.values()],
        nodeNames=[path.name.removesuffix(".nii.gz") for path in files.values()],
        loadFileTypes="VolumeFile",
    )


#
# BrainTumorSegmentationParameterNode
#


@parameterNodeWrapper
class BrainTumorSegmentationParameterNode:
    """What the user chose: the four inputs, the output segmentation, the model and its run options."""

    t1Volume: vtkMRMLScalarVolumeNode
    t1ceVolume: vtkMRMLScalarVolumeNode
    t2Volume: vtkMRMLScalarVolumeNode
    flairVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    modelId: str = ""
    device: Device = Device.AUTO
    axis: SliceAxis = SliceAxis.MODEL
    mode: InferenceMode = InferenceMode.MODEL
    tta: Mirroring = Mirroring.MODEL
    postprocess: Postprocessing = Postprocessing.DEFAULT


#
# BrainTumorSegmentationWidget
#


class BrainTumorSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: inputs, model, options, Apply/Cancel, progress, results."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._resultNode = None
        self._pollTimer = None
        self._modelsFolderTimer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BrainTumorSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        modelsFolder = str(slicer.util.settingsValue(MODELS_FOLDER_SETTING, "") or "")
        self.logic = BrainTumorSegmentationLogic(modelsFolder)
        self.ui.modelsFolderPathLineEdit.currentPath = modelsFolder

        self._populateModels()
        self.ui.volumesTable.setHorizontalHeaderLabels([_("Segment"), _("Volume (mL)")])
        self.ui.volumesTable.horizontalHeader().setStretchLastSection(True)
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(200)
        self._pollTimer.connect("timeout()", self._onPollTimer)
        # The path changes with every key typed: look at the folder once the typing pauses.
        self._modelsFolderTimer = qt.QTimer()
        self._modelsFolderTimer.setSingleShot(True)
        self._modelsFolderTimer.setInterval(700)
        self._modelsFolderTimer.connect("timeout()", self.onModelsFolderChanged)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.loadSampleButton.connect("clicked(bool)", self.onLoadSampleButton)
        self.ui.autoFillButton.connect("clicked(bool)", self.onAutoFillButton)
        self.ui.show3DButton.connect("toggled(bool)", self.onShow3DToggled)
        self.ui.editButton.connect("clicked(bool)", self.onEditButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.modelsFolderPathLineEdit.connect("currentPathChanged(QString)", self.onModelsFolderEdited)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.cancelRun()
        if self._modelsFolderTimer:
            self._modelsFolderTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.onModelsFolderChanged()  # keep a folder typed just before leaving the module
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelRun()
        self._resultNode = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onNodeAdded(self, caller, event) -> None:
        # Volumes get their names after being added: look at them once the loading call has returned.
        qt.QTimer.singleShot(0, self.fillEmptyInputs)

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        self.fillEmptyInputs()

    def setParameterNode(self, inputParameterNode: BrainTumorSegmentationParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._selectModel(self._parameterNode.modelId)
            self._updateGui()

    def fillEmptyInputs(self) -> None:
        """Select a volume for each empty input whose modality a loaded volume's name suggests."""
        if not self._parameterNode or self._run:
            return
        for modality, node in self.logic.guessInputs().items():
            attribute = f"{modality}Volume"
            if getattr(self._parameterNode, attribute) is None:
                setattr(self._parameterNode, attribute, node)

    def onAutoFillButton(self) -> None:
        guessed = self.logic.guessInputs()
        for modality, node in guessed.items():
            setattr(self._parameterNode, f"{modality}Volume", node)
        missing = [MODALITY_TITLES[m] for m in MODALITIES if m not in guessed]
        self._setStatus(_("No volume name suggests {names}.").format(names=", ".join(missing)) if missing else "")

    def _populateModels(self) -> None:
        """Offer the bundled models and the models folder's; a bad folder or card is reported, never raised."""
        offered = self.logic.offeredModels()
        for note in offered.notes:
            self._log(note)
        self._setStatus(" ".join(offered.notes))
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)  # the parameter node's model is set afterwards, by _selectModel
        combo.clear()
        for index, card in enumerate(sorted(offered.cards.values(), key=lambda c: (not c.default, c.name or c.id))):
            combo.addItem(model_label(card), card.id)
            combo.setItemData(index, model_tooltip(card), qt.Qt.ToolTipRole)
        combo.blockSignals(wasBlocked)

    def onModelsFolderEdited(self, path: str) -> None:
        self._modelsFolderTimer.start()

    def onModelsFolderChanged(self) -> None:
        """Remember the models folder for the next sessions and offer its models; the chosen model stays if still offered."""
        self._modelsFolderTimer.stop()
        folder = self.ui.modelsFolderPathLineEdit.currentPath.strip()
        if folder == self.logic.modelsFolder:
            return
        self.logic.modelsFolder = folder
        qt.QSettings().setValue(MODELS_FOLDER_SETTING, folder)
        self._populateModels()
        self._selectModel(self._parameterNode.modelId if self._parameterNode else "")
        self._updateGui()

    def _selectModel(self, modelId: str) -> None:
        index = self.ui.modelComboBox.findData(modelId) if modelId else -1
        self.ui.modelComboBox.setCurrentIndex(max(index, 0))
        self.onModelChanged()

    def onModelChanged(self, index: int = -1) -> None:
        combo = self.ui.modelComboBox
        combo.toolTip = combo.itemData(combo.currentIndex, qt.Qt.ToolTipRole) or ""
        if self._parameterNode is not None:
            self._parameterNode.modelId = combo.itemData(combo.currentIndex) or ""

    def _updateGui(self, caller=None, event=None) -> None:
        running = self._run is not None
        p = self._parameterNode
        ready = p is not None and all(getattr(p, f"{m}Volume") is not None for m in MODALITIES)
        ready = ready and self.ui.modelComboBox.count > 0
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.applyButton.enabled = running or ready
        self.ui.applyButton.toolTip = (
            _("Stop the segmentation (nothing is added to the scene)")
            if running
            else _("Segment the tumor")
            if ready
            else _("Select the T1, T1ce, T2 and FLAIR volumes")
        )
        for section in (self.ui.inputsCollapsibleButton, self.ui.modelCollapsibleButton, self.ui.advancedCollapsibleButton):
            section.enabled = not running
        self.ui.outputsCollapsibleButton.enabled = not running
        hasResult = self._resultNode is not None and slicer.mrmlScene.IsNodePresent(self._resultNode)
        self.ui.show3DButton.enabled = hasResult and not running
        self.ui.editButton.enabled = hasResult and not running

    def onLoadSampleButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to load the sample case."), waitCursor=True):
            volumes = self.logic.loadSampleCase()
            for modality, node in volumes.items():
                setattr(self._parameterNode, f"{modality}Volume", node)
            slicer.util.setSliceViewerLayers(background=volumes["t1ce"], fit=True)

    # Running

    def onApplyButton(self) -> None:
        if self._run is not None:
            self.cancelRun()
            return
        p = self._parameterNode
        volumes = {m: getattr(p, f"{m}Volume") for m in MODALITIES}
        # No wait cursor while the dependency and replace questions may be on screen.
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation.")):
            if not self.logic.ensureDependencies():
                self._setStatus(_("PyTorch and the other Python packages are needed to segment."))
                return
            target = p.outputSegmentation
            if target is not None and self.logic.hasUserEdits(target):
                replace = slicer.util.confirmYesNoDisplay(
                    _(
                        "Segmentation '{name}' has been changed since it was created. Replace its three tumor segments "
                        "with the new result?\n\nYes: replace them (other segments are kept).\nNo: put the new result "
                        "into a new segmentation."
                    ).format(name=target.GetName()),
                    windowTitle=_("Replace edited segmentation?"),
                )
                if not replace:
                    p.outputSegmentation = target = None
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation."), waitCursor=True):
            self.ui.logTextEdit.clear()
            self.ui.volumesTable.setRowCount(0)
            # Remember what the output looks like now: if it is edited while the CLI runs, the result goes elsewhere.
            targetFingerprint = self.logic.fingerprint(target) if target is not None else None
            self._run = self.logic.startSegmentation(volumes, self.logic.segmentChoices(p))
            self._run.target, self._run.targetFingerprint = target, targetFingerprint
            self._log(_("Started: {command}").format(command=" ".join(self._run.process.command)))
            self.ui.progressBar.value = 0
            self._setStatus(_("Starting..."))
            self._pollTimer.start()
            self._updateGui()

    def cancelRun(self) -> None:
        """Stop a running segmentation: kill its process tree and leave the scene as it was."""
        if self._run is None:
            return
        run, self._run = self._run, None
        if self._pollTimer:
            self._pollTimer.stop()
        self.logic.cancelSegmentation(run)
        self.ui.progressBar.value = 0
        self._setStatus(_("Cancelled; the scene was not changed."))
        self._log(_("Cancelled by the user."))
        self._updateGui()

    def _onPollTimer(self) -> None:
        run = self._run
        if run is None:
            return
        ended = run.process.finished  # checked first: once it is true, every line is already queued
        for event in run.process.poll():
            self._showProgress(event)
        for line in run.process.log_lines():
            self._log(line)
        if not ended:
            return
        self._pollTimer.stop()
        self._run = None
        try:
            with slicer.util.tryWithErrorDisplay(_("Segmentation failed."), waitCursor=True):
                try:
                    node = self.logic.finishSegmentation(run, self._runTarget(run))
                except RuntimeError as error:
                    self._log(_("Error: {message}").format(message=error))
                    self._setStatus(_("Failed: {message}").format(message=error))
                    raise
                self._resultNode = node  # the output selector stays as chosen: at "Create new", the next run keeps this one
                self._showVolumes(run.process.result)
                seconds = time.monotonic() - run.started
                self._setStatus(_("Done in {seconds:.0f} s.").format(seconds=seconds))
                self.ui.show3DButton.checked = False
        finally:
            self._updateGui()

    def _runTarget(self, run: SegmentationRun):
        """The segmentation a finished run writes into: None (a new node) if the chosen one was deleted or edited meanwhile."""
        target = run.target
        if target is None:
            return None
        if not slicer.mrmlScene.IsNodePresent(target):
            self._log(_("The output segmentation was deleted during the run; the result goes into a new segmentation."))
            return None
        if self.logic.fingerprint(target) != run.targetFingerprint:
            self._log(
                _("Segmentation '{name}' was changed during the run; the result goes into a new segmentation.").format(
                    name=target.GetName()
                )
            )
            return None
        return target

    def _showProgress(self, event: CliEvent) -> None:
        self.ui.progressBar.value = int(round(event.fraction * self.ui.progressBar.maximum))
        self._setStatus(event.message or event.stage)

    def _showVolumes(self, event: CliEvent | None) -> None:
        rows = volume_rows(event.volumes_ml if event else {}, {s.key: s.name for s in SEGMENTS})
        table = self.ui.volumesTable
        table.setRowCount(len(rows))
        for row, (label, ml) in enumerate(rows):
            table.setItem(row, 0, qt.QTableWidgetItem(label))
            table.setItem(row, 1, qt.QTableWidgetItem(f"{ml:.2f}"))
        self.ui.resultsCollapsibleButton.collapsed = False

    def _setStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text

    def _log(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)
        logging.info(text)

    # Results

    def onShow3DToggled(self, checked: bool) -> None:
        if self._resultNode is not None:
            self.logic.showIn3D(self._resultNode, checked)

    def onEditButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to open Segment Editor."), waitCursor=True):
            # The T1ce the result was computed from (its reference geometry), even if the selector changed since.
            node = self._resultNode
            source = node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) or self._parameterNode.t1ceVolume
            self.logic.openInSegmentEditor(node, source)


#
# BrainTumorSegmentationLogic
#


class SegmentationRun:
    """A started segmentation: its inputs, temporary folder and CLI process."""

    def __init__(self, volumes: dict, folder: Path, process: CliProcess) -> None:
        self.volumes = volumes
        self.folder = folder
        self.process = process
        self.started = time.monotonic()
        self.target = None  # the output segmentation chosen at start (None: a new node)
        self.targetFingerprint = None  # BrainTumorSegmentationLogic.fingerprint(target) at start


class BrainTumorSegmentationLogic(ScriptedLoadableModuleLogic):
    """Everything the module does, usable without the GUI (e.g. from the Python console or a test).

    ``modelsFolder``: a folder of models trained with ``brain-tumor-seg train`` (``<id>.json`` +
    ``<id>.safetensors``), offered with the bundled ones and passed to the CLI as ``--models-dir``.
    """

    def __init__(self, modelsFolder: str = "") -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.keepTemporaryFiles = False
        self.modelsFolder = modelsFolder

    def getParameterNode(self) -> BrainTumorSegmentationParameterNode:
        return BrainTumorSegmentationParameterNode(super().getParameterNode())

    @staticmethod
    def segmentChoices(parameters: BrainTumorSegmentationParameterNode) -> SegmentChoices:
        return SegmentChoices(
            model=parameters.modelId,
            device=parameters.device,
            axis=parameters.axis,
            mode=parameters.mode,
            tta=parameters.tta,
            postprocess=parameters.postprocess,
        )

    def offeredModels(self) -> OfferedModels:
        """The models to choose from (cards by id), the folders the CLI needs for them, and notes on the models folder."""
        return offered_models(self.modelsFolder)

    # Inputs

    @staticmethod
    def guessInputs() -> dict:
        """{modality: volume node} for the loaded scalar volumes whose names suggest a modality."""
        nodes = {node.GetID(): node for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")}
        nodes = {nodeId: node for nodeId, node in nodes.items() if not node.IsA("vtkMRMLLabelMapVolumeNode")}
        assigned = assign_modalities((nodeId, node.GetName()) for nodeId, node in nodes.items())
        return {modality: nodes[nodeId] for modality, nodeId in assigned.items()}

    @staticmethod
    def loadSampleCase() -> dict:
        """Load the bundled sample case through the Sample Data module; returns {modality: volume node}."""
        import SampleData

        registerSampleData()
        nodes = SampleData.SampleDataLogic().downloadSamples(SAMPLE_NAME)
        if len(nodes) != len(MODALITIES):
            raise RuntimeError(f"Loading the sample case gave {len(nodes)} volumes instead of {len(MODALITIES)}")
        return dict(zip(MODALITIES, nodes, strict=True))

    # Dependencies

    @staticmethod
    def ensureDependencies(askConfirmation: bool = True) -> bool:
        """Make sure PyTorch (SlicerPyTorch) and Resources/requirements.txt are installed; asks before installing.

        Returns False when the user declines; raises RuntimeError when the PyTorch extension is missing.
        """
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise RuntimeError(
                _("This module needs the PyTorch extension. Install 'PyTorch' in the Extensions Manager and restart Slicer.")
            ) from None
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            logging.info("PyTorch is required; installing it may take several minutes.")
            if torchLogic.installTorch(askConfirmation=askConfirmation, torchVersionRequirement=TORCH_REQUIREMENT) is None:
                return False
        elif oldTorch := torch_too_old():  # installTorch is not asked to upgrade a torch this process may have imported
            raise RuntimeError(
                _(
                    "PyTorch {version} is installed, this module needs torch{requirement}. Install PyTorch with that "
                    "version requirement in the PyTorch Utils module, then restart Slicer."
                ).format(version=oldTorch, requirement=TORCH_REQUIREMENT)
            )
        requirements = requirements_file()
        try:
            import slicer.packaging as packaging
        except ImportError:
            packaging = None
        if packaging is not None and hasattr(packaging, "pip_ensure"):  # Slicer >= 5.12
            try:
                # skip_in_testing: pip_ensure installs nothing in testing mode unless told; without a question
                # (the self-test) install, as the fallback below does.
                packaging.pip_ensure(
                    packaging.load_requirements(requirements),
                    prompt_install=askConfirmation,
                    requester=_("Brain Tumor Segmentation"),
                    skip_in_testing=askConfirmation,
                )
            except RuntimeError:  # the user declined
                return False
            return True
        missing = missing_requirements(requirements)
        if not missing:
            return True
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            _("Brain Tumor Segmentation needs these Python packages:\n{packages}\n\nInstall them now?").format(
                packages="\n".join(missing)
            ),
            windowTitle=_("Install Python packages"),
        ):
            return False
        slicer.util.pip_install(" ".join(missing))
        return True

    # Running

    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's own Python interpreter (PythonSlicer), which runs the CLI.

        Slicer puts PythonSlicer on PATH. There is no fallback to ``sys.executable``: inside the
        Slicer application that is SlicerApp-real, which would start another Slicer.
        """
        path = shutil.which("PythonSlicer")
        if not path:
            raise RuntimeError(_("PythonSlicer, Slicer's Python interpreter, was not found on PATH."))
        return path

    def startSegmentation(self, volumes: dict, options: SegmentChoices) -> SegmentationRun:
        """Write the four volumes to a temporary folder and start the CLI on them; returns at once."""
        missing = [MODALITY_TITLES[m] for m in MODALITIES if volumes.get(m) is None]
        if missing:
            raise ValueError(_("Select the {names} volume(s).").format(names=", ".join(missing)))
        if repeated := repeated_input({m: volumes[m].GetID() for m in MODALITIES}):
            first, second = repeated
            raise ValueError(
                _("Volume '{name}' is selected as both {first} and {second}: choose four different volumes.").format(
                    name=volumes[second].GetName(), first=MODALITY_TITLES[first], second=MODALITY_TITLES[second]
                )
            )
        folder = Path(slicer.util.tempDirectory("BrainTumorSegmentation"))
        try:
            files = {}
            for modality in MODALITIES:
                path = folder / "inputs" / input_file_name(volumes[modality].GetName(), modality)
                path.parent.mkdir(parents=True, exist_ok=True)
                if not slicer.util.exportNode(volumes[modality], str(path), {"useCompression": 0}, world=True):
                    raise RuntimeError(f"Could not write the {MODALITY_TITLES[modality]} volume to {path}")
                files[modality] = path
            arguments = segment_arguments(files, folder / "output", options, models_dirs=self.offeredModels().folders)
            process = CliProcess(arguments, python=self.pythonExecutable(), env=slicer.util.startupEnvironment())
            process.start()
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return SegmentationRun(dict(volumes), folder, process)

    def cancelSegmentation(self, run: SegmentationRun) -> None:
        """Kill the run's process tree and delete its temporary folder; the scene is not touched."""
        run.process.cancel()
        shutil.rmtree(run.folder, ignore_errors=True)

    def finishSegmentation(self, run: SegmentationRun, outputSegmentation=None):
        """Import a finished run's result into ``outputSegmentation`` (None: a new node); RuntimeError if it failed."""
        try:
            process = run.process
            process.poll()
            result = process.result
            if process.returncode != 0 or result is None:
                raise RuntimeError(process.error_message())
            modelId = json.loads(Path(result.outputs["volumes"]).read_text()).get("model", "")
            return self.importSegmentation(result.outputs["segmentation"], run.volumes["t1ce"], outputSegmentation, modelId)
        finally:
            if not self.keepTemporaryFiles:
                shutil.rmtree(run.folder, ignore_errors=True)

    def process(self, volumes: dict, options: SegmentChoices, outputSegmentation=None, timeout: float | None = None):
        """Segment and wait (blocking): returns (segmentation node, the CLI's final event)."""
        run = self.startSegmentation(volumes, options)
        try:
            run.process.wait(timeout)
        except Exception:
            self.cancelSegmentation(run)
            raise
        run.process.poll()
        for line in run.process.log_lines():
            logging.info(line)
        node = self.finishSegmentation(run, outputSegmentation)
        return node, run.process.result

    # Results

    def importSegmentation(self, path: str, referenceVolume, outputSegmentation=None, modelId: str = ""):
        """Put the three segments of a .seg.nrrd into ``outputSegmentation`` (or a new node named after the T1ce volume
        and ``modelId``, so that results of several models can be told apart), replacing earlier ones.

        Names, colors and terminology come from BrainTumorSeg.labels; the reference geometry is
        ``referenceVolume`` (T1ce) and the node is placed in that volume's study.
        """
        loaded = slicer.util.loadSegmentation(path)
        try:
            target = outputSegmentation
            if target is None:
                name = f"{referenceVolume.GetName()} tumor" + (f" ({modelId})" if modelId else "")
                name = slicer.mrmlScene.GenerateUniqueName(name)
                target = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
                target.CreateDefaultDisplayNodes()
            target.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
            segmentation = target.GetSegmentation()
            for spec in SEGMENTS:
                for oldId in {spec.key, segmentation.GetSegmentIdBySegmentName(spec.name)} - {""}:
                    if segmentation.GetSegment(oldId) is not None:
                        segmentation.RemoveSegment(oldId)
                if not segmentation.CopySegmentFromSegmentation(loaded.GetSegmentation(), spec.key, False):
                    raise RuntimeError(f"The result has no segment '{spec.key}' ({path})")
                segment = segmentation.GetSegment(spec.key)
                segment.SetName(spec.name)
                segment.SetColor(*(c / 255.0 for c in spec.color))
                if hasattr(segment, "SetTerminology"):  # Slicer >= 5.10
                    segment.SetTerminology(spec.terminology)
                else:
                    segment.SetTag(segment.GetTerminologyEntryTagName(), spec.terminology)
        finally:
            slicer.mrmlScene.RemoveNode(loaded)
        self.placeInStudy(target, referenceVolume)
        target.SetAttribute(FINGERPRINT_ATTRIBUTE, self.fingerprint(target))
        return target

    @staticmethod
    def placeInStudy(node, referenceVolume) -> None:
        """Move ``node`` under the subject hierarchy parent (study) of ``referenceVolume``."""
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        study = shNode.GetItemParent(shNode.GetItemByDataNode(referenceVolume))
        item = shNode.GetItemByDataNode(node)
        if study and item:
            shNode.SetItemParent(item, study)

    @staticmethod
    def fingerprint(segmentationNode) -> str:
        """Segment ids, names, voxel counts and a digest of the voxels: changes when the user edits the segmentation
        (also an edit that keeps the counts, such as moving a boundary; see :func:`voxel_digest`).

        Voxels are read from each segment's own (possibly shared) labelmap, those equal to its label
        value: this needs no reference volume and adds no node to the scene. A segment without a binary
        labelmap counts -1.
        """
        segmentation = segmentationNode.GetSegmentation()
        entries = []
        for index in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(index)
            segment = segmentation.GetSegment(segmentId)
            labelmap = segmentationNode.GetBinaryLabelmapInternalRepresentation(segmentId)
            voxels, digest = -1, ""
            if labelmap is not None and labelmap.IsEmpty():
                voxels = 0
            elif labelmap is not None:
                array = slicer.util.arrayFromSegmentInternalBinaryLabelmap(segmentationNode, segmentId)
                inside = array == segment.GetLabelValue()
                voxels, digest = int(inside.sum()), voxel_digest(inside)
            entries.append([segmentId, segment.GetName(), voxels, digest])
        return json.dumps(sorted(entries))

    def hasUserEdits(self, segmentationNode) -> bool:
        """Whether running into ``segmentationNode`` could overwrite work: it has segments that are not our untouched result."""
        if segmentationNode.GetSegmentation().GetNumberOfSegments() == 0:
            return False
        return segmentationNode.GetAttribute(FINGERPRINT_ATTRIBUTE) != self.fingerprint(segmentationNode)

    @staticmethod
    def showIn3D(segmentationNode, show: bool = True) -> None:
        if show:
            segmentationNode.CreateClosedSurfaceRepresentation()
        else:
            segmentationNode.RemoveClosedSurfaceRepresentation()

    @staticmethod
    def openInSegmentEditor(segmentationNode, sourceVolume) -> None:
        """Switch to Segment Editor with ``segmentationNode`` selected and ``sourceVolume`` (T1ce) as source volume."""
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.util.getModuleWidget("SegmentEditor").editor
        editor.setSegmentationNode(segmentationNode)
        editor.setSourceVolumeNode(sourceVolume)


#
# BrainTumorSegmentationTest
#


class BrainTumorSegmentationTest(ScriptedLoadableModuleTest):
    """In-Slicer self-test: the sample case through the logic with the default model on the CPU."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_GuessInputs()
        self.setUp()
        self.test_ModelsFolder()
        self.setUp()
        self.test_SameVolumeTwiceIsRefused()
        self.setUp()
        self.test_CancelLeavesSceneUnchanged()
        self.setUp()
        self.test_SegmentSampleCase()

    def test_GuessInputs(self):
        self.delayDisplay("Guessing the inputs from volume names")
        volumes = BrainTumorSegmentationLogic.loadSampleCase()
        guessed = BrainTumorSegmentationLogic.guessInputs()
        self.assertEqual({m: n.GetID() for m, n in guessed.items()}, {m: n.GetID() for m, n in volumes.items()})

    def test_ModelsFolder(self):
        self.delayDisplay("A model in the models folder appears in the panel")
        folder = Path(slicer.util.tempDirectory("BrainTumorSegmentationModels"))
        card = next(c for c in available_models().values() if not c.is_ensemble)  # stands in for a trained model
        shutil.copy(card.weights_path, folder / "user-test.safetensors")
        card.id, card.name, card.default, card.weights = "user-test", "User test", False, ""
        card.write(folder / "user-test.json")
        widget = slicer.modules.braintumorsegmentation.widgetRepresentation().self()
        pathEdit = widget.ui.modelsFolderPathLineEdit
        previous = pathEdit.currentPath
        try:
            pathEdit.currentPath = str(folder)
            widget.onModelsFolderChanged()  # at once, not after the typing pause
            self.assertGreaterEqual(widget.ui.modelComboBox.findData("user-test"), 0)
            self.assertEqual(slicer.util.settingsValue(MODELS_FOLDER_SETTING, ""), str(folder))
            self.assertEqual(widget.logic.offeredModels().folders, [folder.absolute()])
        finally:
            pathEdit.currentPath = previous
            widget.onModelsFolderChanged()
            shutil.rmtree(folder, ignore_errors=True)
        self.assertLess(widget.ui.modelComboBox.findData("user-test"), 0)

    def test_SameVolumeTwiceIsRefused(self):
        self.delayDisplay("One volume chosen for two sequences")
        logic = BrainTumorSegmentationLogic()
        volumes = logic.loadSampleCase()
        volumes["t2"] = volumes["t1"]
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(ValueError) as raised:
            logic.startSegmentation(volumes, SegmentChoices(device=Device.CPU))
        self.assertIn(f"'{volumes['t1'].GetName()}' is selected as both T1 and T2", str(raised.exception))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)

    def test_CancelLeavesSceneUnchanged(self):
        self.delayDisplay("Cancelling a run")
        logic = BrainTumorSegmentationLogic()
        self.assertTrue(logic.ensureDependencies(askConfirmation=False))
        volumes = logic.loadSampleCase()
        before = slicer.mrmlScene.GetNumberOfNodes()
        run = logic.startSegmentation(volumes, SegmentChoices(device=Device.CPU))
        deadline = time.monotonic() + 300
        while not any(event.stage == "predict" for event in run.process.events) and not run.process.finished:
            self.assertLess(time.monotonic(), deadline, "no prediction progress within 300 s")
            run.process.poll()
            slicer.app.processEvents()
            time.sleep(0.05)
        logic.cancelSegmentation(run)
        self.assertFalse(run.process.running)
        self.assertFalse(run.folder.exists())
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)

    def test_SegmentSampleCase(self):
        import numpy as np

        self.delayDisplay("Segmenting the sample case on the CPU (about a minute)")
        logic = BrainTumorSegmentationLogic()
        self.assertTrue(logic.ensureDependencies(askConfirmation=False))
        volumes = logic.loadSampleCase()
        segmentationNode, result = logic.process(volumes, SegmentChoices(device=Device.CPU), timeout=1800)

        segmentation = segmentationNode.GetSegmentation()
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        self.assertEqual(names, [spec.name for spec in SEGMENTS])
        for spec in SEGMENTS:
            # GetTag needs an output argument in Python; GetTerminology (Slicer >= 5.10) returns the tag's value.
            terminology = segmentation.GetSegment(spec.key).GetTerminology()
            self.assertIn(spec.type_code.split("^")[1], terminology)
        self.assertEqual(
            segmentationNode.GetNodeReference(segmentationNode.GetReferenceImageGeometryReferenceRole()).GetID(),
            volumes["t1ce"].GetID(),
        )
        self.assertFalse(logic.hasUserEdits(segmentationNode))
        self.assertEqual(set(result.outputs), {"labels", "segmentation", "volumes"})

        truthPath = next(sample_case_dir().glob("*_seg.nii.gz"))
        truthNode = slicer.util.loadLabelVolume(str(truthPath))
        truth = slicer.util.arrayFromVolume(truthNode) > 0
        predicted = np.zeros(truth.shape, dtype=bool)
        for spec in SEGMENTS:
            predicted |= slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, spec.key, volumes["t1ce"]) > 0
        dice = 2.0 * np.logical_and(truth, predicted).sum() / (truth.sum() + predicted.sum())
        self.delayDisplay(f"Whole tumor Dice against the ground truth: {dice:.3f}")
        self.assertGreaterEqual(dice, 0.8)

        defaultModel = next(card.id for card in available_models().values() if card.default)
        self.assertIn(f"tumor ({defaultModel})", segmentationNode.GetName())

        # Running again into the same, unedited node replaces the result without asking; an edit is noticed, also one
        # that keeps the voxel count (a boundary voxel moved)
        self.assertFalse(logic.hasUserEdits(segmentationNode))
        edema = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, "edema", volumes["t1ce"])
        inside, outside = np.argwhere(edema > 0)[0], np.argwhere(edema == 0)[0]
        edema[tuple(inside)], edema[tuple(outside)] = 0, 1
        slicer.util.updateSegmentBinaryLabelmapFromArray(edema, segmentationNode, "edema", volumes["t1ce"])
        self.assertTrue(logic.hasUserEdits(segmentationNode))
        self.delayDisplay("Test passed")
