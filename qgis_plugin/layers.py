"""Files the engine wrote -> styled QGIS layers: the results GeoPackage's layers and the likelihood GeoTIFFs.

The map an analyst sees after a drop, top to bottom in the batch's group:
- photos (labelled with their file names, coloured by verdict), the claim -> prediction lines, the candidates;
- the `failures` table when a photo failed;
- "surfaces": one sub-group per photo, named after its file, holding its credible regions (outlines: 50% solid,
  90% dashed) above its likelihood rasters. Only the selected photo's sub-group is drawn (surface_view.py
  switches it); the rasters' legend states their unit and the transparency cut.

    VERDICT_COLOURS            verdict -> colour, on the map and in the attribute table
    PhotoSurfaces              one photo's regions layer and rasters, and its sub-group's title
    PredictionLayers           the layers of one prediction GeoPackage
    load_prediction(gpkg)      open and style everything above
    claim_lines(gpkg)          verification view: a line from each EXIF-claimed place to the predicted one
    add_to_project(layers, group_name)   add them under one group at the top of the layer tree
    gtloc_layers(project)      the session's gtloc layers (tagged with the custom property gtloc/kind)
    style_likelihood(raster)   pseudocolour, low values transparent, legend with unit and cut
    time_posterior(feature, name)   a 12x24 month x hour posterior stored on a photo feature, or None
    field_value(feature, name) a feature's value, None for NULL or a field its layer lacks (older files)

Layer, field and verdict names come from results_schema (the plugin's copy of the engine's schema).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsColorRampLegendNodeSettings,
    QgsColorRampShader,
    QgsConditionalStyle,
    QgsLayerTreeGroup,
    QgsLineSymbol,
    QgsMarkerSymbol,
    QgsPalLayerSettings,
    QgsProject,
    QgsProperty,
    QgsRasterBandStats,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRendererCategory,
    QgsSingleBandPseudoColorRenderer,
    QgsSymbol,
    QgsTextBufferSettings,
    QgsTextFormat,
    QgsUnitTypes,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
    QgsVectorLayerTemporalProperties,
    QgsVirtualLayerDefinition,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QColor, QFont

from . import results_schema as rs

KIND_PROPERTY = "gtloc/kind"  # photos | claims | candidates | regions | likelihood | failures
SOURCE_PROPERTY = "gtloc/source"  # the GeoPackage the layer came from
PHOTO_PATH_PROPERTY = "gtloc/photo_path"  # on a photo's regions and rasters, and on its sub-group
SURFACES_GROUP_PROPERTY = "gtloc/surfaces"  # on the sub-group holding the per-photo sub-groups
SURFACES_GROUP_NAME = "surfaces (selected photo)"
# inconclusive: a cool blue-grey, "cannot tell", between the judged colours and no claim's grey
_COLOURS = {rs.CONSISTENT: "#1a9641", rs.DOUBTFUL: "#f4a30b", rs.INCONSISTENT: "#d7191c", rs.INCONCLUSIVE: "#6a8caf",
            rs.NO_CLAIM: "#8c8c8c"}
VERDICT_COLOURS = {verdict: _COLOURS[verdict] for verdict in rs.VERDICTS}
REGION_STYLES = {0.5: ("#3b0f70", "solid", "0.7"), 0.9: ("#8c2981", "dash", "0.5")}  # level -> colour, line, mm
# Pseudocolour stops as fractions of the raster's maximum; cells below the first stop stay transparent so only
# the likely places show over the base map. The legend repeats the cut (LIKELIHOOD_CUT_LABEL).
LIKELIHOOD_STOPS = ((0.02, "#fde72500"), (0.05, "#fde725b4"), (0.3, "#f98e09dc"), (1.0, "#bc3754ff"))
LIKELIHOOD_UNIT = "probability mass per cell"  # the unit the engine writes as the band's description
LIKELIHOOD_CUT_LABEL = "transparent below {:.0%} of the peak"
LABEL_SIZE_PT = 8.0  # photo labels: fixed on screen, not map units, so they stay readable at every zoom
TEMPORAL_DURATION_HOURS = 1  # how long a photo stays visible in the Temporal Controller from its local time
# The Temporal Controller plays photos through their LOCAL day: map_time_local is the local wall clock (text);
# map_time is UTC and null where the UTC offset is unknown, so it would misplace or drop photos.
TEMPORAL_START_EXPRESSION = f'to_datetime("{rs.MAP_TIME_LOCAL}")'
TEMPORAL_END_EXPRESSION = f'{TEMPORAL_START_EXPRESSION} + make_interval(hours:={TEMPORAL_DURATION_HOURS})'


@dataclass
class PhotoSurfaces:
    """One photo's layers in its own sub-group: regions above rasters."""

    path: str
    title: str  # the sub-group's name: the file name (with its folder when two photos share a name)
    regions: QgsVectorLayer
    rasters: list[QgsRasterLayer] = field(default_factory=list)


