"""The paper's metrics: geolocation accuracy at distance thresholds, circular month/hour errors, TPS, recall@k."""

from __future__ import annotations

import numpy as np

from gtloc_engine.geo import haversine_km
from gtloc_engine.timecode import hour_error, month_error, time_prediction_score

GEO_THRESHOLDS_KM = (1.0, 25.0, 200.0, 750.0, 2500.0)


def geolocation_metrics(true_latlon_deg: np.ndarray, pred_latlon_deg: np.ndarray) -> dict[str, float]:
    """Share (%) of photos within each threshold, and the median error in km."""
    dist_km = haversine_km(true_latlon_deg, pred_latlon_deg)
    out = {f"acc_{t:g}km": float(100.0 * np.mean(dist_km <= t)) for t in GEO_THRESHOLDS_KM}
    out["median_km"] = float(np.median(dist_km))
    return out


def time_metrics(true_month_hour: np.ndarray, pred_month_hour: np.ndarray) -> dict[str, float]:
    """Mean circular month and hour errors and TPS; columns are (month position in [0, 12), hour in [0, 24))."""
    t, p = np.asarray(true_month_hour), np.asarray(pred_month_hour)
    m_err = float(np.mean(month_error(t[:, 0], p[:, 0])))
    h_err = float(np.mean(hour_error(t[:, 1], p[:, 1])))
    return {"month_err": m_err, "hour_err": h_err, "tps": time_prediction_score(m_err, h_err)}


def recall_at_k(similarity: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall (%) when query i's correct item is item i of the gallery (rows: queries, columns: gallery)."""
    sim = np.asarray(similarity)
    correct = sim[np.arange(len(sim)), np.arange(len(sim))]
    rank = (sim > correct[:, None]).sum(axis=1)  # 0 = best
    return {f"r@{k}": float(100.0 * np.mean(rank < k)) for k in ks}
