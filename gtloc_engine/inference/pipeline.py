"""Photos -> results GeoPackage (or PostGIS case): the one pipeline behind `gtloc predict --out X.gpkg` and the QGIS
worker; gtloc_engine/cluster.py runs it on chunks of photos across a Dask cluster.

For each photo: sha256, EXIF claims, image embedding (decoded on worker threads, backbone run in batches),
location posterior (top-k candidates, global surface, credible regions, optional GeoTIFFs), time posterior
(conditioned on the claimed place when there is one), claim check and verdict, the sun at the claimed place and time
and its check against the time posterior (inference/sun_check.py); one row per photo path. The claim check scores
a claimed place at the point itself on the model's cached grid (SurfaceMaker.score_place), so its level, evidence
and verdict are the same at every global_res_deg (recorded as surface_res_deg). Into a GeoPackage, each photo also
gets a thumbnail and a time-posterior plot in `<case>_thumbs/` beside it (io/thumbnails.py; a thumbnail, named by
the photo's bytes, is reused when it exists). GeoTIFFs (`rasters_dir`) are written on a background thread while the
next photo is computed; the batch waits for them before its commit, and a photo whose file could not be written is
recorded as a failure instead of a row naming a missing file.

Where given when: with `given_time` (a known local capture time, e.g. when the photo was posted), every photo's
location surface is that of the it2g head, the fused image + time query normalize(image + time_emb(t)) against
places, instead of the image alone (img_gps); `place_given` and `given_time_local` say so in each row.

Resume: a path whose bytes (sha256) already have results from this checkpoint (model_sha256 = the checkpoint
file's sha256) is skipped; a duplicate file (same bytes, another path) copies the finished results instead of
recomputing; a path whose bytes or model changed is recomputed and its old rows are replaced; failures are
retried and leave `failures` when they succeed. Each batch's rows are committed to the GeoPackage in one
transaction as soon as the batch is done (io/geopackage.py), so a cancel, crash or kill keeps every finished batch.

map_time_local (for QGIS's Temporal Controller) is the claimed local time, else the predicted month position and
hour placed in the reference year 2001 (not a leap year: its 365 days match the paper's 365/12-day months);
map_time is that time in UTC where the photo's UTC offset is known (claimed_utc_offset_min: its own, or the claimed
place's zone's; utc_offset_source says which), else null.

Public surface:
    PipelineConfig        verdict thresholds, surface, region, raster and sun-check settings (data)
    PredictSummary        what a run did; .to_json()
    PhotoPipeline         loads the checkpoint once; .run(photos, out_gpkg, ...) -> PredictSummary
    StageProfile          wall seconds per stage of a run (set PhotoPipeline.profile; off by default, no cost off)
    predict_to_geopackage PhotoPipeline(model_path, ...).run(photos, out_gpkg, ...)
"""

from __future__ import annotations

import calendar
import contextlib
import datetime as dt
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from shapely.geometry import Point

from gtloc_engine.errors import BadPhotoError, GtlocError
from gtloc_engine.inference.claims import (TIME_GIVEN_IMAGE, TIME_GIVEN_PLACE, VerdictThresholds, grid_credible_levels,
                                           verify_claims)
from gtloc_engine.inference.predictor import HOUR_BINS, IT2G_UNTRAINED_NOTE, MONTH_BINS, Predictor, TimeEstimate
from gtloc_engine.inference.regions import RegionConfig, credible_regions
from gtloc_engine.inference.sun_check import SunCheckConfig, check_sun
from gtloc_engine.io.batches import iter_pixel_batches
from gtloc_engine.io.exif import ExifClaims, read_exif_claims
from gtloc_engine.io.geopackage import PHOTO_FIELDS
from gtloc_engine.io.photos import check_photo_file, file_sha256, iter_photo_paths
from gtloc_engine.io.thumbnails import thumbnails_dir, write_thumbnail, write_time_plot
from gtloc_engine.io.store import Store, open_store
from gtloc_engine.io.results_schema import (MAP_TIME_CLAIM, MAP_TIME_PREDICTION, MAP_TIME_REFERENCE_YEAR,
                                            utc_datetime_text)
