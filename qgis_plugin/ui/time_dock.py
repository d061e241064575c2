"""A dock with the time posterior of the selected photo: a month x local-hour heat map (12 rows, 24 columns) with a
colour scale, the 50% and 90% credible areas outlined, a ring on the claimed time and a cross on the most likely
one. When the posterior is given the claimed place, the posterior from the image alone can be chosen instead. The
caption says what the posterior is given, whether the photo claims a time, and when its place was predicted given
a known capture time (where given when).

    VIRIDIS                       the colour map (perceptual, readable in grey and by most colour-blind readers)
    credible_cells(grid, level)   the cells of the smallest set holding `level` of the mass
    month_hour(iso)               a local ISO time -> (month position in [0, 12), hour in [0, 24))
    HeatMap                       the painted chart; marker_points() says where its markers are
    TimePosteriorDock             follows the active layer's selection
"""

from __future__ import annotations

import calendar
import datetime as dt

from qgis.PyQt.QtCore import QPointF, QRectF, Qt
from qgis.PyQt.QtGui import QColor, QFont, QFontMetrics, QLinearGradient, QPainter, QPen
from qgis.PyQt.QtWidgets import QComboBox, QDockWidget, QLabel, QVBoxLayout, QWidget

from .. import results_schema as rs
from ..layers import KIND_PROPERTY, field_value, time_posterior
from ..settings import describe_time

MONTHS = "JFMAMJJASOND"
VIRIDIS = ("#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725")
CREDIBLE_LEVELS = ((0.5, Qt.SolidLine), (0.9, Qt.DashLine))
CLAIM_COLOUR, MODE_COLOUR = QColor("#ff2a6d"), QColor("#ffffff")
MIN_WIDTH_PX, MIN_HEIGHT_PX = 240, 150
GIVEN_PLACE_CHOICE, IMAGE_CHOICE = "given the claimed place", "from the image alone"


def credible_cells(grid: list[list[float]], level: float) -> set[tuple[int, int]]:
    """(month, hour) cells of the smallest set holding at least `level` of the mass (most probable first)."""
    cells = sorted(((p, m, h) for m, row in enumerate(grid) for h, p in enumerate(row)), reverse=True)
    total = sum(p for p, _, _ in cells) or 1.0
    chosen, mass = set(), 0.0
    for p, m, h in cells:
        if mass >= level * total:
            break
        chosen.add((m, h))
        mass += p
    return chosen


def month_hour(iso: str) -> tuple[float, float] | None:
    """'2024-07-14T18:30:00' -> (6.43, 18.5): months since Jan 1 (the day's start within its month), local hour."""
    try:
        stamp = dt.datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        return None
    days = calendar.monthrange(stamp.year, stamp.month)[1]
    return stamp.month - 1 + (stamp.day - 1) / days, stamp.hour + stamp.minute / 60 + stamp.second / 3600


def _colour(level: float) -> QColor:
    """VIRIDIS at level in [0, 1], linearly between its stops."""
    x = min(max(level, 0.0), 1.0) * (len(VIRIDIS) - 1)
    i = min(int(x), len(VIRIDIS) - 2)
    a, b, t = QColor(VIRIDIS[i]), QColor(VIRIDIS[i + 1]), x - i
    return QColor.fromRgbF(a.redF() + t * (b.redF() - a.redF()), a.greenF() + t * (b.greenF() - a.greenF()),
                           a.blueF() + t * (b.blueF() - a.blueF()))


