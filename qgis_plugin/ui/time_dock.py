"""A dock with the time posterior of the selected photo: a month x hour heat map (12 rows, 24 columns); its caption
also says when the photo's place was predicted given a known capture time (where given when)."""

from __future__ import annotations

from qgis.PyQt.QtCore import QRectF, Qt
from qgis.PyQt.QtGui import QColor, QPainter
from qgis.PyQt.QtWidgets import QDockWidget, QLabel, QVBoxLayout, QWidget

from ..layers import KIND_PROPERTY, time_posterior
from ..settings import describe_time

MONTHS = "JFMAMJJASOND"


class HeatMap(QWidget):
    """Paints a 12 x 24 grid of probabilities, darker = more likely, scaled to the grid's own maximum."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.grid: list[list[float]] | None = None
        self.setMinimumSize(260, 150)

    def set_grid(self, grid: list[list[float]] | None) -> None:
        self.grid = grid
        self.update()

    def paintEvent(self, event):
        painter = QPainter(self)
        margin_left, margin_bottom = 14, 14
        width, height = self.width() - margin_left, self.height() - margin_bottom
        painter.fillRect(self.rect(), self.palette().window())
        if not self.grid:
            painter.drawText(self.rect(), Qt.AlignCenter, "select a gtloc photo")
            return
        top = max(max(row) for row in self.grid) or 1.0
        cell_w, cell_h = width / 24, height / 12
        for month in range(12):
            painter.drawText(QRectF(0, month * cell_h, margin_left, cell_h), Qt.AlignCenter, MONTHS[month])
            for hour in range(24):
                level = self.grid[month][hour] / top
                colour = QColor.fromHsvF(0.58, min(1.0, 0.15 + level), 1.0 - 0.7 * level)
                painter.fillRect(QRectF(margin_left + hour * cell_w, month * cell_h, cell_w, cell_h), colour)
        for hour in range(0, 24, 6):
            painter.drawText(QRectF(margin_left + hour * cell_w, height, cell_w * 2, margin_bottom), Qt.AlignLeft,
                             f"{hour}h")


class TimePosteriorDock(QDockWidget):
    """Follows the active layer's selection; shows the first selected gtloc photo's month x hour posterior."""

    def __init__(self, iface):
        super().__init__("gtloc: when")
        self.setObjectName("GtlocTimePosteriorDock")
        self.iface = iface
        self.heat_map = HeatMap()
        self.caption = QLabel("select a photo in a gtloc photos layer")
        self.caption.setWordWrap(True)
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.addWidget(self.caption)
        layout.addWidget(self.heat_map, 1)
        self.setWidget(body)
        self._layer = None
        iface.currentLayerChanged.connect(self._on_layer)

    def disconnect_layers(self) -> None:
        try:
            self.iface.currentLayerChanged.disconnect(self._on_layer)
        except TypeError:
            pass
        self._on_layer(None)

    def _on_layer(self, layer) -> None:
        if self._layer is not None:
            try:
                self._layer.selectionChanged.disconnect(self.show_selection)
            except (TypeError, RuntimeError):
                pass
        is_photos = layer is not None and hasattr(layer, "selectionChanged") and \
            layer.customProperty(KIND_PROPERTY) == "photos"
        self._layer = layer if is_photos else None
        if self._layer is not None:
            self._layer.selectionChanged.connect(self.show_selection)
        self.show_selection()

    def show_selection(self, *args) -> None:
        features = list(self._layer.getSelectedFeatures()) if self._layer is not None else []
        self.show_feature(features[0] if features else None)

    def show_feature(self, feature) -> None:
        grid = time_posterior(feature) if feature is not None else None
        self.heat_map.set_grid(grid)
        if feature is None:
            self.caption.setText("select a photo in a gtloc photos layer")
            return
        if grid is None:
            text = f"{feature['file_name']}: no time posterior (the model's time head is untrained)"
        else:
            text = (f"{feature['file_name']}: most likely month {feature['pred_month']}, "
                    f"hour {feature['pred_hour_local']:.1f} (local)")
        given = _field(feature, "given_time_local")
        if _field(feature, "place_given") == "image+time" and isinstance(given, str) and given:
            try:
                given = describe_time(given)
            except ValueError:
                pass  # shown as stored
            text += f"; place predicted given {given} (local)"
        self.caption.setText(text)


def _field(feature, name: str):
    """A feature's value, or None when its layer has no such field (GeoPackages from older engines) or it is NULL."""
    if feature.fields().indexOf(name) < 0:
        return None
    value = feature[name]
    return None if value is None or (hasattr(value, "isNull") and value.isNull()) else value
