"""Per-photo cost of surfaces (global, regional, credible regions, GeoTIFFs) after the image embedding, for the
`small` and paper-size (`gtloc-vitl14`) location encoders with random weights. Grid constants are built once into a
temporary cache (timed separately). The regional surfaces' error against every cell exactly: bench_regional.py.

Usage: OMP_NUM_THREADS=1 .venv/bin/python bench/bench_surfaces.py [--presets small gtloc-vitl14] [--photos 5]

Times are process CPU seconds (one thread: what the stage costs on an idle core; wall time on a shared machine
is not reproducible); the grid build is wall time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gtloc_engine.inference.regions import credible_regions
from gtloc_engine.inference.surfaces import SurfaceMaker, credible_level, find_candidates
from gtloc_engine.io.rasters import write_surface_geotiff
from gtloc_engine.model import GTLoc, preset

TINY_BACKBONE = {"name": "gtloc-tiny-vit", "pretrained": None, "trainable": False}  # the image side is not timed


def timed(fn, *args, **kwargs):
    t = time.process_time()
    out = fn(*args, **kwargs)
    return out, time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["small", "gtloc-vitl14"])
    ap.add_argument("--photos", type=int, default=5)
    ap.add_argument("--global-res", type=float, default=0.25)
    ap.add_argument("--cache-dir", help="reuse grid constants from here (default: a fresh temporary folder)")
    args = ap.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    places = np.stack((rng.uniform(-60, 70, args.photos), rng.uniform(-180, 180, args.photos)), axis=-1)
    with tempfile.TemporaryDirectory() as tmp_out:
        tmp = args.cache_dir or tmp_out
        for name in args.presets:
            model = GTLoc(preset(name, backbone=TINY_BACKBONE), seed=0).eval()
            t0 = time.perf_counter()
            maker = SurfaceMaker(model, global_res_deg=args.global_res, cache_dir=tmp)
            t_init = time.perf_counter() - t0
            _, t_warm = timed(SurfaceMaker, model, global_res_deg=args.global_res, cache_dir=tmp)
            rows = []
            for i, place in enumerate(places):
                with torch.inference_mode():
                    # A query whose peak is known: the embedding of a place, slightly perturbed.
                    q = model.embed_locations(torch.tensor(place[None], dtype=torch.float32))[0].numpy()
                q = q + rng.normal(0, 0.02, q.shape).astype(np.float32)
                g, t_g = timed(maker.global_surface, q)
                regs, t_r = timed(maker.regional_surfaces, q, g, n_modes=3)
                _, t_c = timed(find_candidates, g, 5)
                _, t_l = timed(credible_level, g, *place)
                _, t_cr = timed(credible_regions, g)
                t_w = sum(timed(write_surface_geotiff, Path(tmp_out) / f"{name}-{i}-{j}.tif", s)[1]
                          for j, s in enumerate([g, *regs]))
                rows.append((t_g, t_r, t_c + t_l, t_cr, t_w))
            t = np.median(np.array(rows), axis=0)
            print(f"{name}: D={model.cfg.embed_dim}, grid {maker.coarse_res_deg} deg built in {t_init:.1f} s "
                  f"(cached: {t_warm:.2f} s); per photo, CPU s (median of {len(places)}): global {args.global_res} deg "
                  f"{t[0]:.3f} s, 3 regional {t[1]:.3f} s, candidates+level {t[2]:.3f} s, regions {t[3]:.3f} s, "
                  f"4 GeoTIFFs {t[4]:.3f} s")


if __name__ == "__main__":
    main()
