"""What an analyst sees after a drop, in real QGIS 3.22 with the real engine worker: one sub-group per photo named
after its file, only the selected photo's surface drawn (checked on rendered pixels), regions as outlines under the
points, a raster legend with its unit and transparency cut, labels, the verdict first in the attribute table, the
photo in the form and the map tip, actions that open the photo, the time dock's colour scale, credible outlines
and markers, progress stages of a first drop, failures that stay in sight, and search over every batch of the case.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import wait_until
from qgis.core import (
    QgsExpression,
    QgsExpressionContext,
    QgsExpressionContextUtils,
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsPointXY,
    QgsProject,
    QgsRectangle,
)
from qgis.PyQt.QtCore import QSize, Qt, QUrl
from qgis.PyQt.QtGui import QColor, QImage
from qgis.PyQt.QtWidgets import QPushButton

from qgis_plugin import results_schema as rs
from qgis_plugin import surface_view
from qgis_plugin.layers import (
    LIKELIHOOD_CUT_LABEL,
    LIKELIHOOD_STOPS,
    LIKELIHOOD_UNIT,
    PHOTO_PATH_PROPERTY,
    SURFACES_GROUP_NAME,
    VERDICT_COLOURS,
)
from qgis_plugin.photo_form import FIELD_ORDER, OPEN_FOLDER, OPEN_PHOTO, file_url_expression

RES_DEG = 1.0  # the surface resolution chosen in the settings for this module (recorded in the results)


@pytest.fixture(scope="module")
def photos(engine_files, tmp_path_factory) -> list[str]:
    """Three toy photos, the EXIF-claimed JPEG and a file that only looks like a photo (it fails)."""
    broken = tmp_path_factory.mktemp("broken") / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    return [*engine_files["toy_photos"][:3], engine_files["claimed_jpeg"], str(broken)]


def _drop(plugin, paths) -> object:
    task = plugin.predict(paths)
    assert task is not None
    wait_until(lambda: task not in plugin.tasks, timeout_s=300)
    assert task.error is None, task.error
    return task


@pytest.fixture(scope="module")
def case(plugin, plugin_settings, photos, tmp_path_factory):
    """A first drop on a fresh engine with an empty model-constant cache (so every stage runs), at RES_DEG."""
    from qgis_plugin.engine_client import shutdown_shared
    from qgis_plugin.settings import save_settings

    save_settings(replace(plugin_settings, res_deg=RES_DEG))
    previous_cache = os.environ["GTLOC_CACHE"]
    os.environ["GTLOC_CACHE"] = str(tmp_path_factory.mktemp("fresh_cache"))
    shutdown_shared()  # the next worker starts with the fresh cache
    stages: list[str] = []
    try:
        task = plugin.predict(photos)
        task.stage_changed.connect(stages.append)
        wait_until(lambda: task not in plugin.tasks, timeout_s=300)
    finally:
        os.environ["GTLOC_CACHE"] = previous_cache
        save_settings(plugin_settings)
    assert task.error is None, task.error
    task.stages = stages
    return task


def _surfaces_group(task):
    group = QgsProject.instance().layerTreeRoot().findGroup(task.group_name)
    return next(g for g in group.children() if g.name() == SURFACES_GROUP_NAME)


def _photo_feature(layer, file_name):
    return next(f for f in layer.getFeatures() if f[rs.FILE_NAME] == file_name)


# ---------------------------------------------------------------------------------------------- progress, failures


@pytest.mark.slow
def test_a_first_drop_says_what_it_waits_for_stage_by_stage(case, photos):
    stages = case.stages
    assert stages[0] == "starting the engine" and stages[1] == "loading the model", stages
    constants = [s for s in stages if s.startswith("building model constants (first time for this model")]
    assert constants, stages  # the fresh cache: the model's grids are built, and the analyst is told
    assert any("s left" in s for s in constants)
    photo_stages = [s for s in stages if s.endswith(" photos")]
    assert photo_stages[-1] == f"{len(photos)} of {len(photos)} photos"
    assert stages.index(constants[0]) < stages.index(photo_stages[0])


@pytest.mark.slow
def test_a_failed_photo_leaves_a_message_that_stays_with_a_button_to_the_failures_table(case, iface):
    failures = case.layers.failures
    assert failures is not None and failures.featureCount() == 1
    assert Path(next(failures.getFeatures())[rs.PATH]).name == "broken.jpg"
    group = QgsProject.instance().layerTreeRoot().findGroup(case.group_name)
    assert failures.id() in {node.layer().id() for node in group.findLayers()}  # loaded with the group
    item, level, duration = iface.messageBar().pushed[-1]
    from qgis.core import Qgis

    assert level == Qgis.Warning and duration == 0  # stays until dismissed
    assert "1 failed" in item.text() and "broken.jpg" in item.text()
    [button] = [b for b in item.findChildren(QPushButton) if b.text() == "Show failures"]
    button.click()
    assert iface.shown_tables[-1] is failures


@pytest.mark.slow
def test_the_surface_resolution_setting_reaches_the_results(case):
    for feature in case.layers.photos.getFeatures():
        assert feature["surface_res_deg"] == pytest.approx(RES_DEG)
    raster = next(r for r in case.layers.rasters if r.name().startswith("likelihood global"))
    assert raster.rasterUnitsPerPixelX() == pytest.approx(RES_DEG)


# ---------------------------------------------------------------------------------------------- the map


@pytest.mark.slow
def test_each_photo_has_a_subgroup_named_after_its_file_and_only_the_selected_one_is_drawn(case):
    layers = case.layers
    group = QgsProject.instance().layerTreeRoot().findGroup(case.group_name)
    # Points and lines first (drawn on top), then the surfaces group.
    top = [node.layer().id() for node in group.children() if hasattr(node, "layer")]
    assert top[0] == layers.photos.id()
    assert group.children()[-1].name() == SURFACES_GROUP_NAME
    surfaces = _surfaces_group(case)
    names = [child.name() for child in surfaces.children()]
    assert names == [Path(f[rs.PATH]).name for f in layers.photos.getFeatures()]
    for child in surfaces.children():  # regions above rasters, all of this photo
        kinds = [node.layer().customProperty("gtloc/kind") for node in child.findLayers()]
        assert kinds[0] == rs.REGIONS_LAYER and set(kinds[1:]) == {"likelihood"} and len(kinds) >= 2
        assert {node.layer().customProperty(PHOTO_PATH_PROPERTY) for node in child.findLayers()} == \
            {child.customProperty(PHOTO_PATH_PROPERTY)}
    assert surface_view.shown_photo_paths(surfaces) == {surfaces.children()[0].customProperty(PHOTO_PATH_PROPERTY)}

    claimed = _photo_feature(layers.photos, "claimed.jpg")
    layers.photos.selectByIds([claimed.id()])  # on the map or in the attribute table: the same signal
    assert surface_view.shown_photo_paths(surfaces) == {claimed[rs.PATH]}
    assert surfaces.isMutuallyExclusive()  # ticking another photo in the Layers panel switches too
    two = [f.id() for f in layers.photos.getFeatures()][:2]
    layers.photos.selectByIds(two)
    assert len(surface_view.shown_photo_paths(surfaces)) == 2
    surface_view.set_show_all(True)
    assert len(surface_view.shown_photo_paths(surfaces)) == len(layers.surfaces) == 4
    surface_view.set_show_all(False)  # back to the selection
    assert surface_view.shown_photo_paths(surfaces) == {f[rs.PATH] for f in layers.photos.getSelectedFeatures()}
    layers.photos.removeSelection()


def _render(layers_top_first, extent: QgsRectangle, size=(360, 180)) -> QImage:
    settings = QgsMapSettings()
    settings.setLayers(layers_top_first)
    settings.setDestinationCrs(layers_top_first[0].crs())
    settings.setExtent(extent)
    settings.setOutputSize(QSize(*size))
    settings.setBackgroundColor(QColor(255, 255, 255))
    settings.setFlag(QgsMapSettings.DrawSelection, False)  # the verdict colours, not QGIS's selection yellow
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    return job.renderedImage()


def _coloured_pixels(image: QImage) -> int:
    return sum(image.pixelColor(x, y) != QColor(255, 255, 255) for x in range(0, image.width(), 2)
               for y in range(0, image.height(), 2))


@pytest.mark.slow
def test_the_default_map_draws_the_selected_photos_surface_only_and_the_photos_on_top(case):
    """Screenshot test: the map QGIS draws from the layer tree equals the map of the photos, lines and the
    selected photo's layers alone, and a photo's point keeps its verdict colour over its own surface."""
    layers = case.layers
    root = QgsProject.instance().layerTreeRoot()
    world = QgsRectangle(-180, -90, 180, 90)
    claimed = _photo_feature(layers.photos, "claimed.jpg")
    layers.photos.selectByIds([claimed.id()])
    drawn = [layer for layer in root.layerOrder() if root.findLayer(layer.id()).isVisible()]
    [mine] = [s for s in layers.surfaces if s.path == claimed[rs.PATH]]
    assert [layer.id() for layer in drawn] == [layer.id() for layer in (*layers.top_layers(), mine.regions,
                                                                       *mine.rasters)
                                               if layer.isSpatial()]
    default_map = _render(drawn, world)
    alone = _render([*(x for x in layers.top_layers() if x.isSpatial()), mine.regions, *mine.rasters], world)
    assert default_map == alone
    surface_view.set_show_all(True)
    try:
        everything = [layer for layer in root.layerOrder() if root.findLayer(layer.id()).isVisible()]
        assert _coloured_pixels(_render(everything, world)) > _coloured_pixels(default_map)  # the test can fail
    finally:
        surface_view.set_show_all(False)
    # The claimed photo's point (at its claimed place) is drawn above the rasters and regions: the pixel at its
    # centre has its verdict's colour.
    settings = QgsMapSettings()
    settings.setExtent(world)
    settings.setOutputSize(QSize(360, 180))
    centre = settings.mapToPixel().transform(QgsPointXY(claimed.geometry().asPoint()))
    colour = default_map.pixelColor(int(centre.x()), int(centre.y()))
    expected = QColor(VERDICT_COLOURS[claimed[rs.VERDICT]])
    assert max(abs(colour.red() - expected.red()), abs(colour.green() - expected.green()),
               abs(colour.blue() - expected.blue())) < 40, (colour.name(), expected.name())
    layers.photos.removeSelection()


@pytest.mark.slow
def test_regions_are_outlines_and_the_raster_legend_states_its_unit_and_cut(case):
    surfaces = case.layers.surfaces[0]
    styles = {}
    for category in surfaces.regions.renderer().categories():
        symbol_layer = category.symbol().symbolLayer(0)
        assert symbol_layer.brushStyle() == Qt.NoBrush  # outlines: the raster under them stays readable
        styles[category.value()] = symbol_layer.strokeStyle()
    assert styles == {0.5: Qt.SolidLine, 0.9: Qt.DashLine}
    raster = surfaces.rasters[0]
    items = raster.renderer().shader().rasterShaderFunction().colorRampItemList()
    assert LIKELIHOOD_CUT_LABEL.format(LIKELIHOOD_STOPS[0][0]) in items[0].label and LIKELIHOOD_UNIT in items[0].label
    assert items[0].color.alpha() == 0
    legend = [node.data(Qt.DisplayRole) for node in
              raster.legend().createLayerTreeModelLegendNodes(QgsProject.instance().layerTreeRoot().findLayer(
                  raster.id()))]
    assert any("transparent below 2% of the peak" in str(text) for text in legend), legend
    assert raster.name().startswith("likelihood global · ") and raster.name().endswith(Path(surfaces.path).name)


@pytest.mark.slow
def test_photos_are_labelled_and_the_verdict_comes_first_with_plain_names(case):
    photos = case.layers.photos
    assert photos.labelsEnabled()
    settings = photos.labeling().settings()
    from qgis.core import QgsUnitTypes

    assert settings.fieldName == rs.FILE_NAME and settings.format().sizeUnit() == QgsUnitTypes.RenderPoints
    columns = [c.name for c in photos.attributeTableConfig().columns() if c.name]
    present = [name for name in FIELD_ORDER if name in photos.fields().names()]
    assert columns[:len(present)] == present and columns[0] == rs.VERDICT
    assert photos.attributeDisplayName(photos.fields().indexOf(rs.PLACE_DIST_KM)) == "Claim to prediction (km)"
    assert photos.readOnly()


# ---------------------------------------------------------------------------------------------- the photo itself


@pytest.mark.slow
def test_the_form_opens_on_the_photo_with_its_verdict_and_time_plot(case):
    from qgis.core import QgsEditFormConfig
    from qgis.gui import QgsAttributeForm, QgsExternalResourceWidget

    photos = case.layers.photos
    names = photos.fields().names()
    for name in (rs.THUMBNAIL, rs.TIME_PLOT):
        setup = photos.editorWidgetSetup(names.index(name))
        assert setup.type() == "ExternalResource" and setup.config()["DocumentViewer"] == 1  # an image preview
    config = photos.editFormConfig()
    assert config.layout() == QgsEditFormConfig.TabLayout
    first_tab = config.tabs()[0]
    assert first_tab.name() == "Photo"
    assert [child.name() for child in first_tab.children()][:2] == [rs.THUMBNAIL, rs.VERDICT]
    assert rs.TIME_PLOT in [child.name() for child in first_tab.children()]
    feature = _photo_feature(photos, "claimed.jpg")
    assert Path(feature[rs.THUMBNAIL]).is_file() and Path(feature[rs.TIME_PLOT]).is_file()
    form = QgsAttributeForm(photos, feature)
    try:
        viewers = form.findChildren(QgsExternalResourceWidget)
        shown = [w for w in viewers if w.documentPath() == feature[rs.THUMBNAIL]]
        assert shown, [w.documentPath() for w in viewers]
        from qgis.PyQt.QtWidgets import QLabel

        thumb = QImage(feature[rs.THUMBNAIL])
        assert not thumb.isNull()

        def loaded() -> bool:  # the preview: a label showing the thumbnail (its aspect), not a button's icon
            pixmaps = [label.pixmap() for w in shown for label in w.findChildren(QLabel)]
            return any(p is not None and not p.isNull() and p.width() > 32 and
                       abs(p.width() / p.height() - thumb.width() / thumb.height()) < 0.05 for p in pixmaps)

        form.show()
        wait_until(loaded, timeout_s=10)  # the widget may load the file through QGIS's external storage
    finally:
        form.deleteLater()


@pytest.mark.slow
def test_the_map_tip_shows_the_thumbnail_and_the_actions_open_the_photo_and_its_folder(case):
    photos = case.layers.photos
    feature = _photo_feature(photos, "claimed.jpg")
    context = QgsExpressionContext(QgsExpressionContextUtils.globalProjectLayerScopes(photos))
    context.setFeature(feature)
    tip = QgsExpression.replaceExpressionText(photos.mapTipTemplate(), context)
    thumb_url = QUrl.fromLocalFile(feature[rs.THUMBNAIL]).toString()
    assert f'src="{thumb_url}"' in tip and feature[rs.VERDICT] in tip and "claimed.jpg" in tip
    actions = {a.name(): a for a in photos.actions().actions()}
    assert set(actions) >= {OPEN_PHOTO, OPEN_FOLDER}
    from qgis.core import QgsAction

    assert all(actions[n].type() == QgsAction.OpenUrl for n in (OPEN_PHOTO, OPEN_FOLDER))
    opened = QgsExpression.replaceExpressionText(actions[OPEN_PHOTO].command(), context)
    assert QUrl(opened).toLocalFile() == feature[rs.PATH]
    folder = QgsExpression.replaceExpressionText(actions[OPEN_FOLDER].command(), context)
    assert QUrl(folder).toLocalFile() == str(Path(feature[rs.PATH]).parent)


def test_file_urls_are_built_for_posix_and_windows_paths_and_null(qgis_app):
    for path, url in (("/data/case 1/a#b.jpg", "file:///data/case 1/a#b.jpg"),
                      ("C:\\Users\\an\\a.jpg", "file:///C:/Users/an/a.jpg")):
        literal = "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"  # a QGIS string literal
        expression = QgsExpression(file_url_expression(literal))
        assert expression.evaluate() == url, expression.evalErrorString()
    assert QgsExpression(file_url_expression("NULL")).evaluate() is None


# ---------------------------------------------------------------------------------------------- the time dock


@pytest.mark.slow
def test_the_time_dock_marks_the_claim_and_the_most_likely_time_and_outlines_the_credible_areas(case, plugin):
    from qgis_plugin.ui.time_dock import IMAGE_CHOICE, credible_cells, month_hour

    photos = case.layers.photos
    dock = plugin.time_dock
    dock._on_layer(photos)
    feature = _photo_feature(photos, "claimed.jpg")
    photos.selectByIds([feature.id()])
    heat_map = dock.heat_map
    stored = json.loads(feature[rs.TIME_POSTERIOR])
    assert heat_map.grid == stored
    assert heat_map.claim == pytest.approx(month_hour(feature[rs.CLAIMED_TIME_LOCAL]))
    assert heat_map.mode == pytest.approx((feature[rs.PRED_MONTH_POS], feature[rs.PRED_HOUR_LOCAL]))
    markers = heat_map.marker_points()
    assert set(markers) == {"claim", "most likely"}
    plot = heat_map.plot_rect()
    claim_point = markers["claim"]
    assert claim_point.x() == pytest.approx(plot.left() + heat_map.claim[1] / 24 * plot.width())
    assert claim_point.y() == pytest.approx(plot.top() + heat_map.claim[0] / 12 * plot.height())
    # The cells inside the 50% area hold at least half the mass, and no smaller set does.
    inside = credible_cells(stored, 0.5)
    mass = sum(stored[m][h] for m, h in inside)
    assert mass >= 0.5 * sum(map(sum, stored)) - 1e-9
    smallest_out = min(stored[m][h] for m, h in inside)
    assert mass - smallest_out < 0.5 * sum(map(sum, stored)) + 1e-9
    # The dock shows where the mass is: on the drawn image, the brightest (most yellow) cell is the argmax.
    heat_map.resize(480, 240)
    image = heat_map.grab().toImage()
    best = max(((p, m, h) for m, row in enumerate(stored) for h, p in enumerate(row)))
    cell = heat_map._cell(best[1], best[2])
    pixel = image.pixelColor(int(cell.left() + 2), int(cell.top() + 2))
    weakest = min(((p, m, h) for m, row in enumerate(stored) for h, p in enumerate(row)))
    weak_cell = heat_map._cell(weakest[1], weakest[2])
    weak_pixel = image.pixelColor(int(weak_cell.center().x()), int(weak_cell.center().y()))
    assert pixel.lightness() > weak_pixel.lightness()
    # A claimed place: the posterior from the image alone can be chosen, and the caption says which is shown.
    assert feature[rs.TIME_GIVEN] == rs.TIME_GIVEN_PLACE and not dock.choice.isHidden()
    assert "given its claimed place" in dock.caption.text() and "claimed 2021-07-14 15:30" in dock.caption.text()
    dock.choice.setCurrentText(IMAGE_CHOICE)
    assert heat_map.grid == json.loads(feature[rs.TIME_POSTERIOR_IMAGE])
    assert "from the image alone" in dock.caption.text()
    dock.choice.setCurrentIndex(0)
    # A photo that claims no time says so, and has no claim marker.
    unclaimed = next(f for f in photos.getFeatures() if f[rs.CLAIMED_TIME_LOCAL] in (None, "") or
                     getattr(f[rs.CLAIMED_TIME_LOCAL], "isNull", lambda: False)())
    photos.selectByIds([unclaimed.id()])
    assert "the photo claims no time" in dock.caption.text() and "claim" not in heat_map.marker_points()
    photos.removeSelection()


def test_the_time_dock_thins_its_labels_at_its_minimum_size(qgis_app):
    from qgis_plugin.ui.time_dock import MIN_HEIGHT_PX, MIN_WIDTH_PX, HeatMap

    heat_map = HeatMap()
    grid = [[1.0 / 288] * 24 for _ in range(12)]
    heat_map.set_data(grid, (6.5, 9.0), (6.5, 12.0))
    heat_map.resize(MIN_WIDTH_PX, MIN_HEIGHT_PX)
    month_step, hour_step = heat_map.label_steps()
    from qgis.PyQt.QtGui import QFontMetrics

    metrics = QFontMetrics(heat_map._font())
    plot = heat_map.plot_rect()
    assert plot.height() / 12 * month_step >= metrics.height()  # month letters never overlap
    assert plot.width() / 24 * hour_step >= metrics.horizontalAdvance("24h")
    heat_map.resize(MIN_WIDTH_PX, 12 * 40)
    assert heat_map.label_steps()[0] == 1  # tall enough: every month
    assert not heat_map.grab().toImage().isNull()


# ---------------------------------------------------------------------------------------------- search


@pytest.mark.slow
def test_the_search_dock_searches_every_batch_of_the_case_and_fills_the_km_column(case, plugin, plugin_settings,
                                                                                   engine_files):
    second = _drop(plugin, engine_files["toy_photos"][3:6])
    dock = plugin.search_dock
    dock.refresh_layers()
    assert dock.layer_box.itemData(0) == "*" and dock.layer_box.itemText(0).startswith("every gtloc photos layer")
    labels = [dock.layer_box.itemText(i) for i in range(1, dock.layer_box.count())]
    assert any(label.startswith(case.group_name) for label in labels)
    assert any(label.startswith(second.group_name) for label in labels)
    dock.layer_box.setCurrentIndex(0)
    dock.like_selected.setChecked(False)
    dock.text.clear()
    dock.set_place(QgsPointXY(2.3522, 48.8566))
    dock.month.clear()
    dock.hour.clear()
    dock.top_k.setValue(20)
    dock.search_button.click()
    wait_until(lambda: dock.task is None, timeout_s=180)
    result = dock.last_result
    assert result is not None, dock.status.text()
    layer_ids = {hit["layer_id"] for hit in result["results"]}
    assert layer_ids == {case.layers.photos.id(), second.layers.photos.id()}
    scores = [hit["score"] for hit in result["results"]]
    assert scores == sorted(scores, reverse=True) and [hit["rank"] for hit in result["results"]] == \
        list(range(1, len(scores) + 1))
    kms = [dock.results.topLevelItem(i).text(3) for i in range(dock.results.topLevelItemCount())]
    assert kms and all(km != "" for km in kms)
    assert {f.id() for f in second.layers.photos.getSelectedFeatures()}  # selected in the layer they came from
