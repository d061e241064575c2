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
from gtloc_engine.inference.constants import ENCODE_CHUNK, cached_location_embeddings, cached_time_embeddings
from gtloc_engine.io.batches import iter_pixel_batches
from gtloc_engine.model.gtloc import GTLoc
from gtloc_engine.timecode import circular_mean_spread, from_torus

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


@torch.inference_mode()
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
    return (torch.cat(embs).numpy() if embs else np.zeros((0, dim), np.float32)), ok, failures


class Predictor:
    """Location and time posteriors for images, from a GTLoc model and its galleries."""

    def __init__(self, model: GTLoc, *, gallery_latlon_deg: np.ndarray | None = None,
                 cache_dir: str | Path | None = None, cache: bool = True):
        """`cache=False` computes the constants in memory only: for a model that is still training (its key changes
        every step, so disk entries would never be read again)."""
        self.model = model.eval()
        if gallery_latlon_deg is None:
            gallery_latlon_deg = model.gallery_latlon_deg
        if gallery_latlon_deg is None:
            gallery_latlon_deg = fibonacci_sphere_latlon(DEFAULT_GENERIC_GALLERY)
        self.gallery_latlon_deg = np.asarray(gallery_latlon_deg, dtype=np.float64)
        self.time_grid = time_grid_torus()
        if cache:
            # Disk cache keyed by the encoders' hash: a 100K gallery costs 15-45 s on 2 cores, once per model.
            # Copied out of the memory map: torch needs writable memory, and 100K x 512 floats is 200 MB.
            self.gallery_emb = torch.from_numpy(np.array(cached_location_embeddings(
                model, self.gallery_latlon_deg, name="gallery", cache_dir=cache_dir)))
            self.time_emb = torch.from_numpy(np.array(cached_time_embeddings(
                model, self.time_grid, name="time-grid", cache_dir=cache_dir)))
        else:
            with torch.inference_mode():
                self.gallery_emb = torch.cat([
                    model.embed_locations(torch.as_tensor(self.gallery_latlon_deg[i:i + ENCODE_CHUNK],
                                                          dtype=torch.float32))
                    for i in range(0, len(self.gallery_latlon_deg), ENCODE_CHUNK)
                ])
                self.time_emb = model.embed_times(torch.as_tensor(self.time_grid, dtype=torch.float32))

    def embed_photos(self, paths: Sequence[str | Path], *, batch_size: int = 32, workers: int = 2
                     ) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
        return embed_photos(self.model, paths, batch_size=batch_size, workers=workers)

    @torch.inference_mode()
    def location_posterior(self, image_emb: np.ndarray) -> np.ndarray:
        """(N, G) probabilities over the GPS gallery."""
        scale = self.model.logit_scale_loc.exp().clamp(max=100.0)
        logits = scale * torch.as_tensor(image_emb, dtype=torch.float32) @ self.gallery_emb.T
        return torch.softmax(logits, dim=1).numpy()

    @torch.inference_mode()
    def time_posterior(self, image_emb: np.ndarray) -> np.ndarray:
        """(N, MONTH_BINS, HOUR_BINS) probabilities over the month x hour grid."""
        scale = self.model.logit_scale_time.exp().clamp(max=100.0)
        logits = scale * torch.as_tensor(image_emb, dtype=torch.float32) @ self.time_emb.T
        return torch.softmax(logits, dim=1).numpy().reshape(len(image_emb), MONTH_BINS, HOUR_BINS)

    @torch.inference_mode()
    def time_posterior_given_place(self, image_emb: np.ndarray, latlon_deg: np.ndarray) -> np.ndarray:
        """(N, MONTH_BINS, HOUR_BINS) time posterior of each image given its place ((N, 2) lat/lon degrees).

        score(t) = logit_scale_time * cos(image, normalize(loc_emb(place) + time_emb(t))): the place + time
        fusion GT-Loc uses for geo-temporal retrieval, read the other way round (image + place -> time).
        """
        scale = self.model.logit_scale_time.exp().clamp(max=100.0)
        place_emb = self.model.embed_locations(torch.as_tensor(np.asarray(latlon_deg), dtype=torch.float32))
        time_emb = torch.as_tensor(self.time_emb, dtype=torch.float32)
        fused = self.model.fuse_place_time(place_emb[:, None, :], time_emb[None, :, :])
        logits = scale * torch.einsum("nd,ntd->nt", torch.as_tensor(image_emb, dtype=torch.float32), fused)
        return torch.softmax(logits, dim=1).numpy().reshape(len(image_emb), MONTH_BINS, HOUR_BINS)

    def estimate_time(self, grid: np.ndarray) -> TimeEstimate:
        """Mode of each marginal as the estimate; circular standard deviation as the spread."""
        months, hours = from_torus((np.arange(MONTH_BINS) + 0.5) / MONTH_BINS, (np.arange(HOUR_BINS) + 0.5) / HOUR_BINS)
        m_marg, h_marg = grid.sum(axis=1), grid.sum(axis=0)
        _, m_spread = circular_mean_spread(months, m_marg, 12.0)
        _, h_spread = circular_mean_spread(hours, h_marg, 24.0)
        return TimeEstimate(float(months[m_marg.argmax()]), float(hours[h_marg.argmax()]), m_spread, h_spread, grid)

    def top_places(self, probs: np.ndarray, k: int) -> list[dict]:
        k = min(k, len(probs))
        top = np.argpartition(-probs, k - 1)[:k] if k > 0 else np.zeros(0, dtype=int)  # O(G), not a full sort
        order = top[np.argsort(-probs[top], kind="stable")]
        return [
            {"lat_deg": round(float(self.gallery_latlon_deg[j, 0]), 6),
             "lon_deg": round(float(self.gallery_latlon_deg[j, 1]), 6),
             "probability": float(probs[j])}
            for j in order
        ]

    def predict_embeddings(self, image_emb: np.ndarray, *, top_k: int = 5) -> list[dict]:
        """JSON-ready predictions; a head the checkpoint never trained gives a note instead of noise."""
        trained = self.model.heads_trained
        loc = self.location_posterior(image_emb) if trained.get("location") else None
        tim = self.time_posterior(image_emb) if trained.get("time") else None
        out = []
        for i in range(len(image_emb)):
            item: dict = {}
            item["places"] = self.top_places(loc[i], top_k) if loc is not None else None
            item["time"] = self.estimate_time(tim[i]).to_json() if tim is not None else None
            notes = [f"{head} head not trained" for head in ("location", "time") if not trained.get(head)]
            if notes:
                item["notes"] = notes
            out.append(item)
        return out

    def predict_photos(self, paths: Sequence[str | Path], *, top_k: int = 5, batch_size: int = 32,
                       workers: int = 2) -> list[dict]:
        """One result per input path, in order: predictions, or {'error': one line} for a photo that failed."""
        if not self.model.heads_trained.get("location") and not self.model.heads_trained.get("time"):
            raise GtlocError("this checkpoint has neither a trained location head nor a trained time head")
        emb, ok, failures = self.embed_photos(paths, batch_size=batch_size, workers=workers)
        results: list[dict] = [{} for _ in paths]
        for i, pred in zip(ok, self.predict_embeddings(emb, top_k=top_k)):
            results[i] = pred
        for i, reason in failures:
            results[i] = {"error": reason}
        for i, p in enumerate(paths):
            results[i] = {"photo": str(p), **results[i]}
        return results
