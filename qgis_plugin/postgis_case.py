"""PostGIS cases in QGIS: a team's shared results store (docs/team-server.md) opened as layers through QGIS's own
PostgreSQL provider, and named as the `out_gpkg` of the plugin's predict requests and the `gpkg` of its searches
(the engine writes and searches a case as it does a GeoPackage).

A case is named as the engine names it: postgresql://USER@HOST[:PORT]/CASE[?sslmode=...] (a socket folder as
?host=/run/postgresql) or service=NAME (a pg_service.conf entry, the way to give TLS certificates). A password is
never part of it: libpq, under QGIS as under the engine, reads PGPASSWORD or ~/.pgpass.

    is_case_target(text)        True for a PostGIS case's name, False for a GeoPackage path
    case_uri(target, table)     the QgsDataSourceUri of one table of the case (schema public, key fid, geometry geom)
    case_name(target)           the database or service name, for group titles
    load_case(target)           PredictionLayers: photos, claim lines, candidates, the credible regions of the
                                selected photos, failures; styled as a results GeoPackage's, tagged with the target
    show_case(target, group_name, project)   the case in the project: its layers reloaded when it is there (what
                                colleagues and this batch added shows), else added under a new group
    remembered_case(), remember_case(target)  the last case opened (QGIS settings)
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlsplit

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsDataSourceUri,
    QgsLineSymbol,
    QgsProject,
    QgsRendererCategory,
    QgsSettings,
    QgsVectorLayer,
    QgsWkbTypes,
)

from . import results_schema as rs
from .layers import (
    KIND_PROPERTY,
    SOURCE_PROPERTY,
    VERDICT_COLOURS,
    PhotoSurfaces,
    PredictionLayers,
    set_temporal,
    style_candidates,
    style_photos,
    style_regions,
)

SCHEMA = "public"
GEOMETRY_COLUMN = "geom"
KEY_COLUMN = "fid"
REGIONS_TITLE = "credible regions · selected photos"
SETTINGS_KEY = "gtloc/postgis_case"
_URL_RE = re.compile(r"\Apostgres(ql)?://", re.IGNORECASE)
_SERVICE_RE = re.compile(r"\Aservice\s*=\s*\S", re.IGNORECASE)
_URL_KEYS = {"host", "port", "dbname", "user", "sslmode", "service"}  # what QGIS's provider takes from a URL


def is_case_target(text) -> bool:
    text = str(text or "")
    return bool(_URL_RE.match(text) or _SERVICE_RE.match(text))


def _conninfo(target: str) -> dict[str, str]:
    """The libpq keywords of a case; ValueError (one line) for a password or a keyword QGIS cannot take."""
    if _SERVICE_RE.match(target):
        params = dict(re.findall(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", target))
        params = {key: value.strip("'") for key, value in params.items()}
    else:
        parts = urlsplit(target)
        params = {key: value for key, value in parse_qsl(parts.query)}
        if parts.password:
            params["password"] = parts.password
        if parts.username:
            params.setdefault("user", unquote(parts.username))
        if parts.hostname:
            params.setdefault("host", unquote(parts.hostname))
        if parts.port:
            params.setdefault("port", str(parts.port))
        if parts.path.strip("/"):
            params.setdefault("dbname", unquote(parts.path.strip("/")))
    if params.get("password"):
        raise ValueError("the PostGIS case holds a password; give it without one and set PGPASSWORD or ~/.pgpass "
                         "(docs/team-server.md)")
    unknown = sorted(set(params) - _URL_KEYS)
    if unknown:
        raise ValueError(f"QGIS cannot take {', '.join(unknown)} from a case URL; put them in a pg_service.conf "
                         "service and open service=NAME")
    return params


def case_uri(target: str, table: str, geometry: str | None = GEOMETRY_COLUMN) -> QgsDataSourceUri:
    params = _conninfo(target)
    uri = QgsDataSourceUri(" ".join(f"{key}='{_escaped(value)}'" for key, value in params.items()))
    uri.setDataSource(SCHEMA, table, geometry, "", KEY_COLUMN)
    return uri


def case_name(target: str) -> str:
    params = _conninfo(target)
    return params.get("dbname") or params.get("service") or target


def load_case(target: str) -> PredictionLayers:
    """Open the case's layers, styled; ValueError naming the case when it has no readable photos layer."""
    from .photo_form import configure_photo_form

    photos = _layer(target, rs.PHOTOS_LAYER, rs.PHOTOS_LAYER)
    candidates = _layer(target, rs.CANDIDATES_LAYER, rs.CANDIDATES_LAYER)
    regions = _layer(target, rs.REGIONS_LAYER, REGIONS_TITLE)
    style_photos(photos)
    configure_photo_form(photos)
    set_temporal(photos)
    style_candidates(candidates)
    style_regions(regions)
    _follow_selection(photos, regions)
    claims = _claim_lines(target)
    failures = _failures(target)
    return PredictionLayers(target, photos, claims, candidates, failures,
                            [PhotoSurfaces("", REGIONS_TITLE, regions, [])])


