"""The photos layer as an analyst reads it: the verdict and key numbers first, with plain names; a feature form
that opens on the photo itself; a map tip with a thumbnail; actions that open the photo and its folder.

- The picture shown is the engine's thumbnail (`thumbnail`: a JPEG with the EXIF orientation applied), not the
  original: originals can be 50 MB, HEIC (which Qt does not decode) or stored sideways with an Orientation tag
  that Qt's viewers ignore. The original stays one click away (`path`, a link, and the "Open the photo" action).
- The form's first tab shows the thumbnail, the verdict, the time posterior plot (`time_plot`, a PNG the engine
  made) and the key numbers; the other tabs group place, time and files; every field not named here is on the
  last tab, so fields added by newer engines still show.
- The layer is read-only: the engine owns the GeoPackage and may be writing to it.
- Actions and map tips build file:// URLs with QGIS expressions only (no Python actions: a hostile GeoPackage
  could carry file names crafted to run code in a Python action).

    FIELD_ORDER, ALIASES, FORM_TABS     the layout, as data
    configure_photo_form(layer)   aliases, attribute-table column order, tabbed form, widgets, map tip, actions
    file_url_expression(field)    a QGIS expression turning a path field into a file:// URL
"""

from __future__ import annotations

from qgis.core import (
    QgsAction,
    QgsAttributeEditorContainer,
    QgsAttributeEditorField,
    QgsEditFormConfig,
    QgsEditorWidgetSetup,
    QgsVectorLayer,
)

from . import results_schema as rs

# The attribute table's columns and the form's first tab start with these (what a verification reads first).
FIELD_ORDER = (rs.VERDICT, rs.PLACE_VERDICT, rs.TIME_VERDICT, rs.PLACE_DIST_KM, rs.PLACE_LEVEL, rs.PLACE_EVIDENCE,
               rs.TIME_LEVEL, rs.TIME_EVIDENCE, rs.SUN_CHECK, rs.PRED_MONTH, rs.PRED_HOUR_LOCAL,
               rs.CLAIMED_TIME_LOCAL, rs.FILE_NAME, rs.NOTES)
ALIASES = {
    rs.VERDICT: "Verdict",
    rs.PLACE_VERDICT: "Place verdict",
    rs.TIME_VERDICT: "Time verdict",
    rs.PLACE_DIST_KM: "Claim to prediction (km)",
    rs.PLACE_LEVEL: "Place credible level",
    rs.PLACE_EVIDENCE: "Place evidence (x prior)",
    rs.TIME_LEVEL: "Time credible level",
    rs.TIME_EVIDENCE: "Time evidence (x prior)",
    rs.PRED_MONTH: "Predicted month",
    rs.PRED_HOUR_LOCAL: "Predicted hour (local)",
    rs.CLAIMED_TIME_LOCAL: "Claimed time (local)",
    rs.FILE_NAME: "File",
    rs.NOTES: "Notes",
    rs.PATH: "Photo file",
    rs.THUMBNAIL: "Photo",
    rs.TIME_PLOT: "When (month x hour)",
    rs.LIGHT_REGIME: "Light at the claim (sun)",
    rs.SUN_CHECK: "Sun check",
    rs.SUN_ELEV_DEG: "Sun elevation (deg)",
    rs.SUN_AZIMUTH_DEG: "Sun azimuth (deg)",
    rs.SUNRISE_LOCAL: "Sunrise (local)",
    rs.SUNSET_LOCAL: "Sunset (local)",
    rs.SUN_REGIME_MASS: "Model's mass on that light",
    rs.PLACE_SOURCE: "Place claimed in",
    rs.TIME_SOURCE: "Time claimed in",
    rs.UTC_OFFSET_SOURCE: "UTC offset from",
    rs.CLAIMED_TIME_ZONE: "Time zone at the claim",
    rs.SURFACE_RES_DEG: "Surface cell (deg)",
    rs.CLAIMED_LAT_DEG: "Claimed latitude (deg)",
    rs.CLAIMED_LON_DEG: "Claimed longitude (deg)",
    rs.PRED_LAT_DEG: "Predicted latitude (deg)",
    rs.PRED_LON_DEG: "Predicted longitude (deg)",
}
FORM_TABS = (
    ("Photo", (rs.THUMBNAIL, rs.VERDICT, rs.PLACE_VERDICT, rs.TIME_VERDICT, rs.PLACE_DIST_KM, rs.PLACE_LEVEL,
               rs.PLACE_EVIDENCE, rs.TIME_PLOT, rs.TIME_LEVEL, rs.TIME_EVIDENCE, rs.PRED_MONTH, rs.PRED_HOUR_LOCAL,
               rs.CLAIMED_TIME_LOCAL, rs.NOTES)),
    ("Sun and claims", (rs.SUN_CHECK, rs.LIGHT_REGIME, rs.SUN_REGIME_MASS, rs.SUN_ELEV_DEG, rs.SUN_AZIMUTH_DEG,
                        rs.SUNRISE_LOCAL, rs.SUNSET_LOCAL, rs.PLACE_SOURCE, rs.TIME_SOURCE, rs.UTC_OFFSET_SOURCE,
                        rs.CLAIMED_TIME_ZONE)),
    ("Place", (rs.CLAIMED_LAT_DEG, rs.CLAIMED_LON_DEG, rs.PRED_LAT_DEG, rs.PRED_LON_DEG, rs.SURFACE_RES_DEG)),
    ("Files", (rs.PATH, rs.FILE_NAME, rs.RASTER_GLOBAL, rs.RASTER_REGIONAL)),
)
OTHER_TAB = "All fields"
IMAGE_FIELDS = {rs.THUMBNAIL: 240, rs.TIME_PLOT: 130}  # field -> preview height in pixels
LINK_FIELDS = (rs.PATH, rs.RASTER_GLOBAL)
_DOCUMENT_VIEWER_IMAGE, _DOCUMENT_VIEWER_NONE = 1, 0  # QgsExternalResourceWidget.DocumentViewerContent
MAP_TIP_WIDTH_PX = 240
OPEN_PHOTO, OPEN_FOLDER = "Open the photo", "Open the photo's folder"