from gtloc_engine.model.checkpoint import load_checkpoint
from gtloc_engine.device import host, synchronize
from gtloc_engine.timecode import DAYS_PER_MONTH, TimeLike, parse_time

log = logging.getLogger(__name__)

_SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class PipelineConfig:
    """Knobs of a prediction run that are not per call."""

    thresholds: VerdictThresholds = field(default_factory=VerdictThresholds)
    global_res_deg: float = 0.25  # global surface cell size
    credible_levels: tuple[float, ...] = (0.5, 0.9)
    regional_modes: int = 3  # regional surfaces (rasters only) around the global surface's strongest modes
    regional_cell_km: float = 1.0
    regions: RegionConfig = field(default_factory=RegionConfig)  # at most max_polygons polygons per level
    sun: SunCheckConfig = field(default_factory=SunCheckConfig)  # when a claim's light regime disagrees
    overlap_forward: bool = True  # the next batch's backbone forward while this batch's geodata is computed


@dataclass
class PredictSummary:
    """What one run did: photos seen, newly done (computed or copied from a duplicate), skipped, failed."""

    out_gpkg: Path | str  # the results GeoPackage, or the PostGIS case's target (io/store.py)
    n_photos: int = 0
    n_done: int = 0
    n_skipped: int = 0
    n_failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    rasters: list[str] = field(default_factory=list)
    cancelled: bool = False

    def to_json(self) -> dict:
        return {"out_gpkg": str(self.out_gpkg), "n_photos": self.n_photos, "n_done": self.n_done,
                "n_skipped": self.n_skipped, "n_failed": self.n_failed,
                "failures": [{"path": p, "reason": r} for p, r in self.failures], "rasters": list(self.rasters),
                "cancelled": self.cancelled}


