"""The parameters of the engine's methods (info, predict, search, shadow), as data, and their one parser.

`gtloc serve --stdio` (service.py) reads them from JSON requests, `gtloc predict/search/info` (cli.py) builds the
same dict from its options, and the QGIS plugin's client (qgis_plugin/engine_client.py) sends the same names;
docs/protocol.md documents each one and tests/test_protocol_params.py holds the four to this table.

    PARAMS                       method -> its Param rows (name, kind, required, default): the one table
    PREDICT_STAGES               the `stage` values of predict's progress lines, in the order they come
    ParamError                   a parameter of the wrong type or an unknown one (the worker's bad_request)
    read_params(method, params)  type-checked values of every parameter of a method, defaults filled in
    InfoParams, PredictParams, SearchParams, ShadowParams   .from_params(dict): one method's request, validated
    MEASUREMENT_PARAMS           the fields of one shadow measurement (shadow's `measurements` items), as rows
    read_measurement(item)       type-checked fields of one measurement, defaults filled in

This module imports nothing heavy at load time (the worker's hello must come at once), and no engine part imports
it back: inference's classes are imported when a request is parsed, and keep their own validation (e.g. the values
pooling and point_source may take are SearchConfig's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gtloc_engine.errors import GtlocError
from gtloc_engine.io.store import store_target

# predict's progress lines say which stage the request is in (docs/protocol.md, "Progress"). A first request for a
# model loads it and may build its constants (minutes for paper-size encoders on a CPU), then counts photos.
STAGE_LOADING_MODEL, STAGE_CONSTANTS, STAGE_PHOTOS = "loading model", "building model constants", "photos"
PREDICT_STAGES = (STAGE_LOADING_MODEL, STAGE_CONSTANTS, STAGE_PHOTOS)

@dataclass(frozen=True)
class Param:
    """One parameter. kind: path (non-empty string), paths (non-empty list of them), string, count (integer >= 1),
    number, latlon ([lat_deg, lon_deg]), bool, objects (non-empty list of JSON objects). null or absent means
    `default`."""

    name: str
    kind: str
    required: bool = False
    default: Any = None


PARAMS: dict[str, tuple[Param, ...]] = {
    "info": (
        Param("model", "path"),
    ),
    "predict": (
        Param("model", "path", required=True),
        Param("photos", "paths", required=True),
        Param("out_gpkg", "path", required=True),
        Param("rasters_dir", "path"),
        Param("top_k", "count", default=5),
        Param("batch_size", "count", default=16),
        Param("cache_dir", "path"),
        Param("time", "string"),
        Param("res_deg", "number", default=0.25),
        Param("time_gallery", "path"),
        Param("tencrop", "bool", default=False),
    ),
    "search": (
        Param("gpkg", "path", required=True),
        Param("model", "path", required=True),
        Param("near", "latlon"),
        Param("radius_km", "number"),
        Param("month", "string"),
        Param("hour", "string"),
        Param("like", "path"),
        Param("text", "string"),
        Param("within", "path"),
        Param("within_layer", "string"),
        Param("claimed_after", "string"),
        Param("claimed_before", "string"),
        Param("pooling", "string", default="max"),
        Param("point_source", "string", default="point"),
        Param("top_k", "count", default=10),
        Param("out", "path"),
    ),
    "shadow": (
        Param("measurements", "objects", required=True),
        Param("out_dir", "path", required=True),
        Param("photo", "path"),
        Param("model", "path"),
        Param("posterior", "path"),
        Param("res_deg", "number", default=0.25),
        Param("top_k", "count", default=5),
        Param("cache_dir", "path"),
    ),
}
# One shadow measurement (an item of shadow's `measurements`; inference/shadow.py ShadowMeasurement checks the values):
# an object's height and its shadow's length in one unit, or the sun's elevation; the shadow's bearing (clockwise
# from true north); the time, ISO 8601 (with Z or an offset: an instant; without: the local clock at each place).
MEASUREMENT_PARAMS: tuple[Param, ...] = (
    Param("time", "string", required=True),
    Param("time_sigma_min", "number", default=0.0),
    Param("height_m", "number"),
    Param("length_m", "number"),
    Param("height_sigma_m", "number", default=0.0),
    Param("length_sigma_m", "number", default=0.0),
    Param("elev_deg", "number"),
    Param("elev_sigma_deg", "number"),
    Param("bearing_deg", "number"),
    Param("bearing_sigma_deg", "number"),
)


class ParamError(GtlocError):
    """A parameter of the wrong type, a missing required one or an unknown name; the worker answers bad_request."""

    code = "bad_request"


def param(method: str, name: str) -> Param:
    """The row of one parameter (KeyError when the method has none of that name)."""
    for row in PARAMS[method]:
        if row.name == name:
            return row
    raise KeyError(f"{method} has no parameter {name!r}")


def read_params(method: str, params: dict, *, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every parameter of `method` by name, type-checked, null and absent ones set to their default.

    `optional` names required parameters a caller may leave out (the CLI's predict writes JSON without out_gpkg).
    Raises ParamError (one line, naming the parameter) on an unknown name, a wrong type or a missing one."""
    return _read_rows(method, PARAMS[method], params, optional)


