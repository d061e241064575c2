"""Processing algorithms, thin wrappers: predict and search go through engine_client, export is plain QGIS/GDAL.

    gtloc:predict   photos (files and/or a folder) -> results GeoPackage (+ likelihood GeoTIFFs), via the engine;
                    TIME: a known local capture time, every place predicted given it (where given when)
    gtloc:search    a results GeoPackage + a place / month-hour windows / a photo (alone, or with windows: the same
                    place at another time) / text, filtered by radius, polygons and claimed time range, with the
                    window's pooling and the photos' point source -> layer search_results, via the engine
    gtloc:export    the session's gtloc layers (or chosen layers) -> one GeoPackage, vectors and rasters, that GDAL's
                    GeoPackage validator passes
    gtloc:shadow    one or two shadows (object height + shadow length, or the sun's elevation; bearing; time, each
                    with a sigma) -> the shadow locus GeoTIFF, fused with a photo's place posterior (a photo + model,
                    or its global likelihood raster) when given, and their credible regions and candidates, via the
                    engine

    POOLINGS, POINT_SOURCES     (engine value, label) of search's pooling and point_source (the engine's values)
    vector_layer_file(layer, transform_context)   a file + layer name the engine can read with a layer's features
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterPoint,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorLayer,
    QgsProcessingUtils,
    QgsProviderRegistry,
    QgsRasterLayer,
    QgsVectorFileWriter,
    QgsVectorLayer,
)

from ..engine_client import EngineError, shared_client
from .. import results_schema as rs
from ..layers import KIND_PROPERTY, PHOTO_PATH_PROPERTY, SOURCE_PROPERTY, gtloc_layers
from ..settings import TIME_FORMATS, describe_time, load_settings, parse_capture_time

# The engine's values (gtloc_engine/inference/search/query.py; tests/test_protocol_params.py holds this copy to them).
POOLINGS = (("max", "best-matching time of the window (max)"), ("mean", "average over the window (mean)"))
POINT_SOURCES = (("point", "claimed place, else predicted (point)"), ("claim", "claimed place only (claim)"),
                 ("prediction", "predicted place only (prediction)"))


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
                "never returned. Filters (applied before ranking): a radius around the place, the polygons of a "
                "layer, a range of claimed local times (photos without an EXIF time are left out). A time window "
                "scores each photo by its best-matching time (max) or the average (mean); the filters test each "
                "photo's claimed place if any, else its predicted one (point), or only one of them. The model must "
                "be the one that made the GeoPackage.")

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
        self.addParameter(QgsProcessingParameterVectorLayer("WITHIN", "Only photos inside these polygons",
                                                            [QgsProcessing.TypeVectorPolygon], optional=True))
        self.addParameter(QgsProcessingParameterString(
            "CLAIMED_AFTER", f"Only photos whose claimed local time is at or after ({TIME_FORMATS})", optional=True))
        self.addParameter(QgsProcessingParameterString("CLAIMED_BEFORE", "Only photos whose claimed local time is "
                                                       "before", optional=True))
        self.addParameter(QgsProcessingParameterEnum("POOLING", "Score over a time window",
                                                     [label for _, label in POOLINGS], defaultValue=0))
        self.addParameter(QgsProcessingParameterEnum("POINT_SOURCE", "Photo place the filters test",
                                                     [label for _, label in POINT_SOURCES], defaultValue=0))
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
        within = within_layer = None
        area = self.parameterAsVectorLayer(parameters, "WITHIN", context)
        if area is not None:
            try:
                within, within_layer = vector_layer_file(area, context.transformContext())
            except ValueError as exc:
                raise QgsProcessingException(f"WITHIN: {exc}") from None
        try:
            result = shared_client().search(
                self.parameterAsFile(parameters, "GPKG", context), model, near_latlon_deg=near,
                radius_km=radius_km if radius_km > 0 else None,
                month=self.parameterAsString(parameters, "MONTH", context) or None,
                hour=self.parameterAsString(parameters, "HOUR", context) or None,
                like=self.parameterAsFile(parameters, "LIKE", context) or None,
                text=self.parameterAsString(parameters, "TEXT", context) or None,
                within=within, within_layer=within_layer,
                claimed_after=self.parameterAsString(parameters, "CLAIMED_AFTER", context).strip() or None,
                claimed_before=self.parameterAsString(parameters, "CLAIMED_BEFORE", context).strip() or None,
                pooling=POOLINGS[self.parameterAsEnum(parameters, "POOLING", context)][0],
                point_source=POINT_SOURCES[self.parameterAsEnum(parameters, "POINT_SOURCE", context)][0],
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
                "tables. Without input layers it takes every gtloc layer in the project. Layers read from a file are "
                "copied by GDAL as stored (times keep their UTC mark); a date-time column that holds times without "
                "one (local wall clocks) is written as text, since a GeoPackage DATETIME is UTC.")

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterMultipleLayers("LAYERS", "Layers (default: all gtloc layers)",
                                                               QgsProcessing.TypeMapLayer, optional=True))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "GeoPackage", "GeoPackage (*.gpkg)"))
        self.addOutput(QgsProcessingOutputNumber("N_LAYERS", "Layers written"))

    def processAlgorithm(self, parameters, context, feedback):
        layers = _whole_region_layers(self.parameterAsLayerList(parameters, "LAYERS", context)
                                      or gtloc_layers(context.project()))
        if not layers:
            raise QgsProcessingException("nothing to export: no layers given and no gtloc layers in the project")
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        if os.path.lexists(out):
            os.remove(out)  # a new file, as GDAL creates it: no tables left from an earlier export
        names: set[str] = set()
        for i, layer in enumerate(layers):
            if feedback.isCanceled():
                break
            name = _unique_table_name(layer.name(), names)
            if isinstance(layer, QgsVectorLayer):
                _append_vector(layer, out, name, context.transformContext())
                for column in _utc_or_text(out, name):
                    feedback.pushWarning(f"{layer.name()}: column {column} holds times without a time zone; written "
                                         "as text (a GeoPackage DATETIME is UTC)")
            elif isinstance(layer, QgsRasterLayer):
                _append_raster(layer.source(), out, name)
            feedback.setProgress(100.0 * (i + 1) / len(layers))
        return {"OUTPUT": out, "N_LAYERS": len(names)}


def vector_layer_file(layer: QgsVectorLayer, transform_context) -> tuple[str, str | None]:
    """(file, layer name or None for its first) that the engine can read with the layer's features: the layer's own
    file (GeoPackage, GeoJSON, Shapefile, ...) when it is read whole from one, else a copy in QGIS's temporary
    folder. ValueError (one line) when the copy cannot be written."""
    source = _ogr_source(layer)
    if source is not None:
        return source
    out = QgsProcessingUtils.generateTempFilename("gtloc_layer.gpkg")
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName, options.layerName = "GPKG", "layer"
    error, message, *_ = QgsVectorFileWriter.writeAsVectorFormatV3(layer, out, transform_context, options)
    if error != QgsVectorFileWriter.NoError:
        raise ValueError(f"layer {layer.name()} cannot be written to a file for the engine: {message}")
    return out, "layer"


def _ogr_source(layer: QgsVectorLayer) -> tuple[str, str | None] | None:
    """(file, layer name) of a layer GDAL reads whole from a file, or None (memory, virtual, filtered layers)."""
    if layer.providerType() != "ogr" or layer.subsetString():
        return None
    parts = QgsProviderRegistry.instance().decodeUri("ogr", layer.source())
    path, layer_name = parts.get("path"), parts.get("layerName") or None
    if not path or not Path(path).is_file() or (layer_name is None and parts.get("layerId") not in (None, 0, "0")):
        return None
    return path, layer_name


def _whole_region_layers(layers: list) -> list:
    """The plugin shows each photo's credible regions as a filtered view of its batch's `regions` table; exported,
    a batch's views become that one table again (one `regions` table per batch, as the engine wrote it)."""
    out, seen = [], set()
    for layer in layers:
        source = layer.customProperty(SOURCE_PROPERTY)
        if layer.customProperty(KIND_PROPERTY) == rs.REGIONS_LAYER and layer.customProperty(PHOTO_PATH_PROPERTY):
            if source in seen:
                continue
            seen.add(source)
            layer = QgsVectorLayer(f"{source}|layername={rs.REGIONS_LAYER}", rs.REGIONS_LAYER, "ogr")
        out.append(layer)
    return out


