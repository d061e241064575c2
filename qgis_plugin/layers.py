"""Files the engine wrote -> styled QGIS layers: the results GeoPackage's layers and the likelihood GeoTIFFs.

    VERDICT_COLOURS            verdict -> colour, on the map and in the attribute table
    PredictionLayers           the layers of one prediction GeoPackage
    load_prediction(gpkg)      open and style photos, claim lines, candidates, regions and the likelihood rasters
    claim_lines(gpkg)          verification view: a line from each EXIF-claimed place to the predicted one
    add_to_project(layers, group_name)   add them under one group at the top of the layer tree
    gtloc_layers(project)      the session's gtloc layers (tagged with the custom property gtloc/kind)
    style_likelihood(raster)   pseudocolour, low values transparent
    time_posterior(feature)    the 12x24 month x hour probabilities stored on a photo feature, or None

Layer, field and verdict names come from results_schema (the plugin's copy of the engine's schema).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsColorRampShader,
    QgsConditionalStyle,
    QgsFillSymbol,
    QgsLayerTreeGroup,
    QgsLineSymbol,
    QgsMarkerSymbol,
    QgsProject,
    QgsProperty,
    QgsRasterBandStats,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRendererCategory,
    QgsSingleBandPseudoColorRenderer,
    QgsVectorLayer,
    QgsVectorLayerTemporalProperties,
    QgsVirtualLayerDefinition,
    QgsWkbTypes,
)
from qgis.PyQt.QtGui import QColor

from . import results_schema as rs

KIND_PROPERTY = "gtloc/kind"  # photos | claims | candidates | regions | likelihood
SOURCE_PROPERTY = "gtloc/source"  # the GeoPackage the layer came from
VERDICT_COLOURS = dict(zip(rs.VERDICTS, ("#1a9641", "#f4a30b", "#d7191c", "#8c8c8c")))  # consistent ... no claim
REGION_COLOURS = dict(zip(rs.DEFAULT_CREDIBLE_LEVELS, ("#3b0f70", "#8c2981")))  # 50%, 90%
# Pseudocolour stops as fractions of the raster's maximum; cells below the first stop stay transparent so only
# the likely places show over the base map.
LIKELIHOOD_STOPS = ((0.02, "#fde72500"), (0.05, "#fde725b4"), (0.3, "#f98e09dc"), (1.0, "#bc3754ff"))
TEMPORAL_DURATION_HOURS = 1  # how long a photo stays visible in the Temporal Controller from its local time
# The Temporal Controller plays photos through their LOCAL day: map_time_local is the local wall clock (text);
# map_time is UTC and null where the UTC offset is unknown, so it would misplace or drop photos.
TEMPORAL_START_EXPRESSION = f'to_datetime("{rs.MAP_TIME_LOCAL}")'
TEMPORAL_END_EXPRESSION = f'{TEMPORAL_START_EXPRESSION} + make_interval(hours:={TEMPORAL_DURATION_HOURS})'


@dataclass
class PredictionLayers:
    gpkg: str
    photos: QgsVectorLayer
    claims: QgsVectorLayer
    candidates: QgsVectorLayer
    regions: QgsVectorLayer
    rasters: list[QgsRasterLayer] = field(default_factory=list)

    def all(self) -> list:
        return [self.photos, self.claims, self.candidates, self.regions, *self.rasters]


def load_prediction(gpkg: str | Path) -> PredictionLayers:
    """Open one results GeoPackage and its rasters, styled; raises ValueError naming the file if it is not one."""
    gpkg = str(gpkg)
    vectors = {}
    for name in (rs.PHOTOS_LAYER, rs.CANDIDATES_LAYER, rs.REGIONS_LAYER):
        layer = QgsVectorLayer(f"{gpkg}|layername={name}", name, "ogr")
        if not layer.isValid():
            raise ValueError(f"{gpkg} has no readable '{name}' layer: is it a gtloc results GeoPackage?")
        _tag(layer, name, gpkg)
        vectors[name] = layer
    photos, candidates, regions = (vectors[rs.PHOTOS_LAYER], vectors[rs.CANDIDATES_LAYER],
                                   vectors[rs.REGIONS_LAYER])
    style_photos(photos)
    style_candidates(candidates)
    style_regions(regions)
    set_temporal(photos)
    claims = claim_lines(gpkg)
    rasters = []
    for path in raster_paths(photos):
        raster = QgsRasterLayer(path, f"likelihood {Path(path).stem}", "gdal")
        if raster.isValid():
            style_likelihood(raster)
            _tag(raster, "likelihood", gpkg)
            rasters.append(raster)
    return PredictionLayers(gpkg, photos, claims, candidates, regions, rasters)


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


def raster_paths(photos: QgsVectorLayer) -> list[str]:
    """Likelihood rasters named by the photos (raster_global, and raster_regional: a JSON list), existing, once each."""
    paths: list[str] = []
    for feature in photos.getFeatures():
        found = [feature[rs.RASTER_GLOBAL]]
        regional = feature[rs.RASTER_REGIONAL]
        if isinstance(regional, str) and regional:
            try:
                found += json.loads(regional)
            except json.JSONDecodeError:
                found.append(regional)
        for path in found:
            if isinstance(path, str) and path and path not in paths and Path(path).is_file():
                paths.append(path)
    return paths


def add_to_project(layers: PredictionLayers, group_name: str, project: QgsProject | None = None) -> QgsLayerTreeGroup:
    """Add the layers under a new group at the top: points above regions above rasters."""
    project = project or QgsProject.instance()
    group = project.layerTreeRoot().insertGroup(0, group_name)
    for layer in layers.all():
        project.addMapLayer(layer, False)
        group.addLayer(layer)
    return group


def gtloc_layers(project: QgsProject | None = None) -> list:
    project = project or QgsProject.instance()
    return [layer for layer in project.mapLayers().values() if layer.customProperty(KIND_PROPERTY)]


def style_photos(layer: QgsVectorLayer) -> None:
    """Colour by verdict on the map, and the verdict columns in the attribute table."""
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


def style_candidates(layer: QgsVectorLayer) -> None:
    """Small diamonds sized by probability."""
    symbol = QgsMarkerSymbol.createSimple({"name": "diamond", "color": "#2c7fb8", "outline_color": "#ffffff",
                                           "outline_width": "0.2", "size": "2.5"})
    symbol.setDataDefinedSize(QgsProperty.fromExpression(f'scale_linear("{rs.PROBABILITY}", 0, 1, 1.5, 6)'))
    layer.renderer().setSymbol(symbol)


def style_regions(layer: QgsVectorLayer) -> None:
    """Credible regions: 50% darker inside 90% lighter, both see-through."""
    categories = []
    for level, colour in REGION_COLOURS.items():
        fill = QColor(colour)
        fill.setAlpha(90 if level == 0.5 else 45)
        symbol = QgsFillSymbol.createSimple({"color": fill.name(QColor.HexArgb), "outline_color": colour,
                                             "outline_width": "0.4"})
        categories.append(QgsRendererCategory(level, symbol, f"{level:.0%} credible region"))
    layer.setRenderer(QgsCategorizedSymbolRenderer(rs.LEVEL, categories))


def style_likelihood(raster: QgsRasterLayer) -> None:
    """Pseudocolour over the raster's own range; cells under LIKELIHOOD_STOPS[0] of the maximum are transparent."""
    provider = raster.dataProvider()
    top = provider.bandStatistics(1, QgsRasterBandStats.Max).maximumValue
    if not top > 0:
        return  # an all-zero surface: nothing to show, keep the default rendering
    ramp = QgsColorRampShader(0.0, top)
    ramp.setColorRampType(QgsColorRampShader.Interpolated)
    ramp.setColorRampItemList([QgsColorRampShader.ColorRampItem(fraction * top, _argb(colour))
                               for fraction, colour in LIKELIHOOD_STOPS])
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(ramp)
    renderer = QgsSingleBandPseudoColorRenderer(provider, 1, shader)
    renderer.setClassificationMin(0.0)
    renderer.setClassificationMax(top)
    raster.setRenderer(renderer)


