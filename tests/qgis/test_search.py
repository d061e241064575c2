"""Geo-temporal search from QGIS: `gtloc:search` through the Processing framework and the search dock, both through
the real engine worker, checked against the engine's own `gtloc search` command run as a subprocess."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest
from conftest import ENGINE_GTLOC, _engine_run, wait_until
from qgis.core import QgsCoordinateReferenceSystem, QgsPointXY, QgsProject
from qgis.PyQt.QtCore import Qt

from qgis_plugin.layers import add_to_project, load_prediction

PARIS_LATLON_DEG = (48.8566, 2.3522)
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
