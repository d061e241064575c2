"""Processing algorithms, thin wrappers: predict goes through engine_client, export is plain QGIS/GDAL.

    gtloc:predict   photos (files and/or a folder) -> results GeoPackage (+ likelihood GeoTIFFs), via the engine;
                    TIME: a known local capture time, every place predicted given it (where given when)
    gtloc:search    a results GeoPackage + a place / month-hour windows / a photo (alone, or with windows: the same
                    place at another time) / text -> layer search_results, via the engine
    gtloc:export    the session's gtloc layers (or chosen layers) -> one GeoPackage, vectors and rasters
"""

from __future__ import annotations

import re
from pathlib import Path

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterPoint,
    QgsProcessingParameterString,
    QgsRasterLayer,
    QgsVectorFileWriter,
    QgsVectorLayer,
)

from ..engine_client import EngineError, shared_client
from ..layers import gtloc_layers
from ..settings import TIME_FORMATS, describe_time, load_settings, parse_capture_time


class _Algorithm(QgsProcessingAlgorithm):
    def group(self) -> str:
        return "gtloc"

    def groupId(self) -> str:
        return "gtloc"

    def createInstance(self):
        return type(self)()


class PredictAlgorithm(_Algorithm):
    def name(self) -> str:
        return "predict"

    def displayName(self) -> str:
        return "Locate and date photos (to GeoPackage)"

    def shortHelpString(self) -> str:
        return ("Runs the gtloc engine on photo files and/or a folder of photos and writes a results GeoPackage "
                "(layers photos, candidates, regions) plus likelihood GeoTIFFs. Re-running on the same GeoPackage "
                "skips photos already done. The engine is the one in gtloc's settings, else $GTLOC_ENGINE, else "
                "gtloc on PATH; the model defaults to the one in the settings.\n\n"
                "Known local capture time (where given when): when the local time the photos were taken is known "
                f"(e.g. when they were posted), give it as {TIME_FORMATS}; every photo's place is then predicted "
                "given that time, and the photos rows say place_given = image+time and given_time_local. It needs a "
                "model with trained location and time heads. Leave it empty to locate from the image alone.")

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterMultipleLayers("PHOTOS", "Photo files", QgsProcessing.TypeFile,
                                                               optional=True))
        self.addParameter(QgsProcessingParameterFile("FOLDER", "Folder of photos (searched recursively)",
                                                     QgsProcessingParameterFile.Folder, optional=True))
        self.addParameter(QgsProcessingParameterFile("MODEL", "gtloc model (.safetensors; default: settings)",
                                                     extension="safetensors", optional=True))
        self.addParameter(QgsProcessingParameterNumber("TOP_K", "Candidate places per photo",
                                                       QgsProcessingParameterNumber.Integer, 5, minValue=1))
        self.addParameter(QgsProcessingParameterString("TIME", "Known local capture time (where given when)",
                                                       optional=True))
        self.addParameter(QgsProcessingParameterFolderDestination(
            "RASTERS", "Likelihood rasters folder (default: next to the GeoPackage)",
            optional=True, createByDefault=False))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "Results GeoPackage",
                                                                "GeoPackage (*.gpkg *.GPKG)"))
        self.addOutput(QgsProcessingOutputNumber("N_DONE", "Photos located"))
        self.addOutput(QgsProcessingOutputNumber("N_FAILED", "Photos that failed"))

    def processAlgorithm(self, parameters, context, feedback):
        photos = list(self.parameterAsFileList(parameters, "PHOTOS", context))
        folder = self.parameterAsFile(parameters, "FOLDER", context)
        if folder:
            photos.append(folder)
        if not photos:
            raise QgsProcessingException("no photos given: set Photo files or Folder of photos")
        model = self.parameterAsFile(parameters, "MODEL", context) or load_settings().model
        if not model:
            raise QgsProcessingException("no model given: set MODEL or choose a model in gtloc's settings")
        out_gpkg = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        # Without a rasters folder the engine writes no GeoTIFFs; the likelihood maps are the point of a run.
        rasters = (self.parameterAsString(parameters, "RASTERS", context)
                   or str(Path(out_gpkg).with_suffix("")) + "_rasters")
        try:
            known_time = parse_capture_time(self.parameterAsString(parameters, "TIME", context))
        except ValueError as exc:
            raise QgsProcessingException(f"TIME: {exc}") from None
        if known_time is not None:
            feedback.pushInfo(f"places predicted given the known local capture time {describe_time(known_time)}")
        try:
            summary = shared_client().predict(
                model, photos, out_gpkg, rasters_dir=rasters, top_k=self.parameterAsInt(parameters, "TOP_K", context),
                time=known_time, is_cancelled=feedback.isCanceled,
                on_progress=lambda done, total: feedback.setProgress(100.0 * done / total if total else 0.0))
        except EngineError as exc:
            raise QgsProcessingException(f"gtloc engine: {exc}") from None
        for failure in summary.get("failures", []):
            feedback.reportError(f"{failure['path']}: {failure['reason']}", False)
        feedback.pushInfo(f"{summary.get('n_done', 0)} located, {summary.get('n_skipped', 0)} already done, "
                          f"{summary.get('n_failed', 0)} failed" + (", cancelled" if summary.get("cancelled") else ""))
        return {"OUTPUT": summary.get("out_gpkg", out_gpkg), "N_DONE": summary.get("n_done", 0),
                "N_FAILED": summary.get("n_failed", 0)}


