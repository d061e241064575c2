"""Where given when from QGIS: a known local capture time from gtloc's settings (Locate actions, drops) and from
Processing's TIME, through the real engine worker; the rows, the group name, the message bar and the time dock say
that the places were predicted given it."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import wait_until
from qgis.core import Qgis, QgsProject

from qgis_plugin.settings import save_settings

KNOWN_TIME = "2024-07-14T18:30:00"


@pytest.fixture
def given_settings(plugin_settings):
    """gtloc's settings with a known capture time; the module's plain settings again afterwards."""
    settings = replace(plugin_settings, known_time=KNOWN_TIME)
    save_settings(settings)
    yield settings
    save_settings(plugin_settings)


def _run(plugin, photos):
    task = plugin.predict(photos)
    assert task is not None
    wait_until(lambda: task not in plugin.tasks, timeout_s=240)
    return task


@pytest.mark.slow
def test_locating_with_a_known_time_predicts_places_given_it_and_says_so(plugin, given_settings, engine_files,
                                                                         iface):
    photo = engine_files["toy_photos"][2]
    task = _run(plugin, [photo])
    assert task.error is None, task.error
    assert task.request.time == KNOWN_TIME
    # The analyst sees that this map is conditioned on a time: in the layer tree and in the message bar.
    assert task.group_name.endswith(f"{Path(photo).name} (given 2024-07-14 18:30)"), task.group_name
    root = QgsProject.instance().layerTreeRoot()
    assert root.findGroup(task.group_name) is root.children()[0]
    assert "(given 2024-07-14 18:30): 1 located" in iface.messageBar().get_messages(Qgis.Success)[-1]
    [feature] = list(task.layers.photos.getFeatures())
    assert (feature["path"], feature["place_given"], feature["given_time_local"]) == (photo, "image+time",
                                                                                      KNOWN_TIME)
    dock = plugin.time_dock
    dock._on_layer(task.layers.photos)
    task.layers.photos.selectAll()
    assert "place predicted given 2024-07-14 18:30 (local)" in dock.caption.text(), dock.caption.text()
    task.layers.photos.removeSelection()


def test_a_known_time_in_the_settings_that_is_not_a_time_starts_nothing(plugin, plugin_settings, engine_files,
                                                                        iface):
    save_settings(replace(plugin_settings, known_time="last tuesday"))  # QgsSettings edited by hand
    try:
        assert plugin.predict([engine_files["toy_photos"][0]]) is None
    finally:
        save_settings(plugin_settings)
    message = iface.messageBar().get_messages(Qgis.Warning)[-1]
    assert "'last tuesday'" in message and "settings" in message
    assert plugin.tasks == []


@pytest.mark.slow
def test_a_model_without_a_time_head_says_it_cannot_use_the_known_time(plugin, given_settings, location_only_model,
                                                                       engine_files, iface):
    save_settings(replace(given_settings, model=str(location_only_model)))
    layers_before = set(QgsProject.instance().mapLayers())
    task = _run(plugin, [engine_files["toy_photos"][0]])
    assert task.error is not None and "given a known capture time" in task.error and "\n" not in task.error, task.error
    message = iface.messageBar().get_messages(Qgis.Critical)[-1]
    assert "(given 2024-07-14 18:30)" in message and "given a known capture time" in message
    assert set(QgsProject.instance().mapLayers()) == layers_before


@pytest.mark.slow
def test_processing_predict_with_a_known_time(model_path, engine_files, plugin_settings, gtloc_provider, tmp_path):
    import processing

    out = tmp_path / "given.gpkg"
    photos = [engine_files["claimed_jpeg"], engine_files["toy_photos"][4]]
    result = processing.run("gtloc:predict", {"PHOTOS": photos, "MODEL": str(model_path), "TOP_K": 1,
                                              "TIME": "2024-07-14T18:30", "OUTPUT": str(out)})
    assert result["N_DONE"] == 2 and result["OUTPUT"] == str(out)
    with sqlite3.connect(out) as db:
        rows = sorted(db.execute("SELECT path, place_given, given_time_local FROM photos").fetchall())
    db.close()
    assert rows == sorted((p, "image+time", KNOWN_TIME) for p in photos)


def test_processing_predict_refuses_a_bad_time_before_asking_the_engine(model_path, engine_files, plugin_settings,
                                                                        gtloc_provider, tmp_path):
    import processing
    from qgis.core import QgsProcessingException

    out = tmp_path / "never.gpkg"
    with pytest.raises(QgsProcessingException, match=r"TIME: known capture time '2024-02-30T10:00' is not a real"):
        processing.run("gtloc:predict", {"PHOTOS": [engine_files["toy_photos"][0]], "MODEL": str(model_path),
                                         "TIME": "2024-02-30T10:00", "OUTPUT": str(out)})
    assert not out.exists()
