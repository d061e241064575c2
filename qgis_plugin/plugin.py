"""The plugin object QGIS loads: toolbar and menu actions, the photo drop handler, the time and search docks,
Processing, and the message bar: a running batch says what it waits for (engine start, model load, a first
model's constants, photos); a batch with failures leaves a message that stays, with a button to its failures."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsProject
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QFileDialog, QInputDialog, QProgressBar, QPushButton

from . import postgis_case, surface_view

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
        self.show_all_action: QAction | None = None
        self.progress_items: dict[int, tuple] = {}  # id(task) -> (message bar item, its progress bar)
        self.failure_message = None  # the last batch-with-failures message (stays until dismissed)

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
        self._action("Shadow locus of the selected photo…", self.open_shadow)
        self.show_all_action = self._action("Show every photo's surface", surface_view.set_show_all)
        self.show_all_action.setCheckable(True)
        self.show_all_action.setToolTip("Draw the likelihood rasters and credible regions of every photo, not only "
                                        "the selected photo's")
        self._action("Open a PostGIS case…", self.open_case)
        self._action("Locate photos into the PostGIS case…", self.pick_photos_for_case)
        self._action("Settings…", self.open_settings)
        QgsProject.instance().readProject.connect(self._on_project_read)
        self.drop_handler = PhotoDropHandler(self.predict)
        self.iface.registerCustomDropHandler(self.drop_handler)
        self.time_dock = TimePosteriorDock(self.iface)
        self.iface.addDockWidget(Qt.RightDockWidgetArea, self.time_dock)
        self.search_dock = SearchDock(self.iface)
        self.iface.addDockWidget(Qt.RightDockWidgetArea, self.search_dock)

    def unload(self):
        from .ui.shadow_dialog import cancel_running

        for task in self.tasks:
            task.cancel()
        cancel_running()
        try:
            QgsProject.instance().readProject.disconnect(self._on_project_read)
        except TypeError:
            pass
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
    def predict(self, photos: list[str], case: str | None = None) -> PredictTask | None:
        """Start a background prediction for one batch of photo files or folders; its layers form one group (with
        `case`, a PostGIS case's target, the results go into the case and its layers are reloaded).

        With a known capture time in the settings every place is predicted given it, and the group's name (which
        the message bar repeats) says so: "... (given 2024-07-14 18:30)"."""
        try:
            request = new_request(photos, load_settings())
            if case is not None:
                request = dataclasses.replace(request, out_gpkg=case)
        except (EngineError, OSError, ValueError) as exc:
            self._message(f"{exc}; fix it in gtloc's settings" if isinstance(exc, ValueError) else str(exc),
                          Qgis.Warning)
            return None
        self.batches += 1
        first = Path(photos[0]).name
        more = f" + {len(photos) - 1}" if len(photos) > 1 else ""
        given = f" (given {describe_time(request.time)})" if request.time else ""
        group = f"gtloc {dt.datetime.now():%H:%M:%S} {first}{more}{given}"
        if case is not None:
            group = f"gtloc case {postgis_case.case_name(case)}"
        task = PredictTask(shared_client(), request, group, on_done=self._task_done)
        self._show_progress(task)
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

    def open_case(self) -> None:
        """Ask for a PostGIS case (remembered), add its layers; predict and search then work against it."""
        target = self._ask_case()
        if target:
            try:
                postgis_case.show_case(target, f"gtloc case {postgis_case.case_name(target)}")
            except ValueError as exc:
                self._message(str(exc), Qgis.Warning)

    def pick_photos_for_case(self) -> None:
        target = postgis_case.remembered_case() or self._ask_case()
        if not target:
            return
        pattern = " ".join(f"*{s}" for s in sorted(PHOTO_SUFFIXES))
        files, _ = QFileDialog.getOpenFileNames(self.iface.mainWindow(), f"Photos to locate into {target}", "",
                                                f"Photos ({pattern} {pattern.upper()})")
        if files:
            self.predict(files, case=target)

    def _ask_case(self) -> str | None:
        text, ok = QInputDialog.getText(
            self.iface.mainWindow(), "Open a PostGIS case", "postgresql://USER@HOST/CASE or service=NAME (the "
            "password comes from PGPASSWORD or ~/.pgpass, never here):", text=postgis_case.remembered_case())
        text = text.strip()
        if not ok or not text:
            return None
        if not postgis_case.is_case_target(text):
            self._message(f"'{text}' is not a PostGIS case: write postgresql://USER@HOST/CASE or service=NAME",
                          Qgis.Warning)
            return None
        postgis_case.remember_case(text)
        return text

    def export_layers(self):
        from processing import execAlgorithmDialog

        execAlgorithmDialog("gtloc:export", {})

    def open_shadow(self):
        from .ui.shadow_dialog import open_shadow_dialog

        return open_shadow_dialog(self.iface)

    def open_settings(self):
        from .ui.settings_dialog import SettingsDialog

        if SettingsDialog(self.iface.mainWindow()).exec_():
            shutdown_shared()  # the next request starts the engine with the new settings

    # -- helpers ------------------------------------------------------------------------------------------------
    def _show_progress(self, task: PredictTask) -> None:
        """A message bar item that follows the task's stage until it ends (it has a progress bar for photos)."""
        bar = self.iface.messageBar()
        item = bar.createMessage("gtloc", f"{task.group_name}: starting")
        progress = QProgressBar()
        progress.setRange(0, 100)
        progress.setMaximumWidth(200)
        item.layout().addWidget(progress)
        bar.pushWidget(item, Qgis.Info)
        self.progress_items[id(task)] = (item, progress)
        task.stage_changed.connect(lambda text: item.setText(f"{task.group_name}: {text}"))
        task.progressChanged.connect(lambda value: progress.setValue(int(value)))

    def _task_done(self, task: PredictTask) -> None:
        if task in self.tasks:
            self.tasks.remove(task)
        item, _ = self.progress_items.pop(id(task), (None, None))
        if item is not None:
            try:
                self.iface.messageBar().popWidget(item)
            except RuntimeError:  # the analyst closed it already
                pass
        if task.error:
            self._message(f"{task.group_name}: {task.error}", Qgis.Critical)
            return
        summary = task.summary or {}
        n_failed = summary.get("n_failed", 0)
        text = (f"{task.group_name}: {summary.get('n_done', 0)} located, {summary.get('n_skipped', 0)} already done, "
                f"{n_failed} failed" + (" (cancelled)" if summary.get("cancelled") else ""))
        if not n_failed:
            self._message(text, Qgis.Success)
            return
        # Failures stay on screen until dismissed, with the reasons one click away (QGIS's own "Task complete"
        # would otherwise cover a message that goes after a few seconds).
        first = (summary.get("failures") or [{}])[0]
        if first.get("reason"):
            text += f"; first: {Path(first.get('path', '')).name}: {first['reason']}"
        item = self.iface.messageBar().createMessage("gtloc", text)
        failures = task.layers.failures if task.layers is not None else None
        if failures is not None:
            button = QPushButton("Show failures")
            button.clicked.connect(lambda: self.iface.showAttributeTable(failures))
            item.layout().addWidget(button)
        self.iface.messageBar().pushWidget(item, Qgis.Warning, 0)
        self.failure_message = item

    def _on_project_read(self, *args) -> None:
        surface_view.reattach()

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