@dataclass
class PredictionLayers:
    gpkg: str
    photos: QgsVectorLayer
    claims: QgsVectorLayer
    candidates: QgsVectorLayer
    failures: QgsVectorLayer | None = None  # only when a photo failed
    surfaces: list[PhotoSurfaces] = field(default_factory=list)  # in the photos layer's order

    @property
    def rasters(self) -> list[QgsRasterLayer]:
        return [raster for surfaces in self.surfaces for raster in surfaces.rasters]

    def top_layers(self) -> list:
        """The batch-wide layers, top to bottom."""
        return [self.photos, self.claims, self.candidates, *([self.failures] if self.failures is not None else [])]

    def all(self) -> list:
        return [*self.top_layers(), *(layer for s in self.surfaces for layer in (s.regions, *s.rasters))]


def load_prediction(gpkg: str | Path) -> PredictionLayers:
    """Open one results GeoPackage and its rasters, styled; raises ValueError naming the file if it is not one."""
    from .photo_form import configure_photo_form

    gpkg = str(gpkg)
    photos = _vector(gpkg, rs.PHOTOS_LAYER)
    candidates = _vector(gpkg, rs.CANDIDATES_LAYER)
    _vector(gpkg, rs.REGIONS_LAYER)  # checked here, so a foreign file fails before any layer is made
    style_photos(photos)
    configure_photo_form(photos)
    style_candidates(candidates)
    set_temporal(photos)
    claims = claim_lines(gpkg)
    failures = _failures(gpkg)
    surfaces = []
    titles = _titles([feature[rs.PATH] for feature in photos.getFeatures()])
    for feature in photos.getFeatures():
        path = feature[rs.PATH]
        # Filtered by the photo's bytes (hex, safe inside a layer URI, unlike a path that may hold '|'), in the URI:
        # a subset set after opening makes GDAL 3.6 open a second connection whose count query fails.
        regions = _vector(gpkg, rs.REGIONS_LAYER, f"credible regions · {titles[path]}",
                          subset=f'"{rs.SHA256}" = {_sql_text(str(feature[rs.SHA256]))}')
        style_regions(regions)
        _tag(regions, rs.REGIONS_LAYER, gpkg, path)
        rasters = []
        for kind, raster_path in raster_paths(feature):
            raster = QgsRasterLayer(raster_path, f"likelihood {kind} · {titles[path]}", "gdal")
            if raster.isValid():
                style_likelihood(raster)
                _tag(raster, "likelihood", gpkg, path)
                rasters.append(raster)
        surfaces.append(PhotoSurfaces(path, titles[path], regions, rasters))
    return PredictionLayers(gpkg, photos, claims, candidates, failures, surfaces)


