"""Prediction is retrieval: image embeddings against a GPS gallery and a month x hour time grid.

Gallery and time-grid embeddings are model constants: computed once per model and cached on disk (inference/constants),
never per photo.
Posteriors are softmax(logit_scale * cosine similarity) over the gallery / grid, the model's own calibration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gtloc_engine.errors import GtlocError
from gtloc_engine.geo import fibonacci_sphere_latlon
from gtloc_engine.inference.constants import (
    ENCODE_CHUNK, cached_location_embeddings, cached_time_embeddings, cached_time_field_embeddings,
)
from gtloc_engine.io.batches import iter_pixel_batches
from gtloc_engine.device import host, on_device
from gtloc_engine.model.gtloc import GTLoc
from gtloc_engine.timecode import DAYS_PER_MONTH, check_time_fields, circular_mean_spread, from_torus, time_fields

# A fused query the model was never trained on is still the paper's fusion, but how well it ranks is unmeasured.
IT2G_UNTRAINED_NOTE = ("place given the known time from a model whose image + time query (it2g) was never trained "
                       "(composed losses off): a heuristic fusion, weaker evidence than a trained it2g head")
DEFAULT_GENERIC_GALLERY = 20_000  # evenly spread places when the model ships no gallery of its own
MONTH_BINS = 48  # ~1 week per bin
HOUR_BINS = 48  # 30 min per bin


@dataclass
class TimeEstimate:
    """Most likely month position (0 = Jan 1) and local hour, with circular spreads, plus the full grid."""

    month_pos: float
    hour_local: float
    month_spread: float
    hour_spread: float
    grid: np.ndarray  # (MONTH_BINS, HOUR_BINS) probabilities

    def to_json(self) -> dict:
        return {
            "month": int(self.month_pos) + 1,
            "month_pos": round(self.month_pos, 3),
            "month_spread": round(self.month_spread, 3),
            "hour_local": round(self.hour_local, 3),
            "hour_spread": round(self.hour_spread, 3),
        }


def time_grid_torus(month_bins: int = MONTH_BINS, hour_bins: int = HOUR_BINS) -> np.ndarray:
    """(month_bins * hour_bins, 2) torus points at bin centres, month-major."""
    theta = (np.arange(month_bins) + 0.5) / month_bins
    phi = (np.arange(hour_bins) + 0.5) / hour_bins
    tt, pp = np.meshgrid(theta, phi, indexing="ij")
    return np.stack((tt.ravel(), pp.ravel()), axis=-1)


@torch.no_grad()
def embed_photos(model: GTLoc, paths: Sequence[str | Path], *, batch_size: int = 32, workers: int = 2
                 ) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Image embeddings of the photos that could be read, their indices, and (index, reason) failures."""
    backbone = model.backbone
    embs, ok, failures = [], [], []
    for batch in iter_pixel_batches(paths, backbone.preprocess, batch_size=batch_size, workers=workers,
                                    draft_px=backbone.image_size):
        if batch.pixels is not None:
            embs.append(model.embed_images(batch.pixels))
            ok.extend(batch.indices)
        failures.extend(batch.failures)
    dim = model.cfg.embed_dim
    return (host(torch.cat(embs)) if embs else np.zeros((0, dim), np.float32)), ok, failures