class SearchAlgorithm(_Algorithm):
    def name(self) -> str:
        return "search"

    def displayName(self) -> str:
        return "Search photos by place, time or text"

    def shortHelpString(self) -> str:
        return ("Ranks the photos of a gtloc results GeoPackage by how well they match a place (a point, optionally "
                "with a radius filter), month and hour windows (e.g. 11-2 and 22-3, which wrap), a photo, or a text, "
                "and writes the best ones as the layer search_results (points with rank and score). A photo alone "
                "finds photos that look taken at the same place and time; a photo with months and/or hours finds "
                "photos of the same place as that photo at another time (its place: its point in the GeoPackage, "
                "else its EXIF place, else its most likely place; the log says which). The query photo itself is "
                "never returned. The model must be the one that made the GeoPackage.")

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterFile("GPKG", "Results GeoPackage (from Locate and date photos)",
                                                     extension="gpkg"))
        self.addParameter(QgsProcessingParameterFile("MODEL", "gtloc model (.safetensors; default: settings)",
                                                     extension="safetensors", optional=True))
        self.addParameter(QgsProcessingParameterPoint("POINT", "Place", optional=True))
        self.addParameter(QgsProcessingParameterNumber("RADIUS_KM", "Only photos within (km of the place; 0: all)",
                                                       QgsProcessingParameterNumber.Double, 0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterString("MONTH", "Months (e.g. 6 or 11-2)", optional=True))
        self.addParameter(QgsProcessingParameterString("HOUR", "Local hours (e.g. 14 or 22-3)", optional=True))
        self.addParameter(QgsProcessingParameterFile(
            "LIKE", "Photo (like this photo; with months/hours: its place at another time)", optional=True))
        self.addParameter(QgsProcessingParameterString("TEXT", "Text (instead of place and time)", optional=True))
        self.addParameter(QgsProcessingParameterNumber("TOP_K", "Results",
                                                       QgsProcessingParameterNumber.Integer, 10, minValue=1))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "Search results GeoPackage",
                                                                "GeoPackage (*.gpkg *.GPKG)"))
        self.addOutput(QgsProcessingOutputNumber("N_RESULTS", "Photos found"))

    def processAlgorithm(self, parameters, context, feedback):
        model = self.parameterAsFile(parameters, "MODEL", context) or load_settings().model
        if not model:
            raise QgsProcessingException("no model given: set MODEL or choose a model in gtloc's settings")
        near = None
        if parameters.get("POINT") not in (None, ""):
            # Given a CRS, QGIS transforms the point from the one it was entered in (a map click: the canvas CRS).
            point = self.parameterAsPoint(parameters, "POINT", context, QgsCoordinateReferenceSystem("EPSG:4326"))
            near = (point.y(), point.x())
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        radius_km = self.parameterAsDouble(parameters, "RADIUS_KM", context)
        try:
            result = shared_client().search(
                self.parameterAsFile(parameters, "GPKG", context), model, near_latlon_deg=near,
                radius_km=radius_km if radius_km > 0 else None,
                month=self.parameterAsString(parameters, "MONTH", context) or None,
                hour=self.parameterAsString(parameters, "HOUR", context) or None,
                like=self.parameterAsFile(parameters, "LIKE", context) or None,
                text=self.parameterAsString(parameters, "TEXT", context) or None,
                top_k=self.parameterAsInt(parameters, "TOP_K", context), out=out, is_cancelled=feedback.isCanceled)
        except EngineError as exc:
            raise QgsProcessingException(f"gtloc engine: {exc}") from None
        for note in result.get("notes", []):
            feedback.pushWarning(note)  # which place a photo+time query used, or how far to trust a text query
        feedback.pushInfo(f"{len(result['results'])} of {result.get('n_candidates', 0)} photos "
                          f"({result['query']['kind']} query, {result.get('method')} search)")
        return {"OUTPUT": out, "N_RESULTS": len(result["results"])}


