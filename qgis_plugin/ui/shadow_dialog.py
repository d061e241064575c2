"""The shadow form on the selected photo: an object's height and its shadow's length (or the sun's elevation), the
shadow's bearing and the time, for one shadow or two (two objects of the scene, or one object at two times), with
their uncertainties; OK runs the locus in the background (shadow_task.ShadowTask) and adds it to the photo's group.

    ShadowDialog(target)       the form; .measurements() the engine's measurement dicts (ValueError on bad text)
    open_shadow_dialog(iface)  the form for the first selected photo of the active gtloc photos layer, then the task
    start_shadow(iface, request, target)  run a request as a ShadowTask; its layers and a message when done
    cancel_running()                      cancel the shadow tasks still running (plugin unload)
"""

from __future__ import annotations

from qgis.core import Qgis, QgsApplication
from qgis.PyQt.QtWidgets import (
    QDialog, QDialogButtonBox, QFormLayout, QGridLayout, QGroupBox, QLabel, QLineEdit, QVBoxLayout,
)

from ..engine_client import shared_client
from ..layers import KIND_PROPERTY
from ..settings import load_settings
from ..shadow_task import PhotoTarget, ShadowRequest, ShadowTask, measurement, new_shadow_request, photo_target

TIME_HELP = ("ISO 8601, e.g. 2024-06-21T14:05: without an offset the local clock at each place (its real time "
             "zone); with Z or +02:00 that instant")
# (field, label) of one shadow's column; the sigmas below are shared by both shadows.
SHADOW_FIELDS = (("height_m", "Object height"), ("length_m", "Shadow length (same unit)"),
                 ("elev_deg", "or sun elevation (deg)"), ("bearing_deg", "Shadow bearing (deg from north, optional)"),
                 ("time", "Time"))
SIGMA_FIELDS = (("height_sigma_m", "Height ±"), ("length_sigma_m", "Length ±"),
                ("elev_sigma_deg", "Elevation ± (deg, default 1)"), ("bearing_sigma_deg", "Bearing ± (deg, default 5)"),
                ("time_sigma_min", "Time ± (min)"))
_RUNNING: list[ShadowTask] = []  # Python QgsTasks must stay referenced until they finish


class ShadowDialog(QDialog):
    def __init__(self, target: PhotoTarget, parent=None, *, fused_with: str = ""):
        super().__init__(parent)
        self.target = target
        self.setWindowTitle(f"gtloc: shadow locus · {target.file_name}")
        layout = QVBoxLayout(self)
        shadows = QGroupBox("Shadows (the second is optional: another object, or the same one at another time)")
        grid = QGridLayout(shadows)
        self.fields: list[dict[str, QLineEdit]] = [{}, {}]
        for column, title in enumerate(("Shadow 1", "Shadow 2"), 1):
            grid.addWidget(QLabel(title), 0, column)
        for row, (name, label) in enumerate(SHADOW_FIELDS, 1):
            grid.addWidget(QLabel(label), row, 0)
            for column in range(2):
                edit = QLineEdit()
                edit.setObjectName(f"{name}_{column + 1}")
                if name == "time":
                    edit.setToolTip(TIME_HELP)
                grid.addWidget(edit, row, column + 1)
                self.fields[column][name] = edit
        if target.claimed_time_local:  # the photo's own claim is the time to check
            self.fields[0]["time"].setText(str(target.claimed_time_local))
        layout.addWidget(shadows)
        sigmas = QGroupBox("Uncertainties (one sigma, for both shadows)")
        form = QFormLayout(sigmas)
        self.sigmas: dict[str, QLineEdit] = {}
        for name, label in SIGMA_FIELDS:
            edit = QLineEdit()
            edit.setObjectName(name)
            form.addRow(label, edit)
            self.sigmas[name] = edit
        layout.addWidget(sigmas)
        note = QLabel(f"{TIME_HELP}.\nFused with: {fused_with or 'nothing (the locus alone)'}")
        note.setWordWrap(True)
        layout.addWidget(note)
        self.error = QLabel("")
        self.error.setStyleSheet("color: #c0392b")
        self.error.setWordWrap(True)
        layout.addWidget(self.error)
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def measurements(self) -> list[dict]:
        """The first shadow, and the second when any of its fields is filled in; ValueError (one line) on a number
        field holding text, or an empty first shadow. The engine checks the values themselves."""
        sigmas = {name: edit.text() for name, edit in self.sigmas.items()}
        out = []
        for column, fields in enumerate(self.fields, 1):
            values = {name: edit.text().strip() for name, edit in fields.items()}
            if not any(values.values()):
                if column == 1:
                    raise ValueError("shadow 1 is empty: give the object's height and shadow length (or the sun's "
                                     "elevation) and the time")
                continue
            out.append(measurement(**values, **sigmas, what=f"shadow {column}"))
        return out

    def accept(self) -> None:
        try:
            self.measurements()
        except ValueError as exc:
            self.error.setText(str(exc))
            return
        super().accept()


def cancel_running() -> None:
    """Cancel every shadow task still running (plugin unload)."""
    for task in list(_RUNNING):
        task.cancel()


def open_shadow_dialog(iface) -> ShadowTask | None:
    """The form for the first selected photo of the active layer (a gtloc photos layer), then its task."""
    layer = iface.activeLayer()
    features = list(layer.getSelectedFeatures()) if layer is not None and hasattr(layer, "getSelectedFeatures") \
        else []
    if layer is None or layer.customProperty(KIND_PROPERTY) != "photos" or not features:
        iface.messageBar().pushMessage("gtloc", "select a photo in a gtloc photos layer first, then open the shadow "
                                       "locus", Qgis.Warning, 8)
        return None
    target = photo_target(layer, features[0])
    settings = load_settings()
    probe = new_shadow_request(target, [], settings)
    fused_with = (f"the photo's likelihood raster {probe.posterior}" if probe.posterior else
                  f"the photo's place posterior from {probe.model}" if probe.model else "")
    dialog = ShadowDialog(target, iface.mainWindow(), fused_with=fused_with)
    if not dialog.exec_():
        return None
    request = new_shadow_request(target, dialog.measurements(), settings)
    return start_shadow(iface, request, target)


def start_shadow(iface, request: ShadowRequest, target: PhotoTarget) -> ShadowTask:
    """Run the request in the background; when done its layers join the photo's group and the message bar says so."""
    name = "shadow " + " + ".join(m.get("time", "").replace("T", " ") for m in request.measurements)

    def done(task: ShadowTask) -> None:
        if task in _RUNNING:
            _RUNNING.remove(task)
        if task.error:
            iface.messageBar().pushMessage("gtloc", f"{target.file_name}: {task.error}", Qgis.Critical, 0)
            return
        fused = (task.summary or {}).get("fused")
        where = "" if not fused or not fused.get("candidates") else \
            f"; model and shadow agree best at {fused['candidates'][0]['lat_deg']:.2f}, " \
            f"{fused['candidates'][0]['lon_deg']:.2f}"
        iface.messageBar().pushMessage("gtloc", f"{target.file_name}: {name} added{where}", Qgis.Success, 8)

    task = ShadowTask(shared_client(), request, target, name, on_done=done)
    _RUNNING.append(task)
    QgsApplication.taskManager().addTask(task)
    return task

