"""The settings dialog (saved as data, engine test against the real worker) and the time-posterior heat map."""

from __future__ import annotations

import pytest
from conftest import ENGINE_PYTHON

from qgis_plugin.settings import PluginSettings, describe_time, load_settings, parse_capture_time, save_settings


@pytest.fixture
def clean_settings():
    save_settings(PluginSettings())
    yield
    save_settings(PluginSettings())


def test_the_settings_dialog_tests_the_engine_and_saves_what_was_entered(clean_settings, model_path, tmp_path,
                                                                         qgis_app):
    from qgis_plugin.ui.settings_dialog import SettingsDialog

    dialog = SettingsDialog()
    dialog.engine.setFilePath(str(ENGINE_PYTHON))
    dialog.model.setFilePath(str(model_path))
    dialog.top_k.setValue(7)
    dialog.out_dir.setFilePath(str(tmp_path))
    dialog.test_engine()
    assert "protocol 1" in dialog.status.text() and "model sha256" in dialog.status.text()
    dialog.accept()
    assert load_settings() == PluginSettings(engine=str(ENGINE_PYTHON), model=str(model_path), top_k=7,
                                             out_dir=str(tmp_path))


def test_the_settings_dialog_reports_a_broken_engine_in_one_line(clean_settings, tmp_path, qgis_app):
    from qgis_plugin.ui.settings_dialog import SettingsDialog

    dialog = SettingsDialog()
    dialog.engine.setFilePath(str(tmp_path / "no-such-python"))
    dialog.test_engine()
    assert dialog.status.text().startswith("error:") and "no-such-python" in dialog.status.text()


@pytest.mark.parametrize("typed, stored", [
    ("2024-07-14T18:30", "2024-07-14T18:30:00"),
    ("2024-07-14T18:30:05", "2024-07-14T18:30:05"),
    (" 2024-07-14 18:30 ", "2024-07-14T18:30:00"),
    ("2024:07:14 18:30:00", "2024-07-14T18:30:00"),
    ("2024:02:29 00:00:00", "2024-02-29T00:00:00"),  # a leap day
    ("", None),
    ("   ", None),
])
def test_a_known_capture_time_is_read_in_iso_and_exif_form(typed, stored):
    assert parse_capture_time(typed) == stored


@pytest.mark.parametrize("typed", ["14/07/2024 18:30", "2024-07-14", "18:30", "yesterday evening",
                                   "2024-07-14T18:30+02:00", "2023:02:29 12:00:00", "2024-07-14T24:00",
                                   "2024-13-01T10:00", "2024:07:14 18:30"])
def test_anything_else_is_one_line_that_says_what_to_write(typed):
    with pytest.raises(ValueError) as err:
        parse_capture_time(typed)
    message = str(err.value)
    assert repr(typed.strip()) in message and "\n" not in message
    assert "2024-07-14T18:30" in message and "2024:07:14 18:30:00" in message  # the forms it accepts


def test_a_known_time_is_shown_to_the_minute():
    assert describe_time("2024-07-14T18:30:00") == "2024-07-14 18:30"
    assert describe_time("2024-07-14T18:30:05") == "2024-07-14 18:30:05"


def test_the_settings_dialog_refuses_an_unparseable_known_time_and_saves_a_good_one(clean_settings, qgis_app):
    from qgis.PyQt.QtWidgets import QDialog

    from qgis_plugin.ui.settings_dialog import SettingsDialog

    dialog = SettingsDialog()
    assert dialog.known_time.text() == ""  # none by default: places from the image alone
    dialog.top_k.setValue(9)
    dialog.known_time.setText("14/07/2024 18h30")
    dialog.accept()
    assert dialog.result() != QDialog.Accepted  # stays open, nothing saved
    assert dialog.status.text().startswith("error: known capture time '14/07/2024 18h30'"), dialog.status.text()
    assert "2024-07-14T18:30" in dialog.status.text()
    assert load_settings() == PluginSettings()
    dialog.known_time.setText("2024:07:14 18:30:00")
    dialog.accept()
    assert dialog.result() == QDialog.Accepted
    assert load_settings() == PluginSettings(top_k=9, known_time="2024-07-14T18:30:00")
    assert SettingsDialog().known_time.text() == "2024-07-14T18:30:00"  # shown again next time
    cleared = SettingsDialog()
    cleared.known_time.setText("  ")
    cleared.accept()
    assert load_settings().known_time == ""


@pytest.mark.parametrize("month, hour", [(0, 0), (6, 14), (11, 23)])
def test_the_heat_map_is_darkest_in_the_likeliest_month_and_hour(month, hour, qgis_app):
    from qgis_plugin.ui.time_dock import HeatMap

    grid = [[0.001] * 24 for _ in range(12)]
    grid[month][hour] = 0.5
    heat_map = HeatMap()
    heat_map.resize(14 + 24 * 12, 12 * 12 + 14)  # 12 x 12 pixel cells after the 14-pixel label margins
    heat_map.set_grid(grid)
    image = heat_map.grab().toImage()
    cell_w, cell_h = (image.width() - 14) / 24, (image.height() - 14) / 12
    lightness = {(m, h): image.pixelColor(int(14 + (h + 0.5) * cell_w), int((m + 0.5) * cell_h)).lightness()
                 for m in range(12) for h in range(24)}
    assert min(lightness, key=lightness.get) == (month, hour)
    assert len(set(lightness.values())) == 2  # every other cell has the same low probability