class StageProfile:
    """Wall seconds and calls per named stage of PhotoPipeline.run, summed over the runs it is attached to
    (bench/bench_analyst_path.py). Stages nest: 'regional_surfaces' runs inside 'rasters', for example."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + 1

    def timed(self, items: Iterable, name: str) -> Iterator:
        """The items of an iterator, the wait for each one counted as `name` (e.g. decoding on worker threads)."""
        it = iter(items)
        while True:
            with self.stage(name):
                item = next(it, _END)
            if item is _END:
                return
            yield item


_END = object()
_NO_STAGE = contextlib.nullcontext()  # reusable: what PhotoPipeline._stage returns when no profile is attached


@dataclass
class _Photo:
    key: str  # absolute path: the row key, stable across working directories
    path: Path
    sha256: str = ""


class PhotoPipeline:
    """Loads a checkpoint once and turns photo folders into results GeoPackages; reusable across runs."""

    def __init__(self, model_path: str | os.PathLike, *, top_k: int = 5, cache_dir: str | os.PathLike | None = None,
                 config: PipelineConfig = PipelineConfig(), time_gallery_fields: np.ndarray | None = None,
                 device: str | torch.device | None = None):
        """`time_gallery_fields`: (T, 5) local times to score instead of the uniform month x hour grid (Predictor).
        `device`: where the model computes, 'auto', 'cpu', 'cuda[:N]' or a torch.device; None: the process's default
        (gtloc_engine/device.py)."""
        if top_k < 1:
            raise GtlocError(f"top_k must be at least 1, got {top_k}")
        self.model_path = Path(model_path)
        self.model = load_checkpoint(self.model_path, device=device)
        self.model_sha256 = file_sha256(self.model_path)
        self.top_k = top_k
        self.cache_dir = cache_dir
        self.config = config
        self.heads = dict(self.model.heads_trained)
        if not (self.heads.get("location") or self.heads.get("time")):
            raise GtlocError(f"checkpoint {self.model_path} has neither a trained location head nor a trained "
                             "time head; train one first")
        # Only the time grid: places come from surfaces, so an empty gallery spares encoding (or loading) the
        # model's own (100K places for imported GeoCLIP, ~45 s the first time, 200 MB in memory).
        self.predictor = Predictor(self.model, gallery_latlon_deg=np.empty((0, 2)), cache_dir=cache_dir,
                                   time_gallery_fields=time_gallery_fields, global_res_deg=config.global_res_deg)
        self._given: tuple[str, torch.Tensor] | None = None  # the known time of the current run (where given when)
        self._writes: _RasterWrites | None = None  # the current run's background GeoTIFF writes (with rasters)
        self.profile: StageProfile | None = None  # per-stage wall seconds (bench); None: not measured

    def _stage(self, name: str):
        return _NO_STAGE if self.profile is None else self.profile.stage(name)

    def _lap(self, name: str, t0: float) -> float:
        """Counts the seconds since t0 as the stage `name` (for stages too long to indent under _stage); now."""
        if self.profile is None:
            return 0.0
        now = time.perf_counter()
        self.profile.add(name, now - t0)
        return now

    @property
    def surface_maker(self):
        """The predictor's (built on first use: its grid constants are only needed for places)."""
        return self.predictor.surface_maker

    def warm_up(self) -> None:
        """Build (or read from the cache) every model constant a run needs, now rather than inside the first photo:
        callers wrap it in constants.reporting() to say what a first run of a new model waits for."""
        if self.heads.get("location"):
            self.surface_maker  # noqa: B018  (the property builds the grid constants)

    def run(self, photos: Sequence[str | os.PathLike], out_gpkg: str | os.PathLike, *,
            rasters_dir: str | os.PathLike | None = None, batch_size: int = 16, workers: int = 2,
            progress: Callable[[int, int], None] | None = None,
            cancel: threading.Event | None = None, given_time: TimeLike | None = None) -> PredictSummary:
        """Predict every photo (files or folders) into `out_gpkg`, resuming what it already holds.

        `given_time`: a known local capture time (ISO 8601, EXIF or LocalTime) shared by the photos: their places
        are predicted given it (where given when). Results made without it, or with another, are recomputed."""
        self._given = self._given_time_query(given_time)
        rasters = Path(rasters_dir) if rasters_dir is not None else None
        # Our own GeoTIFFs are .tif files too: a rasters folder inside the photo folder must not feed itself.
        paths = [p for p in iter_photo_paths(photos) if rasters is None or not _is_inside(p, rasters)]
        if not paths:
            raise GtlocError(f"no photos found in {' '.join(map(str, photos))}; pass photo files or folders")
        store = open_store(out_gpkg)  # a results GeoPackage or a PostGIS case (io/store.py)
        try:
            return self._run(store, paths, rasters, batch_size, workers, progress, cancel)
        finally:
            store.close()  # commits what the last batch left, also on cancel or an exception

    def _run(self, store: Store, paths: list[Path], rasters: Path | None, batch_size: int, workers: int,
             progress: Callable[[int, int], None] | None, cancel: threading.Event | None) -> PredictSummary:
        summary = PredictSummary(out_gpkg=store.path, n_photos=len(paths))
        tick = _Ticker(len(paths), progress)

        todo: dict[str, list[_Photo]] = {}  # sha256 -> every path with these bytes, in input order
        given_iso = self._given[0] if self._given else None
        # Results drawn at another cell size are redrawn (a model without places records none: None matches them).
        res_deg = self.config.global_res_deg if self.heads.get("location") else None
        for photo, error in self._hash_all(paths, workers):
            if error is not None:
                self._fail(store, summary, [photo], error)
            elif store.done(photo.key, photo.sha256, self.model_sha256, given_iso, res_deg):  # one indexed lookup
                summary.n_skipped += 1
            elif (source := store.finished_source(photo.sha256, self.model_sha256, given_iso, res_deg)) is not None:
                store.copy_results(source, photo.key, photo.path.name)  # same bytes done under another path
                summary.n_done += 1
            else:
                todo.setdefault(photo.sha256, []).append(photo)
                continue
            tick(1)
        store.commit()

        groups = list(todo.values())
        backbone = self.model.backbone
        batches = iter_pixel_batches([group[0].path for group in groups], backbone.preprocess, batch_size=batch_size,
                                     workers=workers, draft_px=backbone.image_size)
        self._writes = _RasterWrites(self.profile) if rasters is not None else None
        embedded = self._embedded(batches if self.profile is None else self.profile.timed(batches, "decode"))
        try:
            for batch, emb in embedded:
                for i, reason in batch.failures:
                    self._fail(store, summary, groups[i], reason)
                if emb is not None:
                    for i, image_emb in zip(batch.indices, emb):
                        try:
                            self._analyse(store, summary, groups[i], image_emb, rasters)
                        except GtlocError as exc:  # e.g. a surface that cannot be drawn: this photo only
                            if self._writes is not None:
                                self._writes.discard(groups[i])
                            self._fail(store, summary, groups[i], str(exc))
                if self._writes is not None:
                    with self._stage("raster_wait"):  # the batch's GeoTIFFs, written while it went on
                        for group, reason in self._writes.settle(summary):
                            summary.n_done -= len(group)  # its rows were set: the failure replaces them
                            self._fail(store, summary, group, reason)
                n_finished = sum(len(groups[i]) for i in [*batch.indices, *(j for j, _ in batch.failures)])
                with self._stage("gpkg_write"):
                    store.commit()  # one transaction per batch, before the progress report: "n done" can be read
                tick(n_finished)
                if cancel is not None and cancel.is_set():
                    summary.cancelled = True
                    log.info("cancelled: writing the %d photos finished so far", summary.n_done)
                    break
        finally:
            embedded.close()  # waits for a forward under way
            batches.close()  # stops the decoding threads now, also on cancel or an exception
            if self._writes is not None:
                self._writes.close()  # waits for writes under way: no half-written temp file is left behind
                self._writes = None
        return summary

    # ------------------------------------------------------------------------------------------ steps

    def _embedded(self, batches: Iterable) -> Iterator[tuple[object, np.ndarray | None]]:
        """(batch, image embeddings or None) in order. With config.overlap_forward, the next batch is decoded and
        run through the backbone on a thread while the caller analyses this one (one batch ahead, no more), so a
        run takes about the slower of the two stages per batch rather than their sum."""
        it = iter(batches)

        def step():
            batch = next(it, _END)
            return batch if batch is _END else (batch, self._embed(batch.pixels))

        if not self.config.overlap_forward:
            while (item := step()) is not _END:
                yield item
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gtloc-forward") as pool:
            ahead = pool.submit(step)
            while (item := ahead.result()) is not _END:
                ahead = pool.submit(step)  # the forward of the next batch, while this one is analysed
                yield item

    def _embed(self, pixels: torch.Tensor | None) -> np.ndarray | None:
        if pixels is None:
            return None
        with torch.no_grad():  # per thread: the forward may run on the look-ahead thread
            if self.profile is None or pixels.ndim != 4:
                return host(self.model.embed_images(pixels))
            with self.profile.stage("forward"):  # embed_images in its two steps, timed apart
                features = self.model.image_features(pixels)
                synchronize(features.device)  # a GPU runs asynchronously: the stage ends when its work does
            with self.profile.stage("adapter"):
                return host(self.model.embed_features(features))

    def _given_time_query(self, given_time: TimeLike | None) -> tuple[str, torch.Tensor] | None:
        """(local ISO string, unit time embedding) of a known capture time, or None; refused without the heads."""
        if given_time is None:
            return None
        return parse_time(given_time).isoformat(), self.predictor.given_time_embedding(given_time)

    def _hash_all(self, paths: list[Path], workers: int):
        """(photo, None) or (photo, one-line reason), in input order; hashing is I/O, so it runs on threads."""
        def job(path: Path) -> tuple[_Photo, str | None]:
            photo = _Photo(os.path.abspath(path), path)
            try:
                check_photo_file(path)  # a clearer message than the hash's own for missing/empty/unreadable
                photo.sha256 = file_sha256(path)
            except BadPhotoError as exc:
                return photo, str(exc)
            return photo, None

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            yield from pool.map(job, paths)

    def _fail(self, store: Store, summary: PredictSummary, group: list[_Photo], reason: str) -> None:
        for photo in group:
            log.error("error: %s", reason)
            store.set_failure(photo.key, reason)
            summary.failures.append((photo.key, reason))
            summary.n_failed += 1

    def _analyse(self, store: Store, summary: PredictSummary, group: list[_Photo], image_emb: np.ndarray,
                 rasters_dir: Path | None) -> None:
        """Posteriors, claim check, rasters for one photo's bytes; rows for every path that holds them."""
        first = group[0]
        try:
            claims = read_exif_claims(first.path)
        except BadPhotoError as exc:  # the file vanished between decoding and now
            self._fail(store, summary, group, str(exc))
            return
        notes = list(claims.notes)
        row: dict = dict.fromkeys(PHOTO_FIELDS)
        row.update(sha256=first.sha256, model_sha256=self.model_sha256,
                   processed_at_utc=dt.datetime.now(dt.UTC).isoformat())
        _put_claims(row, claims)
        candidates, regions, place_score, top_latlon = [], [], None, None

        if self.heads.get("location"):
            given_emb = None
            row["place_given"] = "image"
            if self._given is not None:  # where given when: the fused image + time query (it2g)
                row.update(place_given="image+time", given_time_local=self._given[0])
                if not self.heads.get("it2g"):
                    notes.append(IT2G_UNTRAINED_NOTE)
                given_emb = self._given[1]
            # The one definition of a photo's places (Predictor.place_candidates, as the JSON output): the surface's
            # modes, far enough apart to be different places on the map, each with the mass within radius_km.
            place_query, head = self.predictor.place_query(image_emb, given_emb)
            with self._stage("global_surface_candidates"):
                surface, modes = self.predictor.place_candidates(image_emb, self.top_k, given_emb)
            for mode in modes:
                candidates.append({"sha256": first.sha256, "rank": mode.rank, "probability": mode.probability,
                                   "radius_km": mode.radius_km, "lat_deg": mode.lat_deg, "lon_deg": mode.lon_deg,
                                   "geometry": Point(mode.lon_deg, mode.lat_deg)})
            top_latlon = (candidates[0]["lat_deg"], candidates[0]["lon_deg"])
            row.update(pred_lat_deg=top_latlon[0], pred_lon_deg=top_latlon[1], top1_prob=candidates[0]["probability"])
            with self._stage("regions"):
                drawn = credible_regions(surface, levels=self.config.credible_levels, config=self.config.regions)
            for region in drawn:
                regions.append({"sha256": first.sha256, "level": float(region.level),
                                "area_km2": float(region.area_km2), "mass": float(region.mass),
                                "geometry": region.geometry})
            row["surface_res_deg"] = surface.res_deg
            if claims.has_place:  # on the model's cached grid, the claimed point itself: the same at every res_deg
                with self._stage("claim_place_score"):
                    place_score = self.surface_maker.score_place(place_query, claims.lat_deg, claims.lon_deg,
                                                                 head=head,
                                                                 region_level=self.config.thresholds.consistent_below)
            if rasters_dir is not None:
                with self._stage("rasters"):
                    self._write_rasters(row, group, surface, place_query, head, first, rasters_dir)
        else:
            notes.append("location head not trained: no place prediction")

        grid = estimate = None
        t0 = time.perf_counter() if self.profile is not None else 0.0
        if self.heads.get("time"):
            if claims.has_place and self.heads.get("location"):
                grid = self.predictor.time_posterior_given_place(image_emb[None], [[claims.lat_deg, claims.lon_deg]])
                row["time_given"] = TIME_GIVEN_PLACE
                # Kept beside it so an analyst can see what the pixels alone say (the QGIS time dock shows both).
                row["time_posterior_image"] = _coarse_time_json(self.predictor.time_posterior(image_emb[None])[0])
            else:
                grid = self.predictor.time_posterior(image_emb[None])
                row["time_given"] = TIME_GIVEN_IMAGE
            grid = grid[0]
            estimate = self.predictor.estimate_time(grid)
            _put_time(row, estimate)
        else:
            notes.append("time head not trained: no time prediction")
        t0 = self._lap("time_posterior", t0)

        report = verify_claims(claims, place=place_score, pred_latlon_deg=top_latlon, time_grid=grid,
                               time_estimate=estimate, heads_trained=self.heads, thresholds=self.config.thresholds)
        row.update({name: getattr(report, name) for name in (
            "place_level", "place_evidence", "place_dist_km", "place_in_90", "place_verdict", "time_level",
            "time_evidence", "claim_month_err", "claim_hour_err", "time_verdict", "verdict")})
        notes += report.notes
        self._lap("claims", t0)
        with self._stage("sun_check"):  # the sun at the claimed place and time vs the time posterior
            sun = check_sun(claims, grid, self.config.sun)
        row.update(sun.fields())
        notes += sun.notes
        if isinstance(store.path, Path):  # a GeoPackage: pictures for the QGIS form go beside it
            with self._stage("thumbnails"):
                notes += self._write_pictures(row, thumbnails_dir(store.path), first, claims, estimate)
        row["notes"] = "; ".join(notes) or None
        if claims.has_place:
            row.update(point_source="claim", geometry=Point(claims.lon_deg, claims.lat_deg))
        elif top_latlon is not None:
            row.update(point_source="prediction", geometry=Point(top_latlon[1], top_latlon[0]))
        _put_map_time(row, claims, estimate)

        with self._stage("gpkg_write"):
            store.set_embedding(first.sha256, self.model_sha256, image_emb)
            for photo in group:
                keyed = {"path": photo.key}
                store.set_results(photo.key, {**row, **keyed, "file_name": photo.path.name},
                                  [{**c, **keyed} for c in candidates], [{**r, **keyed} for r in regions])
                summary.n_done += 1

    def _write_pictures(self, row: dict, folder: Path, photo: _Photo, claims: ExifClaims,
                        estimate: TimeEstimate | None) -> list[str]:
        """The thumbnail (reused: it depends on the bytes alone) and the time plot (rewritten: it depends on the
        model) into row['thumbnail'] / row['time_plot']; notes for what could not be written (the results stand)."""
        notes = []
        try:
            row["thumbnail"] = str(write_thumbnail(photo.path, folder / f"{photo.sha256}.jpg"))
        except (BadPhotoError, OSError) as exc:
            notes.append(f"thumbnail not written ({exc})")
        if estimate is not None:
            claim = None
            if claims.has_time:
                claimed = parse_time(claims.local_datetime)
                claim = (claimed.month_pos, claimed.hour_local)
            try:
                # The 12 x 24 grid of the time_posterior field (less speckled than 48 x 48), shaded by credible level.
                shade = 1.0 - grid_credible_levels(_coarse_time_grid(estimate.grid))
                row["time_plot"] = str(write_time_plot(
                    folder / f"{photo.sha256}_{self.model_sha256[:12]}_time.png", shade, claim,
                    (estimate.month_pos, estimate.hour_local), _time_plot_caption(row, claims, estimate)))
            except OSError as exc:
                notes.append(f"time plot not written ({exc})")
        return notes

    def _write_rasters(self, row: dict, group: list[_Photo], surface, place_query: np.ndarray, head: str,
                       photo: _Photo, rasters_dir: Path) -> None:
        """The photo's regional surfaces, and its GeoTIFFs handed to the background writer (_RasterWrites); the
        row names the files, which the batch's settle() confirms or turns into the photo's failure."""
        stem = f"{_SAFE_NAME_RE.sub('_', photo.path.stem)[:40]}_{photo.sha256[:12]}_{self.model_sha256[:8]}"
        tags = {"photo_sha256": photo.sha256, "model_sha256": self.model_sha256}
        global_path = rasters_dir / f"{stem}_global.tif"
        writes = self._writes
        writes.submit(group, "raster_global_write", [(global_path, surface)], tags)  # compresses while we go on
        with self._stage("regional_surfaces"):
            regionals = self.surface_maker.regional_surfaces(
                place_query, surface, n_modes=self.config.regional_modes, cell_km=self.config.regional_cell_km,
                head=head)
        regional_paths = [rasters_dir / f"{stem}_regional_{k}.tif" for k in range(1, len(regionals) + 1)]
        writes.submit(group, "raster_regional_write", list(zip(regional_paths, regionals)), tags)
        row["raster_global"] = str(global_path)
        row["raster_regional"] = json.dumps([str(p) for p in regional_paths]) if regional_paths else None


