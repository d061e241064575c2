"""The plugin object QGIS loads: toolbar and menu actions, the photo drop handler, the time and search docks,
Processing."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from qgis.core import Qgis, QgsApplication
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QFileDialog

from .drop import PHOTO_SUFFIXES, PhotoDropHandler
from .engine_client import EngineError, shared_client, shutdown_shared
from .processing.provider import GtlocProvider
from .settings import describe_time, load_settings
from .tasks import PredictTask, new_request

MENU = "&gtloc"
ICON = str(Path(__file__).parent / "icon.svg")


class GtlocPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.actions: list[QAction] = []
        self.tasks: list[PredictTask] = []  # Python QgsTasks must stay referenced until they finish
        self.batches = 0
        self.drop_handler: PhotoDropHandler | None = None
        self.provider: GtlocProvider | None = None
        self.time_dock = None
        self.search_dock = None

    # -- QGIS plugin interface ----------------------------------------------------------------------------------
    def initProcessing(self):
        self.provider = GtlocProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):
        from .ui.search_dock import SearchDock
        from .ui.time_dock import TimePosteriorDock

        self.initProcessing()
        self._action("Locate photos…", self.pick_photos, toolbar=True)
        self._action("Locate a photo folder…", self.pick_folder)
        self._action("Export gtloc layers to GeoPackage…", self.export_layers)
        self._action("Settings…", self.open_settings)
        self.drop_handler = PhotoDropHandler(self.predict)
        self.iface.registerCustomDropHandler(self.drop_handler)
        self.time_dock = TimePosteriorDock(self.iface)
        self.iface.addDockWidget(Qt.RightDockWidgetArea, self.time_dock)
        self.search_dock = SearchDock(self.iface)
        self.iface.addDockWidget(Qt.RightDockWidgetArea, self.search_dock)

    def unload(self):
        for task in self.tasks:
            task.cancel()
        for action in self.actions:
            self.iface.removePluginMenu(MENU, action)
            self.iface.removeToolBarIcon(action)
            action.deleteLater()
        self.actions.clear()
        if self.drop_handler is not None:
            self.iface.unregisterCustomDropHandler(self.drop_handler)
            self.drop_handler = None
        if self.time_dock is not None:
            self.time_dock.disconnect_layers()
            self.iface.removeDockWidget(self.time_dock)
            self.time_dock.deleteLater()
            self.time_dock = None
        if self.search_dock is not None:
            self.search_dock.unload()
            self.iface.removeDockWidget(self.search_dock)
            self.search_dock.deleteLater()
            self.search_dock = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        shutdown_shared()

    # -- actions ------------------------------------------------------------------------------------------------
    def predict(self, photos: list[str]) -> PredictTask | None:
        """Start a background prediction for one batch of photo files or folders; its layers form one group.

        With a known capture time in the settings every place is predicted given it, and the group's name (which
        the message bar repeats) says so: "... (given 2024-07-14 18:30)"."""
        try:
            request = new_request(photos, load_settings())
        except (EngineError, OSError, ValueError) as exc:
            self._message(f"{exc}; fix it in gtloc's settings" if isinstance(exc, ValueError) else str(exc),
                          Qgis.Warning)
            return None
        self.batches += 1
        first = Path(photos[0]).name
        more = f" + {len(photos) - 1}" if len(photos) > 1 else ""
        given = f" (given {describe_time(request.time)})" if request.time else ""
        group = f"gtloc {dt.datetime.now():%H:%M:%S} {first}{more}{given}"
        task = PredictTask(shared_client(), request, group, on_done=self._task_done)
        self.tasks.append(task)
        QgsApplication.taskManager().addTask(task)
        return task

    def pick_photos(self):
        pattern = " ".join(f"*{s}" for s in sorted(PHOTO_SUFFIXES))
        files, _ = QFileDialog.getOpenFileNames(self.iface.mainWindow(), "Photos to locate", "",
                                                f"Photos ({pattern} {pattern.upper()})")
        if files:
            self.predict(files)

    def pick_folder(self):
        folder = QFileDialog.getExistingDirectory(self.iface.mainWindow(), "Folder of photos to locate")
        if folder:
            self.predict([folder])

    def export_layers(self):
        from processing import execAlgorithmDialog

        execAlgorithmDialog("gtloc:export", {})

    def open_settings(self):
        from .ui.settings_dialog import SettingsDialog

        if SettingsDialog(self.iface.mainWindow()).exec_():
            shutdown_shared()  # the next request starts the engine with the new settings

    # -- helpers ------------------------------------------------------------------------------------------------
    def _task_done(self, task: PredictTask) -> None:
        if task in self.tasks:
            self.tasks.remove(task)
        if task.error:
            self._message(f"{task.group_name}: {task.error}", Qgis.Critical)
            return
        summary = task.summary or {}
        text = (f"{task.group_name}: {summary.get('n_done', 0)} located, {summary.get('n_skipped', 0)} already done, "
                f"{summary.get('n_failed', 0)} failed" + (" (cancelled)" if summary.get("cancelled") else ""))
        self._message(text, Qgis.Warning if summary.get("n_failed") else Qgis.Success)

    def _message(self, text: str, level) -> None:
        # Errors stay until dismissed; other news goes after a few seconds.
        self.iface.messageBar().pushMessage("gtloc", text, level, 0 if level == Qgis.Critical else 8)

    def _action(self, text: str, slot, *, toolbar: bool = False) -> QAction:
        action = QAction(QIcon(ICON), text, self.iface.mainWindow())
        action.triggered.connect(slot)
        self.iface.addPluginToMenu(MENU, action)
        if toolbar:
            self.iface.addToolBarIcon(action)
        self.actions.append(action)
        return action
