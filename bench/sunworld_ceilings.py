"""Ceilings and chance levels on a SunWorld dataset, from the truth behind its photos (scenes.csv): what a predictor
that reads the sun perfectly could reach on time, and what guessing reaches on place. bench_ablations.py calls it.

Time oracles: k-nearest-neighbour predictors (the circular mode of the neighbours' month and hour) fed the TRUE
values of the cues a photo shows, fitted on the train split; k in {5, 10, 20, 40} chosen on the val split for
month and hour separately; scored on the test split:
- "elevation + latitude": the sun's elevation and the latitude: what the sky and shadow lengths show, plus a
  rough idea of where (the old SunWorld's ceiling: without the sun's compass direction, morning = afternoon);
- "elevation + azimuth rel. grid + latitude": adds the sun's azimuth relative to the region's street grid, what
  the shadows across the grid show (place-dependent: it gives the sun's compass direction only with the grid's
  bearing, i.e. the place);
- "elevation + azimuth rel. grid + true place": the same with the exact place (so the grid's bearing and the
  time zone are known): the ceiling for a model that knows where the photo was taken.
- "season + true place": the true state of the ground (snow cover, greenness, spring flush, autumn colour, tropical
  rains, smoke) and the place: the month that the season cues give to a model that knows where;
- "sun + season + true place": everything together.
Scales: 10 deg of elevation or latitude = 1 unit; 10 deg of azimuth ~ 1 unit (cos/sin times 5.73); 1000 km = 1 unit.

    .venv/bin/python bench/sunworld_ceilings.py bench/runs/ablations/sunworld/manifest.csv
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from gtloc_engine.demo import chance_levels
from gtloc_engine.evaluation.metrics import time_metrics
from gtloc_engine.synth import read_scenes
from gtloc_engine.timecode import parse_time

K_CHOICES = (5, 10, 20, 40)


def load_truth(manifest: Path) -> dict[str, np.ndarray]:
    """Per timed photo of the manifest: split, place, local month position and hour, and the sun's truth."""
    manifest = Path(manifest)
    scenes = read_scenes(manifest.parent)
    rows = [r for r in csv.DictReader(open(manifest, encoding="utf-8")) if r["timestamp"]]
    times = [parse_time(r["timestamp"]) for r in rows]
    sc = [scenes[r["path"]] for r in rows]
    return {
        "split": np.array([r["split"] for r in rows]),
        "lat": np.array([float(r["lat_deg"]) for r in rows]),
        "lon": np.array([float(r["lon_deg"]) for r in rows]),
        "month_hour": np.array([(t.month_pos, t.hour_local) for t in times]),
        "elev": np.array([s["sun_elevation_deg"] for s in sc]),
        "rel_az": np.array([s["sun_azimuth_rel_grid_deg"] for s in sc]),
        "region": np.array([s["region_id"] for s in sc]),
        "season": np.array([[s[c] for c in ("snow_cover", "greenness", "spring", "autumn", "rain", "smoke")]
                            for s in sc]),
    }


def _circular_mode(values: np.ndarray, period: float, bins: int = 48) -> np.ndarray:
    idx = np.minimum((np.mod(values, period) / period * bins).astype(np.int64), bins - 1)
    hist = np.zeros((len(values), bins))
    np.add.at(hist, (np.repeat(np.arange(len(values)), values.shape[1]), idx.ravel()), 1.0)
    smooth = hist + 0.5 * (np.roll(hist, 1, axis=1) + np.roll(hist, -1, axis=1))
    return (np.argmax(smooth, axis=1) + 0.5) * period / bins