def claim_lines(gpkg: str) -> QgsVectorLayer:
    """A virtual layer over the GeoPackage (it follows re-runs): claimed place -> predicted place, by verdict."""
    definition = QgsVirtualLayerDefinition()
    definition.addSource(rs.PHOTOS_LAYER, f"{gpkg}|layername={rs.PHOTOS_LAYER}", "ogr")
    definition.setQuery(
        f"SELECT {rs.PATH}, {rs.FILE_NAME}, {rs.VERDICT}, {rs.PLACE_VERDICT}, {rs.PLACE_DIST_KM}, {rs.PLACE_LEVEL}, "
        f"MakeLine(MakePoint({rs.CLAIMED_LON_DEG}, {rs.CLAIMED_LAT_DEG}, 4326), "
        f"MakePoint({rs.PRED_LON_DEG}, {rs.PRED_LAT_DEG}, 4326)) AS geometry FROM {rs.PHOTOS_LAYER} "
        f"WHERE {rs.CLAIMED_LAT_DEG} IS NOT NULL AND {rs.PRED_LAT_DEG} IS NOT NULL")
    definition.setGeometryField("geometry")
    definition.setGeometryWkbType(QgsWkbTypes.LineString)
    definition.setGeometrySrid(4326)
    layer = QgsVectorLayer(definition.toString(), "claim -> prediction", "virtual")
    categories = []
    for verdict, colour in VERDICT_COLOURS.items():
        symbol = QgsLineSymbol.createSimple({"line_color": colour, "line_width": "0.6", "line_style": "dash"})
        categories.append(QgsRendererCategory(verdict, symbol, verdict))
    layer.setRenderer(QgsCategorizedSymbolRenderer(rs.VERDICT, categories))
    _tag(layer, "claims", gpkg)
    return layer


def raster_paths(feature) -> list[tuple[str, str]]:
    """(kind, path) of a photo's likelihood rasters that exist: ('global', raster_global), then ('regional k', ...)
    for each path of raster_regional (a JSON list)."""
    found = [("global", field_value(feature, rs.RASTER_GLOBAL))]
    regional = field_value(feature, rs.RASTER_REGIONAL)
    if isinstance(regional, str) and regional:
        try:
            listed = json.loads(regional)
        except json.JSONDecodeError:
            listed = [regional]
        found += [(f"regional {k}", path) for k, path in enumerate(listed if isinstance(listed, list) else [], 1)]
    return [(kind, path) for kind, path in found if isinstance(path, str) and path and Path(path).is_file()]


def add_to_project(layers: PredictionLayers, group_name: str, project: QgsProject | None = None) -> QgsLayerTreeGroup:
    """Add the layers under a new group at the top: points and lines, then one sub-group per photo (regions above
    rasters) of which only the first photo's is drawn until a photo is selected (surface_view)."""
    from .surface_view import attach

    project = project or QgsProject.instance()
    group = project.layerTreeRoot().insertGroup(0, group_name)
    for layer in layers.top_layers():
        project.addMapLayer(layer, False)
        group.addLayer(layer)
    surfaces_group = group.addGroup(SURFACES_GROUP_NAME)
    surfaces_group.setCustomProperty(SURFACES_GROUP_PROPERTY, layers.gpkg)
    for surfaces in layers.surfaces:
        photo_group = surfaces_group.addGroup(surfaces.title)
        photo_group.setCustomProperty(PHOTO_PATH_PROPERTY, surfaces.path)
        for layer in (surfaces.regions, *surfaces.rasters):
            project.addMapLayer(layer, False)
            photo_group.addLayer(layer)
        photo_group.setExpanded(False)
    attach(layers.photos, surfaces_group)
    return group


def gtloc_layers(project: QgsProject | None = None) -> list:
    project = project or QgsProject.instance()
    return [layer for layer in project.mapLayers().values() if layer.customProperty(KIND_PROPERTY)]


def style_photos(layer: QgsVectorLayer) -> None:
    """Colour by verdict on the map, the verdict columns in the attribute table, file-name labels."""
    categories = []
    for verdict, colour in VERDICT_COLOURS.items():
        symbol = QgsMarkerSymbol.createSimple({"name": "circle", "color": colour, "size": "3.6",
                                               "outline_color": "#ffffff", "outline_width": "0.4"})
        categories.append(QgsRendererCategory(verdict, symbol, verdict))
    layer.setRenderer(QgsCategorizedSymbolRenderer(rs.VERDICT, categories))
    styles = []
    for verdict, colour in VERDICT_COLOURS.items():
        style = QgsConditionalStyle(f"@value = '{verdict}'")
        style.setBackgroundColor(QColor(colour))
        style.setTextColor(QColor("#ffffff"))
        style.setName(verdict)
        styles.append(style)
    for name in rs.VERDICT_FIELDS:
        if layer.fields().indexOf(name) >= 0:
            layer.conditionalStyles().setFieldStyles(name, styles)
    label_photos(layer)


