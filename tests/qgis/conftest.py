"""Fixtures for the QGIS suite: the engine (a separate Python), a tiny trained model, photos, a plugin iface.

The engine is the repository's .venv (or $GTLOC_TEST_ENGINE_PYTHON); its files are made by running that Python,
because QGIS's Python cannot import the engine. The model is trained once per session with the engine's `gtloc`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # `import qgis_plugin`
sys.path.append(str(REPO / "tests"))  # helpers shared with the engine suite (gpkg_validator); not its conftest

ENGINE_PYTHON = Path(os.environ.get("GTLOC_TEST_ENGINE_PYTHON", REPO / ".venv" / "bin" / "python"))
ENGINE_GTLOC = ENGINE_PYTHON.parent / "gtloc"


def _engine_run(*args, timeout=300) -> str:
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    proc = subprocess.run(check=False, args=[str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="session", autouse=True)
def engine_environment(tmp_path_factory):
    """One model-constant cache per session, inherited by every worker the tests start."""
    if not ENGINE_PYTHON.is_file():
        pytest.exit(f"the engine's Python {ENGINE_PYTHON} is missing: create .venv (README) first", returncode=2)
    os.environ["GTLOC_CACHE"] = str(tmp_path_factory.mktemp("gtloc_cache"))
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.pop("GTLOC_ENGINE", None)


@pytest.fixture(scope="session")
def engine_files(tmp_path_factory) -> dict:
    """Toy photos, a JPEG with EXIF claims, a GeoTIFF map and a plain TIFF photo, written by the engine's Python."""
    out = tmp_path_factory.mktemp("engine_files")
    return json.loads(_engine_run(ENGINE_PYTHON, Path(__file__).parent / "engine_side.py", out).strip())


@pytest.fixture(scope="session")
def model_path(engine_files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    _engine_run(ENGINE_GTLOC, "train", "--manifest", engine_files["manifest"], "--out", out, "--preset", "tiny",
                "--epochs", "2", "--batch-size", "64", "--cache-dir", out / "features", "--quiet")
    return out / "model.safetensors"


@pytest.fixture(scope="session")
def location_only_model(engine_files, tmp_path_factory) -> Path:
    """A tiny model trained with --time-weight 0: a location head but no time head (so no place given a time)."""
    out = tmp_path_factory.mktemp("run_location_only")
    _engine_run(ENGINE_GTLOC, "train", "--manifest", engine_files["manifest"], "--out", out, "--preset", "tiny",
                "--epochs", "1", "--batch-size", "64", "--time-weight", "0", "--cache-dir", out / "features",
                "--quiet")
    return out / "model.safetensors"


@pytest.fixture
def client():
    from qgis_plugin.engine_client import EngineClient, engine_command

    c = EngineClient(engine_command(str(ENGINE_PYTHON)), start_timeout_s=120, idle_timeout_s=300)
    yield c
    c.stop()


def _recording_message_bar():
    """QGIS's own message bar (pytest-qgis's stand-in lacks createMessage and pushWidget), recording what is
    pushed: get_messages(level) lists 'title:text' as pytest-qgis's does; `pushed` has (item, level, duration)."""
    from qgis.core import Qgis
    from qgis.gui import QgsMessageBar

    class RecordingMessageBar(QgsMessageBar):
        def __init__(self):
            super().__init__()
            self.messages = {level: [] for level in (Qgis.Info, Qgis.Warning, Qgis.Critical, Qgis.Success)}
            self.pushed = []

        def get_messages(self, level):
            return self.messages[level]

        def pushMessage(self, title, text, level=Qgis.Info, duration=-1):  # noqa: N802
            self.messages[level].append(f"{title}:{text}")
            super().pushMessage(title, text, level, duration)

        def pushWidget(self, widget, level=Qgis.Info, duration=0):  # noqa: N802
            self.messages[level].append(f"{widget.title()}:{widget.text()}")
            self.pushed.append((widget, level, duration))
            return super().pushWidget(widget, level, duration)

    return RecordingMessageBar()


@pytest.fixture(scope="session")
def iface(qgis_iface):
    """pytest-qgis's iface plus the few QgisInterface calls it lacks, recorded so tests can check them."""
    bar = _recording_message_bar()
    qgis_iface.messageBar = lambda: bar
    qgis_iface.shown_tables = []
    qgis_iface.showAttributeTable = lambda layer, filter_expression="": qgis_iface.shown_tables.append(layer)
    qgis_iface.drop_handlers = []
    qgis_iface.menu_actions = []
    qgis_iface.registerCustomDropHandler = qgis_iface.drop_handlers.append
    qgis_iface.unregisterCustomDropHandler = qgis_iface.drop_handlers.remove
    qgis_iface.addPluginToMenu = lambda menu, action: qgis_iface.menu_actions.append(action)
    qgis_iface.removePluginMenu = lambda menu, action: qgis_iface.menu_actions.remove(action)
    qgis_iface.docks = []
    qgis_iface.addDockWidget = lambda area, dock: qgis_iface.docks.append(dock)
    qgis_iface.removeDockWidget = qgis_iface.docks.remove
    return qgis_iface


@pytest.fixture(scope="module")
def plugin(iface, qgis_processing):
    """One plugin per test module, initialised as QGIS does; unloaded (if a test did not) and the project cleared."""
    import qgis_plugin
    from qgis.core import QgsProject

    p = qgis_plugin.classFactory(iface)
    p.initGui()
    yield p
    if p.actions:
        p.unload()
    QgsProject.instance().clear()


@pytest.fixture(scope="module")
def plugin_settings(model_path, tmp_path_factory):
    from qgis_plugin.settings import PluginSettings, save_settings

    settings = PluginSettings(engine=str(ENGINE_PYTHON), model=str(model_path), top_k=3,
                              out_dir=str(tmp_path_factory.mktemp("out")))
    save_settings(settings)
    yield settings
    save_settings(PluginSettings())


@pytest.fixture(scope="module")
def gtloc_provider(qgis_processing):
    """The plugin's Processing provider, registered for this module (unless a loaded plugin has it already)."""
    from qgis.core import QgsApplication

    from qgis_plugin.processing.provider import GtlocProvider

    registry = QgsApplication.processingRegistry()
    provider = None
    if registry.providerById("gtloc") is None:
        provider = GtlocProvider()
        assert registry.addProvider(provider)
    yield
    if provider is not None:
        registry.removeProvider(provider)


def wait_until(condition, timeout_s: float = 180.0) -> None:
    """Spin QGIS's event loop (tasks report back through it) until condition() holds."""
    from qgis.core import QgsApplication

    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for QGIS"
        QgsApplication.processEvents()
        time.sleep(0.02)