def _unique_table_name(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_").lower() or "layer"
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}_{n}", n + 1
    taken.add(candidate)
    return candidate


def _append_vector(layer: QgsVectorLayer, out: str, table: str, transform_context) -> None:
    """Copy a vector layer into the GeoPackage as its own table: with GDAL from the layer's file (QGIS 3.22 drops
    the UTC mark of date-times on the way through its writer), else (memory, virtual, filtered) with QGIS's."""
    source = _ogr_source(layer)
    if source is not None:
        from osgeo import gdal

        path, layer_name = source
        src = gdal.OpenEx(path, gdal.OF_VECTOR)
        if src is None:
            raise QgsProcessingException(f"cannot read layer {layer.name()} from {path}: {gdal.GetLastErrorMsg()}")
        layer_name = layer_name or src.GetLayer(0).GetName()
        src = None
        result = gdal.VectorTranslate(out, path, format="GPKG", layers=[layer_name], layerName=table,
                                      accessMode="update" if os.path.exists(out) else None)
        if result is None:
            raise QgsProcessingException(f"cannot write layer {layer.name()} to {out}: {gdal.GetLastErrorMsg()}")
        result = None
        return
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName, options.layerName = "GPKG", table
    options.actionOnExistingFile = (QgsVectorFileWriter.CreateOrOverwriteLayer if os.path.exists(out)
                                    else QgsVectorFileWriter.CreateOrOverwriteFile)
    error, message, *_ = QgsVectorFileWriter.writeAsVectorFormatV3(layer, out, transform_context, options)
    if error != QgsVectorFileWriter.NoError:
        raise QgsProcessingException(f"cannot write layer {layer.name()} to {out}: {message}")