def label_photos(layer: QgsVectorLayer) -> None:
    """File names beside the points, in points (screen size) with a halo; QGIS drops labels that would collide."""
    text = QgsTextFormat()
    font = QFont()
    font.setPointSizeF(LABEL_SIZE_PT)
    text.setFont(font)
    text.setSize(LABEL_SIZE_PT)
    text.setSizeUnit(QgsUnitTypes.RenderPoints)
    text.setColor(QColor("#202020"))
    halo = QgsTextBufferSettings()
    halo.setEnabled(True)
    halo.setSize(0.8)
    halo.setSizeUnit(QgsUnitTypes.RenderMillimeters)
    halo.setColor(QColor("#ffffffd0"))
    text.setBuffer(halo)
    settings = QgsPalLayerSettings()
    settings.fieldName = rs.FILE_NAME
    settings.setFormat(text)
    settings.placement = QgsPalLayerSettings.OrderedPositionsAroundPoint
    settings.dist = 1.5
    settings.distUnits = QgsUnitTypes.RenderMillimeters
    layer.setLabeling(QgsVectorLayerSimpleLabeling(settings))
    layer.setLabelsEnabled(True)


def style_candidates(layer: QgsVectorLayer) -> None:
    """Small diamonds sized by probability."""
    symbol = QgsMarkerSymbol.createSimple({"name": "diamond", "color": "#2c7fb8", "outline_color": "#ffffff",
                                           "outline_width": "0.2", "size": "2.5"})
    symbol.setDataDefinedSize(QgsProperty.fromExpression(f'scale_linear("{rs.PROBABILITY}", 0, 1, 1.5, 6)'))
    layer.renderer().setSymbol(symbol)


def style_regions(layer: QgsVectorLayer) -> None:
    """Credible regions as outlines (no fill, so the raster under them stays readable): 50% solid, 90% dashed."""
    categories = []
    for level, (colour, line_style, width_mm) in REGION_STYLES.items():
        symbol = QgsSymbol.defaultSymbol(QgsWkbTypes.PolygonGeometry)
        symbol.changeSymbolLayer(0, _outline(colour, line_style, width_mm))
        categories.append(QgsRendererCategory(level, symbol, f"{level:.0%} credible region"))
    layer.setRenderer(QgsCategorizedSymbolRenderer(rs.LEVEL, categories))


def _outline(colour: str, line_style: str, width_mm: str):
    from qgis.core import QgsSimpleFillSymbolLayer

    outline = QgsSimpleFillSymbolLayer.create({"color": "0,0,0,0", "style": "no", "outline_color": colour,
                                               "outline_style": line_style, "outline_width": width_mm,
                                               "outline_width_unit": "MM"})
    outline.setBrushStyle(Qt.NoBrush)
    return outline


def style_likelihood(raster: QgsRasterLayer) -> None:
    """Pseudocolour over the raster's own range; cells under LIKELIHOOD_STOPS[0] of the maximum are transparent.
    The legend's first entry says so, and every entry states the unit."""
    provider = raster.dataProvider()
    top = provider.bandStatistics(1, QgsRasterBandStats.Max).maximumValue
    if not top > 0:
        return  # an all-zero surface: nothing to show, keep the default rendering
    ramp = QgsColorRampShader(0.0, top)
    ramp.setColorRampType(QgsColorRampShader.Interpolated)
    items = []
    for fraction, colour in LIKELIHOOD_STOPS:
        if fraction == LIKELIHOOD_STOPS[0][0]:
            label = f"{fraction * top:.2g} {LIKELIHOOD_UNIT}: {LIKELIHOOD_CUT_LABEL.format(fraction)}"
        else:
            label = f"{fraction * top:.2g} ({fraction:.0%} of the peak)"
        items.append(QgsColorRampShader.ColorRampItem(fraction * top, _argb(colour), label))
    ramp.setColorRampItemList(items)
    legend = QgsColorRampLegendNodeSettings()
    legend.setUseContinuousLegend(False)  # one entry per stop, so the labels (unit, cut) are in the legend
    ramp.setLegendSettings(legend)
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(ramp)
    renderer = QgsSingleBandPseudoColorRenderer(provider, 1, shader)
    renderer.setClassificationMin(0.0)
    renderer.setClassificationMax(top)
    raster.setRenderer(renderer)
    raster.setAbstract(f"Likelihood of the photo's place: {LIKELIHOOD_UNIT} (a global surface sums to 1); "
                       f"{LIKELIHOOD_CUT_LABEL.format(LIKELIHOOD_STOPS[0][0])}.")


