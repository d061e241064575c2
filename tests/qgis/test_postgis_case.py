"""A PostGIS case in real QGIS: a real PostgreSQL + PostGIS server started by the test (tests/postgis_cluster.py), a
case written by the engine's `gtloc predict --out postgresql://...`, opened by the plugin through QGIS's own
postgres provider (styled, the credible regions following the selection, claim lines computed by the server),
searched from the search dock against the engine's `gtloc search` of the same case, and predicted into from the
plugin through the real engine worker, the open layers reloaded rather than added again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ENGINE_GTLOC, _engine_run, wait_until
from qgis.core import QgsCoordinateReferenceSystem, QgsPointXY, QgsProject, QgsWkbTypes
from qgis.PyQt.QtCore import Qt

from qgis_plugin import results_schema as rs
from qgis_plugin.layers import KIND_PROPERTY, SOURCE_PROPERTY
from qgis_plugin.postgis_case import case_uri, is_case_target, load_case, show_case

PARIS_LATLON_DEG = (48.8566, 2.3522)


@pytest.fixture(scope="module")
def pg_server():
    from postgis_cluster import running_server

    yield from running_server()


@pytest.fixture(scope="module")
def case(pg_server, engine_files, model_path) -> str:
    """A case of 6 toy photos and the EXIF-claimed JPEG, written by the engine's `gtloc predict`."""
    url = pg_server.create_database("qgis_case")
    _engine_run(ENGINE_GTLOC, "predict", *engine_files["toy_photos"][:6], engine_files["claimed_jpeg"], "--model",
                model_path, "--out", url, "--res-deg", "2", "--top-k", "2", "--quiet")
    return url


def _db(pg_server, sql: str) -> str:
    return pg_server.psql(sql, database="qgis_case")


def test_a_case_target_is_told_from_a_geopackage_and_a_password_is_refused(pg_server):
    assert is_case_target("postgresql://ana@db/case") and is_case_target("service=case_kyiv")
    assert not is_case_target("/data/results.gpkg") and not is_case_target("C:/cases/postgresql.gpkg")
    for bad in ("postgresql://ana:secret@db/case", "postgresql://ana@db/case?password=secret",
                "service=case password=secret"):
        with pytest.raises(ValueError, match="PGPASSWORD") as info:
            case_uri(bad, rs.PHOTOS_LAYER)
        assert "secret" not in str(info.value)
    uri = case_uri("service=case_kyiv", rs.PHOTOS_LAYER)
    assert uri.service() == "case_kyiv" and uri.table() == rs.PHOTOS_LAYER and uri.geometryColumn() == "geom"


def test_a_case_opens_as_styled_postgres_layers_whose_regions_follow_the_selection(case, pg_server):
    layers = load_case(case)
    photos, candidates, regions = layers.photos, layers.candidates, layers.surfaces[0].regions
    for layer in (photos, candidates, regions, layers.claims):
        assert layer.isValid() and layer.providerType() == "postgres"
        assert layer.crs().authid() == "EPSG:4326"
        assert layer.customProperty(SOURCE_PROPERTY) == case
    assert photos.featureCount() == 7 == int(_db(pg_server, "SELECT count(*) FROM photos"))
    assert candidates.featureCount() == 14
    assert QgsWkbTypes.geometryType(photos.wkbType()) == QgsWkbTypes.PointGeometry
    assert QgsWkbTypes.flatType(regions.wkbType()) == QgsWkbTypes.MultiPolygon
    assert photos.renderer().type() == "categorizedSymbol" and photos.renderer().classAttribute() == rs.VERDICT
    assert photos.customProperty(KIND_PROPERTY) == rs.PHOTOS_LAYER
    claimed = next(f for f in photos.getFeatures() if f[rs.FILE_NAME] == "claimed.jpg")
    point = claimed.geometry().asPoint()
    assert (point.y(), point.x()) == pytest.approx(PARIS_LATLON_DEG, abs=1e-6)  # x = lon, y = lat
    # The claim line runs from the claimed place to the predicted one, computed by PostGIS.
    lines = list(layers.claims.getFeatures())
    assert len(lines) == 1 and lines[0][rs.PATH] == claimed[rs.PATH]
    start = lines[0].geometry().asPolyline()[0]
    assert (start.y(), start.x()) == pytest.approx(PARIS_LATLON_DEG, abs=1e-6)
    assert regions.featureCount() == 0  # nothing selected: no regions drawn
    photos.selectByIds([claimed.id()])
    expected = int(_db(pg_server, f"SELECT count(*) FROM regions WHERE path = '{claimed[rs.PATH]}'"))
    assert expected >= 1 and regions.featureCount() == expected
    assert {f[rs.PATH] for f in regions.getFeatures()} == {claimed[rs.PATH]}
    photos.removeSelection()
    assert regions.featureCount() == 0