def _utc_or_text(out: str, table: str) -> list[str]:
    """Keep a table's date-time columns DATETIME only where every value is UTC (what GeoPackage requires); turn the
    others into text columns holding the same ISO 8601 wall clocks. Returns the columns turned into text."""
    from osgeo import gdal, ogr

    dataset = gdal.OpenEx(out, gdal.OF_VECTOR | gdal.OF_UPDATE)
    try:
        layer = dataset.GetLayerByName(table)
        definition = layer.GetLayerDefn()
        columns = [i for i in range(definition.GetFieldCount())
                   if definition.GetFieldDefn(i).GetType() == ogr.OFTDateTime]
        not_utc = set()
        feature = layer.GetNextFeature()
        while feature is not None:
            not_utc.update(i for i in columns
                           if feature.IsFieldSetAndNotNull(i) and feature.GetFieldAsDateTime(i)[6] != 100)  # 100: UTC
            feature = layer.GetNextFeature()  # the last one is None: no feature outlives the schema change below
        names = [definition.GetFieldDefn(i).GetName() for i in sorted(not_utc)]
        for name in names:
            # GDAL rebuilds the table with a TEXT column; SQLite keeps the stored text as it is
            layer.AlterFieldDefn(definition.GetFieldIndex(name), ogr.FieldDefn(name, ogr.OFTString),
                                 ogr.ALTER_TYPE_FLAG)
        del definition, layer  # before the dataset: GDAL's Python objects must not outlive their owner
    finally:
        dataset = None
    return names


def _append_raster(source: str, out: str, table: str) -> None:
    """Copy a raster into the GeoPackage as its own table; float32 values are kept (TIFF tiles)."""
    from osgeo import gdal

    first = not os.path.exists(out)
    options = [f"RASTER_TABLE={table}", "TILE_FORMAT=TIFF"] + ([] if first else ["APPEND_SUBDATASET=YES"])
    result = gdal.Translate(out, source, format="GPKG", creationOptions=options)
    if result is None:
        raise QgsProcessingException(f"cannot copy raster {source} into {out}: {gdal.GetLastErrorMsg()}")
    result = None


