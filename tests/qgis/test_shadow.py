"""The shadow locus from QGIS: the client's typed `shadow` through the real engine worker (the same answer as the
engine's `gtloc shadow`), the `gtloc:shadow` Processing algorithm, and the form on a selected photo, whose task adds
the locus and the fused surface (rasters, credible regions, candidates) to that photo's group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ENGINE_GTLOC, _engine_run, wait_until
from gpkg_validator import validate_gpkg
from qgis.core import Qgis, QgsProcessingException, QgsProject, QgsRasterLayer, QgsVectorLayer

import qgis_plugin
from qgis_plugin.engine_client import EngineError, shared_client
from qgis_plugin.layers import KIND_PROPERTY, PHOTO_PATH_PROPERTY, add_to_project, load_prediction
from qgis_plugin.settings import load_settings
from qgis_plugin.shadow_task import measurement, new_shadow_request, photo_target
from qgis_plugin.ui import shadow_dialog
from qgis_plugin.ui.shadow_dialog import ShadowDialog, start_shadow

AFTERNOON = {"height_m": 10.0, "length_m": 12.0, "time": "2021-07-14T15:30", "time_sigma_min": 5.0}
EVENING = {"elev_deg": 20.0, "time": "2021-07-14T18:00Z"}


def _without_paths(summary: dict) -> dict:
    """A summary with its file paths dropped, to compare two runs written to different folders."""
    return {k: v for k, v in summary.items() if k not in ("out_dir", "locus_tif", "fused_tif", "gpkg", "posterior")}


@pytest.fixture(scope="module", autouse=True)
def clean_project():
    yield
    QgsProject.instance().clear()


@pytest.mark.slow
def test_the_clients_shadow_answers_as_the_engines_command(client, model_path, engine_files, tmp_path):
    photo = engine_files["toy_photos"][0]
    progress = []
    summary = client.shadow([AFTERNOON, EVENING], str(tmp_path / "client"), photo=photo, model=str(model_path),
                            res_deg=2.0, top_k=3, on_progress=lambda done, total: progress.append((done, total)))
    assert progress and progress[-1][0] == progress[-1][1] == summary["measurements"][0]["time_bins"] + 2
    cli = json.loads(_engine_run(ENGINE_GTLOC, "shadow", "--height-m", "10", "--length-m", "12", "--time",
                                 AFTERNOON["time"], "--time-sigma-min", "5", "--measurement",
                                 "elev_deg=20,time=2021-07-14T18:00Z", "--photo", photo, "--model", model_path,
                                 "--res-deg", "2", "--top", "3", "--out", tmp_path / "cli"))
    assert _without_paths(summary) == _without_paths(cli)
    assert summary["fused"]["candidates"] and Path(summary["fused_tif"]).is_file()


def test_the_clients_shadow_refuses_a_bad_measurement_in_one_line(client, tmp_path):
    with pytest.raises(EngineError) as err:
        client.shadow([{"elev_deg": 120.0, "time": "2021-07-14T18:00Z"}], str(tmp_path / "bad"))
    assert err.value.code == "bad_input" and "elev_deg 120.0 is out of range" in str(err.value)
    assert "\n" not in str(err.value) and not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_processing_shadow_writes_the_locus_fused_with_a_photo(plugin_settings, gtloc_provider, engine_files,
                                                              model_path, tmp_path):
    import processing

    out = tmp_path / "processing"
    result = processing.run("gtloc:shadow", {
        "HEIGHT": 10.0, "LENGTH": 12.0, "TIME": AFTERNOON["time"], "TIME_SIGMA": 5.0, "ELEVATION_2": 20.0,
        "TIME_2": EVENING["time"], "PHOTO": engine_files["claimed_jpeg"], "RES_DEG": 2.0, "TOP_K": 3,
        "OUTPUT": str(out)})  # MODEL: the settings' model
    assert Path(result["OUTPUT"]) == out and Path(result["LOCUS"]).parent == out
    for key in ("LOCUS", "FUSED"):
        raster = QgsRasterLayer(result[key], key, "gdal")
        assert raster.isValid() and raster.crs().authid() == "EPSG:4326"
        assert (raster.width(), raster.height()) == (180, 90)
        assert raster.extent().toRectF().getCoords() == pytest.approx((-180.0, -90.0, 180.0, 90.0))
    assert validate_gpkg(Path(result["GPKG"])) == []
    regions = QgsVectorLayer(f"{result['GPKG']}|layername=shadow_regions", "regions", "ogr")
    assert regions.isValid() and {(f["surface"], f["level"]) for f in regions.getFeatures()} == {
        ("locus", 0.5), ("locus", 0.9), ("fused", 0.5), ("fused", 0.9)}
    # Processing's sigmas are shared by both shadows: the second one's time has the 5 minutes too.
    cli = json.loads(_engine_run(ENGINE_GTLOC, "shadow", "--height-m", "10", "--length-m", "12", "--time",
                                 AFTERNOON["time"], "--time-sigma-min", "5", "--measurement",
                                 "elev_deg=20,time=2021-07-14T18:00Z,time_sigma_min=5", "--photo",
                                 engine_files["claimed_jpeg"],
                                 "--model", plugin_settings.model, "--res-deg", "2", "--top", "3", "--out",
                                 tmp_path / "cli"))
    candidates = QgsVectorLayer(f"{result['GPKG']}|layername=shadow_candidates", "candidates", "ogr")
    fused = sorted((f["rank"], f["lat_deg"], f["lon_deg"]) for f in candidates.getFeatures() if f["surface"] == "fused")
    assert fused == [(c["rank"], c["lat_deg"], c["lon_deg"]) for c in cli["fused"]["candidates"]]


def test_processing_shadow_reports_the_engines_refusal(plugin_settings, gtloc_provider, tmp_path):
    import processing

    with pytest.raises(QgsProcessingException) as err:
        processing.run("gtloc:shadow", {"HEIGHT": -3.0, "LENGTH": 2.0, "TIME": "2021-07-14T15:30",
                                        "OUTPUT": str(tmp_path / "bad")})
    assert "height_m -3.0 must be positive" in str(err.value) and not (tmp_path / "bad").exists()


def test_the_measurement_helper_sends_a_sigma_only_with_its_value():
    assert measurement(time=" 2021-07-14T15:30 ", height_m="10", length_m=12, elev_sigma_deg="2",
                       bearing_sigma_deg=4, time_sigma_min="") == {"time": "2021-07-14T15:30", "height_m": 10.0,
                                                                    "length_m": 12.0}
    assert measurement(time="t", elev_deg=20, elev_sigma_deg="0.5", height_sigma_m=1) == {
        "time": "t", "elev_deg": 20.0, "elev_sigma_deg": 0.5}
    with pytest.raises(ValueError, match="shadow 2 bearing_deg: 'north' is not a number"):
        measurement(time="t", elev_deg=20, bearing_deg="north", what="shadow 2")


@pytest.fixture(scope="module")
def predicted(plugin_settings, engine_files, tmp_path_factory):
    """The EXIF-claimed JPEG predicted through the session's engine, with rasters, its layers in the project."""
    out = tmp_path_factory.mktemp("shadow_predict")
    summary = shared_client().predict(plugin_settings.model, [engine_files["claimed_jpeg"]], str(out / "r.gpkg"),
                                      rasters_dir=str(out / "rasters"), top_k=2, res_deg=2.0)
    layers = load_prediction(summary["out_gpkg"])
    add_to_project(layers, "batch")
    return layers


