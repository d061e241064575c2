"""The plugin inside real QGIS: load/unload, a dropped photo -> styled layers through the real engine worker,
the likelihood raster rendering, temporal properties, the verdict colours, the time dock and the export."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest
from conftest import wait_until
from osgeo import gdal
from qgis.core import (
    QgsApplication,
    QgsDateTimeRange,
    QgsFeatureRequest,
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsPointXY,
    QgsProject,
    QgsRectangle,
    QgsVectorLayerTemporalContext,
    QgsVectorLayerTemporalProperties,
)
from qgis.PyQt.QtCore import QDateTime, QSize, Qt
from qgis.PyQt.QtGui import QColor

import qgis_plugin
from qgis_plugin.drop import is_photo
from qgis_plugin.engine_client import shared_client
from qgis_plugin.layers import KIND_PROPERTY, VERDICT_COLOURS, gtloc_layers


def test_the_plugin_loads_and_unloads_cleanly(iface, qgis_processing):
    registry = QgsApplication.processingRegistry()
    for _ in range(2):  # a reload (plugin reloader, settings change) must leave nothing behind either
        plugin = qgis_plugin.classFactory(iface)
        plugin.initGui()
        provider = registry.providerById("gtloc")
        assert provider is not None
        assert {a.name() for a in provider.algorithms()} == {"predict", "search", "export", "shadow"}
        assert iface.drop_handlers == [plugin.drop_handler] and len(iface.menu_actions) == len(plugin.actions) == 8
        assert iface.docks == [plugin.time_dock, plugin.search_dock]
        plugin.unload()
        assert registry.providerById("gtloc") is None
        assert iface.drop_handlers == [] and iface.menu_actions == [] and plugin.actions == []
        assert plugin.time_dock is None and plugin.search_dock is None and iface.docks == []
        assert not shared_client().running


def test_only_photos_are_taken_from_a_drop(engine_files, tmp_path, qgis_app):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    mapped = tmp_path / "scan.jpg"
    mapped.write_bytes(Path(engine_files["claimed_jpeg"]).read_bytes())
    (tmp_path / "scan.jgw").write_text("1\n0\n0\n-1\n0\n0\n")
    assert is_photo(engine_files["claimed_jpeg"]) and is_photo(engine_files["plain_tiff"])
    assert not is_photo(engine_files["geotiff"])  # a GeoTIFF is a map: QGIS opens it as a raster
    assert not is_photo(mapped)  # so is a JPEG with a world file
    assert not is_photo(notes) and not is_photo(tmp_path / "missing.jpg")


@pytest.fixture(scope="module")
def dropped(plugin, plugin_settings, engine_files):
    """Drop the EXIF-claimed JPEG (and a text file QGIS should keep) and wait for the layers."""
    handler = plugin.drop_handler
    assert handler.handleFileDrop(engine_files["claimed_jpeg"]) is True
    assert handler.handleFileDrop(engine_files["geotiff"]) is False
    wait_until(lambda: len(plugin.tasks) == 1)
    task = plugin.tasks[0]
    wait_until(lambda: task not in plugin.tasks, timeout_s=240)
    assert task.error is None, task.error
    return task


@pytest.mark.slow
def test_a_dropped_photo_becomes_styled_layers_in_one_group(dropped, engine_files, iface):
    layers = dropped.layers
    root = QgsProject.instance().layerTreeRoot()
    group = root.findGroup(dropped.group_name)
    assert group is not None and root.children()[0] is group
    assert {layer.customProperty(KIND_PROPERTY) for layer in gtloc_layers()} == \
        {"photos", "claims", "candidates", "regions", "likelihood"}
    assert {node.layer().id() for node in group.findLayers()} == {layer.id() for layer in layers.all()}
    assert layers.photos.featureCount() == 1
    photo = next(layers.photos.getFeatures())
    claimed = engine_files["claimed"]
    # The point is the EXIF claim we wrote, in lon/lat order.
    assert photo["point_source"] == "claim"
    point = photo.geometry().asPoint()
    assert point.x() == pytest.approx(claimed["lon_deg"], abs=1e-5)
    assert point.y() == pytest.approx(claimed["lat_deg"], abs=1e-5)
    assert layers.candidates.featureCount() == 3  # top_k from the settings
    [surfaces] = layers.surfaces
    assert surfaces.regions.featureCount() >= 1
    region_levels = {c.value() for c in surfaces.regions.renderer().categories()}
    assert {f["level"] for f in surfaces.regions.getFeatures()} <= region_levels == {0.5, 0.9}
    # Verification view: the verdict picks a colour on the map and in the attribute table.
    verdict = photo["verdict"]
    assert verdict in VERDICT_COLOURS
    renderer = layers.photos.renderer()
    assert renderer.classAttribute() == "verdict"
    colours = {c.value(): c.symbol().color().name() for c in renderer.categories()}
    assert colours == VERDICT_COLOURS
    # The claim -> prediction line runs from the EXIF place to the predicted place, in the verdict's colour.
    line = next(layers.claims.getFeatures()).geometry().asPolyline()
    assert [(round(p.x(), 5), round(p.y(), 5)) for p in line] == [
        (round(claimed["lon_deg"], 5), round(claimed["lat_deg"], 5)),
        (round(photo["pred_lon_deg"], 5), round(photo["pred_lat_deg"], 5))]
    assert layers.claims.renderer().classAttribute() == "verdict"
    styles = layers.photos.conditionalStyles().fieldStyles("verdict")
    matching = [s for s in styles if s.matches(verdict, layers.photos.createExpressionContext())]
    assert [s.backgroundColor().name() for s in matching] == [VERDICT_COLOURS[verdict]]
    # Temporal Controller: each photo plays at its local wall clock (map_time_local), here the claimed local time;
    # map_time is UTC: the EXIF has no UTC offset, so the claimed place's zone gives it (Europe/Paris, CEST in July).
    props = layers.photos.temporalProperties()
    assert props.isActive() and props.startExpression() == 'to_datetime("map_time_local")'
    assert props.mode() == QgsVectorLayerTemporalProperties.ModeFeatureDateTimeStartAndEndFromExpressions
    assert photo["map_time_source"] == "claim" and photo["utc_offset_source"] == "IANA zone of the claimed place"
    utc = dt.datetime.fromisoformat(claimed["local_datetime"]) - dt.timedelta(hours=2)
    assert photo["map_time"] == QDateTime(utc.date(), utc.time(), Qt.UTC)
    assert photo["map_time_local"] == claimed["local_datetime"]
    local = QDateTime(dt.datetime.fromisoformat(claimed["local_datetime"]))
    context = QgsVectorLayerTemporalContext()
    context.setLayer(layers.photos)

    def shown_at(minutes_after: int) -> bool:
        start = local.addSecs(minutes_after * 60)
        request = QgsFeatureRequest().setFilterExpression(
            props.createFilterString(context, QgsDateTimeRange(start, start.addSecs(60))))
        return any(f.id() == photo.id() for f in layers.photos.getFeatures(request))

    assert [shown_at(m) for m in (-30, 0, 30, 90)] == [False, True, True, False]  # one local hour from 15:30
    assert "located" in iface.messageBar().get_messages(3)[-1]


@pytest.mark.slow
def test_the_likelihood_raster_renders_where_the_surface_is_high(dropped):
    raster = next(r for r in dropped.layers.rasters if r.name().startswith("likelihood global"))
    values = gdal.Open(raster.source()).ReadAsArray()
    settings = QgsMapSettings()
    settings.setLayers([raster])
    settings.setDestinationCrs(raster.crs())
    settings.setExtent(raster.extent())
    settings.setOutputSize(QSize(values.shape[1], values.shape[0]))  # one pixel per cell
    settings.setBackgroundColor(QColor(0, 0, 0, 0))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()

    def alpha_at(lat_deg, lon_deg):
        pixel = settings.mapToPixel().transform(QgsPointXY(lon_deg, lat_deg))
        return image.pixelColor(int(pixel.x()), int(pixel.y())).alpha()

    extent: QgsRectangle = raster.extent()
    res_x, res_y = extent.width() / values.shape[1], extent.height() / values.shape[0]
    top_row, top_col = divmod(int(values.argmax()), values.shape[1])
    low_row, low_col = divmod(int(values.argmin()), values.shape[1])

    def centre(row, col):
        return extent.yMaximum() - (row + 0.5) * res_y, extent.xMinimum() + (col + 0.5) * res_x

    opaque = sum(image.pixelColor(x, y).alpha() > 0 for x in range(0, image.width(), 4)
                 for y in range(0, image.height(), 4))
    assert opaque > 0
    assert alpha_at(*centre(top_row, top_col)) > 0  # the likeliest cell shows
    assert alpha_at(*centre(low_row, low_col)) == 0  # the least likely is transparent over the base map


@pytest.mark.slow
def test_the_time_dock_shows_the_selected_photos_month_hour_posterior(dropped, plugin, iface):
    photos = dropped.layers.photos
    dock = plugin.time_dock
    dock._on_layer(photos)  # what QGIS's currentLayerChanged does when the user picks the layer
    photos.selectAll()
    stored = json.loads(next(photos.getFeatures())["time_posterior"])
    assert dock.heat_map.grid == stored and len(stored) == 12 and len(stored[0]) == 24
    assert sum(map(sum, stored)) == pytest.approx(1.0, abs=1e-3)
    assert "claimed.jpg" in dock.caption.text()
    photos.removeSelection()
    assert dock.heat_map.grid is None


@pytest.mark.slow
def test_export_writes_the_sessions_gtloc_layers_to_one_geopackage(dropped, tmp_path):
    import processing

    out = tmp_path / "session.gpkg"
    result = processing.run("gtloc:export", {"OUTPUT": str(out)})
    layers = dropped.layers
    assert result["N_LAYERS"] == len(layers.all())
    with sqlite3.connect(out) as db:
        contents = dict(db.execute("SELECT table_name, data_type FROM gpkg_contents").fetchall())
        counts = {name: db.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0]
                  for name, kind in contents.items() if kind == "features"}
    assert counts == {"photos": 1, "claim_prediction": 1, "candidates": 3,
                      "regions": layers.surfaces[0].regions.featureCount()}
    rasters = [name for name, kind in contents.items() if kind == "2d-gridded-coverage"]
    assert len(rasters) == len(layers.rasters)
    # The float likelihoods survive the copy.
    source = gdal.Open(layers.rasters[0].source()).ReadAsArray()
    copied = gdal.OpenEx(str(out), open_options=[f"TABLE={rasters[0]}"]).ReadAsArray()
    assert copied.shape == source.shape and abs(float(copied.max()) - float(source.max())) < 1e-6 * source.max()


def _gdal_messages_on_open(path: Path) -> list[str]:
    messages: list[str] = []
    gdal.PushErrorHandler(lambda _class, _number, message: messages.append(message))
    try:
        assert gdal.OpenEx(str(path), gdal.OF_VECTOR) is not None
    finally:
        gdal.PopErrorHandler()
    return messages


@pytest.mark.slow
def test_the_engines_geopackage_opens_in_qgis_gdal_without_a_version_warning(dropped, tmp_path):
    gpkg = Path(dropped.request.out_gpkg)
    assert _gdal_messages_on_open(gpkg) == []
    # The same file stamped GeoPackage 1.4 (what the engine's GDAL writes by default) draws the warning here.
    stamped = tmp_path / "v14.gpkg"
    stamped.write_bytes(gpkg.read_bytes())
    with sqlite3.connect(stamped) as db:
        db.execute("PRAGMA user_version = 10400")
    db.close()
    assert any("partially supported" in m for m in _gdal_messages_on_open(stamped))


def test_an_engine_error_reaches_the_message_bar_and_adds_no_layers(plugin, plugin_settings, engine_files, iface,
                                                                    tmp_path):
    from dataclasses import replace

    from qgis_plugin.settings import save_settings

    save_settings(replace(plugin_settings, model=str(tmp_path / "gone.safetensors")))
    try:
        layers_before = set(QgsProject.instance().mapLayers())
        task = plugin.predict([engine_files["claimed_jpeg"]])
        wait_until(lambda: task not in plugin.tasks, timeout_s=120)
    finally:
        save_settings(plugin_settings)
    assert "gone.safetensors" in task.error
    assert "gone.safetensors" in iface.messageBar().get_messages(2)[-1]  # Qgis.Critical
    assert set(QgsProject.instance().mapLayers()) == layers_before