class ExportAlgorithm(_Algorithm):
    def name(self) -> str:
        return "export"

    def displayName(self) -> str:
        return "Export gtloc layers to one GeoPackage"

    def shortHelpString(self) -> str:
        return ("Writes layers into one GeoPackage, vector layers as vector tables and likelihood rasters as raster "
                "tables. Without input layers it takes every gtloc layer in the project.")

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterMultipleLayers("LAYERS", "Layers (default: all gtloc layers)",
                                                               QgsProcessing.TypeMapLayer, optional=True))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "GeoPackage", "GeoPackage (*.gpkg)"))
        self.addOutput(QgsProcessingOutputNumber("N_LAYERS", "Layers written"))

    def processAlgorithm(self, parameters, context, feedback):
        layers = self.parameterAsLayerList(parameters, "LAYERS", context) or gtloc_layers(context.project())
        if not layers:
            raise QgsProcessingException("nothing to export: no layers given and no gtloc layers in the project")
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        names: set[str] = set()
        for i, layer in enumerate(layers):
            if feedback.isCanceled():
                break
            name = _unique_table_name(layer.name(), names)
            if isinstance(layer, QgsVectorLayer):
                options = QgsVectorFileWriter.SaveVectorOptions()
                options.driverName, options.layerName = "GPKG", name
                options.actionOnExistingFile = (QgsVectorFileWriter.CreateOrOverwriteFile if not i
                                                else QgsVectorFileWriter.CreateOrOverwriteLayer)
                error, message, *_ = QgsVectorFileWriter.writeAsVectorFormatV3(
                    layer, out, context.transformContext(), options)
                if error != QgsVectorFileWriter.NoError:
                    raise QgsProcessingException(f"cannot write layer {layer.name()} to {out}: {message}")
            elif isinstance(layer, QgsRasterLayer):
                _append_raster(layer.source(), out, name, first=not i)
            feedback.setProgress(100.0 * (i + 1) / len(layers))
        return {"OUTPUT": out, "N_LAYERS": len(names)}


def _unique_table_name(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_").lower() or "layer"
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}_{n}", n + 1
    taken.add(candidate)
    return candidate


def _append_raster(source: str, out: str, table: str, *, first: bool) -> None:
    """Copy a raster into the GeoPackage as its own table; float32 values are kept (TIFF tiles)."""
    from osgeo import gdal

    options = [f"RASTER_TABLE={table}", "TILE_FORMAT=TIFF"] + ([] if first else ["APPEND_SUBDATASET=YES"])
    result = gdal.Translate(out, source, format="GPKG", creationOptions=options)
    if result is None:
        raise QgsProcessingException(f"cannot copy raster {source} into {out}: {gdal.GetLastErrorMsg()}")
    result = None
