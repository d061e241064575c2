"""A dock for geo-temporal search over the loaded gtloc photo layers (the engine's `search` over each layer's
GeoPackage; by default every loaded photos layer of the case at once, or one chosen by its group's name, the
results of several merged by score): pick a place on the map, month/hour windows, the selected photo (alone:
photos like it; with month/hour windows: photos of its place at another time) or a text; filter by a radius around
the place, a polygon layer and a claimed local time range; choose how a time window is scored (pooling) and which
place of a photo the filters test (point source). The results are listed with their scores and their distance from
the place searched, and selected on the map; the engine's notes (e.g. which place a photo+time query used) are shown
under them.

    SearchDock     the dock: its widgets, the pick-a-place map tool, the Search button
    SearchTask     QgsTask: run() only talks to the engine, finished() alone touches the layer and the list
"""

from __future__ import annotations

from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeatureRequest,
    QgsMapLayerProxyModel,
    QgsProject,
    QgsTask,
)
from qgis.gui import QgsMapLayerComboBox, QgsMapToolEmitPoint
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDockWidget,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .. import results_schema as rs
from ..engine_client import EngineClient, EngineError, shared_client
from ..layers import KIND_PROPERTY, SOURCE_PROPERTY
from ..processing.algorithms import POINT_SOURCES, POOLINGS, vector_layer_file
from ..settings import load_settings

WGS84 = "EPSG:4326"


ALL_LAYERS = "*"  # the layer box's first entry: every gtloc photos layer


class SearchTask(QgsTask):
    """Engine searches in the background, one per (layer id, kwargs), merged into one result: the hits of every
    GeoPackage by score (the same model and query, so scores compare), re-ranked, the best top_k kept; each hit
    carries the `layer_id` it came from. `on_done(task)` runs on the main thread when it ends."""

    def __init__(self, client: EngineClient, searches: list[tuple[str, dict]], on_done):
        super().__init__("gtloc: search", QgsTask.CanCancel)
        self.client, self.searches, self.on_done = client, searches, on_done
        self.result: dict | None = None
        self.error: str | None = None

    def run(self) -> bool:
        results = []
        try:
            for layer_id, kwargs in self.searches:
                result = self.client.search(**kwargs, is_cancelled=self.isCanceled)
                results.append(result)
                for hit in result["results"]:
                    hit["layer_id"] = layer_id
                if self.isCanceled():
                    return False
        except EngineError as exc:
            self.error = str(exc)
            return False
        self.result = merge_results(results, self.searches[0][1]["top_k"])
        return True

    def finished(self, ok: bool) -> None:
        if not ok and self.error is None:
            self.error = "cancelled"
        self.on_done(self)


def merge_results(results: list[dict], top_k: int) -> dict:
    """Several engines' search results as one: hits by score, re-ranked from 1, at most top_k; candidates counted
    over all; notes once each."""
    if len(results) == 1:
        return results[0]
    hits = sorted((hit for result in results for hit in result["results"]), key=lambda hit: -hit["score"])[:top_k]
    for rank, hit in enumerate(hits, 1):
        hit["rank"] = rank
    notes = list(dict.fromkeys(note for result in results for note in result.get("notes", [])))
    return {**results[0], "results": hits, "notes": notes,
            "n_candidates": sum(result.get("n_candidates", 0) for result in results)}