def read_measurement(item: dict, what: str = "shadow measurement") -> dict[str, Any]:
    """The fields of one shadow measurement by name (MEASUREMENT_PARAMS), type-checked, defaults filled in;
    ParamError (one line, naming `what` and the field) otherwise."""
    if not isinstance(item, dict):
        raise ParamError(f"{what} must be a JSON object of {', '.join(row.name for row in MEASUREMENT_PARAMS)}")
    return _read_rows(what, MEASUREMENT_PARAMS, item, ())


def _read_rows(method: str, rows: tuple[Param, ...], params: dict, optional: tuple[str, ...]) -> dict[str, Any]:
    unknown = sorted(set(params) - {row.name for row in rows})
    if unknown:
        raise ParamError(f"{method} has no parameter {', '.join(map(repr, unknown))}; it takes "
                         f"{', '.join(row.name for row in rows)} (docs/protocol.md)")
    values = {}
    for row in rows:
        value = params.get(row.name)
        if value is None or (row.kind in ("path", "string") and value == ""):
            if row.required and row.name not in optional:
                raise ParamError(f"{method} needs '{row.name}'" + _expected(row))
            values[row.name] = row.default
        else:
            values[row.name] = _typed(method, row, value)
    return values


@dataclass(frozen=True)
class InfoParams:
    """info: the engine's versions and methods, and a checkpoint's header when `model` is given."""

    model: Path | None = None

    @classmethod
    def from_params(cls, params: dict) -> InfoParams:
        model = read_params("info", params)["model"]
        return cls(Path(model) if model else None)


@dataclass(frozen=True)
class PredictParams:
    """predict: photo files and folders -> a results GeoPackage (PhotoPipeline.run), or JSON from the CLI."""

    model: Path
    photos: tuple[str, ...]
    out_gpkg: Path | str | None  # required by the worker; the CLI writes JSON without it. A PostGIS target is text
    rasters_dir: Path | None = None
    top_k: int = 5
    batch_size: int = 16
    cache_dir: Path | None = None
    time: str | None = None  # a known local capture time: every place is predicted given it (where given when)
    res_deg: float = 0.25  # cell size of the global surface (top-k places, credible regions, global raster)
    time_gallery: Path | None = None  # .npy (N, 5) local times scored instead of the month x hour grid
    tencrop: bool = False

    @classmethod
    def from_params(cls, params: dict, *, json_output: bool = False) -> PredictParams:
        """`json_output`: the CLI's JSON mode, where out_gpkg is absent (and rasters cannot be written)."""
        v = read_params("predict", params, optional=("out_gpkg",) if json_output else ())
        if not (0.0 < v["res_deg"] <= 10.0):
            raise GtlocError(f"res_deg {v['res_deg']} must be a cell size in degrees in (0, 10], e.g. 0.25")
        if v["rasters_dir"] is not None and v["out_gpkg"] is None:
            raise GtlocError("rasters (--rasters, rasters_dir) need a results GeoPackage (--out RESULTS.gpkg, "
                             "out_gpkg): it records where each raster went")
        return cls(model=Path(v["model"]), photos=tuple(v["photos"]), out_gpkg=store_target(v["out_gpkg"]),
                   rasters_dir=_path(v["rasters_dir"]), top_k=v["top_k"], batch_size=v["batch_size"],
                   cache_dir=_path(v["cache_dir"]), time=v["time"], res_deg=v["res_deg"],
                   time_gallery=_path(v["time_gallery"]), tencrop=v["tencrop"])

    def pipeline(self, *, precision: str = "fp32", device=None):
        """The PhotoPipeline these parameters describe (loads the checkpoint onto `device`; None: the process's
        default, gtloc_engine/device.py)."""
        from gtloc_engine.inference.pipeline import PhotoPipeline, PipelineConfig

        time_gallery = None
        if self.time_gallery is not None:
            from gtloc_engine.io.galleries import read_time_gallery

            time_gallery = read_time_gallery(self.time_gallery)
        pipeline = PhotoPipeline(self.model, top_k=self.top_k, cache_dir=self.cache_dir,
                                 config=PipelineConfig(global_res_deg=self.res_deg), time_gallery_fields=time_gallery,
                                 device=device)
        pipeline.model.backbone.set_precision(precision).set_tencrop(self.tencrop)
        return pipeline


