"""Evaluate a model on labelled photos: geolocation, time of capture, and geo-temporal retrieval, as in the paper.

Geolocation: top-1 place over the model's gallery. Time: mode of the month x hour posterior, from the image alone and
(a model with both heads) from the image and its true place, through the fused place + time embedding. Retrieval: the
query is the fused (summed, renormalised) embedding of a photo's true place and time; the gallery is the image
embeddings of all evaluated photos; R@k counts the photo itself among the top k.
"""

from __future__ import annotations

import numpy as np
import torch

from gtloc_engine.evaluation.metrics import geolocation_metrics, recall_at_k, time_metrics
from gtloc_engine.device import host, on_device
from gtloc_engine.inference.predictor import Predictor
from gtloc_engine.records import Record


@torch.no_grad()
def evaluate_embeddings(predictor: Predictor, image_emb: np.ndarray, records: list[Record]) -> dict[str, float]:
    """Metrics for image embeddings whose truth is `records` (same order)."""
    model = predictor.model
    out: dict[str, float] = {"photos": float(len(records))}
    true_ll = np.array([(r.lat_deg, r.lon_deg) for r in records], dtype=np.float64)
    timed = np.array([r.torus is not None for r in records])
    if model.heads_trained.get("location"):
        probs = predictor.location_posterior(image_emb)
        out.update(geolocation_metrics(true_ll, predictor.gallery_latlon_deg[probs.argmax(1)]))
    torus = np.array([r.torus for r in records if r.torus is not None], dtype=np.float64).reshape(-1, 2)
    if model.head_ready("it2g") and timed.any():  # where given when: image + true time -> place (it2g)
        time_emb = model.embed_times(torch.as_tensor(torus, dtype=torch.float32))
        scale = model.logit_scale("it2g")
        query = model.fuse(on_device(image_emb[timed], model.device), time_emb)
        best = host((scale * query @ predictor.gallery_emb.T).argmax(dim=1))
        given = geolocation_metrics(true_ll[timed], predictor.gallery_latlon_deg[best])
        out.update({f"{k}_given_time": v for k, v in given.items() if k in ("acc_2500km", "median_km")})
    true_month_hour = torus * np.array([12.0, 24.0])

    def scored(grids: np.ndarray) -> dict[str, float]:
        estimates = [predictor.estimate_time(g) for g in grids]
        return time_metrics(true_month_hour, np.array([(e.month_pos, e.hour_local) for e in estimates]))

    if model.heads_trained.get("time") and timed.any():
        if predictor.time_gallery_fields is not None:  # the authors' estimate: the top-1 gallery time
            out.update(time_metrics(true_month_hour, predictor.gallery_top1_times(image_emb[timed])))
        else:
            out.update(scored(predictor.time_posterior(image_emb[timed])))
        if model.heads_trained.get("location"):  # image + true place -> time, through the fused embedding
            given = scored(predictor.time_posterior_given_place(image_emb[timed], true_ll[timed]))
            out.update({f"{k}_given_place": v for k, v in given.items()})
    if model.heads_trained.get("location") and model.heads_trained.get("time") and timed.sum() > 1:
        place_emb = model.embed_locations(torch.as_tensor(true_ll[timed], dtype=torch.float32))
        query = host(model.fuse(place_emb, model.embed_times(torch.as_tensor(torus, dtype=torch.float32))))  # gt2i
        out.update({f"geotemporal_{k}": v for k, v in recall_at_k(query @ image_emb[timed].T).items()})
    return out


def evaluate_records(predictor: Predictor, records: list[Record], *, batch_size: int = 64,
                     workers: int = 2) -> tuple[dict[str, float], list[tuple[int, str]]]:
    """Embed the photos of `records` and evaluate; unreadable photos are left out and returned."""
    emb, ok, failures = predictor.embed_photos([r.path for r in records], batch_size=batch_size, workers=workers)
    return evaluate_embeddings(predictor, emb, [records[i] for i in ok]), failures


METRIC_COLUMNS = [
    ("acc_1km", "1 km %"), ("acc_25km", "25 km %"), ("acc_200km", "200 km %"), ("acc_750km", "750 km %"),
    ("acc_2500km", "2500 km %"), ("median_km", "median km"), ("month_err", "month err"), ("hour_err", "hour err"),
    ("tps", "TPS"), ("month_err_given_place", "month err given place"),
    ("hour_err_given_place", "hour err given place"),
    ("acc_2500km_given_time", "2500 km % given time"), ("median_km_given_time", "median km given time"),
    ("geotemporal_r@1", "R@1"), ("geotemporal_r@5", "R@5"), ("geotemporal_r@10", "R@10"),
]


def markdown_table(rows: dict[str, dict[str, float]]) -> str:
    """One row per model/ablation; '-' where a metric does not apply (e.g. time for a location-only model)."""
    lines = ["| model | " + " | ".join(h for _, h in METRIC_COLUMNS) + " |",
             "|---|" + "---|" * len(METRIC_COLUMNS)]
    for name, metrics in rows.items():
        cells = []
        for key, _ in METRIC_COLUMNS:
            value = metrics.get(key)
            cells.append("-" if value is None else f"{value:.2f}" if "_err" in key else f"{value:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