class Predictor:
    """Location and time posteriors for images, from a GTLoc model and its galleries.

    Times are scored on a uniform month x hour grid (MONTH_BINS x HOUR_BINS cell centres) by default. With
    `time_gallery_fields` ((T, 5) local month, day, hour, minute, second rows, e.g. the authors' cvt.npy, which
    samples their training times: hours 4-22 only) the posterior is over those times, summed into the same grid
    cells, so it carries the gallery's prior (a gallery without night times never predicts night).
    """

    def __init__(self, model: GTLoc, *, gallery_latlon_deg: np.ndarray | None = None,
                 time_gallery_fields: np.ndarray | None = None,
                 cache_dir: str | Path | None = None, cache: bool = True, global_res_deg: float = 0.25):
        """`cache=False` computes the constants in memory only: for a model that is still training (its key changes
        every step, so disk entries would never be read again). The GPS gallery serves the paper's metrics (eval:
        argmax over the gallery); a photo's top-k places are the modes of its likelihood surface at
        `global_res_deg` (place_candidates), the same as in the results GeoPackage."""
        self.cache_dir, self.cache, self.global_res_deg = cache_dir, cache, global_res_deg
        self._surface_maker = None
        self._gallery_emb: torch.Tensor | None = None
        self.model = model.eval()
        if gallery_latlon_deg is None:
            gallery_latlon_deg = model.gallery_latlon_deg
        if gallery_latlon_deg is None:
            gallery_latlon_deg = fibonacci_sphere_latlon(DEFAULT_GENERIC_GALLERY)
        self.gallery_latlon_deg = np.asarray(gallery_latlon_deg, dtype=np.float64)
        self.time_grid = time_grid_torus()
        self.time_gallery_fields = None
        self._gallery_bins = None
        if time_gallery_fields is not None:
            fields = check_time_fields(time_gallery_fields, "time gallery")
            self.time_gallery_fields = fields
            month_pos = (fields[:, 0] - 1) + (fields[:, 1] - 1) / DAYS_PER_MONTH
            hour = fields[:, 2] + fields[:, 3] / 60 + fields[:, 4] / 3600
            m_bin = np.clip((month_pos / 12 * MONTH_BINS).astype(int), 0, MONTH_BINS - 1)
            h_bin = np.clip((hour / 24 * HOUR_BINS).astype(int), 0, HOUR_BINS - 1)
            self._gallery_bins = m_bin * HOUR_BINS + h_bin
        dev = model.device  # the time grid and the gallery are scored on the model's device (gtloc_engine/device.py)
        if cache:
            self.time_emb = on_device(np.array(
                cached_time_embeddings(model, self.time_grid, name="time-grid", cache_dir=cache_dir)
                if self.time_gallery_fields is None else
                cached_time_field_embeddings(model, self.time_gallery_fields, name="time-gallery",
                                             cache_dir=cache_dir)), dev)
        else:
            with torch.no_grad():
                self.time_emb = (
                    model.embed_times(on_device(self.time_grid, dev))
                    if self.time_gallery_fields is None else
                    model.embed_time_fields(on_device(self.time_gallery_fields, dev)))

    @property
    def gallery_emb(self) -> torch.Tensor:
        """(G, D) unit embeddings of the GPS gallery, computed on first use (only eval and the gallery posterior
        need them)."""
        if self._gallery_emb is None:
            if self.cache:
                # Disk cache keyed by the encoders' hash: a 100K gallery costs 15-45 s on 2 cores, once per model.
                # Copied out of the memory map: torch needs writable memory, and 100K x 512 floats is 200 MB.
                self._gallery_emb = on_device(np.array(cached_location_embeddings(
                    self.model, self.gallery_latlon_deg, name="gallery", cache_dir=self.cache_dir)), self.model.device)
            else:
                with torch.no_grad():
                    self._gallery_emb = torch.cat([
                        self.model.embed_locations(on_device(self.gallery_latlon_deg[i:i + ENCODE_CHUNK],
                                                             self.model.device))
                        for i in range(0, len(self.gallery_latlon_deg), ENCODE_CHUNK)
                    ]) if len(self.gallery_latlon_deg) else torch.zeros((0, self.model.cfg.embed_dim),
                                                                       device=self.model.device)
        return self._gallery_emb

    @property
    def surface_maker(self):
        """Built on first use: its grid constants are only needed when places are predicted."""
        if self._surface_maker is None:
            from gtloc_engine.inference.surfaces import SurfaceMaker

            self._surface_maker = SurfaceMaker(self.model, global_res_deg=self.global_res_deg,
                                               cache_dir=self.cache_dir)
        return self._surface_maker

    def place_query(self, image_emb: np.ndarray, given_time_emb: torch.Tensor | None = None) -> tuple[np.ndarray, str]:
        """The query and head of a photo's location surface: the image (img_gps), or, given a known time, the fused
        image + time embedding (it2g: where given when)."""
        if given_time_emb is None:
            return np.asarray(image_emb, dtype=np.float32), "img_gps"
        with torch.no_grad():
            return host(self.model.fuse(self._query(image_emb), given_time_emb)), "it2g"

    def place_candidates(self, image_emb: np.ndarray, k: int, given_time_emb: torch.Tensor | None = None):
        """(global surface, top-k candidates): a photo's places as an analyst reads them, the surface's modes at
        least 200 km apart, each with the posterior mass within radius_km. JSON, GeoPackage, worker and plugin all
        take a photo's top-k places from here."""
        from gtloc_engine.inference.surfaces import find_candidates

        query, head = self.place_query(image_emb, given_time_emb)
        surface = self.surface_maker.global_surface(query, head)
        return surface, find_candidates(surface, k, radius_km=self.surface_maker.config.candidate_radius_km)

    def embed_photos(self, paths: Sequence[str | Path], *, batch_size: int = 32, workers: int = 2
                     ) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
        return embed_photos(self.model, paths, batch_size=batch_size, workers=workers)

    def _query(self, image_emb: np.ndarray) -> torch.Tensor:
        """Image (or fused) embeddings as float32 on the model's device."""
        return on_device(image_emb, self.model.device)

    @torch.no_grad()
    def location_posterior(self, image_emb: np.ndarray, given_time_emb: torch.Tensor | None = None) -> np.ndarray:
        """(N, G) probabilities over the GPS gallery: from the image (img_gps), or, given a known time's unit
        embedding, from the fused image + time query (it2g: where given when)."""
        query = self._query(image_emb)
        if given_time_emb is None:
            logits = self.model.logit_scale("img_gps") * query @ self.gallery_emb.T
        else:
            logits = self.model.logit_scale("it2g") * self.model.fuse(query, given_time_emb) @ self.gallery_emb.T
        return host(torch.softmax(logits, dim=1))

    @torch.no_grad()
    def time_posterior(self, image_emb: np.ndarray) -> np.ndarray:
        """(N, MONTH_BINS, HOUR_BINS) probabilities over the month x hour grid."""
        return self._time_grid(self.model.logit_scale("img_time") * self._query(image_emb) @ self.time_emb.T)

    def _time_grid(self, logits: torch.Tensor) -> np.ndarray:
        """(N, T) logits over the time grid or gallery -> (N, MONTH_BINS, HOUR_BINS) probabilities."""
        probs = host(torch.softmax(logits, dim=1))
        if self._gallery_bins is not None:
            grid = np.zeros((len(probs), MONTH_BINS * HOUR_BINS), dtype=np.float64)
            for i in range(len(probs)):
                np.add.at(grid[i], self._gallery_bins, probs[i])
            probs = grid.astype(np.float32)
        return probs.reshape(len(logits), MONTH_BINS, HOUR_BINS)

    @torch.no_grad()
    def gallery_top1_times(self, image_emb: np.ndarray) -> np.ndarray:
        """(N, 2) month position and hour of the most similar time-gallery entry: the authors' argmax estimate
        (cosine similarity, no softmax). Needs a time gallery."""
        if self.time_gallery_fields is None:
            raise GtlocError("gallery_top1_times needs a time gallery (time_gallery_fields)")
        best = host((self._query(image_emb) @ self.time_emb.T).argmax(dim=1))
        f = self.time_gallery_fields[best]
        return np.stack(((f[:, 0] - 1) + (f[:, 1] - 1) / DAYS_PER_MONTH, f[:, 2] + f[:, 3] / 60 + f[:, 4] / 3600), 1)

    @torch.no_grad()
    def time_posterior_given_place(self, image_emb: np.ndarray, latlon_deg: np.ndarray) -> np.ndarray:
        """(N, MONTH_BINS, HOUR_BINS) time posterior of each image given its place ((N, 2) lat/lon degrees).

        The ig2t head: score(t) = logit_scale(ig2t) * cos(normalize(image + loc_emb(place)), time_emb(t)), the
        fused image + place query against the time grid.
        """
        place_emb = self.model.embed_locations(on_device(np.asarray(latlon_deg), self.model.device))
        query = self.model.fuse(self._query(image_emb), place_emb)
        return self._time_grid(self.model.logit_scale("ig2t") * query @ self.time_emb.T)

    def estimate_time(self, grid: np.ndarray) -> TimeEstimate:
        """Mode of each marginal as the estimate; circular standard deviation as the spread."""
        months, hours = from_torus((np.arange(MONTH_BINS) + 0.5) / MONTH_BINS, (np.arange(HOUR_BINS) + 0.5) / HOUR_BINS)
        m_marg, h_marg = grid.sum(axis=1), grid.sum(axis=0)
        _, m_spread = circular_mean_spread(months, m_marg, 12.0)
        _, h_spread = circular_mean_spread(hours, h_marg, 24.0)
        return TimeEstimate(float(months[m_marg.argmax()]), float(hours[h_marg.argmax()]), m_spread, h_spread, grid)

    def predict_embeddings(self, image_emb: np.ndarray, *, top_k: int = 5, given_time=None) -> list[dict]:
        """JSON-ready predictions; a head the checkpoint never trained gives a note instead of noise.

        `places` are the top-k candidates of place_candidates (rank, lat_deg, lon_deg, probability = posterior mass
        within radius_km); `given_time` (a known local time: ISO string or LocalTime) predicts them given it (it2g)."""
        trained = self.model.heads_trained
        given_emb = self.given_time_embedding(given_time) if given_time is not None else None
        tim = self.time_posterior(image_emb) if trained.get("time") else None
        out = []
        for i in range(len(image_emb)):
            item: dict = {}
            item["places"] = ([c.to_json() for c in self.place_candidates(image_emb[i], top_k, given_emb)[1]]
                              if trained.get("location") else None)
            item["time"] = self.estimate_time(tim[i]).to_json() if tim is not None else None
            notes = [f"{head} head not trained" for head in ("location", "time") if not trained.get(head)]
            if given_emb is not None:
                item["place_given"] = "image+time"
                if not trained.get("it2g"):
                    notes.append(IT2G_UNTRAINED_NOTE)
            if notes:
                item["notes"] = notes
            out.append(item)
        return out

    @torch.no_grad()
    def given_time_embedding(self, given_time) -> torch.Tensor:
        """The unit time embedding of a known local time, through the authors' (month, day, hour, minute, second)
        input; GtlocError when the model cannot predict a place given a time."""
        if not self.model.head_ready("it2g"):
            raise GtlocError("this checkpoint lacks a trained location or time head, so it cannot predict a place "
                             "given a known capture time (the it2g head): leave the time out, or use a GT-Loc model "
                             "(e.g. gtloc import-gtloc)")
        return self.model.embed_time_fields(on_device(time_fields([given_time]), self.model.device))[0]

    def predict_photos(self, paths: Sequence[str | Path], *, top_k: int = 5, batch_size: int = 32,
                       workers: int = 2, given_time=None) -> list[dict]:
        """One result per input path, in order: predictions, or {'error': one line} for a photo that failed."""
        if not self.model.heads_trained.get("location") and not self.model.heads_trained.get("time"):
            raise GtlocError("this checkpoint has neither a trained location head nor a trained time head")
        emb, ok, failures = self.embed_photos(paths, batch_size=batch_size, workers=workers)
        results: list[dict] = [{} for _ in paths]
        for i, pred in zip(ok, self.predict_embeddings(emb, top_k=top_k, given_time=given_time)):
            results[i] = pred
        for i, reason in failures:
            results[i] = {"error": reason}
        for i, p in enumerate(paths):
            results[i] = {"photo": str(p), **results[i]}
        return results