def set_temporal(layer: QgsVectorLayer) -> None:
    """Each photo shows for TEMPORAL_DURATION_HOURS from its local time, map_time_local (the claimed local time,
    else the predicted month and hour in 2001), so the Temporal Controller plays photos through the local day."""
    props = layer.temporalProperties()
    props.setIsActive(True)
    props.setMode(QgsVectorLayerTemporalProperties.ModeFeatureDateTimeStartAndEndFromExpressions)
    props.setStartExpression(TEMPORAL_START_EXPRESSION)
    props.setEndExpression(TEMPORAL_END_EXPRESSION)


def time_posterior(feature, name: str = rs.TIME_POSTERIOR) -> list[list[float]] | None:
    """A photo's month x hour probabilities (12 rows, 24 columns) from field `name`, or None when it has none."""
    text = field_value(feature, name)
    if not isinstance(text, str) or not text:
        return None
    try:
        grid = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(grid, list) or len(grid) != 12 or any(not isinstance(row, list) or len(row) != 24
                                                             for row in grid):
        return None
    return grid


def field_value(feature, name: str):
    """A feature's value, or None when its layer has no such field (GeoPackages from older engines) or it is NULL."""
    if feature is None or feature.fields().indexOf(name) < 0:
        return None
    value = feature[name]
    return None if value is None or (hasattr(value, "isNull") and value.isNull()) else value


def _vector(gpkg: str, table: str, name: str | None = None, subset: str | None = None) -> QgsVectorLayer:
    uri = f"{gpkg}|layername={table}" + (f"|subset={subset}" if subset else "")
    layer = QgsVectorLayer(uri, name or table, "ogr")
    if not layer.isValid():
        raise ValueError(f"{gpkg} has no readable '{table}' layer: is it a gtloc results GeoPackage?")
    _tag(layer, table, gpkg)
    return layer


def _failures(gpkg: str) -> QgsVectorLayer | None:
    """The failures table as a layer, when it has rows (an empty table would only clutter the tree)."""
    layer = QgsVectorLayer(f"{gpkg}|layername={rs.FAILURES_TABLE}", rs.FAILURES_TABLE, "ogr")
    if not layer.isValid() or layer.featureCount() == 0:
        return None
    _tag(layer, rs.FAILURES_TABLE, gpkg)
    return layer


def _titles(paths: list[str]) -> dict[str, str]:
    """Sub-group titles: a photo's file name, or 'folder/file' where two photos of the batch share a file name."""
    names = [Path(path).name for path in paths]
    return {path: Path(path).name if names.count(Path(path).name) == 1
            else f"{Path(path).parent.name}/{Path(path).name}" for path in paths}


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _argb(text: str) -> QColor:
    """'#rrggbbaa' -> QColor (Qt reads 8-digit hex as #aarrggbb)."""
    colour = QColor(text[:7])
    if len(text) == 9:
        colour.setAlpha(int(text[7:], 16))
    return colour


def _tag(layer, kind: str, gpkg: str, photo_path: str | None = None) -> None:
    layer.setCustomProperty(KIND_PROPERTY, kind)
    layer.setCustomProperty(SOURCE_PROPERTY, gpkg)
    if photo_path is not None:
        layer.setCustomProperty(PHOTO_PATH_PROPERTY, photo_path)