class HeatMap(QWidget):
    """Paints a 12 x 24 grid of probabilities (colour: share of the grid's peak), its 50/90% credible outlines, a
    colour scale and the claim/most-likely markers. Labels shrink or thin out so that nothing overlaps."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.grid: list[list[float]] | None = None
        self.claim: tuple[float, float] | None = None  # (month position, hour)
        self.mode: tuple[float, float] | None = None
        self.setMinimumSize(MIN_WIDTH_PX, MIN_HEIGHT_PX)

    def set_data(self, grid: list[list[float]] | None, claim: tuple[float, float] | None = None,
                 mode: tuple[float, float] | None = None) -> None:
        self.grid, self.claim, self.mode = grid, claim, mode
        self.update()

    # -- geometry -----------------------------------------------------------------------------------------------
    def _font(self) -> QFont:
        font = QFont(self.font())
        font.setPixelSize(max(8, min(12, int(self.height() / 16))))
        return font

    def plot_rect(self) -> QRectF:
        """The cells' area: left margin for month letters, bottom for hours, right for the colour scale."""
        metrics = QFontMetrics(self._font())
        left = metrics.horizontalAdvance("M") + 6
        bottom = metrics.height() + 4
        right = 18 + metrics.horizontalAdvance("100%") + 4
        top = 4
        return QRectF(left, top, max(10.0, self.width() - left - right), max(10.0, self.height() - top - bottom))

    def point(self, month_pos: float, hour: float) -> QPointF:
        plot = self.plot_rect()
        return QPointF(plot.left() + hour / 24.0 * plot.width(), plot.top() + month_pos / 12.0 * plot.height())

    def marker_points(self) -> dict[str, QPointF]:
        """Where the markers are drawn: 'claim' (if a time is claimed) and 'most likely' (if predicted)."""
        points = {}
        if self.claim is not None:
            points["claim"] = self.point(*self.claim)
        if self.mode is not None:
            points["most likely"] = self.point(*self.mode)
        return points

    def _cell(self, month: int, hour: int) -> QRectF:
        # Whole pixels, each cell's edges shared with its neighbours: no seams between cells.
        plot = self.plot_rect()
        x0 = round(plot.left() + hour * plot.width() / 24)
        x1 = round(plot.left() + (hour + 1) * plot.width() / 24)
        y0 = round(plot.top() + month * plot.height() / 12)
        y1 = round(plot.top() + (month + 1) * plot.height() / 12)
        return QRectF(x0, y0, x1 - x0, y1 - y0)

    # -- painting -----------------------------------------------------------------------------------------------
    def paintEvent(self, event):
        painter = QPainter(self)
        painter.fillRect(self.rect(), self.palette().window())
        painter.setFont(self._font())
        if not self.grid:
            painter.drawText(self.rect(), Qt.AlignCenter, "select a gtloc photo")
            return
        top = max(max(row) for row in self.grid) or 1.0
        for month in range(12):
            for hour in range(24):
                painter.fillRect(self._cell(month, hour), _colour(self.grid[month][hour] / top))
        self._paint_credible(painter)
        self._paint_axes(painter)
        self._paint_scale(painter, top)
        self._paint_markers(painter)

    def _paint_credible(self, painter: QPainter) -> None:
        for level, style in CREDIBLE_LEVELS:
            inside = credible_cells(self.grid, level)
            painter.setPen(QPen(QColor("#ffffff"), 1.5, style))
            for month, hour in inside:
                cell = self._cell(month, hour)
                if (month - 1, hour) not in inside:
                    painter.drawLine(cell.topLeft(), cell.topRight())
                if (month + 1, hour) not in inside:
                    painter.drawLine(cell.bottomLeft(), cell.bottomRight())
                if (month, (hour - 1) % 24) not in inside:
                    painter.drawLine(cell.topLeft(), cell.bottomLeft())
                if (month, (hour + 1) % 24) not in inside:
                    painter.drawLine(cell.topRight(), cell.bottomRight())

    def label_steps(self) -> tuple[int, int]:
        """(every how many months, every how many hours) a label is drawn so that no two overlap."""
        plot = self.plot_rect()
        metrics = QFontMetrics(self._font())
        month_step = next((step for step in (1, 2, 3, 6) if plot.height() / 12 * step >= metrics.height()), 12)
        label_w = metrics.horizontalAdvance("24h") + 4
        hour_step = next((step for step in (3, 6, 12) if plot.width() / 24 * step >= label_w), 24)
        return month_step, hour_step

    def _paint_axes(self, painter: QPainter) -> None:
        plot = self.plot_rect()
        metrics = QFontMetrics(painter.font())
        painter.setPen(self.palette().windowText().color())
        cell_h = plot.height() / 12
        month_step, hour_step = self.label_steps()
        for month in range(0, 12, month_step):
            painter.drawText(QRectF(0, plot.top() + month * cell_h, plot.left() - 3, cell_h),
                             Qt.AlignRight | Qt.AlignVCenter, MONTHS[month])
        label_w = metrics.horizontalAdvance("24h") + 4
        for hour in range(0, 25, hour_step):
            x = plot.left() + hour / 24 * plot.width()
            painter.drawText(QRectF(x - label_w / 2, plot.bottom() + 1, label_w, metrics.height() + 2),
                             Qt.AlignHCenter | Qt.AlignTop, f"{hour}h")

    def _paint_scale(self, painter: QPainter, top: float) -> None:
        plot = self.plot_rect()
        bar = QRectF(plot.right() + 6, plot.top(), 10, plot.height())
        gradient = QLinearGradient(bar.bottomLeft(), bar.topLeft())
        for i, colour in enumerate(VIRIDIS):
            gradient.setColorAt(i / (len(VIRIDIS) - 1), QColor(colour))
        painter.fillRect(bar, gradient)
        painter.setPen(self.palette().windowText().color())
        metrics = QFontMetrics(painter.font())
        painter.drawText(QRectF(bar.right() + 2, bar.top(), 60, metrics.height()), Qt.AlignLeft, f"{top:.0%}"
                         if top >= 0.01 else f"{top:.1%}")
        painter.drawText(QRectF(bar.right() + 2, bar.bottom() - metrics.height(), 60, metrics.height()),
                         Qt.AlignLeft, "0")

    def _paint_markers(self, painter: QPainter) -> None:
        painter.setRenderHint(QPainter.Antialiasing)
        radius = max(4.0, min(self.plot_rect().width() / 24, self.plot_rect().height() / 12) * 0.6)
        points = self.marker_points()
        if "claim" in points:
            painter.setBrush(Qt.NoBrush)
            painter.setPen(QPen(QColor("#000000"), 4.0))
            painter.drawEllipse(points["claim"], radius, radius)
            painter.setPen(QPen(CLAIM_COLOUR, 2.5))
            painter.drawEllipse(points["claim"], radius, radius)
        if "most likely" in points:
            p = points["most likely"]
            for colour, width in ((QColor("#000000"), 4.0), (MODE_COLOUR, 2.0)):
                painter.setPen(QPen(colour, width))
                painter.drawLine(QPointF(p.x() - radius, p.y() - radius), QPointF(p.x() + radius, p.y() + radius))
                painter.drawLine(QPointF(p.x() - radius, p.y() + radius), QPointF(p.x() + radius, p.y() - radius))