@pytest.mark.slow
def test_the_form_on_a_selected_photo_adds_the_locus_and_the_fused_surface_to_its_group(predicted, iface,
                                                                                        engine_files):
    feature = next(predicted.photos.getFeatures())
    target = photo_target(predicted.photos, feature)
    assert target.group is not None and target.group.customProperty(PHOTO_PATH_PROPERTY) == feature["path"]
    assert target.raster_global and Path(target.raster_global).is_file()
    dialog = ShadowDialog(target)
    # The photo's own claimed time is the one to check; the analyst adds the measurements and a second shadow.
    assert dialog.fields[0]["time"].text() == engine_files["claimed"]["local_datetime"]
    for name, value in (("height_m", "10"), ("length_m", "12")):
        dialog.fields[0][name].setText(value)
    dialog.fields[1]["elev_deg"].setText("20")
    dialog.fields[1]["time"].setText(EVENING["time"])
    dialog.sigmas["time_sigma_min"].setText("5")
    assert dialog.measurements() == [{"time": engine_files["claimed"]["local_datetime"], "height_m": 10.0,
                                      "length_m": 12.0, "time_sigma_min": 5.0},
                                     {"time": EVENING["time"], "elev_deg": 20.0, "time_sigma_min": 5.0}]
    request = new_shadow_request(target, dialog.measurements(), load_settings())
    assert request.posterior == target.raster_global and request.photo is None  # the surface the analyst sees
    task = start_shadow(iface, request, target)
    wait_until(lambda: task not in shadow_dialog._RUNNING, timeout_s=240)
    assert task.error is None, task.error
    assert task.summary["posterior"] == target.raster_global and task.summary["res_deg"] == 2.0
    assert target.group.children()[0] is task.group and task.group.name().startswith("shadow 2021-07-14 15:30")
    layers = [node.layer() for node in task.group.findLayers()]
    assert [layer.customProperty(KIND_PROPERTY) for layer in layers] == [
        "shadow candidates", "shadow regions", "shadow candidates", "shadow regions", "shadow likelihood",
        "shadow likelihood"]
    assert all(layer.isValid() for layer in layers)
    assert {f["surface"] for f in task.layers.regions["fused"].getFeatures()} == {"fused"}
    assert task.layers.regions["fused"].featureCount() == 2  # the 50% and 90% regions
    visible = {node.layer().id(): node.itemVisibilityChecked() for node in task.group.findLayers()}
    assert visible[task.layers.fused_raster.id()] and not visible[task.layers.locus_raster.id()]
    assert "shadow 2021-07-14 15:30" in iface.messageBar().get_messages(Qgis.Success)[-1]


def test_a_bad_number_in_the_form_keeps_it_open_with_one_line(predicted):
    dialog = ShadowDialog(photo_target(predicted.photos, next(predicted.photos.getFeatures())))
    dialog.fields[0]["height_m"].setText("ten")
    dialog.fields[0]["length_m"].setText("12")
    dialog.accept()
    assert dialog.result() != ShadowDialog.Accepted
    assert dialog.error.text() == "shadow 1 height_m: 'ten' is not a number"


def test_the_plugins_shadow_action_asks_for_a_selected_photo(predicted, iface):
    """The menu action's slot (test_plugin.py counts the actions): without a selected photo it only says what to do."""
    plugin = qgis_plugin.classFactory(iface)
    iface.setActiveLayer(predicted.photos)
    predicted.photos.removeSelection()
    assert plugin.open_shadow() is None
    assert "select a photo in a gtloc photos layer" in iface.messageBar().get_messages(Qgis.Warning)[-1]
