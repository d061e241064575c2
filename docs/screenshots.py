"""The README's QGIS screenshots, drawn by real QGIS from a demo's results GeoPackage (run in QGIS's Python):

    QT_QPA_PLATFORM=offscreen .venv-qgis/bin/python docs/screenshots.py gtloc-demo/results.gpkg docs/img

Writes map.png (the default map after loading the GeoPackage, over QGIS's bundled world map, one photo selected),
form.png (that photo's feature form) and time_dock.png (the "gtloc: when" dock on it). The photo chosen is the
first with a claimed place and time, else the first.
"""

from __future__ import annotations

import sys
from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsFillSymbol,
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsProject,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QObject, QSize, pyqtSignal
from qgis.PyQt.QtGui import QColor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORLD_MAP = "/usr/share/qgis/resources/data/world_map.gpkg|layername=countries"


class _Iface(QObject):
    """The one signal the time dock listens to (a script has no QGIS main window)."""

    currentLayerChanged = pyqtSignal(object)


def main(gpkg: str, out_dir: str) -> None:
    from qgis_plugin import results_schema as rs
    from qgis_plugin.layers import add_to_project, load_prediction
    from qgis_plugin.ui.time_dock import TimePosteriorDock

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    project = QgsProject.instance()
    world = QgsVectorLayer(WORLD_MAP, "countries", "ogr")
    world.renderer().setSymbol(QgsFillSymbol.createSimple({"color": "#eeeeee", "outline_color": "#b0b0b0",
                                                           "outline_width": "0.15"}))
    project.addMapLayer(world)
    layers = load_prediction(gpkg)
    add_to_project(layers, Path(gpkg).name, project)
    features = list(layers.photos.getFeatures())
    chosen = next((f for f in features if f[rs.CLAIMED_LAT_DEG] is not None and f[rs.CLAIMED_TIME_LOCAL]), features[0])
    layers.photos.selectByIds([chosen.id()])

    root = project.layerTreeRoot()
    settings = QgsMapSettings()
    settings.setLayers([layer for layer in root.layerOrder() if root.findLayer(layer.id()).isVisible()])
    settings.setDestinationCrs(layers.photos.crs())
    settings.setExtent(QgsRectangle(-180, -70, 180, 80))
    settings.setOutputSize(QSize(1200, 500))
    settings.setBackgroundColor(QColor("#cfe3f3"))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    job.renderedImage().save(str(out / "map.png"))

    from qgis.gui import QgsAttributeForm, QgsGui

    QgsGui.editorWidgetRegistry().initEditors()  # what QGIS does at start: the form's image widgets
    form = QgsAttributeForm(layers.photos, chosen)
    form.resize(560, 720)
    form.show()
    QgsApplication.processEvents()
    form.grab().save(str(out / "form.png"))

    dock = TimePosteriorDock(_Iface())
    dock.resize(420, 330)
    dock.show_feature(chosen)
    dock.show()
    QgsApplication.processEvents()
    dock.grab().save(str(out / "time_dock.png"))
    print(f"wrote {out / 'map.png'}, {out / 'form.png'}, {out / 'time_dock.png'} ({chosen[rs.FILE_NAME]})")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: screenshots.py RESULTS.gpkg OUT_DIR")
    app = QgsApplication([], True)
    app.setPrefixPath("/usr", True)
    app.initQgis()
    main(sys.argv[1], sys.argv[2])
    app.exitQgis()