def set_temporal(layer: QgsVectorLayer) -> None:
    """Each photo shows for TEMPORAL_DURATION_HOURS from its local time, map_time_local (the claimed local time,
    else the predicted month and hour in 2001), so the Temporal Controller plays photos through the local day."""
    props = layer.temporalProperties()
    props.setIsActive(True)
    props.setMode(QgsVectorLayerTemporalProperties.ModeFeatureDateTimeStartAndEndFromExpressions)
    props.setStartExpression(TEMPORAL_START_EXPRESSION)
    props.setEndExpression(TEMPORAL_END_EXPRESSION)


def time_posterior(feature) -> list[list[float]] | None:
    """The photo's month x hour probabilities (12 rows, 24 columns), or None when it has none."""
    text = feature[rs.TIME_POSTERIOR] if feature.fields().indexOf(rs.TIME_POSTERIOR) >= 0 else None
    if not isinstance(text, str) or not text:
        return None
    try:
        grid = json.loads(text)
    except json.JSONDecodeError:
        return None
    if len(grid) != 12 or any(len(row) != 24 for row in grid):
        return None
    return grid


def _argb(text: str) -> QColor:
    """'#rrggbbaa' -> QColor (Qt reads 8-digit hex as #aarrggbb)."""
    colour = QColor(text[:7])
    if len(text) == 9:
        colour.setAlpha(int(text[7:], 16))
    return colour


def _tag(layer, kind: str, gpkg: str) -> None:
    layer.setCustomProperty(KIND_PROPERTY, kind)
    layer.setCustomProperty(SOURCE_PROPERTY, gpkg)