class SearchDock(QDockWidget):
    """Searches the chosen gtloc photos layer's GeoPackage with the model from gtloc's settings."""

    def __init__(self, iface, client_factory=shared_client):
        super().__init__("gtloc: search")
        self.setObjectName("GtlocSearchDock")
        self.iface, self.client_factory = iface, client_factory
        self.near_latlon_deg: tuple[float, float] | None = None
        self.task: SearchTask | None = None  # Python QgsTasks must stay referenced until they finish
        self.last_result: dict | None = None

        self.layer_box = QComboBox()
        self.pick_button = QPushButton("Pick on map")
        self.pick_button.setCheckable(True)
        self.clear_place_button = QPushButton("Clear")
        self.place_label = QLabel("no place")
        self.radius_km = QDoubleSpinBox()
        self.radius_km.setRange(0.0, 20_100.0)  # 0: no radius filter; half the Earth's circumference covers all
        self.radius_km.setSuffix(" km")
        self.radius_km.setSpecialValueText("any distance")
        self.month = QLineEdit()
        self.month.setPlaceholderText("e.g. 6 or 11-2")
        self.hour = QLineEdit()
        self.hour.setPlaceholderText("e.g. 14 or 22-3 (local)")
        self.like_selected = QCheckBox("like the selected photo (with months/hours: its place then)")
        self.like_selected.setToolTip("Alone: photos that look taken at the same place and time as the selected "
                                      "photo. With months and/or hours: photos of the selected photo's place at "
                                      "that other time (its place is its point on the map, so no place is picked).")
        self.text = QLineEdit()
        self.text.setPlaceholderText("or a text, e.g. snow at dusk")
        self.within = QgsMapLayerComboBox()
        self.within.setFilters(QgsMapLayerProxyModel.PolygonLayer)
        self.within.setAllowEmptyLayer(True)
        self.within.setLayer(None)
        self.within.setToolTip("Only photos whose point lies inside a polygon of this layer")
        self.claimed_after = QLineEdit()
        self.claimed_after.setPlaceholderText("e.g. 2024-01-01T00:00 (local)")
        self.claimed_before = QLineEdit()
        self.claimed_before.setPlaceholderText("e.g. 2024-07-01T00:00 (local)")
        for edit in (self.claimed_after, self.claimed_before):
            edit.setToolTip("Only photos whose EXIF claims a local time in this range (photos without one are left "
                            "out); ISO 8601 or EXIF form, with a time of day")
        self.pooling = QComboBox()
        for value, label in POOLINGS:
            self.pooling.addItem(label, value)
        self.point_source = QComboBox()
        for value, label in POINT_SOURCES:
            self.point_source.addItem(label, value)
        self.top_k = QSpinBox()
        self.top_k.setRange(1, 1000)
        self.top_k.setValue(10)
        self.search_button = QPushButton("Search")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.results = QTreeWidget()
        self.results.setHeaderLabels(["rank", "score", "photo", "km"])
        self.results.setRootIsDecorated(False)

        place_row = QHBoxLayout()
        for widget in (self.place_label, self.pick_button, self.clear_place_button):
            place_row.addWidget(widget)
        form = QFormLayout()
        form.addRow("Photos layer", self.layer_box)
        form.addRow("Place", place_row)
        form.addRow("Radius", self.radius_km)
        form.addRow("Months", self.month)
        form.addRow("Hours", self.hour)
        form.addRow("", self.like_selected)
        form.addRow("Text", self.text)
        form.addRow("Inside", self.within)
        form.addRow("Claimed after", self.claimed_after)
        form.addRow("Claimed before", self.claimed_before)
        form.addRow("Time window score", self.pooling)
        form.addRow("Photo's place", self.point_source)
        form.addRow("Results", self.top_k)
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.addLayout(form)
        layout.addWidget(self.search_button)
        layout.addWidget(self.status)
        layout.addWidget(self.results, 1)
        self.setWidget(body)

        self.place_tool = QgsMapToolEmitPoint(iface.mapCanvas())
        self.place_tool.canvasClicked.connect(self._on_map_click)
        self.pick_button.toggled.connect(self._on_pick_toggled)
        self.clear_place_button.clicked.connect(lambda: self.set_place(None))
        self.search_button.clicked.connect(self.search)
        self.like_selected.toggled.connect(self._on_like_toggled)
        project = QgsProject.instance()
        project.layersAdded.connect(self.refresh_layers)
        project.layersRemoved.connect(self.refresh_layers)
        # Layers are added before their group takes them: refresh again once the tree has them (the group name).
        project.layerTreeRoot().addedChildren.connect(self.refresh_layers)
        self.refresh_layers()

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def unload(self) -> None:
        """Disconnect from the project and the canvas, cancel a running search (plugin unload)."""
        project = QgsProject.instance()
        for signal in (project.layersAdded, project.layersRemoved, project.layerTreeRoot().addedChildren):
            try:
                signal.disconnect(self.refresh_layers)
            except TypeError:
                pass
        canvas = self.iface.mapCanvas()
        if canvas.mapTool() is self.place_tool:
            canvas.unsetMapTool(self.place_tool)
        if self.task is not None:
            self.task.on_done = lambda task: None
            self.task.cancel()

    # -- inputs -------------------------------------------------------------------------------------------------
    def photo_layers(self) -> list:
        return [layer for layer in QgsProject.instance().mapLayers().values()
                if layer.customProperty(KIND_PROPERTY) == rs.PHOTOS_LAYER]

    def refresh_layers(self, *args) -> None:
        current = self.layer_box.currentData()
        self.layer_box.clear()
        layers = self.photo_layers()
        if len(layers) > 1:
            self.layer_box.addItem(f"every gtloc photos layer ({len(layers)})", ALL_LAYERS)
        root = QgsProject.instance().layerTreeRoot()
        for layer in layers:
            node = root.findLayer(layer.id())
            group = node.parent().name() if node is not None and node.parent() is not root else ""
            where = group or Path(layer.customProperty(SOURCE_PROPERTY)).name
            self.layer_box.addItem(f"{where}: {layer.name()}", layer.id())
        index = self.layer_box.findData(current)
        self.layer_box.setCurrentIndex(index if index >= 0 else 0)  # the whole case by default

    def current_layers(self) -> list:
        """The photos layers searched: the chosen one, or every one."""
        layer_id = self.layer_box.currentData()
        if layer_id == ALL_LAYERS:
            return self.photo_layers()
        layer = QgsProject.instance().mapLayer(layer_id) if layer_id else None
        return [layer] if layer is not None else []

    def current_layer(self):
        """The one chosen photos layer (None when every layer is searched, or there is none)."""
        layers = self.current_layers()
        return layers[0] if len(layers) == 1 and self.layer_box.currentData() != ALL_LAYERS else None

    def selected_photo(self, layers: list):
        """The photo a 'like' query starts from: the first selected photo of the active layer, else of `layers`."""
        active = self.iface.activeLayer()
        for layer in ([active] if active in layers else []) + layers:
            for feature in layer.getSelectedFeatures():
                return feature
        return None

    def _on_like_toggled(self, checked: bool) -> None:
        """A photo query searches the photo's own place: the place and radius widgets do not apply."""
        if checked and self.pick_button.isChecked():
            self.pick_button.setChecked(False)
        for widget in (self.pick_button, self.clear_place_button, self.place_label, self.radius_km):
            widget.setEnabled(not checked)

    def _on_pick_toggled(self, checked: bool) -> None:
        canvas = self.iface.mapCanvas()
        if checked:
            canvas.setMapTool(self.place_tool)
        elif canvas.mapTool() is self.place_tool:
            canvas.unsetMapTool(self.place_tool)

    def _on_map_click(self, point, button=None) -> None:
        self.set_place(point, self.iface.mapCanvas().mapSettings().destinationCrs())
        self.pick_button.setChecked(False)

    def set_place(self, point, crs: QgsCoordinateReferenceSystem | None = None) -> None:
        """The query place from a map point in `crs` (the canvas CRS for a click); None clears it."""
        if point is None:
            self.near_latlon_deg = None
            self.place_label.setText("no place")
            return
        wgs84 = QgsCoordinateReferenceSystem(WGS84)
        if crs is not None and crs.isValid() and crs != wgs84:
            point = QgsCoordinateTransform(crs, wgs84, QgsProject.instance()).transform(point)
        self.near_latlon_deg = (point.y(), point.x())
        self.place_label.setText(f"{point.y():.4f}, {point.x():.4f}")

    def request_kwargs(self, layer, like_from: list | None = None) -> dict:
        """EngineClient.search arguments for `layer`'s GeoPackage from the widgets; a 'like' query starts from the
        selected photo of `like_from` (default: `layer`). ValueError (one line) when the query is incomplete."""
        model = load_settings().model
        if not model:
            raise ValueError("no gtloc model chosen: set the checkpoint in gtloc's settings")
        kwargs = {"gpkg": layer.customProperty(SOURCE_PROPERTY), "model": model, "top_k": self.top_k.value(),
                  "pooling": self.pooling.currentData(), "point_source": self.point_source.currentData(),
                  "claimed_after": self.claimed_after.text().strip() or None,
                  "claimed_before": self.claimed_before.text().strip() or None}
        area = self.within.currentLayer()
        if area is not None:  # a drawn (memory) layer is written to a temporary file the engine can read
            kwargs["within"], kwargs["within_layer"] = vector_layer_file(
                area, QgsProject.instance().transformContext())
        text = self.text.text().strip()
        month, hour = self.month.text().strip() or None, self.hour.text().strip() or None
        if text:
            kwargs["text"] = text
        elif self.like_selected.isChecked():
            selected = self.selected_photo(like_from or [layer])
            if selected is None:
                raise ValueError(f"select a photo in {layer.name()} to search for photos like it"
                                 + (" (or of its place at another time)" if month or hour else ""))
            # With month/hour windows: the same place as this photo at another time (the engine's photo+time).
            # The place is the photo's own, so a picked place and the radius are not sent.
            kwargs.update(like=selected[rs.PATH], month=month, hour=hour)
        else:
            if self.near_latlon_deg is None and not (self.month.text().strip() or self.hour.text().strip()):
                raise ValueError("pick a place on the map and/or give months or hours, a photo or a text")
            kwargs.update(near_latlon_deg=self.near_latlon_deg, month=month, hour=hour)
            if self.near_latlon_deg is not None and self.radius_km.value() > 0:
                kwargs["radius_km"] = self.radius_km.value()
        return kwargs

    # -- search -------------------------------------------------------------------------------------------------
    def search(self) -> SearchTask | None:
        """Start the search in a QgsTask; the results arrive in show_results()."""
        layers = self.current_layers()
        if not layers:
            self.status.setText("no gtloc photos layer: locate some photos first")
            return None
        if self.task is not None:
            self.status.setText("a search is running")
            return None
        try:
            searches = [(layer.id(), self.request_kwargs(layer, like_from=layers)) for layer in layers]
        except ValueError as exc:
            self.status.setText(str(exc))
            return None
        self.status.setText("searching…" if len(layers) == 1 else f"searching {len(layers)} photos layers…")
        self.search_button.setEnabled(False)
        self.task = SearchTask(self.client_factory(), searches, self._task_done)
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def _task_done(self, task: SearchTask) -> None:
        self.task = None
        self.search_button.setEnabled(True)
        if task.error:
            self.status.setText(f"error: {task.error}")
            return
        if task.result is None:
            self.status.setText("search cancelled")
            return
        self.show_results(task.result)

    def show_results(self, result: dict, layer=None) -> None:
        """List the results with their scores (and km from the place searched, when there is one) and select their
        photos (matched on sha256) in the layers they came from (`layer` for hits that do not say)."""
        self.last_result = result
        self.results.clear()
        for hit in result["results"]:
            km = "" if hit.get("dist_km") is None else f"{hit['dist_km']:.0f}"
            self.results.addTopLevelItem(QTreeWidgetItem([str(hit["rank"]), f"{hit['score']:.4f}",
                                                          Path(hit["path"]).name, km]))
        kind = result["query"]["kind"]
        lines = [f"{len(result['results'])} of {result.get('n_candidates', 0)} photos ({kind} query)",
                 *result.get("notes", [])]  # one line per note: which place a photo+time query used, text caveats
        self.status.setText("\n".join(lines))
        project = QgsProject.instance()
        wanted: dict = {}
        for hit in result["results"]:
            target = project.mapLayer(hit["layer_id"]) if hit.get("layer_id") else layer
            if target is not None:
                wanted.setdefault(target.id(), (target, set()))[1].add(hit["sha256"])
        for target in self.current_layers() if layer is None else [layer]:
            wanted.setdefault(target.id(), (target, set()))
        for target, shas in wanted.values():
            request = QgsFeatureRequest().setSubsetOfAttributes([rs.SHA256], target.fields())
            request.setFlags(QgsFeatureRequest.NoGeometry)
            target.selectByIds([f.id() for f in target.getFeatures(request) if f[rs.SHA256] in shas])