def file_url_expression(path_expression: str) -> str:
    """A QGIS expression: the file:// URL of a local path (POSIX '/a/b' or Windows 'C:\\a\\b'); NULL stays NULL."""
    return (f"CASE WHEN {path_expression} IS NULL THEN NULL ELSE 'file://' || CASE WHEN left({path_expression}, 1) "
            f"= '/' THEN '' ELSE '/' END || replace({path_expression}, '\\\\', '/') END")


def configure_photo_form(layer: QgsVectorLayer) -> None:
    """Aliases, column order, the tabbed form with image widgets, the map tip and the two actions."""
    names = layer.fields().names()
    for name, alias in ALIASES.items():
        if name in names:
            layer.setFieldAlias(names.index(name), alias)
    _order_columns(layer, names)
    _set_widgets(layer, names)
    _set_form(layer, names)
    layer.setMapTipTemplate(_map_tip(names))
    _set_actions(layer)
    layer.setReadOnly(True)


def _order_columns(layer: QgsVectorLayer, names: list[str]) -> None:
    config = layer.attributeTableConfig()
    columns = config.columns()
    rank = {name: i for i, name in enumerate(FIELD_ORDER)}
    columns.sort(key=lambda c: (rank.get(c.name, len(rank)), names.index(c.name) if c.name in names else 0))
    config.setColumns(columns)
    layer.setAttributeTableConfig(config)


def _set_widgets(layer: QgsVectorLayer, names: list[str]) -> None:
    for name, height_px in IMAGE_FIELDS.items():
        if name in names:
            layer.setEditorWidgetSetup(names.index(name), QgsEditorWidgetSetup("ExternalResource", {
                "DocumentViewer": _DOCUMENT_VIEWER_IMAGE, "DocumentViewerHeight": height_px,
                "DocumentViewerWidth": 0, "FileWidget": False, "FileWidgetButton": False, "UseLink": False,
                "FullUrl": True, "StorageMode": 0, "RelativeStorage": 0}))
    for name in LINK_FIELDS:
        if name in names:
            layer.setEditorWidgetSetup(names.index(name), QgsEditorWidgetSetup("ExternalResource", {
                "DocumentViewer": _DOCUMENT_VIEWER_NONE, "FileWidget": True, "FileWidgetButton": False,
                "UseLink": True, "FullUrl": True, "StorageMode": 0, "RelativeStorage": 0}))


def _set_form(layer: QgsVectorLayer, names: list[str]) -> None:
    config = layer.editFormConfig()
    config.setLayout(QgsEditFormConfig.TabLayout)
    config.clearTabs()
    placed: set[str] = set()
    for title, tab_fields in (*FORM_TABS, (OTHER_TAB, tuple(names))):
        tab = QgsAttributeEditorContainer(title, config.invisibleRootContainer())
        tab.setIsGroupBox(False)
        for name in tab_fields:
            if name in names and name not in placed:
                tab.addChildElement(QgsAttributeEditorField(name, names.index(name), tab))
                placed.add(name)
        if tab.children():
            config.addTab(tab)
    layer.setEditFormConfig(config)


def _map_tip(names: list[str]) -> str:
    picture = (f'[% CASE WHEN "{rs.THUMBNAIL}" IS NOT NULL THEN \'<img src="\' || '
               f'{file_url_expression(chr(34) + rs.THUMBNAIL + chr(34))} || \'" width="{MAP_TIP_WIDTH_PX}"/><br/>\' '
               f"ELSE '' END %]") if rs.THUMBNAIL in names else ""
    distance = (f'[% CASE WHEN "{rs.PLACE_DIST_KM}" IS NOT NULL THEN \'<br/>claim to prediction: \' || '
                f'format_number("{rs.PLACE_DIST_KM}", 0) || \' km\' ELSE \'\' END %]')
    when = (f'[% CASE WHEN "{rs.PRED_MONTH}" IS NOT NULL THEN \'<br/>most likely: month \' || "{rs.PRED_MONTH}" || '
            f'\', \' || format_number("{rs.PRED_HOUR_LOCAL}", 1) || \' h local\' ELSE \'\' END %]')
    return (f'<div style="max-width:{MAP_TIP_WIDTH_PX + 10}px">{picture}<b>[% "{rs.FILE_NAME}" %]</b><br/>'
            f'verdict: <b>[% "{rs.VERDICT}" %]</b>{distance}{when}</div>')


def _set_actions(layer: QgsVectorLayer) -> None:
    manager = layer.actions()
    for action in manager.actions():
        if action.name() in (OPEN_PHOTO, OPEN_FOLDER):
            manager.removeAction(action.id())
    path = f'"{rs.PATH}"'
    for name, expression in ((OPEN_PHOTO, file_url_expression(path)),
                             (OPEN_FOLDER, file_url_expression(f"file_path({path})"))):
        manager.addAction(QgsAction(QgsAction.OpenUrl, name, f"[% {expression} %]", "", False, name,
                                    {"Feature", "Canvas"}))