# ---------------------------------------------------------------------------------------------- row fields


def _put_claims(row: dict, claims: ExifClaims) -> None:
    if claims.has_place:
        row.update(claimed_lat_deg=claims.lat_deg, claimed_lon_deg=claims.lon_deg)
    if claims.has_time:
        row["claimed_time_local"] = claims.local_datetime.isoformat()
    row["claimed_utc_offset_min"] = claims.utc_offset_min
    row.update(place_source=claims.place_source, time_source=claims.time_source,
               utc_offset_source=claims.utc_offset_source, claimed_time_zone=claims.time_zone)


def _time_plot_caption(row: dict, claims: ExifClaims, estimate: TimeEstimate) -> str:
    """Two lines: what the posterior is given (and the time verdict), then the most likely and the claimed time."""
    given = "given the claimed place" if row.get("time_given") == TIME_GIVEN_PLACE else "from the image alone"
    if row.get("time_verdict"):
        given += f": {row['time_verdict']}"
    most_likely = f"x likeliest {_month_hour_text(estimate.month_pos, estimate.hour_local)}"
    if not claims.has_time:
        return f"{given}\n{most_likely}   no time claimed"
    claimed = parse_time(claims.local_datetime)
    return f"{given}\n{most_likely}   o claim {_month_hour_text(claimed.month_pos, claimed.hour_local)}"


