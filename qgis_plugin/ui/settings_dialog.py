"""Settings dialog: the engine (its Python or gtloc executable; PATH when empty), model, top-k, output folder and
an optional known capture time (checked on OK: an unparseable one keeps the dialog open and says what to write)."""

from __future__ import annotations

from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
)

from ..engine_client import EngineClient, EngineError, engine_command, find_engine
from ..settings import TIME_FORMATS, load_settings, parse_capture_time, save_settings


class SettingsDialog(QDialog):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("gtloc settings")
        self.settings = load_settings()
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
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        test = QPushButton("Test engine")
        test.clicked.connect(self.test_engine)
        form.addRow("Engine (Python or gtloc)", self.engine)
        form.addRow("Model", self.model)
        form.addRow("Candidate places", self.top_k)
        form.addRow("Output folder", self.out_dir)
        form.addRow("Known capture time (local, optional)", self.known_time)
        form.addRow(test, self.status)
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

    def test_engine(self) -> None:
        """Start a throwaway worker with the values in the dialog and show what it reports."""
        client = None
        try:
            client = EngineClient(engine_command(find_engine(self.engine.filePath())))
            params = {"model": self.model.filePath()} if self.model.filePath() else {}
            info = client.request("info", params, idle_timeout_s=120)
            text = f"engine {info['engine_version']}, protocol {info['protocol']}, {info['python']}"
            if "model" in info:
                text += f"; model sha256 {info['model']['sha256'][:12]}…"
            self.status.setText(text)
        except EngineError as exc:
            self.status.setText(f"error: {exc}")
        finally:
            if client is not None:
                client.stop()

    def accept(self) -> None:
        try:
            known_time = parse_capture_time(self.known_time.text())
        except ValueError as exc:  # stay open: the analyst fixes or clears the time
            self.status.setText(f"error: {exc}")
            self.known_time.setFocus()
            self.known_time.selectAll()
            return
        self.settings.known_time = known_time or ""
        self.settings.engine = self.engine.filePath()
        self.settings.model = self.model.filePath()
        self.settings.top_k = self.top_k.value()
        self.settings.out_dir = self.out_dir.filePath()
        save_settings(self.settings)
        super().accept()
