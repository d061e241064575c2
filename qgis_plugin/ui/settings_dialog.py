"""Settings dialog: the engine (its Python or gtloc executable; PATH when empty), model, top-k, output folder, an
optional known capture time and the surface resolution. OK refuses (and says why, keeping the dialog open) a model
or engine path that does not exist and an unparseable known time. "Test engine" starts a throwaway worker in a
QgsTask, so QGIS stays responsive while it starts (up to START_TIMEOUT_S), and shows what it reports or its one-line
error.

    SettingsDialog    the dialog; show_status(text) is its one status line (wrapped, never cut off)
    EngineProbeTask   QgsTask: run() starts the engine and asks `info`; on_done(task) runs on the main thread
"""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsApplication, QgsTask
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
)

from ..engine_client import START_TIMEOUT_S, EngineClient, EngineError, engine_command, find_engine
from ..settings import (
    DEVICE_CHOICES,
    RES_DEG_CHOICES,
    TIME_FORMATS,
    PluginSettings,
    load_settings,
    parse_capture_time,
    save_settings,
)

_BREAK = "\u200b"  # zero-width space: Qt wraps a POSIX path after each '/', a Windows one only where this follows '\\'


class EngineProbeTask(QgsTask):
    """Starts the engine `engine_argv` in a worker of its own and asks `info` (with `model` when given)."""

    def __init__(self, engine_argv: list[str], model: str | None, on_done):
        super().__init__("gtloc: test the engine", QgsTask.Flags())
        self.engine_argv, self.model, self.on_done = engine_argv, model, on_done
        self.info: dict | None = None
        self.error: str | None = None

    def run(self) -> bool:
        client = EngineClient(self.engine_argv, start_timeout_s=START_TIMEOUT_S)
        try:
            self.info = client.info(self.model, idle_timeout_s=START_TIMEOUT_S)
        except EngineError as exc:
            self.error = str(exc)
        finally:
            client.stop()
        return self.error is None

    def finished(self, ok: bool) -> None:
        if self.on_done is not None:
            self.on_done(self)


def describe_info(info: dict) -> str:
    """One line from an `info` result: engine version, protocol, the worker's Python; the model's trained heads."""
    text = f"engine {info['engine_version']}, protocol {info['protocol']}, {info['python']}"
    if info.get("device"):  # engines before --device did not say
        text += f", computes on {info['device']}"
    model = info.get("model")
    if model:
        heads = model.get("header", {}).get("heads_trained", {})
        trained = [name for name, done in heads.items() if done]
        text += (f"; model {Path(model['path']).name}: heads {', '.join(trained) or 'none trained'}"
                 f" (sha256 {model['sha256'][:12]}…)")
    return text


