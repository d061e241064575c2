"""The packaged plugin: the zip's contents, QGIS's own plugin loader, and `qgis_process run gtloc:predict` headless."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile

import pytest
from conftest import ENGINE_PYTHON, REPO
from qgis.core import QgsVectorLayer


def qgis_process() -> str:
    # Debian's /usr/bin/qgis_process wrapper adds --noversioncheck, which qgis_process 3.22 rejects; the real
    # binary next to it is the same program without the wrapper.
    for name in ("qgis_process.bin", "qgis_process"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("qgis_process is not installed (apt-get install qgis)")


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """Build the zip with the packaging command and unpack it where a fresh QGIS profile finds plugins."""
    dist = tmp_path_factory.mktemp("dist")
    built = subprocess.run([sys.executable, str(REPO / "qgis_plugin" / "package.py"), "--out", str(dist)],
                           capture_output=True, text=True, check=True)
    archive = built.stdout.strip()
    plugins = tmp_path_factory.mktemp("plugins")
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        zf.extractall(plugins)
    return {"archive": archive, "names": names, "plugins": plugins}


def test_the_zip_is_one_identifier_folder_with_metadata_and_license_and_no_caches(installed_plugin):
    names = installed_plugin["names"]
    assert {name.split("/")[0] for name in names} == {"gtloc"}
    assert "gtloc".isidentifier()
    assert {"gtloc/__init__.py", "gtloc/metadata.txt", "gtloc/LICENSE", "gtloc/icon.svg"} <= set(names)
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", "package.py"))]
    import configparser

    meta = configparser.ConfigParser()
    meta.read(installed_plugin["plugins"] / "gtloc" / "metadata.txt")
    general = meta["general"]
    for key in ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email", "repository",
                "tracker", "tags"):
        assert general.get(key, "").strip(), key
    assert general["qgisMinimumVersion"] == "3.22" and general["hasProcessingProvider"] == "yes"


def test_qgis_loads_starts_and_unloads_the_packaged_plugin(installed_plugin, iface, qgis_processing):
    import qgis.utils
    from qgis.core import QgsApplication

    sys.path.insert(0, str(installed_plugin["plugins"]))
    qgis.utils.iface = iface
    qgis.utils.plugin_paths.insert(0, str(installed_plugin["plugins"]))
    qgis.utils.updateAvailablePlugins()  # reads metadata.txt the way QGIS does
    assert "gtloc" in qgis.utils.available_plugins
    assert qgis.utils.pluginMetadata("gtloc", "qgisMinimumVersion") == "3.22"
    try:
        for _ in range(2):  # unload must leave nothing that stops a second start
            assert qgis.utils.loadPlugin("gtloc") and qgis.utils.startPlugin("gtloc")
            assert "gtloc" in qgis.utils.active_plugins
            assert QgsApplication.processingRegistry().providerById("gtloc") is not None
            assert qgis.utils.unloadPlugin("gtloc")
            assert "gtloc" not in qgis.utils.active_plugins
            # QGIS forgets the modules it tracked (its tracking misses subpackages reached by relative imports).
            assert "gtloc" not in sys.modules and "gtloc.plugin" not in sys.modules
            assert QgsApplication.processingRegistry().providerById("gtloc") is None
            assert iface.drop_handlers == [] and iface.docks == [] and iface.menu_actions == []
    finally:
        sys.path.remove(str(installed_plugin["plugins"]))
        qgis.utils.plugin_paths.remove(str(installed_plugin["plugins"]))


@pytest.mark.slow
def test_qgis_process_runs_predict_and_writes_a_geopackage_that_opens(installed_plugin, model_path, engine_files,
                                                                        tmp_path):
    env = {**os.environ, "HOME": str(tmp_path / "home"), "QGIS_PLUGINPATH": str(installed_plugin["plugins"]),
           "QT_QPA_PLATFORM": "offscreen", "GTLOC_ENGINE": str(ENGINE_PYTHON)}
    env.pop("PYTHONPATH", None)
    enable = subprocess.run([qgis_process(), "plugins", "enable", "gtloc"], capture_output=True, text=True,
                            env=env, timeout=120, check=False)
    assert enable.returncode == 0, enable.stderr[-2000:]
    photos = [engine_files["claimed_jpeg"], engine_files["toy_photos"][5]]
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a photo")
    out = tmp_path / "headless.gpkg"
    run = subprocess.run([qgis_process(), "--json", "run", "gtloc:predict", "--",
                          *[f"PHOTOS={p}" for p in [*photos, broken]], f"MODEL={model_path}", "TOP_K=2",
                          f"OUTPUT={out}"],
                         capture_output=True, text=True, env=env, timeout=300, check=False)
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-2000:])
    results = json.loads(run.stdout)["results"]
    assert results["N_DONE"] == 2 and results["N_FAILED"] == 1 and results["OUTPUT"] == str(out)
    assert "broken.jpg" in run.stdout + run.stderr  # the bad photo is reported; the others still have results
    with sqlite3.connect(out) as db:
        paths = sorted(row[0] for row in db.execute("SELECT path FROM photos"))
        n_candidates = db.execute("SELECT COUNT(*) FROM candidates").fetchone()[0]
        failed = [row[0] for row in db.execute("SELECT path FROM failures")]
    assert paths == sorted(photos) and n_candidates == 2 * 2 and failed == [str(broken)]
    layer = QgsVectorLayer(f"{out}|layername=photos", "photos", "ogr")
    assert layer.isValid() and layer.featureCount() == 2 and layer.crs().authid() == "EPSG:4326"
    rasters = list((tmp_path / "headless_rasters").glob("*.tif"))
    assert rasters  # the default rasters folder sits next to the GeoPackage
