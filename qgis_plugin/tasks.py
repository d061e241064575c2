"""Background prediction: a QgsTask whose run() only talks to the engine and finished() alone touches layers.

    PredictRequest         what to predict and where the results go (data; EngineClient.predict's arguments)
    new_request(photos, settings)  a request writing a fresh, timestamped GeoPackage in the output folder, given
                           the settings' known capture time when there is one
    PredictTask            QgsTask: engine predict with progress and cancel; on success adds the styled layers;
                           its `stage_changed(text)` signal (main thread) says what it waits for
    describe_stage(stage, done, total, eta_s)   that text: 'starting the engine', 'loading the model', 'building
                           model constants (first time for this model, ~40 s left)', '3 of 12 photos'
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import asdict, dataclass

from qgis.core import Qgis, QgsMessageLog, QgsProject, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from .engine_client import STAGE_CONSTANTS, STAGE_LOADING_MODEL, STAGE_PHOTOS, STAGE_STARTING, EngineClient, EngineError
from .layers import PredictionLayers, add_to_project, load_prediction
from .postgis_case import is_case_target, show_case
from .settings import PluginSettings, parse_capture_time

LOG_TAG = "gtloc"


@dataclass
class PredictRequest:
    model: str
    photos: list[str]
    out_gpkg: str
    rasters_dir: str | None = None
    top_k: int = 5
    time: str | None = None  # known local capture time (ISO): places are predicted given it (where given when)
    res_deg: float | None = None  # the global surface's cell size; None: the engine's default

    def params(self) -> dict:
        return asdict(self)


def new_request(photos: list[str], settings: PluginSettings) -> PredictRequest:
    """A request for `photos` writing `<output folder>/gtloc-<local time>.gpkg` and its rasters folder.

    ValueError (one line) when the settings' known capture time is not a date and time (edited by hand)."""
    known_time = parse_capture_time(settings.known_time)
    if not settings.model:
        raise EngineError("not_configured", "no gtloc model chosen: set the checkpoint (.safetensors) in gtloc's "
                                            "settings")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    folder = settings.output_folder()
    folder.mkdir(parents=True, exist_ok=True)
    return PredictRequest(model=settings.model, photos=[str(p) for p in photos],
                          out_gpkg=str(folder / f"gtloc-{stamp}.gpkg"), rasters_dir=str(folder / f"gtloc-{stamp}"),
                          top_k=settings.top_k, time=known_time, res_deg=settings.res_deg)


def describe_stage(stage: str, done: int, total: int, eta_s: float | None = None) -> str:
    """What a prediction waits for, in words (the engine's progress stages, docs/protocol.md)."""
    if stage == STAGE_STARTING:
        return "starting the engine"
    if stage == STAGE_LOADING_MODEL:
        return "loading the model"
    if stage == STAGE_CONSTANTS:
        share = f", {done / total:.0%}" if total else ""
        left = f", ~{eta_s:.0f} s left" if eta_s is not None else ""
        return f"building model constants (first time for this model{share}{left})"
    if stage == STAGE_PHOTOS:
        return f"{done} of {total} photos"
    return stage


class PredictTask(QgsTask):
    """Predicts one batch of photos in the background; the batch becomes one layer group."""

    stage_changed = pyqtSignal(str)  # emitted from run()'s thread, delivered on the main thread

    def __init__(self, client: EngineClient, request: PredictRequest, group_name: str,
                 on_done: Callable[[PredictTask], None] | None = None):
        super().__init__(f"gtloc: {group_name}", QgsTask.CanCancel)
        self.client, self.request, self.group_name, self.on_done = client, request, group_name, on_done
        self.summary: dict | None = None
        self.error: str | None = None
        self.layers: PredictionLayers | None = None
        self.stage = ""

    def run(self) -> bool:
        try:
            self.summary = self.client.predict(
                **self.request.params(), is_cancelled=self.isCanceled, on_stage=self._on_stage,
                on_progress=lambda done, total: self.setProgress(100.0 * done / total if total else 0.0))
        except EngineError as exc:
            self.error = str(exc)
            return False
        return True

    def _on_stage(self, stage: str, done: int, total: int, eta_s: float | None) -> None:
        self.stage = describe_stage(stage, done, total, eta_s)
        self.stage_changed.emit(self.stage)

    def finished(self, ok: bool) -> None:
        def show() -> None:
            out = self.summary.get("out_gpkg", self.request.out_gpkg)
            if is_case_target(out):  # a PostGIS case: its layers reloaded, or added once
                self.layers = show_case(out, self.group_name, QgsProject.instance())
            else:
                self.layers = load_prediction(out)
                add_to_project(self.layers, self.group_name, QgsProject.instance())

        failures = (self.summary or {}).get("failures", [])
        finish_task(self, ok, show, [(f"{f['path']}: {f['reason']}", Qgis.Warning) for f in failures])


def finish_task(task, ok: bool, show: Callable[[], None], messages: list[tuple[str, object]]) -> None:
    """The end of an engine task (its finished(), on the main thread), for PredictTask and ShadowTask alike: on
    success `show()` adds the results to the project (a ValueError from it, an unreadable result, becomes the task's
    error) and `messages` are logged; without success the task was cancelled unless it has an error. The error is
    logged as critical, then task.on_done(task) is called."""
    if ok and task.summary is not None:
        try:
            show()
        except ValueError as exc:
            task.error = str(exc)
        for text, level in messages:
            QgsMessageLog.logMessage(text, LOG_TAG, level)
    elif task.error is None:
        task.error = "cancelled"
    if task.error:
        QgsMessageLog.logMessage(f"{task.group_name}: {task.error}", LOG_TAG, Qgis.Critical)
    if task.on_done is not None:
        task.on_done(task)
