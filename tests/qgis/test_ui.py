"""The settings dialog (saved as data; the engine test in the background against the real worker, its one-line
status never cut off; paths that do not exist refused) and the time-posterior heat map."""

from __future__ import annotations

import pytest
from conftest import ENGINE_PYTHON, wait_until

from qgis_plugin.settings import PluginSettings, describe_time, load_settings, parse_capture_time, save_settings


@pytest.fixture
def clean_settings():
    save_settings(PluginSettings())
    yield
    save_settings(PluginSettings())


def test_the_settings_dialog_tests_the_engine_in_the_background_and_saves_what_was_entered(clean_settings, model_path,
                                                                                          tmp_path, qgis_app):
    from qgis_plugin.ui.settings_dialog import SettingsDialog

    dialog = SettingsDialog()
    dialog.engine.setFilePath(str(ENGINE_PYTHON))
    dialog.model.setFilePath(str(model_path))
    dialog.top_k.setValue(7)
    dialog.out_dir.setFilePath(str(tmp_path))
    dialog.device.setCurrentIndex(dialog.device.findData("cpu"))
    task = dialog.test_engine()
    # The call returned while the engine is still starting (seconds: it imports its packages): QGIS is not blocked.
    assert task is not None and dialog.probe is task and not dialog.test_button.isEnabled()
    assert dialog.status_text().startswith(f"starting the engine ({ENGINE_PYTHON})")
    assert dialog.test_engine() is None  # one test at a time
    wait_until(lambda: dialog.probe is None, timeout_s=180)
    assert dialog.test_button.isEnabled()
    text = dialog.status_text()
    assert text.startswith("engine ") and "protocol 1" in text and str(ENGINE_PYTHON.parent) in text, text
    # The model's trained heads (this tiny model trained location and time only), from its header.
    assert f"model {model_path.name}: heads location, time (sha256 " in text, text
    assert ", computes on cpu;" in text, text  # the worker was started with --device cpu and says so
    dialog.accept()
    assert load_settings() == PluginSettings(engine=str(ENGINE_PYTHON), model=str(model_path), top_k=7,
                                             out_dir=str(tmp_path), device="cpu")


