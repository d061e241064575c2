"""The gtloc Processing provider: its algorithms run from the toolbox, in models, and headless in qgis_process."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import ExportAlgorithm, PredictAlgorithm, SearchAlgorithm, ShadowAlgorithm


class GtlocProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "gtloc"

    def name(self) -> str:
        return "gtloc"

    def icon(self):
        return QIcon(str(Path(__file__).parent.parent / "icon.svg"))

    def loadAlgorithms(self):
        for algorithm in (PredictAlgorithm(), SearchAlgorithm(), ExportAlgorithm(), ShadowAlgorithm()):
            self.addAlgorithm(algorithm)