class TimePosteriorDock(QDockWidget):
    """Follows the active layer's selection; shows the first selected gtloc photo's month x hour posterior."""

    def __init__(self, iface):
        super().__init__("gtloc: when")
        self.setObjectName("GtlocTimePosteriorDock")
        self.iface = iface
        self.heat_map = HeatMap()
        self.choice = QComboBox()
        self.choice.addItems([GIVEN_PLACE_CHOICE, IMAGE_CHOICE])
        self.choice.setToolTip("The posterior given the photo's claimed place (what the time verdict uses), or "
                               "what the pixels alone say")
        self.choice.setVisible(False)
        self.choice.currentIndexChanged.connect(lambda *args: self.show_feature(self._feature))
        self.caption = QLabel("select a photo in a gtloc photos layer")
        self.caption.setWordWrap(True)
        self.legend = QLabel("<span style='color:#ff2a6d'>&#9711;</span> claimed time &nbsp; &#10005; most likely "
                             "&nbsp; solid: 50%, dashed: 90% credible")
        self.legend.setWordWrap(True)
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.addWidget(self.caption)
        layout.addWidget(self.choice)
        layout.addWidget(self.heat_map, 1)
        layout.addWidget(self.legend)
        self.setWidget(body)
        self._layer = None
        self._feature = None
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
            layer.customProperty(KIND_PROPERTY) == rs.PHOTOS_LAYER
        self._layer = layer if is_photos else None
        if self._layer is not None:
            self._layer.selectionChanged.connect(self.show_selection)
        self.show_selection()

    def show_selection(self, *args) -> None:
        features = list(self._layer.getSelectedFeatures()) if self._layer is not None else []
        self.show_feature(features[0] if features else None)

    def show_feature(self, feature) -> None:
        self._feature = feature
        if feature is None:
            self.choice.setVisible(False)
            self.heat_map.set_data(None)
            self.caption.setText("select a photo in a gtloc photos layer")
            return
        given_place = field_value(feature, rs.TIME_GIVEN) == rs.TIME_GIVEN_PLACE
        image_grid = time_posterior(feature, rs.TIME_POSTERIOR_IMAGE)
        self.choice.setVisible(given_place and image_grid is not None)
        use_image = not self.choice.isHidden() and self.choice.currentText() == IMAGE_CHOICE
        grid = image_grid if use_image else time_posterior(feature)
        claimed = field_value(feature, rs.CLAIMED_TIME_LOCAL)
        claim = month_hour(claimed) if isinstance(claimed, str) else None
        month_pos, hour = field_value(feature, rs.PRED_MONTH_POS), field_value(feature, rs.PRED_HOUR_LOCAL)
        mode = (float(month_pos), float(hour)) if month_pos is not None and hour is not None and not use_image \
            else _grid_mode(grid)
        self.heat_map.set_data(grid, claim, mode if grid is not None else None)
        name = field_value(feature, rs.FILE_NAME) or ""
        if grid is None:
            text = f"{name}: no time posterior (the model's time head is untrained)"
        else:
            given = "from the image alone" if use_image or not given_place else "given its claimed place"
            text = f"{name}: most likely month {int(mode[0]) + 1}, hour {mode[1]:.1f} (local), {given}"
            if claim is None:
                text += "; the photo claims no time"
            else:
                text += f"; claimed {describe_time(dt.datetime.fromisoformat(claimed).isoformat())} (local)"
                level = field_value(feature, rs.TIME_LEVEL)
                if level is not None and not use_image:
                    text += f", credible level {float(level):.2f}"
        given_time = field_value(feature, rs.GIVEN_TIME_LOCAL)
        if field_value(feature, rs.PLACE_GIVEN) == rs.PLACE_GIVEN_IMAGE_TIME and isinstance(given_time, str) \
                and given_time:
            try:
                given_time = describe_time(given_time)
            except ValueError:
                pass  # shown as stored
            text += f"; place predicted given {given_time} (local)"
        self.caption.setText(text)


def _grid_mode(grid: list[list[float]] | None) -> tuple[float, float] | None:
    """The centre of the most probable cell."""
    if not grid:
        return None
    _, month, hour = max((p, m, h) for m, row in enumerate(grid) for h, p in enumerate(row))
    return month + 0.5, hour + 0.5
