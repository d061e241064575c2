"""The shadow locus of a photo in the background: a QgsTask whose run() only talks to the engine (`shadow`,
docs/protocol.md) and whose finished() alone adds the layers, into the photo's own group.

    measurement(...)           one shadow measurement as the engine's fields (time, height_m and length_m or
                               elev_deg, bearing_deg, their sigmas); empty values left out; ValueError on a bad number
    PhotoTarget                the photo a locus is fused with: path, name, its global likelihood raster, the claimed
                               local time, and the layer-tree group its layers live in
    photo_target(layer, feature)   the PhotoTarget of a feature of a gtloc photos layer
    ShadowRequest              EngineClient.shadow's arguments (data); new_shadow_request(target, measurements,
                               settings) one writing a fresh, timestamped folder in the output folder
    ShadowLayers, load_shadow(summary)   the engine's files -> styled layers (rasters; regions and candidates of the
                               locus and of the fused surface)
    ShadowTask                 QgsTask: engine shadow with progress and cancel; on success adds the layers
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qgis.core import Qgis, QgsLayerTreeGroup, QgsProject, QgsRasterLayer, QgsTask, QgsVectorLayer

from . import results_schema as rs
from .engine_client import EngineClient, EngineError
from .layers import (
    KIND_PROPERTY, PHOTO_PATH_PROPERTY, SOURCE_PROPERTY, field_value, style_candidates, style_likelihood,
    style_regions,
)
from .settings import PluginSettings
from .tasks import finish_task

# The engine's names (gtloc_engine/io/shadow_gpkg.py; docs/geopackage.md, "The shadow GeoPackage").
SHADOW_REGIONS_LAYER, SHADOW_CANDIDATES_LAYER = "shadow_regions", "shadow_candidates"
SURFACE_LOCUS, SURFACE_FUSED = "locus", "fused"


def measurement(*, time: str, height_m=None, length_m=None, elev_deg=None, bearing_deg=None, height_sigma_m=None,
                length_sigma_m=None, elev_sigma_deg=None, bearing_sigma_deg=None, time_sigma_min=None,
                what: str = "shadow") -> dict:
    """One measurement for the engine from typed-in values (numbers or text; None or '' = not given). A sigma is sent
    only with its value (the engine refuses a sigma without one). ValueError (one line, naming `what` and the
    field) for text that is not a number."""
    values = {"height_m": height_m, "length_m": length_m, "elev_deg": elev_deg, "bearing_deg": bearing_deg,
              "height_sigma_m": height_sigma_m, "length_sigma_m": length_sigma_m, "elev_sigma_deg": elev_sigma_deg,
              "bearing_sigma_deg": bearing_sigma_deg, "time_sigma_min": time_sigma_min}
    numbers = {name: _number(value, f"{what} {name}") for name, value in values.items()}
    has_shadow = numbers["height_m"] is not None or numbers["length_m"] is not None
    keep = {"height_sigma_m": has_shadow, "length_sigma_m": has_shadow,
            "elev_sigma_deg": numbers["elev_deg"] is not None, "bearing_sigma_deg": numbers["bearing_deg"] is not None}
    out = {"time": str(time or "").strip()}
    out.update({name: value for name, value in numbers.items() if value is not None and keep.get(name, True)})
    return out


def _number(value, what: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return float(str(value).strip())
    except ValueError:
        raise ValueError(f"{what}: {value!r} is not a number") from None


@dataclass
class PhotoTarget:
    path: str
    file_name: str
    raster_global: str | None  # the photo's global likelihood GeoTIFF, when predict wrote one
    claimed_time_local: str | None
    group: QgsLayerTreeGroup | None  # where the photo's layers are: its own sub-group, else its batch's group


def photo_target(layer: QgsVectorLayer, feature, project: QgsProject | None = None) -> PhotoTarget:
    """The PhotoTarget of a feature of a gtloc photos layer (its group found in the project's layer tree)."""
    project = project or QgsProject.instance()
    path = str(field_value(feature, rs.PATH) or "")
    raster = field_value(feature, rs.RASTER_GLOBAL)
    return PhotoTarget(path=path, file_name=str(field_value(feature, rs.FILE_NAME) or Path(path).name),
                       raster_global=raster if isinstance(raster, str) and raster and Path(raster).is_file() else None,
                       claimed_time_local=field_value(feature, rs.CLAIMED_TIME_LOCAL),
                       group=_photo_group(layer, path, project))


def _photo_group(layer: QgsVectorLayer, path: str, project: QgsProject) -> QgsLayerTreeGroup | None:
    node = project.layerTreeRoot().findLayer(layer.id())
    batch = node.parent() if node is not None else None
    if batch is None:
        return None
    for group in batch.findGroups(True):
        if group.customProperty(PHOTO_PATH_PROPERTY) == path:
            return group
    return batch


@dataclass
class ShadowRequest:
    measurements: list[dict]
    out_dir: str
    photo: str | None = None
    model: str | None = None
    posterior: str | None = None  # the photo's global likelihood raster, instead of photo + model
    top_k: int | None = None

    def params(self) -> dict:
        return asdict(self)


def new_shadow_request(target: PhotoTarget, measurements: list[dict], settings: PluginSettings) -> ShadowRequest:
    """A request writing `<output folder>/shadow-<local time>/`, fused with the photo's global likelihood raster
    when predict wrote one (the surface the analyst sees), else with the photo run through the settings' model,
    else the locus alone."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    out_dir = settings.output_folder() / f"shadow-{stamp}"
    if target.raster_global:
        return ShadowRequest(measurements, str(out_dir), posterior=target.raster_global, top_k=settings.top_k)
    if settings.model and target.path:
        return ShadowRequest(measurements, str(out_dir), photo=target.path, model=settings.model,
                             top_k=settings.top_k)
    return ShadowRequest(measurements, str(out_dir), top_k=settings.top_k)


@dataclass
class ShadowLayers:
    locus_raster: QgsRasterLayer
    fused_raster: QgsRasterLayer | None
    regions: dict[str, QgsVectorLayer] = field(default_factory=dict)  # surface -> its credible regions
    candidates: dict[str, QgsVectorLayer] = field(default_factory=dict)

    def all(self) -> list:
        """Top to bottom: the fused surface's points and regions, the locus's regions, the rasters."""
        order = [self.candidates.get(SURFACE_FUSED), self.regions.get(SURFACE_FUSED),
                 self.candidates.get(SURFACE_LOCUS), self.regions.get(SURFACE_LOCUS), self.fused_raster,
                 self.locus_raster]
        return [layer for layer in order if layer is not None]


def load_shadow(summary: dict, photo_path: str | None = None) -> ShadowLayers:
    """The engine's shadow outputs as styled layers; ValueError naming the file when one cannot be read."""
    gpkg = summary["gpkg"]
    fused = summary.get("fused_tif")
    surfaces = [SURFACE_LOCUS] + ([SURFACE_FUSED] if fused else [])
    title = {SURFACE_LOCUS: "shadow locus", SURFACE_FUSED: "shadow x model"}
    regions, candidates = {}, {}
    for surface in surfaces:
        for table, kind, box, style in ((SHADOW_REGIONS_LAYER, "shadow regions", regions, style_regions),
                                        (SHADOW_CANDIDATES_LAYER, "shadow candidates", candidates,
                                         style_candidates)):
            layer = QgsVectorLayer(f"{gpkg}|layername={table}", f"{title[surface]}: "
                                   f"{'credible regions' if box is regions else 'candidates'}", "ogr")
            if not layer.isValid():
                raise ValueError(f"{gpkg} has no readable '{table}' layer: is it a gtloc shadow GeoPackage?")
            layer.setSubsetString(f"\"surface\" = '{surface}'")
            style(layer)
            _tag(layer, kind, gpkg, photo_path)
            box[surface] = layer
    rasters = {}
    for surface, path in ((SURFACE_LOCUS, summary["locus_tif"]), (SURFACE_FUSED, fused)):
        if not path:
            continue
        raster = QgsRasterLayer(path, f"{title[surface]} (likelihood)", "gdal")
        if not raster.isValid():
            raise ValueError(f"{path} cannot be read as a raster: re-run the shadow locus")
        style_likelihood(raster)
        raster.setAbstract("Where the measured shadow could fall" if surface == SURFACE_LOCUS else
                           "Where the photo's place posterior and the measured shadow agree")
        _tag(raster, "shadow likelihood", gpkg, photo_path)
        rasters[surface] = raster
    return ShadowLayers(rasters[SURFACE_LOCUS], rasters.get(SURFACE_FUSED), regions, candidates)


def add_shadow_to_project(layers: ShadowLayers, group: QgsLayerTreeGroup | None, name: str,
                          project: QgsProject | None = None) -> QgsLayerTreeGroup:
    """The layers in a new sub-group `name` at the top of `group` (the photo's; None: the project's root). With a
    fused surface the locus's own raster starts hidden: the fused one is the answer, the locus its evidence."""
    project = project or QgsProject.instance()
    parent = group if group is not None else project.layerTreeRoot()
    sub = parent.insertGroup(0, name)
    for layer in layers.all():
        project.addMapLayer(layer, False)
        node = sub.addLayer(layer)
        if layer is layers.locus_raster and layers.fused_raster is not None:
            node.setItemVisibilityChecked(False)
    return sub


class ShadowTask(QgsTask):
    """One shadow locus in the background; its layers join the photo's group."""

    def __init__(self, client: EngineClient, request: ShadowRequest, target: PhotoTarget, group_name: str,
                 on_done: Callable[[ShadowTask], None] | None = None):
        super().__init__(f"gtloc: {group_name}", QgsTask.CanCancel)
        self.client, self.request, self.target, self.group_name, self.on_done = client, request, target, group_name, \
            on_done
        self.summary: dict | None = None
        self.error: str | None = None
        self.layers: ShadowLayers | None = None
        self.group: QgsLayerTreeGroup | None = None

    def run(self) -> bool:
        try:
            self.summary = self.client.shadow(
                **self.request.params(), is_cancelled=self.isCanceled,
                on_progress=lambda done, total: self.setProgress(100.0 * done / total if total else 0.0))
        except EngineError as exc:
            self.error = str(exc)
            return False
        return True

    def finished(self, ok: bool) -> None:
        def show() -> None:
            self.layers = load_shadow(self.summary, self.target.path or None)
            self.group = add_shadow_to_project(self.layers, self.target.group, self.group_name)

        notes = (self.summary or {}).get("notes", [])
        finish_task(self, ok, show, [(f"{self.group_name}: {note}", Qgis.Info) for note in notes])


def _tag(layer, kind: str, source: str, photo_path: str | None) -> None:
    layer.setCustomProperty(KIND_PROPERTY, kind)
    layer.setCustomProperty(SOURCE_PROPERTY, source)
    if photo_path:
        layer.setCustomProperty(PHOTO_PATH_PROPERTY, photo_path)