def show_case(target: str, group_name: str, project: QgsProject | None = None) -> PredictionLayers:
    """The case's layers in `project`: those already there reloaded from the server (a failures layer added when
    the case now has failures), else new ones under a group at the top of the layer tree."""
    project = project or QgsProject.instance()
    there = {layer.customProperty(KIND_PROPERTY): layer for layer in project.mapLayers().values()
             if layer.customProperty(SOURCE_PROPERTY) == target}
    if rs.PHOTOS_LAYER in there:
        for layer in there.values():
            layer.dataProvider().reloadData()
            layer.triggerRepaint()
        failures = there.get(rs.FAILURES_TABLE)
        if failures is None and (failures := _failures(target)) is not None:
            group = project.layerTreeRoot().findLayer(there[rs.PHOTOS_LAYER].id()).parent()
            project.addMapLayer(failures, False)
            group.addLayer(failures)
        regions = there[rs.REGIONS_LAYER]
        return PredictionLayers(target, there[rs.PHOTOS_LAYER], there["claims"], there[rs.CANDIDATES_LAYER], failures,
                                [PhotoSurfaces("", REGIONS_TITLE, regions, [])])
    layers = load_case(target)
    group = project.layerTreeRoot().insertGroup(0, group_name)
    for layer in (layers.photos, layers.claims, layers.candidates, layers.surfaces[0].regions,
                  *([layers.failures] if layers.failures is not None else [])):
        project.addMapLayer(layer, False)
        group.addLayer(layer)
    return layers


def remembered_case() -> str:
    return str(QgsSettings().value(SETTINGS_KEY, "") or "")


def remember_case(target: str) -> None:
    QgsSettings().setValue(SETTINGS_KEY, target)


# ---------------------------------------------------------------------------------------------- internals


def _layer(target: str, table: str, name: str, geometry: str | None = GEOMETRY_COLUMN) -> QgsVectorLayer:
    layer = QgsVectorLayer(case_uri(target, table, geometry).uri(False), name, "postgres")
    if not layer.isValid():
        raise ValueError(f"the PostGIS case {case_name(target)} has no readable '{table}' table: is it a gtloc case, "
                         "and may this role read it? (docs/team-server.md)")
    _tag(layer, table, target)
    return layer


def _claim_lines(target: str) -> QgsVectorLayer:
    """Claimed place -> predicted place, computed by the server from the photos table (it follows new rows)."""
    columns = ", ".join((KEY_COLUMN, rs.PATH, rs.FILE_NAME, rs.VERDICT, rs.PLACE_VERDICT, rs.PLACE_DIST_KM,
                         rs.PLACE_LEVEL))
    query = (f"(SELECT {columns}, ST_MakeLine(ST_SetSRID(ST_MakePoint({rs.CLAIMED_LON_DEG}, {rs.CLAIMED_LAT_DEG}), "
             f"4326), ST_SetSRID(ST_MakePoint({rs.PRED_LON_DEG}, {rs.PRED_LAT_DEG}), 4326)) AS {GEOMETRY_COLUMN} "
             f"FROM {SCHEMA}.{rs.PHOTOS_LAYER} WHERE {rs.CLAIMED_LAT_DEG} IS NOT NULL "
             f"AND {rs.PRED_LAT_DEG} IS NOT NULL)")
    uri = case_uri(target, rs.PHOTOS_LAYER)
    uri.setDataSource("", query, GEOMETRY_COLUMN, "", KEY_COLUMN)
    uri.setWkbType(QgsWkbTypes.LineString)
    uri.setSrid("4326")
    layer = QgsVectorLayer(uri.uri(False), "claim -> prediction", "postgres")
    categories = [QgsRendererCategory(verdict, QgsLineSymbol.createSimple(
        {"line_color": colour, "line_width": "0.6", "line_style": "dash"}), verdict)
        for verdict, colour in VERDICT_COLOURS.items()]
    layer.setRenderer(QgsCategorizedSymbolRenderer(rs.VERDICT, categories))
    _tag(layer, "claims", target)
    return layer


def _failures(target: str) -> QgsVectorLayer | None:
    """The failures table, when it has rows."""
    layer = QgsVectorLayer(case_uri(target, rs.FAILURES_TABLE, None).uri(False), rs.FAILURES_TABLE, "postgres")
    if not layer.isValid() or layer.featureCount() == 0:
        return None
    _tag(layer, rs.FAILURES_TABLE, target)
    return layer


def _follow_selection(photos: QgsVectorLayer, regions: QgsVectorLayer) -> None:
    """The regions layer shows the credible regions of the selected photos only (a case may hold millions)."""
    def update(*_args) -> None:
        paths = [feature[rs.PATH] for feature in photos.getSelectedFeatures()]
        regions.setSubsetString(f'"{rs.PATH}" IN ({", ".join(map(_sql_text, paths))})' if paths else "FALSE")
        regions.triggerRepaint()

    update()
    photos.selectionChanged.connect(update)


def _tag(layer, kind: str, target: str) -> None:
    layer.setCustomProperty(KIND_PROPERTY, kind)
    layer.setCustomProperty(SOURCE_PROPERTY, target)


def _sql_text(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _escaped(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("'", "\\'")
