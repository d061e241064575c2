"""Geo-temporal search from QGIS: `gtloc:search` through the Processing framework and the search dock, both through
the real engine worker, checked against the engine's own `gtloc search` command run as a subprocess (with the
filters and settings too: polygons, claimed time range, pooling, point source); and what search and
`gtloc:export` write, checked by GDAL's GeoPackage validator."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest
from conftest import ENGINE_GTLOC, _engine_run, wait_until
from gpkg_validator import validate_gpkg
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingFeedback,
    QgsProject,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QDate, QDateTime, QTime, Qt

from qgis_plugin.layers import add_to_project, load_prediction

PARIS_LATLON_DEG = (48.8566, 2.3522)
EUROPE_WKT = "POLYGON((-10 35, 20 35, 20 60, -10 60, -10 35))"  # lon/lat: around Paris, the claimed photo's place
EARTH_RADIUS_M = 6378137.0  # EPSG:3857's sphere


def web_mercator(lat_deg: float, lon_deg: float) -> tuple[float, float]:
    """EPSG:3857 x, y of a point by the spherical Mercator formulas (an independent check of QGIS's transform)."""
    x = EARTH_RADIUS_M * math.radians(lon_deg)
    y = EARTH_RADIUS_M * math.log(math.tan(math.pi / 4 + math.radians(lat_deg) / 2))
    return x, y


@pytest.fixture(scope="module")
def results_gpkg(engine_files, model_path, tmp_path_factory) -> Path:
    """A results GeoPackage of 8 toy photos and the EXIF-claimed JPEG, written by the engine's `gtloc predict`."""
    out = tmp_path_factory.mktemp("search") / "results.gpkg"
    _engine_run(ENGINE_GTLOC, "predict", *engine_files["toy_photos"][:8], engine_files["claimed_jpeg"],
                "--model", model_path, "--out", out, "--res-deg", "2", "--top-k", "1", "--quiet")
    return out


def cli_search(gpkg: Path, model: Path, *args) -> dict:
    return json.loads(_engine_run(ENGINE_GTLOC, "search", gpkg, "--model", model, *args))


@pytest.mark.slow
def test_processing_search_writes_the_engines_ranking_as_a_layer(results_gpkg, model_path, plugin_settings,
                                                                 gtloc_provider, tmp_path):
    import processing

    x, y = web_mercator(*PARIS_LATLON_DEG)
    out = tmp_path / "hits.gpkg"
    result = processing.run("gtloc:search", {
        "GPKG": str(results_gpkg), "MODEL": str(model_path), "POINT": f"{x},{y} [EPSG:3857]",
        "RADIUS_KM": 15000, "MONTH": "11-2", "HOUR": "22-3", "TOP_K": 5, "OUTPUT": str(out)})
    expected = cli_search(results_gpkg, model_path, "--near", f"{PARIS_LATLON_DEG[0]},{PARIS_LATLON_DEG[1]}",
                          "--radius-km", 15000, "--month", "11-2", "--hour", "22-3", "--top", 5)
    assert expected["query"]["kind"] == "place+time" and expected["results"]
    assert result["OUTPUT"] == str(out) and result["N_RESULTS"] == len(expected["results"])
    with sqlite3.connect(out) as db:
        rows = db.execute("SELECT rank, score, sha256, query FROM search_results ORDER BY rank").fetchall()
    db.close()
    assert [r[2] for r in rows] == [r["sha256"] for r in expected["results"]]
    assert [r[1] for r in rows] == pytest.approx([r["score"] for r in expected["results"]], abs=1e-6)
    # The point typed in Web Mercator reached the engine as the same place in degrees.
    near = json.loads(rows[0][3])["near_latlon_deg"]
    assert near == pytest.approx(list(PARIS_LATLON_DEG), abs=1e-6)


@pytest.mark.slow
def test_processing_search_reports_an_engine_error(results_gpkg, plugin_settings, gtloc_provider, tmp_path):
    import processing
    from qgis.core import QgsProcessingException

    # No MODEL: the one in gtloc's settings is used; the bad month comes back as the engine's one-line error.
    with pytest.raises(QgsProcessingException, match="month"):
        processing.run("gtloc:search", {"GPKG": str(results_gpkg), "MONTH": "13", "OUTPUT": str(tmp_path / "x.gpkg")})
    assert not (tmp_path / "x.gpkg").exists()


@pytest.mark.slow
def test_the_search_dock_lists_scored_results_and_selects_them_on_the_map(results_gpkg, model_path,
                                                                          plugin_settings, iface):
    from qgis_plugin.ui.search_dock import SearchDock

    project = QgsProject.instance()
    layers = load_prediction(results_gpkg)
    add_to_project(layers, "search test", project)
    dock = SearchDock(iface)
    try:
        assert dock.current_layer() is layers.photos
        canvas = iface.mapCanvas()
        canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
        dock.pick_button.setChecked(True)
        assert canvas.mapTool() is dock.place_tool
        # A click on the map, as the map tool reports it: a canvas point in the canvas CRS.
        dock.place_tool.canvasClicked.emit(QgsPointXY(*web_mercator(*PARIS_LATLON_DEG)), Qt.LeftButton)
        assert dock.near_latlon_deg == pytest.approx(PARIS_LATLON_DEG, abs=1e-6)
        assert not dock.pick_button.isChecked() and canvas.mapTool() is not dock.place_tool
        dock.month.setText("6-8")
        dock.top_k.setValue(3)
        dock.search_button.click()
        assert dock.task is not None
        wait_until(lambda: dock.task is None, timeout_s=120)
        assert dock.status.text().startswith("3 of 9 photos"), dock.status.text()
        expected = cli_search(results_gpkg, model_path, "--near", f"{PARIS_LATLON_DEG[0]},{PARIS_LATLON_DEG[1]}",
                              "--month", "6-8", "--top", 3)["results"]
        items = [dock.results.topLevelItem(i) for i in range(dock.results.topLevelItemCount())]
        listed = [[item.text(column) for column in range(3)] for item in items]
        assert listed == [[str(r["rank"]), f"{r['score']:.4f}", Path(r["path"]).name] for r in expected]
        selected = {f["sha256"] for f in layers.photos.getSelectedFeatures()}
        assert selected == {r["sha256"] for r in expected}
        # An incomplete query is refused before the engine is asked.
        dock.set_place(None)
        dock.month.clear()
        dock.search_button.click()
        assert dock.task is None and "pick a place" in dock.status.text()
    finally:
        dock.unload()
        dock.deleteLater()
        project.removeMapLayers([layer.id() for layer in layers.all()])


@pytest.mark.slow
def test_the_search_dock_finds_the_selected_photos_place_at_another_time(results_gpkg, model_path, engine_files,
                                                                         plugin_settings, iface):
    from qgis_plugin.ui.search_dock import SearchDock

    project = QgsProject.instance()
    layers = load_prediction(results_gpkg)
    add_to_project(layers, "photo+time test", project)
    dock = SearchDock(iface)
    try:
        claimed = engine_files["claimed_jpeg"]
        query = next(f for f in layers.photos.getFeatures() if f["path"] == claimed)
        layers.photos.selectByIds([query.id()])
        dock.set_place(QgsPointXY(10.0, 20.0))  # left over from an earlier search: a photo query ignores it
        dock.radius_km.setValue(100)
        dock.like_selected.setChecked(True)
        assert not dock.pick_button.isEnabled() and not dock.radius_km.isEnabled()  # the place is the photo's
        dock.month.setText("12-2")
        dock.hour.setText("6-9")
        kwargs = dock.request_kwargs(layers.photos)
        assert {k: kwargs.get(k) for k in ("like", "month", "hour", "near_latlon_deg", "radius_km")} == {
            "like": claimed, "month": "12-2", "hour": "6-9", "near_latlon_deg": None, "radius_km": None}
        dock.top_k.setValue(20)
        dock.search_button.click()
        assert dock.task is not None
        wait_until(lambda: dock.task is None, timeout_s=120)
        first, *notes = dock.status.text().split("\n")
        assert first == "8 of 8 photos (photo+time query)", dock.status.text()
        # The notes say which place was searched: the claimed photo's point is its EXIF claim (Paris).
        assert dock.last_result["query"]["kind"] == "photo+time"
        assert notes == dock.last_result["notes"] and any(
            "same place as the query photo" in n and f"{PARIS_LATLON_DEG[0]:.4f}, {PARIS_LATLON_DEG[1]:.4f}" in n
            for n in notes), notes
        expected = cli_search(results_gpkg, model_path, "--like", claimed, "--month", "12-2", "--hour", "6-9",
                              "--top", 20)
        assert expected["query"]["kind"] == "photo+time"
        listed = [dock.results.topLevelItem(i).text(2) for i in range(dock.results.topLevelItemCount())]
        assert listed == [Path(r["path"]).name for r in expected["results"]]
        assert "claimed.jpg" not in listed  # the query photo is not its own result
        selected = {f["sha256"] for f in layers.photos.getSelectedFeatures()}
        assert query["sha256"] not in selected and len(selected) == 8
        # Unticked, the same months and hours are a plain time query again.
        dock.like_selected.setChecked(False)
        assert dock.pick_button.isEnabled() and "like" not in dock.request_kwargs(layers.photos)
    finally:
        dock.unload()
        dock.deleteLater()
        project.removeMapLayers([layer.id() for layer in layers.all()])


@pytest.mark.slow
def test_processing_search_with_a_photo_and_months_finds_its_place_at_another_time(results_gpkg, model_path,
                                                                                   engine_files, plugin_settings,
                                                                                   gtloc_provider, tmp_path):
    import processing

    out = tmp_path / "same_place.gpkg"
    claimed = engine_files["claimed_jpeg"]
    result = processing.run("gtloc:search", {"GPKG": str(results_gpkg), "MODEL": str(model_path), "LIKE": claimed,
                                             "MONTH": "6-8", "TOP_K": 20, "OUTPUT": str(out)})
    assert result["N_RESULTS"] == 8
    with sqlite3.connect(out) as db:
        rows = db.execute("SELECT path, query FROM search_results ORDER BY rank").fetchall()
    db.close()
    assert claimed not in {path for path, _ in rows} and len(rows) == 8
    query = json.loads(rows[0][1])
    assert query["kind"] == "photo+time" and query["like_photo"] == claimed


def europe_file(folder: Path) -> Path:
    """A GeoJSON file with one polygon around western Europe, written by GDAL (as a user's area file would be)."""
    from osgeo import ogr, osr

    path = folder / "europe.geojson"
    dataset = ogr.GetDriverByName("GeoJSON").CreateDataSource(str(path))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    layer = dataset.CreateLayer("europe", srs, ogr.wkbPolygon)
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetGeometry(ogr.CreateGeometryFromWkt(EUROPE_WKT))
    layer.CreateFeature(feature)
    feature = layer = dataset = None
    return path


def europe_memory_layer() -> QgsVectorLayer:
    """The same polygon drawn in a scratch layer (no file: the plugin writes one for the engine)."""
    layer = QgsVectorLayer("Polygon?crs=EPSG:4326", "drawn area", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromWkt(EUROPE_WKT))
    layer.dataProvider().addFeatures([feature])
    return layer


def _search_rows(gpkg: Path) -> list[tuple]:
    with sqlite3.connect(gpkg) as db:
        rows = db.execute("SELECT sha256, score, point_source FROM search_results ORDER BY rank").fetchall()
    db.close()
    return rows


@pytest.mark.slow
def test_processing_search_takes_polygons_claimed_times_pooling_and_point_source_as_the_cli(
        results_gpkg, model_path, plugin_settings, gtloc_provider, tmp_path):
    import processing

    area = europe_file(tmp_path)
    base = {"GPKG": str(results_gpkg), "MODEL": str(model_path), "MONTH": "6-8", "TOP_K": 20}
    cli_base = ["--month", "6-8", "--top", 20]
    runs = {  # Processing parameters, the same as gtloc search options
        "claim": ({"WITHIN": str(area), "POINT_SOURCE": 1, "POOLING": 1},
                  ["--within", area, "--point-source", "claim", "--pooling", "mean"]),
        "prediction": ({"WITHIN": europe_memory_layer(), "POINT_SOURCE": 2},
                       ["--within", area, "--point-source", "prediction"]),
        "july": ({"CLAIMED_AFTER": "2021-07-01T00:00", "CLAIMED_BEFORE": "2021:08:01 00:00:00"},
                 ["--claimed-after", "2021-07-01T00:00", "--claimed-before", "2021:08:01 00:00:00"]),
        "august": ({"CLAIMED_AFTER": "2021-08-01T00:00"}, ["--claimed-after", "2021-08-01T00:00"]),
    }
    found = {}
    for name, (params, options) in runs.items():
        out = tmp_path / f"{name}.gpkg"
        result = processing.run("gtloc:search", {**base, **params, "OUTPUT": str(out)})
        expected = cli_search(results_gpkg, model_path, *cli_base, *options)["results"]
        rows = _search_rows(out)
        assert result["N_RESULTS"] == len(rows) == len(expected), name
        assert [r[0] for r in rows] == [r["sha256"] for r in expected], name
        assert [r[1] for r in rows] == pytest.approx([r["score"] for r in expected], abs=1e-6), name
        assert validate_gpkg(out) == [], name  # search_results in a new GeoPackage: nothing to report
        found[name] = rows
    # Only the claimed photo claims a place (Paris) and a time (2021-07-14 15:30 local).
    assert len(found["claim"]) == 1 and found["claim"][0][2] == "claim"
    assert {r[2] for r in found["prediction"]} <= {"prediction"}
    assert len(found["july"]) == 1 and found["july"][0][0] == found["claim"][0][0] and found["august"] == []
    # Mean pooling scores differ from the default best-matching time's.
    max_pooled = cli_search(results_gpkg, model_path, *cli_base, "--within", area, "--point-source", "claim")
    assert max_pooled["results"][0]["score"] != pytest.approx(found["claim"][0][1], abs=1e-6)


@pytest.mark.slow
def test_the_search_dock_sends_a_polygon_layer_claimed_times_pooling_and_point_source(results_gpkg, model_path,
                                                                                     plugin_settings, iface, tmp_path):
    from qgis_plugin.ui.search_dock import SearchDock

    project = QgsProject.instance()
    layers = load_prediction(results_gpkg)
    add_to_project(layers, "filtered search test", project)
    drawn = europe_memory_layer()
    project.addMapLayer(drawn)
    dock = SearchDock(iface)
    try:
        dock.set_place(QgsPointXY(PARIS_LATLON_DEG[1], PARIS_LATLON_DEG[0]))
        dock.month.setText("6-8")
        dock.within.setLayer(drawn)
        dock.claimed_after.setText("2021-01-01T00:00")
        dock.claimed_before.setText("2022-01-01T00:00")
        dock.pooling.setCurrentIndex(dock.pooling.findData("mean"))
        dock.point_source.setCurrentIndex(dock.point_source.findData("claim"))
        kwargs = dock.request_kwargs(layers.photos)
        assert {k: kwargs[k] for k in ("pooling", "point_source", "claimed_after", "claimed_before")} == {
            "pooling": "mean", "point_source": "claim", "claimed_after": "2021-01-01T00:00",
            "claimed_before": "2022-01-01T00:00"}
        assert Path(kwargs["within"]).is_file() and kwargs["within_layer"]  # the drawn layer, written for the engine
        dock.top_k.setValue(20)
        dock.search_button.click()
        wait_until(lambda: dock.task is None, timeout_s=120)
        expected = cli_search(results_gpkg, model_path, "--near", f"{PARIS_LATLON_DEG[0]},{PARIS_LATLON_DEG[1]}",
                              "--month", "6-8", "--within", europe_file(tmp_path), "--claimed-after",
                              "2021-01-01T00:00", "--claimed-before", "2022-01-01T00:00", "--pooling", "mean",
                              "--point-source", "claim", "--top", 20)["results"]
        assert dock.status.text().startswith(f"{len(expected)} of 1 photos"), dock.status.text()
        listed = [[dock.results.topLevelItem(i).text(c) for c in range(3)]
                  for i in range(dock.results.topLevelItemCount())]
        assert listed == [[str(r["rank"]), f"{r['score']:.4f}", Path(r["path"]).name] for r in expected]
        assert [row[2] for row in listed] == ["claimed.jpg"]
        dock.within.setLayer(None)
        assert "within" not in dock.request_kwargs(layers.photos)
    finally:
        dock.unload()
        dock.deleteLater()
        project.removeMapLayers([layer.id() for layer in layers.all()] + [drawn.id()])


class _Warnings(QgsProcessingFeedback):
    def __init__(self):
        super().__init__()
        self.warnings: list[str] = []

    def pushWarning(self, warning: str) -> None:
        self.warnings.append(warning)
        super().pushWarning(warning)


def _column(gpkg: Path, table: str, column: str) -> tuple[str, list]:
    """(declared SQL type, values) of a column, read with sqlite3."""
    with sqlite3.connect(gpkg) as db:
        declared = {row[1]: row[2] for row in db.execute(f'PRAGMA table_info("{table}")')}[column]
        values = [row[0] for row in db.execute(f'SELECT "{column}" FROM "{table}" ORDER BY fid')]
    db.close()
    return declared, values


@pytest.mark.slow
def test_the_export_of_gtloc_layers_and_search_results_passes_gdals_validator(model_path, engine_files, iface,
                                                                             plugin_settings, gtloc_provider,
                                                                             tmp_path):
    import processing

    results = tmp_path / "results.gpkg"
    _engine_run(ENGINE_GTLOC, "predict", engine_files["claimed_jpeg"], engine_files["toy_photos"][0], "--model",
                model_path, "--out", results, "--rasters", tmp_path / "rasters", "--res-deg", "2", "--top-k", "2",
                "--quiet")
    hits = tmp_path / "hits.gpkg"
    processing.run("gtloc:search", {"GPKG": str(results), "MODEL": str(model_path), "MONTH": "6", "TOP_K": 2,
                                    "OUTPUT": str(hits)})
    layers = load_prediction(results)
    search_layer = QgsVectorLayer(f"{hits}|layername=search_results", "search results", "ogr")
    assert search_layer.isValid() and layers.rasters
    out = tmp_path / "export.gpkg"
    feedback = _Warnings()
    result = processing.run("gtloc:export", {"LAYERS": [*layers.all(), search_layer], "OUTPUT": str(out)},
                            feedback=feedback)
    # One table per layer, but each photo's regions view goes back into the batch's one regions table.
    assert result["N_LAYERS"] == len(layers.all()) - len(layers.surfaces) + 1 + 1
    assert validate_gpkg(out) == []
    with sqlite3.connect(out) as db:
        contents = dict(db.execute("SELECT table_name, data_type FROM gpkg_contents").fetchall())
    db.close()
    assert {"photos", "candidates", "regions", "claim_prediction", "search_results"} <= set(contents)
    assert sum(kind == "2d-gridded-coverage" for kind in contents.values()) == len(layers.rasters)
    # map_time is copied as the results GeoPackage stores it: a DATETIME where its times are UTC, else text.
    source_type, source_values = _column(results, "photos", "map_time")
    declared, values = _column(out, "photos", "map_time")
    assert values == source_values
    utc = all(v is None or v.endswith("Z") for v in source_values)
    assert declared == ("DATETIME" if utc else "TEXT"), (source_type, source_values, declared)
    assert any("map_time" in w for w in feedback.warnings) == (not utc)


def test_export_keeps_utc_times_as_datetimes_and_writes_other_times_as_text(gtloc_provider, tmp_path):
    """A GeoPackage DATETIME is UTC ('...Z'): QGIS 3.22's own writer drops the mark, so layers read from a file are
    copied by GDAL; a column with times of no time zone (a local wall clock, or a layer QGIS writes) becomes text."""
    import processing
    from osgeo import ogr, osr

    source = tmp_path / "times.gpkg"
    dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(source))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    for name, tz_flag in (("utc", 100), ("wall_clock", 0)):
        layer = dataset.CreateLayer(name, srs, ogr.wkbPoint)
        layer.CreateField(ogr.FieldDefn("t", ogr.OFTDateTime))
        for with_time in (True, False):
            feature = ogr.Feature(layer.GetLayerDefn())
            if with_time:
                feature.SetField("t", 2021, 7, 14, 15, 30, 0, tz_flag)
            feature.SetGeometry(ogr.CreateGeometryFromWkt("POINT (2.35 48.85)"))
            layer.CreateFeature(feature)
    feature = layer = dataset = None
    memory = QgsVectorLayer("Point?crs=EPSG:4326&field=t:datetime", "scratch", "memory")
    feature = QgsFeature(memory.fields())
    feature.setAttribute("t", QDateTime(QDate(2021, 7, 14), QTime(15, 30), Qt.UTC))
    feature.setGeometry(QgsGeometry.fromWkt("POINT (2.35 48.85)"))
    memory.dataProvider().addFeatures([feature])
    layers = [QgsVectorLayer(f"{source}|layername={name}", name, "ogr") for name in ("utc", "wall_clock")] + [memory]
    out = tmp_path / "export.gpkg"
    out.write_text("an earlier export")  # replaced, not appended to
    feedback = _Warnings()
    processing.run("gtloc:export", {"LAYERS": layers, "OUTPUT": str(out)}, feedback=feedback)
    assert validate_gpkg(out) == []
    assert _column(out, "utc", "t") == ("DATETIME", ["2021-07-14T15:30:00.000Z", None])
    assert _column(out, "wall_clock", "t") == ("TEXT", ["2021-07-14T15:30:00.000", None])
    assert _column(out, "scratch", "t")[0] == "TEXT"
    assert sorted(w.split(":")[0] for w in feedback.warnings) == ["scratch", "wall_clock"]