def _month_hour_text(month_pos: float, hour_local: float) -> str:
    minutes = int(hour_local * 60) % (24 * 60)
    return f"{calendar.month_abbr[int(month_pos) % 12 + 1]} {minutes // 60:02d}:{minutes % 60:02d}"


def _coarse_time_grid(grid: np.ndarray) -> np.ndarray:
    """48 x 48 month x hour bins summed to 12 months x 24 hours."""
    return np.asarray(grid).reshape(12, MONTH_BINS // 12, 24, HOUR_BINS // 24).sum(axis=(1, 3))


def _coarse_time_json(grid: np.ndarray) -> str:
    """A month x hour posterior as the JSON field: 12 months x 24 hours (_coarse_time_grid), small enough for a
    JSON field, fine enough for a chart."""
    return json.dumps(np.round(_coarse_time_grid(grid), 6).tolist(), separators=(",", ":"))


def _put_time(row: dict, estimate: TimeEstimate) -> None:
    row.update(pred_month=int(estimate.month_pos) + 1, pred_month_pos=estimate.month_pos,
               pred_hour_local=estimate.hour_local, month_spread=estimate.month_spread,
               hour_spread=estimate.hour_spread, time_posterior=_coarse_time_json(estimate.grid))


def _put_map_time(row: dict, claims: ExifClaims, estimate: TimeEstimate | None) -> None:
    """map_time_local: the local wall clock (claimed, else predicted in the reference year); map_time: it in UTC
    (a GeoPackage DATETIME) where the UTC offset is known, else null."""
    if claims.has_time:
        local, source = claims.local_datetime.replace(microsecond=0), MAP_TIME_CLAIM
    elif estimate is not None:
        # The day the month position falls on, at the predicted local hour (whole minutes).
        day = dt.datetime(MAP_TIME_REFERENCE_YEAR, 1, 1) + dt.timedelta(days=int(estimate.month_pos * DAYS_PER_MONTH))
        local = day + dt.timedelta(minutes=min(round(estimate.hour_local * 60), 24 * 60 - 1))
        source = MAP_TIME_PREDICTION
    else:
        return
    row.update(map_time_local=local.isoformat(), map_time_source=source)
    if claims.utc_offset_min is not None:
        row["map_time"] = utc_datetime_text(local - dt.timedelta(minutes=claims.utc_offset_min))


# ---------------------------------------------------------------------------------------------- run helpers


class _RasterWrites:
    """A run's GeoTIFF writes on one background thread: GDAL compresses with the GIL released, so a photo's COGs
    are written while the next photo's surfaces are computed. The batch calls settle() before its commit: every
    write of the batch is then finished, and a photo whose file could not be written is returned, to become a
    failure instead of a row that names a missing file. Memory is bounded by one batch's surfaces."""

    def __init__(self, profile: StageProfile | None):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gtloc-rasters")
        self._pending: list[tuple[list[_Photo], list[Path], object]] = []
        self._discarded: set[int] = set()  # id() of groups that failed on the main thread
        self._profile = profile

    def submit(self, group: list[_Photo], stage: str, files: list[tuple[Path, object]], tags: dict) -> None:
        self._pending.append((group, [path for path, _ in files], self._pool.submit(self._write, stage, files, tags)))

    def _write(self, stage: str, files: list[tuple[Path, object]], tags: dict) -> None:
        from gtloc_engine.io.rasters import write_surface_geotiff

        t0 = time.perf_counter()
        try:
            for path, surface in files:
                try:
                    write_surface_geotiff(path, surface, tags=tags)
                except OSError as exc:  # disk full, no permission, a folder in the way
                    raise GtlocError(f"GeoTIFF {path} could not be written ({exc}); free disk space or choose "
                                     "another rasters folder") from exc
        finally:
            if self._profile is not None:
                self._profile.add(stage, time.perf_counter() - t0)

    def discard(self, group: list[_Photo]) -> None:
        """The photo failed after handing over its files: they are still written, but neither listed nor checked."""
        self._discarded.add(id(group))

    def settle(self, summary: PredictSummary) -> list[tuple[list[_Photo], str]]:
        """Wait for the submitted writes; (group, reason) for each photo whose files could not all be written.
        The files of the others go into summary.rasters."""
        failed: dict[int, tuple[list[_Photo], str]] = {}
        written: dict[int, list[str]] = {}
        for group, paths, future in self._pending:
            try:
                future.result()
                written.setdefault(id(group), []).extend(map(str, paths))
            except GtlocError as exc:
                failed.setdefault(id(group), (group, str(exc)))
        for key, paths in written.items():
            if key not in failed and key not in self._discarded:
                summary.rasters += paths
        self._pending.clear()
        failures = [failure for key, failure in failed.items() if key not in self._discarded]
        self._discarded.clear()
        return failures

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class _Ticker:
    """Counts finished photos and reports (done, total) to the caller's progress callback."""

    def __init__(self, total: int, progress: Callable[[int, int], None] | None):
        self.total, self.done, self.progress = total, 0, progress

    def __call__(self, n: int) -> None:
        self.done += n
        if self.progress is not None and n:
            self.progress(self.done, self.total)


def _is_inside(path: Path, folder: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def predict_to_geopackage(model_path: str | os.PathLike, photos: Sequence[str | os.PathLike],
                          out_gpkg: str | os.PathLike, *, top_k: int = 5, cache_dir: str | os.PathLike | None = None,
                          config: PipelineConfig = PipelineConfig(), **run_kwargs) -> PredictSummary:
    """One-shot: PhotoPipeline(model_path, ...).run(photos, out_gpkg, **run_kwargs)."""
    return PhotoPipeline(model_path, top_k=top_k, cache_dir=cache_dir, config=config).run(photos, out_gpkg,
                                                                                          **run_kwargs)