class ShadowAlgorithm(_Algorithm):
    """A thin wrapper over EngineClient.shadow; the measurement fields are shadow_task.measurement's (the engine's)."""

    SHADOW = (("HEIGHT", "height_m", "Object height"), ("LENGTH", "length_m", "Its shadow's length (same unit)"),
              ("ELEVATION", "elev_deg", "or the sun's elevation (degrees)"),
              ("BEARING", "bearing_deg", "Shadow bearing (degrees clockwise from true north)"))
    SIGMAS = (("HEIGHT_SIGMA", "height_sigma_m", "Height sigma"), ("LENGTH_SIGMA", "length_sigma_m", "Length sigma"),
              ("ELEVATION_SIGMA", "elev_sigma_deg", "Elevation sigma (degrees; default 1)"),
              ("BEARING_SIGMA", "bearing_sigma_deg", "Bearing sigma (degrees; default 5)"),
              ("TIME_SIGMA", "time_sigma_min", "Time sigma (minutes)"))

    def name(self) -> str:
        return "shadow"

    def displayName(self) -> str:
        return "Shadow locus (where a shadow falls; fused with a photo's place posterior)"

    def shortHelpString(self) -> str:
        return ("Where on Earth could this shadow fall at this time? Give an object's height and its shadow's length "
                "(any unit, the same for both) or the sun's elevation, optionally the shadow's bearing, and the time "
                "in ISO 8601: with Z or an offset (2024-06-21T12:05Z) an instant, without one (2024-06-21T14:05) "
                "the local clock at every place, read in that place's real time zone with its daylight saving. Each "
                "value may have an uncertainty (sigma), which widens the band. A second shadow (another object of "
                "the scene, or the same one at another time; the sigmas are shared) intersects its locus with the "
                "first. With a photo (and the model to run on it) or its global likelihood raster, the locus is "
                "multiplied with the photo's learned place posterior: the fused surface shows where the model and "
                "the shadow agree. Writes shadow_locus.tif, shadow_fused.tif and shadow.gpkg (layers shadow_regions, "
                "shadow_candidates, shadow_measurements) into the output folder.")

    def initAlgorithm(self, config=None):
        number = QgsProcessingParameterNumber.Double
        for suffix, title in (("", ""), ("_2", "Second shadow: ")):
            for key, _, label in self.SHADOW:
                self.addParameter(QgsProcessingParameterNumber(f"{key}{suffix}", f"{title}{label}", number,
                                                               optional=True))
            self.addParameter(QgsProcessingParameterString(f"TIME{suffix}", f"{title}Time (ISO 8601)",
                                                           optional=bool(suffix)))
        for key, _, label in self.SIGMAS:
            self.addParameter(QgsProcessingParameterNumber(key, label, number, optional=True, minValue=0.0))
        self.addParameter(QgsProcessingParameterFile("PHOTO", "Photo to fuse with (its place posterior)",
                                                     optional=True))
        self.addParameter(QgsProcessingParameterFile("MODEL", "gtloc model for the photo (.safetensors; default: "
                                                     "settings)", extension="safetensors", optional=True))
        self.addParameter(QgsProcessingParameterFile("POSTERIOR", "or the photo's global likelihood raster "
                                                     "(*_global.tif)", extension="tif", optional=True))
        self.addParameter(QgsProcessingParameterNumber("RES_DEG", "Cell size (degrees; default 0.25, or the "
                                                       "raster's)", number, optional=True, minValue=0.01))
        self.addParameter(QgsProcessingParameterNumber("TOP_K", "Candidate places per surface",
                                                       QgsProcessingParameterNumber.Integer, 5, minValue=1))
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Output folder"))
        from qgis.core import QgsProcessingOutputFile, QgsProcessingOutputRasterLayer

        self.addOutput(QgsProcessingOutputRasterLayer("LOCUS", "Shadow locus"))
        self.addOutput(QgsProcessingOutputRasterLayer("FUSED", "Shadow x the photo's place posterior"))
        self.addOutput(QgsProcessingOutputFile("GPKG", "Regions and candidates (GeoPackage)"))

    def processAlgorithm(self, parameters, context, feedback):
        from ..shadow_task import measurement

        def number(key):
            value = parameters.get(key)
            return None if value in (None, "") else self.parameterAsDouble(parameters, key, context)

        sigmas = {field: number(key) for key, field, _ in self.SIGMAS}
        measurements = []
        for suffix in ("", "_2"):
            time = self.parameterAsString(parameters, f"TIME{suffix}", context).strip()
            values = {field: number(f"{key}{suffix}") for key, field, _ in self.SHADOW}
            if suffix and not time and all(v is None for v in values.values()):
                continue  # no second shadow
            try:
                measurements.append(measurement(time=time, **values, **sigmas,
                                                what="second shadow" if suffix else "shadow"))
            except ValueError as exc:
                raise QgsProcessingException(str(exc)) from None
        photo = self.parameterAsFile(parameters, "PHOTO", context) or None
        posterior = self.parameterAsFile(parameters, "POSTERIOR", context) or None
        model = (self.parameterAsFile(parameters, "MODEL", context) or load_settings().model or None) if photo \
            else None
        if photo and not model:
            raise QgsProcessingException("PHOTO needs a model: set MODEL or choose a model in gtloc's settings")
        out_dir = self.parameterAsString(parameters, "OUTPUT", context)
        try:
            summary = shared_client().shadow(
                measurements, out_dir, photo=photo, model=model, posterior=posterior, res_deg=number("RES_DEG"),
                top_k=self.parameterAsInt(parameters, "TOP_K", context), is_cancelled=feedback.isCanceled,
                on_progress=lambda done, total: feedback.setProgress(100.0 * done / total if total else 0.0))
        except EngineError as exc:
            raise QgsProcessingException(f"gtloc engine: {exc}") from None
        for note in summary.get("notes", []):
            feedback.pushInfo(note)
        for name in ("locus", "fused"):
            part = summary.get(name)
            if part and part.get("candidates"):
                best = part["candidates"][0]
                feedback.pushInfo(f"{name}: most likely at {best['lat_deg']:.3f}, {best['lon_deg']:.3f} "
                                  f"({best['probability']:.1%} within {best['radius_km']:g} km)")
        return {"OUTPUT": summary["out_dir"], "LOCUS": summary["locus_tif"], "FUSED": summary.get("fused_tif"),
                "GPKG": summary["gpkg"]}