@dataclass(frozen=True)
class SearchParams:
    """search: a results GeoPackage, the checkpoint that made its embeddings, the query and its settings, and
    where to write the results (None: only returned)."""

    gpkg: Path | str  # a results GeoPackage, or a PostGIS case's target (text)
    model: Path
    query: Any  # inference.search.SearchQuery
    config: Any  # inference.search.SearchConfig
    out: Path | None = None

    @classmethod
    def from_params(cls, params: dict) -> SearchParams:
        from gtloc_engine.inference.search import SearchConfig, SearchQuery

        v = read_params("search", params)
        if v["out"] is not None and not v["out"].lower().endswith((".json", ".gpkg")):
            raise ParamError(f"out {v['out']} must end in .json or .gpkg")
        return cls(gpkg=store_target(v["gpkg"]), model=Path(v["model"]), query=SearchQuery.from_params(v),
                   config=SearchConfig.from_params(v), out=_path(v["out"]))


@dataclass(frozen=True)
class ShadowParams:
    """shadow: measurements -> the shadow locus (and, with a photo's place posterior, the fused surface) as GeoTIFFs
    and a GeoPackage in out_dir (inference/shadow.py). The posterior is a photo with the checkpoint to run on it, or
    a global likelihood GeoTIFF from predict's rasters; the locus then takes its grid."""

    measurements: tuple  # inference.shadow.ShadowMeasurement, validated
    out_dir: Path
    photo: Path | None = None
    model: Path | None = None
    posterior: Path | None = None
    res_deg: float = 0.25
    top_k: int = 5
    cache_dir: Path | None = None
    res_deg_given: bool = False  # a res_deg of the caller's own must match a posterior raster's grid

    @classmethod
    def from_params(cls, params: dict) -> ShadowParams:
        from gtloc_engine.inference.shadow import ShadowMeasurement

        v = read_params("shadow", params)
        items = v["measurements"]
        measurements = []
        for i, item in enumerate(items, 1):
            what = "shadow measurement" if len(items) == 1 else f"shadow measurement {i}"
            try:
                measurements.append(ShadowMeasurement.validated(**read_measurement(item, what)))
            except ParamError:
                raise
            except GtlocError as exc:
                raise GtlocError(str(exc).replace("shadow measurement", what, 1)) from None
        if (v["photo"] is None) != (v["model"] is None):
            raise GtlocError("a photo's place posterior needs both photo and model (the checkpoint to run on it)")
        if v["posterior"] is not None and v["photo"] is not None:
            raise GtlocError("give the photo's posterior once: photo and model, or posterior (a global likelihood "
                             "GeoTIFF from predict's rasters), not both")
        if not (0.0 < v["res_deg"] <= 10.0):
            raise GtlocError(f"res_deg {v['res_deg']} must be a cell size in degrees in (0, 10], e.g. 0.25")
        return cls(measurements=tuple(measurements), out_dir=Path(v["out_dir"]), photo=_path(v["photo"]),
                   model=_path(v["model"]), posterior=_path(v["posterior"]), res_deg=v["res_deg"],
                   top_k=v["top_k"], cache_dir=_path(v["cache_dir"]), res_deg_given=params.get("res_deg") is not None)

    def run(self, *, progress=None, cancel=None, predictor=None) -> dict:
        """Compute and write the outputs (inference.shadow.shadow_to_files); returns the JSON summary."""
        from gtloc_engine.inference.shadow import ShadowConfig, shadow_to_files

        return shadow_to_files(self.measurements, self.out_dir, config=ShadowConfig(res_deg=self.res_deg,
                                                                                    top_k=self.top_k),
                               photo=self.photo, model=self.model, posterior_tif=self.posterior,
                               res_deg_given=self.res_deg_given, cache_dir=self.cache_dir, progress=progress,
                               cancel=cancel, predictor=predictor)


# ---------------------------------------------------------------------------------------------- helpers

_EXPECTED = {"path": "a file path (a non-empty string)", "paths": "a non-empty list of file or folder paths",
             "string": "a string", "count": "a positive integer", "number": "a number",
             "latlon": "[lat_deg, lon_deg]", "bool": "true or false", "objects": "a non-empty list of JSON objects"}


def _expected(row: Param) -> str:
    return f": {_EXPECTED[row.kind]}"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _typed(method: str, row: Param, value):
    ok = {
        "path": lambda v: isinstance(v, str),
        "string": lambda v: isinstance(v, str),
        "paths": lambda v: isinstance(v, (list, tuple)) and v and all(isinstance(p, str) and p for p in v),
        "count": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "number": _is_number,
        "latlon": lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_is_number, v)),
        "bool": lambda v: isinstance(v, bool),
        "objects": lambda v: isinstance(v, (list, tuple)) and v and all(isinstance(item, dict) for item in v),
    }[row.kind](value)
    if not ok:
        raise ParamError(f"'{row.name}' of {method} must be{_expected(row)[1:]}, got {value!r}")
    if row.kind == "number":
        return float(value)
    if row.kind == "latlon":
        return float(value[0]), float(value[1])
    if row.kind in ("paths", "objects"):
        return list(value)
    return value


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)
