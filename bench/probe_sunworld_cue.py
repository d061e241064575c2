"""Can a small CNN read SunWorld's time cues? A learnability probe outside the GT-Loc pipeline.

Renders n SunWorld photos in memory (24 regions, no JPEG), trains a 4-stage CNN (32-128 channels, ~0.5M weights;
the demo's backbone is smaller) for `epochs` with the trainer's augmentation (random resized crop 0.6-1, flip)
to regress the local hour and month as (cos, sin), plus the region as a classification (region_w, 0 to drop it),
and reports on a held-out tenth: hour and month errors, hour error by day (sun > 10 deg) and night (< -6 deg),
and ampm_acc_day: the share of daytime photos 2+ hours from solar noon whose predicted hour is on the right side
of their solar noon (0.5 = cannot tell morning from afternoon). fixed_bearing gives every region the same grid
bearing (the cue then no longer depends on the place), to tell reading the cue from knowing the place.

    .venv/bin/python bench/probe_sunworld_cue.py '{"n": 5000, "epochs": 15}'
    .venv/bin/python bench/probe_sunworld_cue.py '{"n": 5000, "epochs": 15, "fixed_bearing": 0}'
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gtloc_engine.synth import RenderConfig, SunWorld, WorldConfig, render_photo, solar_position
from gtloc_engine.timecode import hour_error, month_error


def make(n, seed, n_regions=24, cfg=None, fixed_bearing=None):
    """n rendered photos (uint8) and their truth: local hour and month position, region, sun elevation, hour angle."""
    w = SunWorld(WorldConfig(seed=0, n_regions=n_regions))
    if fixed_bearing is not None:
        import dataclasses

        w.regions = dataclasses.replace(w.regions, grid_bearing_deg=np.full(n_regions, float(fixed_bearing)))
    s = w.sample(n, np.random.default_rng([seed, 1]))
    imgs = np.empty((n, 64, 64, 3), np.uint8)
    for i in range(n):
        imgs[i], _ = render_photo(w, s.lat_deg[i], s.lon_deg[i], s.local_datetime[i], int(s.utc_offset_min[i]),
                                  np.random.default_rng([seed, 3, i]), config=cfg)
    loc = s.local_datetime
    hour = ((loc - loc.astype("datetime64[D]")).astype(np.int64)) / 3600.0
    doy = (loc.astype("datetime64[D]") - loc.astype("datetime64[Y]")).astype(np.int64)
    sun = solar_position(s.lat_deg, s.lon_deg, s.local_datetime, s.utc_offset_min)
    return imgs, hour, doy / (365.0 / 12), s.region_id, sun.elevation_deg, sun.hour_angle_deg


class Net(nn.Module):
    def __init__(self, n_regions):
        super().__init__()
        ch = [3, 32, 64, 96, 128]
        self.convs = nn.ModuleList([
            nn.Sequential(nn.Conv2d(ch[i], ch[i + 1], 3, stride=2, padding=1), nn.BatchNorm2d(ch[i + 1]), nn.ReLU(),
                          nn.Conv2d(ch[i + 1], ch[i + 1], 3, padding=1), nn.BatchNorm2d(ch[i + 1]), nn.ReLU())
            for i in range(4)])
        self.mlp = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())
        self.time = nn.Linear(256, 4)
        self.region = nn.Linear(256, n_regions)

    def forward(self, x):
        for c in self.convs:
            x = c(x)
        h = self.mlp(torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1))
        return self.time(h), self.region(h)


def augment(x):
    """Random resized crop (area 0.6-1) and horizontal flip, as the trainer's."""
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        size = int(64 * np.sqrt(np.random.uniform(0.6, 1.0)))
        r, c = np.random.randint(0, 64 - size + 1, 2)
        crop = F.interpolate(x[i:i + 1, :, r:r + size, c:c + size], size=64, mode="bilinear", align_corners=False)
        out[i] = crop[0].flip(2) if np.random.rand() < 0.5 else crop[0]
    return out


def run(n=5000, epochs=15, region_w=1.0, seed=0, n_regions=24, label="", fixed_bearing=None, max_objects=None):
    torch.manual_seed(seed)
    np.random.seed(seed)
    t0 = time.time()
    cfg = RenderConfig(max_objects=max_objects) if max_objects is not None else None
    imgs, hour, month, region, elev, hour_angle = make(n, 7, n_regions, cfg, fixed_bearing)
    x = torch.tensor(imgs).permute(0, 3, 1, 2).float() / 255.0
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
    angles = np.stack([2 * np.pi * hour / 24, 2 * np.pi * month / 12], 1)
    yt = torch.tensor(np.concatenate([np.cos(angles[:, :1]), np.sin(angles[:, :1]),
                                      np.cos(angles[:, 1:]), np.sin(angles[:, 1:])], 1)).float()
    yr = torch.tensor(region)
    n_test = n // 10
    net = Net(n_regions)
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * ((n - n_test) // 128))
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(n - n_test) + n_test
        for b in range(0, len(perm) - 127, 128):
            idx = perm[b:b + 128]
            pt, pr = net(augment(x[idx]))
            loss = ((pt - yt[idx]) ** 2).sum(1).mean() + region_w * F.cross_entropy(pr, yr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    te = slice(0, n_test)
    with torch.no_grad():
        pt, pr = net(x[te])
    pt = pt.numpy()
    ph = np.mod(np.arctan2(pt[:, 1], pt[:, 0]) / (2 * np.pi) * 24, 24)
    pm = np.mod(np.arctan2(pt[:, 3], pt[:, 2]) / (2 * np.pi) * 12, 12)
    el, ha, h = elev[te], hour_angle[te], hour[te]
    day = el > 10
    noon = h - ha / 15.0  # the photo's solar noon on its clock
    side = np.sign(((ph - noon + 12) % 24) - 12)
    far = day & (np.abs(ha) > 30)
    res = dict(label=label, n=n, epochs=epochs, region_w=region_w, fixed_bearing=fixed_bearing,
               hour_err=float(hour_error(h, ph).mean()), month_err=float(month_error(month[te], pm).mean()),
               region_acc=float((pr.argmax(1).numpy() == region[te]).mean()),
               hour_err_day=float(hour_error(h[day], ph[day]).mean()),
               hour_err_night=float(hour_error(h[el < -6], ph[el < -6]).mean()),
               ampm_acc_day=float(np.mean(side[far] == np.sign(ha[far]))), total_s=time.time() - t0)
    print(json.dumps(res), flush=True)
    return res


if __name__ == "__main__":
    torch.set_num_threads(2)
    run(**(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}))