@pytest.mark.slow
def test_the_search_dock_searches_a_case_as_the_engine_does(case, model_path, plugin_settings, iface):
    from qgis_plugin.ui.search_dock import SearchDock

    project = QgsProject.instance()
    layers = show_case(case, "gtloc case qgis_case", project)
    dock = SearchDock(iface)
    try:
        assert layers.photos in dock.current_layers()
        iface.mapCanvas().setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:4326"))
        dock.pick_button.setChecked(True)
        dock.place_tool.canvasClicked.emit(QgsPointXY(PARIS_LATLON_DEG[1], PARIS_LATLON_DEG[0]), Qt.LeftButton)
        dock.top_k.setValue(3)
        dock.search_button.click()
        assert dock.task is not None
        wait_until(lambda: dock.task is None, timeout_s=120)
        expected = json.loads(_engine_run(ENGINE_GTLOC, "search", case, "--model", model_path, "--near",
                                          f"{PARIS_LATLON_DEG[0]},{PARIS_LATLON_DEG[1]}", "--top", 3))["results"]
        items = [dock.results.topLevelItem(i) for i in range(dock.results.topLevelItemCount())]
        assert len(expected) == 3
        assert [[item.text(c) for c in range(3)] for item in items] == [
            [str(r["rank"]), f"{r['score']:.4f}", Path(r["path"]).name] for r in expected]
        assert {f["sha256"] for f in layers.photos.getSelectedFeatures()} == {r["sha256"] for r in expected}
    finally:
        dock.unload()
        dock.deleteLater()
        project.removeMapLayers([layer.id() for layer in layers.all()])


@pytest.mark.slow
def test_the_plugin_predicts_into_the_case_and_reloads_its_layers(case, engine_files, plugin_settings, iface,
                                                                  qgis_processing, pg_server):
    import qgis_plugin

    project = QgsProject.instance()
    plugin = qgis_plugin.classFactory(iface)
    plugin.initGui()
    try:
        layers = show_case(case, "gtloc case qgis_case", project)
        before = layers.photos.featureCount()
        task = plugin.predict([engine_files["toy_photos"][10], engine_files["toy_photos"][11]], case=case)
        assert task is not None and task.request.out_gpkg == case
        wait_until(lambda: task not in plugin.tasks, timeout_s=240)
        assert task.error is None, task.error
        assert (task.summary["n_done"], task.summary["out_gpkg"]) == (2, case)
        assert int(_db(pg_server, "SELECT count(*) FROM photos")) == before + 2
        assert task.layers.photos is layers.photos and layers.photos.featureCount() == before + 2  # reloaded
        photo_layers = [layer for layer in project.mapLayers().values()
                        if layer.customProperty(KIND_PROPERTY) == rs.PHOTOS_LAYER
                        and layer.customProperty(SOURCE_PROPERTY) == case]
        assert photo_layers == [layers.photos]  # not added a second time
    finally:
        plugin.unload()
        project.clear()