def _engine_sees_a_gpu() -> bool:
    import subprocess

    probe = subprocess.run([str(ENGINE_PYTHON), "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True, timeout=120)
    return probe.stdout.strip() == "True"


def test_the_engine_test_says_in_one_line_that_the_gpu_asked_for_is_not_there(clean_settings, model_path, qgis_app):
    from qgis_plugin.ui.settings_dialog import SettingsDialog

    if _engine_sees_a_gpu():
        pytest.skip("the engine's torch sees a CUDA GPU here, so --device cuda starts")
    dialog = SettingsDialog()
    dialog.engine.setFilePath(str(ENGINE_PYTHON))
    dialog.model.setFilePath(str(model_path))
    dialog.device.setCurrentIndex(dialog.device.findData("cuda"))
    assert dialog.test_engine() is not None
    wait_until(lambda: dialog.probe is None, timeout_s=180)
    text = dialog.status_text()
    assert text.startswith("error:") and "device 'cuda'" in text and "sees no CUDA GPU" in text, text
    assert "use --device cpu" in text and dialog.test_button.isEnabled()


def test_the_settings_dialog_reports_a_broken_engine_in_one_line(clean_settings, tmp_path, qgis_app):
    from qgis_plugin.ui.settings_dialog import SettingsDialog

    dialog = SettingsDialog()
    dialog.engine.setFilePath(str(tmp_path / "no-such-python"))
    assert dialog.test_engine() is None  # nothing to start
    assert dialog.status_text().startswith("error:") and "no-such-python" in dialog.status_text()
    assert "\n" not in dialog.status_text() and dialog.test_button.isEnabled()


def test_the_settings_dialog_refuses_a_model_that_does_not_exist(clean_settings, tmp_path, qgis_app):
    from qgis.PyQt.QtWidgets import QDialog

    from qgis_plugin.ui.settings_dialog import SettingsDialog

    dialog = SettingsDialog()
    dialog.engine.setFilePath(str(ENGINE_PYTHON))
    dialog.model.setFilePath(str(tmp_path / "gone.safetensors"))
    expected = f"error: model {tmp_path / 'gone.safetensors'} does not exist: choose a gtloc checkpoint"
    assert dialog.test_engine() is None and dialog.probe is None  # refused before any engine starts
    assert dialog.status_text().startswith(expected), dialog.status_text()
    dialog.top_k.setValue(9)
    dialog.accept()
    assert dialog.result() != QDialog.Accepted and dialog.status_text().startswith(expected)
    assert load_settings() == PluginSettings()  # nothing saved
    dialog.model.setFilePath(str(tmp_path))  # a folder is no model either
    dialog.accept()
    assert dialog.result() != QDialog.Accepted and "does not exist" in dialog.status_text()


def test_the_engine_test_blames_the_model_not_a_photo_when_the_model_is_no_checkpoint(clean_settings, tmp_path,
                                                                                      qgis_app):
    from qgis_plugin.ui.settings_dialog import SettingsDialog

    not_a_model = tmp_path / "holiday.safetensors"
    not_a_model.write_bytes(b"\xff\xd8\xff\xe0 a JPEG renamed")
    dialog = SettingsDialog()
    dialog.engine.setFilePath(str(ENGINE_PYTHON))
    dialog.model.setFilePath(str(not_a_model))
    assert dialog.test_engine() is not None
    wait_until(lambda: dialog.probe is None, timeout_s=180)
    text = dialog.status_text()
    assert text.startswith(f"error: checkpoint {not_a_model} is not a readable safetensors file"), text
    assert "photo" not in text and "\n" not in text and dialog.test_button.isEnabled()


@pytest.mark.parametrize("sep", ["/", "\\"], ids=["posix path", "windows path"])
def test_the_status_line_is_never_cut_off(clean_settings, sep, qgis_app):
    """A long one-line error with a long path wraps inside the dialog, at spaces and at path separators, and the
    dialog grows to show every line (a top-level window does not by itself: the line used to be cut off)."""
    from qgis.PyQt.QtCore import QRect, Qt
    from qgis.PyQt.QtWidgets import QApplication

    from qgis_plugin.ui.settings_dialog import SettingsDialog

    dialog = SettingsDialog()
    dialog.resize(420, 200)
    dialog.show()
    path = "C:" + sep.join(["cases", "2024", "folder_name"] * 6 + ["model.safetensors"])
    message = (f"error: checkpoint {path} is not a readable safetensors file (SafetensorError); it may be corrupt or "
               "truncated: re-download or re-train it")
    dialog.show_status(message)
    QApplication.processEvents()
    label = dialog.status
    area = label.contentsRect()
    shown = label.fontMetrics().boundingRect(QRect(0, 0, area.width(), 100_000), Qt.TextWordWrap, label.text())
    assert shown.height() > 3 * label.fontMetrics().height()  # several lines, all of them inside the label
    assert shown.width() <= area.width() and shown.height() <= area.height(), (shown, area)
    assert dialog.rect().contains(label.geometry()) and dialog.status_text() == message
    dialog.close()


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
    assert dialog.status_text().startswith("error: known capture time '14/07/2024 18h30'"), dialog.status_text()
    assert "2024-07-14T18:30" in dialog.status_text()
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
def test_the_heat_map_is_brightest_in_the_likeliest_month_and_hour(month, hour, qgis_app):
    from qgis_plugin.ui.time_dock import VIRIDIS, HeatMap

    grid = [[0.001] * 24 for _ in range(12)]
    grid[month][hour] = 0.5
    heat_map = HeatMap()
    heat_map.resize(400, 240)
    heat_map.set_data(grid)
    image = heat_map.grab().toImage()

    def colour(m, h):  # a pixel inside the cell, clear of the credible outlines along its edges
        cell = heat_map._cell(m, h)
        return image.pixelColor(int(cell.left() + cell.width() * 0.5), int(cell.top() + cell.height() * 0.5))

    lightness = {(m, h): colour(m, h).lightness() for m in range(12) for h in range(24)}
    assert max(lightness, key=lightness.get) == (month, hour)
    assert colour(month, hour).name() == VIRIDIS[-1]  # the peak takes the top of the colour scale
    others = {colour(m, h).name() for m in range(12) for h in range(24) if (m, h) != (month, hour)}
    assert others == {colour(0 if month else 1, 1).name()}  # every other cell has the same low probability