def _neighbours(features: np.ndarray, train: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    f_tr = features[train]
    d = ((features[query][:, None, :] - f_tr[None, :, :]) ** 2).sum(-1)
    return np.argsort(d, axis=1)[:, :k]


def knn_time(features: np.ndarray, truth: dict) -> dict[str, float]:
    """Test-split month/hour metrics of the kNN oracle on `features`, k chosen on val per axis."""
    split, mh = truth["split"], truth["month_hour"]
    train, val, test = split == "train", split == "val", split == "test"
    mh_train = mh[train]

    def predict(query: np.ndarray, k: int) -> np.ndarray:
        nn = _neighbours(features, train, query, k)
        return np.stack((_circular_mode(mh_train[nn, 0], 12.0), _circular_mode(mh_train[nn, 1], 24.0)), axis=1)

    best = {}
    for axis, key in ((0, "month_err"), (1, "hour_err")):
        scores = {k: time_metrics(mh[val], predict(val, k))[key] for k in K_CHOICES} if val.any() else {20: 0.0}
        best[axis] = min(scores, key=scores.get)
    pred_m = predict(test, best[0])[:, 0]
    pred_h = predict(test, best[1])[:, 1]
    out = time_metrics(mh[test], np.stack((pred_m, pred_h), axis=1))
    out.update(k_month=float(best[0]), k_hour=float(best[1]))
    return out


def oracle_rows(manifest: Path) -> dict[str, dict[str, float]]:
    """The prior and the three kNN time oracles of the module docstring, on the test split."""
    truth = load_truth(manifest)
    split, mh = truth["split"], truth["month_hour"]
    train, test = split == "train", split == "test"
    prior = np.array([[_circular_mode(mh[train][None, :, 0], 12.0)[0], _circular_mode(mh[train][None, :, 1], 24.0)[0]]])
    rel = np.deg2rad(truth["rel_az"])
    elev, lat, lon = truth["elev"] / 10.0, truth["lat"] / 10.0, np.deg2rad(truth["lon"])
    azimuth = np.stack((np.cos(rel), np.sin(rel)), axis=1) * (180.0 / np.pi / 10.0)
    phi = np.deg2rad(truth["lat"])
    place = np.stack((np.cos(phi) * np.cos(lon), np.cos(phi) * np.sin(lon), np.sin(phi)), axis=1) * 6.371
    season = truth["season"] * 10.0  # a tenth of the range of snow cover, greenness, ... = 1 unit
    return {
        "prior (commonest month and hour)": time_metrics(mh[test], np.repeat(prior, test.sum(), axis=0)),
        "oracle kNN: sun elevation + latitude": knn_time(np.stack((elev, lat), axis=1), truth),
        "oracle kNN: sun elevation + azimuth rel. grid + latitude": knn_time(
            np.column_stack((elev, azimuth, lat)), truth),
        "oracle kNN: sun elevation + azimuth rel. grid + true place": knn_time(
            np.column_stack((elev, azimuth, place)), truth),
        "oracle kNN: season (snow, foliage, rains, smoke) + true place": knn_time(
            np.column_stack((season, place)), truth),
        "oracle kNN: sun + season + true place": knn_time(np.column_stack((elev, azimuth, season, place)), truth),
    }


def chance_rows(manifest: Path) -> dict[str, dict[str, float]]:
    """Geolocation and retrieval by guessing, on the test split (gtloc_engine.demo.chance_levels)."""
    rows = list(csv.DictReader(open(manifest, encoding="utf-8")))
    ll = np.array([(float(r["lat_deg"]), float(r["lon_deg"])) for r in rows])
    split = np.array([r["split"] for r in rows])
    n_test_timed = sum(1 for r in rows if r["split"] == "test" and r["timestamp"])
    levels = chance_levels(ll[split == "train"], ll[split == "test"], n_test_timed)
    return {
        "chance: a random training place": {"acc_2500km": levels["random_place_acc_2500km"],
                                            "median_km": levels["random_place_median_km"],
                                            "geotemporal_r@10": levels["retrieval_r@10"]},
        "chance: the best single place": {"acc_2500km": levels["best_place_acc_2500km"]},
    }


if __name__ == "__main__":
    path = Path(sys.argv[1])
    print(json.dumps({**oracle_rows(path), **chance_rows(path)}, indent=2))
