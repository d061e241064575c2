"""The time posterior of a model trained on SunWorld puts its mass in the right part of the day.

A small GT-Loc model is trained in the test on photos from one known place (Madrid, on its real clock: CET/CEST)
at all hours across the year, then shown unseen photos of that place taken around solar noon and deep in the
night: the noon posteriors must hold most of their mass in the middle of the day, the night ones at night.
(Telling morning from afternoon needs the shadows across the street grid; at this size and budget GT-Loc's time
head does not learn that, see bench/README.md, so it is not asserted here.)
"""

from __future__ import annotations

import csv
import datetime as dt

import numpy as np
import pytest
from PIL import Image

from gtloc_engine.inference.predictor import HOUR_BINS, Predictor
from gtloc_engine.model.checkpoint import load_checkpoint
from gtloc_engine.model.config import preset
from gtloc_engine.synth import SunWorld, WorldConfig, render_photo, solar_position
from gtloc_engine.timezones import zone_at
from gtloc_engine.training.trainer import MODEL_FILE, TrainConfig, Trainer

MADRID = (40.4168, -3.7038)
HOURS = (np.arange(HOUR_BINS) + 0.5) * 24.0 / HOUR_BINS


def _write_photos(world, folder, n, rng, split, *, hours=None, hour_angle_deg=None):
    """n photos near Madrid on random days of 2019: at local clock hours drawn from `hours`, or at times whose
    solar hour angle lies in `hour_angle_deg` (negative: before solar noon)."""
    zone = zone_at(*MADRID)
    rows = []
    for i in range(n):
        lat = MADRID[0] + rng.normal(0, 0.05)
        lon = MADRID[1] + rng.normal(0, 0.05)
        day = dt.datetime(2019, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365)))
        if hour_angle_deg is None:
            local = zone.localize(day + dt.timedelta(hours=float(rng.uniform(*hours))))
        else:
            offset = zone.offset_min(day + dt.timedelta(hours=12))
            clock = np.datetime64(day, "s") + (np.arange(0, 86400, 300)).astype("timedelta64[s]")
            ha = solar_position(lat, lon, clock, offset).hour_angle_deg
            ok = np.flatnonzero((ha > hour_angle_deg[0]) & (ha < hour_angle_deg[1]))
            local = zone.localize(clock[rng.choice(ok)].astype(dt.datetime))
        offset = int(local.utcoffset().total_seconds() // 60)
        naive = np.datetime64(local.replace(tzinfo=None), "s")
        img, info = render_photo(world, lat, lon, naive, offset, np.random.default_rng([7, i, len(split), n]))
        path = folder / f"{split}_{n}_{i:04d}.png"
        Image.fromarray(img).save(path)
        rows.append((path.name, lat, lon, local.isoformat(), split, info.sun_elevation_deg,
                     local.hour + local.minute / 60.0))
    return rows


@pytest.mark.slow
def test_noon_and_night_posteriors_sit_in_their_part_of_the_day(tmp_path):
    world = SunWorld(WorldConfig(seed=0, n_regions=24))
    rng = np.random.default_rng(0)
    train = _write_photos(world, tmp_path, 640, rng, "train", hours=(0.0, 24.0))
    noon = _write_photos(world, tmp_path, 40, rng, "test", hour_angle_deg=(-20.0, 20.0))
    night = _write_photos(world, tmp_path, 41, rng, "test", hour_angle_deg=(150.0, 180.0))
    night += _write_photos(world, tmp_path, 39, rng, "test", hour_angle_deg=(-180.0, -150.0))
    with open(tmp_path / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "lat_deg", "lon_deg", "timestamp", "split"])
        for r in train + noon + night:
            w.writerow(r[:5])
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), model=preset("small").to_dict(),
                      manifest=str(tmp_path / "manifest.csv"), epochs=12, batch_size=64, lr=2e-3, backbone_lr=2e-3,
                      loc_queue=256, time_queue=256, warmup_steps=10, cache_dir=str(tmp_path / "cache"),
                      progress=False, val_fraction=0.0, tau_delta=0.1)
    Trainer(cfg).run()
    predictor = Predictor(load_checkpoint(tmp_path / "run" / MODEL_FILE), cache=False)

    def hour_marginals(rows):
        emb, ok, _ = predictor.embed_photos([tmp_path / r[0] for r in rows])
        assert len(ok) == len(rows)
        return predictor.time_posterior(emb).sum(axis=1)  # (N, HOUR_BINS)

    el_noon = np.array([r[5] for r in noon])
    el_night = np.array([r[5] for r in night])
    assert el_noon.min() > 20 and el_night.max() < -20  # Madrid's sun: 26-73 deg at noon, below -26 at midnight
    # Madrid's solar noon is at ~13:15 (CET) to ~14:15 (CEST) on its clocks, 3.7 deg west of its zone's meridian.
    day_half = (HOURS >= 8.0) & (HOURS < 20.0)  # half the day: a flat posterior holds 0.5 in either half
    marg_noon, marg_night = hour_marginals(noon), hour_marginals(night)
    mass_noon = marg_noon[:, day_half].sum(axis=1)
    mass_night = marg_night[:, ~day_half].sum(axis=1)
    assert np.mean(mass_noon) > 0.6, np.round(mass_noon, 2)
    assert np.mean(mass_night) > 0.6, np.round(mass_night, 2)
    assert np.mean(mass_noon > 0.5) > 0.8 and np.mean(mass_night > 0.5) > 0.8  # most photos, not the average
    # The most likely hour is in the right half of the day too.
    assert np.mean(day_half[marg_noon.argmax(axis=1)]) > 0.8 and np.mean(~day_half[marg_night.argmax(axis=1)]) > 0.8