class SettingsDialog(QDialog):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("gtloc settings")
        self.settings = load_settings()
        self.probe: EngineProbeTask | None = None  # Python QgsTasks must stay referenced until they finish
        form = QFormLayout(self)
        self.engine = QgsFileWidget()
        self.engine.setFilePath(self.settings.engine)
        self.engine.lineEdit().setPlaceholderText(self._detected())
        self.model = QgsFileWidget()
        self.model.setFilter("gtloc checkpoints (*.safetensors)")
        self.model.setFilePath(self.settings.model)
        self.top_k = QSpinBox()
        self.top_k.setRange(1, 100)
        self.top_k.setValue(self.settings.top_k)
        self.out_dir = QgsFileWidget()
        self.out_dir.setStorageMode(QgsFileWidget.GetDirectory)
        self.out_dir.setFilePath(self.settings.out_dir)
        self.out_dir.lineEdit().setPlaceholderText(str(self.settings.output_folder()))
        self.known_time = QLineEdit(self.settings.known_time)
        self.known_time.setPlaceholderText("e.g. 2024-07-14T18:30; empty: the place from the image alone")
        self.known_time.setToolTip("When the local time the photos were taken is known (e.g. when they were "
                                   "posted), Locate photos, Locate a photo folder and dropped photos predict each "
                                   "photo's place given that time (where given when). The same time is used for "
                                   "every photo of a batch; clear it for photos taken at other times. "
                                   f"Accepted: {TIME_FORMATS}.")
        self.res_deg = QComboBox()
        for value in RES_DEG_CHOICES:
            self.res_deg.addItem(f"{value:g}°" + (" (default)" if value == PluginSettings.res_deg else ""), value)
        self.res_deg.setCurrentIndex(self.res_deg.findData(self.settings.res_deg))
        self.res_deg.setToolTip("Cell size of each photo's likelihood raster, candidate places and credible regions. "
                                "Verdicts do not depend on it: the claimed point itself is scored. Finer cells cost "
                                "more time per photo; the results record the size used (surface_res_deg).")
        self.device = QComboBox()
        for value in DEVICE_CHOICES:
            self.device.addItem({"auto": "Auto (GPU if there is one, else CPU)", "cpu": "CPU",
                                 "cuda": "GPU (CUDA)"}[value], value)
        self.device.setCurrentIndex(self.device.findData(self.settings.device))
        self.device.setToolTip("Where the engine computes. Auto takes the first NVIDIA GPU that the engine's torch "
                               "sees, else the CPU; GPU refuses to start without one. Test engine shows which "
                               "one it uses.")
        self.test_button = QPushButton("Test engine")
        self.test_button.setToolTip("Start the engine with these settings and show its version and the model's "
                                    "heads")
        self.test_button.clicked.connect(self.test_engine)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        form.addRow("Engine (Python or gtloc)", self.engine)
        form.addRow("Model", self.model)
        form.addRow("Candidate places", self.top_k)
        form.addRow("Output folder", self.out_dir)
        form.addRow("Known capture time (local, optional)", self.known_time)
        form.addRow("Surface resolution", self.res_deg)
        form.addRow("Compute on", self.device)
        form.addRow(self.test_button)
        form.addRow(self.status)  # a row of its own, the dialog's full width
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    @staticmethod
    def _detected() -> str:
        try:
            return f"auto: {find_engine('')}"
        except EngineError:
            return "auto: no gtloc on PATH"

    def show_status(self, text: str) -> None:
        """Show one status line in full: wrapped at spaces and path separators, the dialog taller if need be (a
        top-level window does not grow by itself for a label's wrapped lines)."""
        self.status.setText(text.replace("\\", "\\" + _BREAK))
        layout = self.layout()
        layout.activate()
        needed = layout.totalHeightForWidth(self.width()) if layout.hasHeightForWidth() else -1
        if needed > self.height():
            self.resize(self.width(), needed)

    def status_text(self) -> str:
        """The status line as written (without the break hints)."""
        return self.status.text().replace(_BREAK, "")

    def _model_problem(self) -> str | None:
        model = self.model.filePath().strip()
        if model and not Path(model).is_file():
            return (f"error: model {model} does not exist: choose a gtloc checkpoint (.safetensors), or leave the "
                    "model empty")
        return None

    def test_engine(self) -> EngineProbeTask | None:
        """Start a throwaway worker with the values in the dialog, in the background; its report (or error) replaces
        the status line when it is done. The button stays disabled meanwhile."""
        if self.probe is not None:
            return None
        problem = self._model_problem()
        if problem:
            self.show_status(problem)
            return None
        try:
            argv = engine_command(find_engine(self.engine.filePath()), str(self.device.currentData()))
        except EngineError as exc:
            self.show_status(f"error: {exc}")
            return None
        self.test_button.setEnabled(False)
        self.show_status(f"starting the engine ({argv[0]}): this can take up to {START_TIMEOUT_S:.0f} s…")
        self.probe = EngineProbeTask(argv, self.model.filePath().strip() or None, self._probe_done)
        QgsApplication.taskManager().addTask(self.probe)
        return self.probe

    def _probe_done(self, task: EngineProbeTask) -> None:
        self.probe = None
        self.test_button.setEnabled(True)
        if task.error is not None:
            self.show_status(f"error: {task.error}")
        elif task.info is not None:
            self.show_status(describe_info(task.info))
        else:
            self.show_status("error: the engine test was stopped before it answered")

    def done(self, result: int) -> None:
        """Closing while a test runs: the test finishes on its own (and stops its worker) without touching the
        closed dialog."""
        if self.probe is not None:
            self.probe.on_done = None
            self.probe = None
        super().done(result)

    def accept(self) -> None:
        try:
            known_time = parse_capture_time(self.known_time.text())
        except ValueError as exc:  # stay open: the analyst fixes or clears the time
            self.show_status(f"error: {exc}")
            self.known_time.setFocus()
            self.known_time.selectAll()
            return
        problem = self._model_problem()
        if problem:
            self.show_status(problem)
            self.model.lineEdit().setFocus()
            return
        engine = self.engine.filePath().strip()
        if engine and not Path(engine).is_file():
            self.show_status(f"error: engine {engine} does not exist: choose the engine's Python or its gtloc "
                             "executable, or leave it empty to find gtloc on PATH")
            self.engine.lineEdit().setFocus()
            return
        self.settings.known_time = known_time or ""
        self.settings.engine = self.engine.filePath()
        self.settings.model = self.model.filePath()
        self.settings.top_k = self.top_k.value()
        self.settings.out_dir = self.out_dir.filePath()
        self.settings.res_deg = float(self.res_deg.currentData())
        self.settings.device = str(self.device.currentData())
        save_settings(self.settings)
        super().accept()
