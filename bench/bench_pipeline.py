"""Benchmark: photos -> results GeoPackage (gtloc predict --out X.gpkg), per stage and per photo, and file size.

For each global surface resolution: the whole PhotoPipeline.run on fresh output (cold constants excluded: one
warm-up photo first), then the per-photo stages on the same embeddings (global surface, candidates, credible
regions, time posterior given the place, claim check) and the GeoPackage bytes per photo. Needs a checkpoint and
photos, e.g. the demo's:

    .venv/bin/gtloc demo --out gtloc-demo
    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_pipeline.py --model gtloc-demo/run/model.safetensors \
        --photos gtloc-demo/sunworld/photos --n 20 --res 1 0.5 0.25

Prints a markdown table (seconds per photo, medians over the photos; load average alongside: the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--photos", required=True, help="folder of photos")
    parser.add_argument("--n", type=int, default=20, help="photos to time")
    parser.add_argument("--res", type=float, nargs="+", default=[1.0, 0.5, 0.25], help="global surface cell sizes")
    args = parser.parse_args()

    from gtloc_engine.inference.claims import verify_claims
    from gtloc_engine.inference.pipeline import PhotoPipeline, PipelineConfig
    from gtloc_engine.inference.predictor import embed_photos
    from gtloc_engine.inference.regions import credible_regions
    from gtloc_engine.inference.surfaces import find_candidates
    from gtloc_engine.io.exif import read_exif_claims
    from gtloc_engine.io.photos import iter_photo_paths

    paths = iter_photo_paths([args.photos])[: args.n + 1]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for res in args.res:
            pipeline = PhotoPipeline(args.model, cache_dir=Path(tmp) / "cache",
                                     config=PipelineConfig(global_res_deg=res))
            out = Path(tmp) / f"r{res:g}.gpkg"
            pipeline.run(paths[:1], out)  # warm-up: grid constants, first-call costs
            t0 = time.perf_counter()
            pipeline.run(paths[1:], out)
            run_s = (time.perf_counter() - t0) / (len(paths) - 1)
            emb, ok, _ = embed_photos(pipeline.model, paths[1:])
            stages: dict[str, list[float]] = {"surface": [], "candidates": [], "regions": [], "time": [], "claims": []}
            n_polygons = []
            for i, e in zip(ok, emb):
                claims = read_exif_claims(paths[1 + i])
                t = time.perf_counter()
                surface = pipeline.surface_maker.global_surface(e)
                stages["surface"].append(time.perf_counter() - t)
                t = time.perf_counter()
                top = find_candidates(surface, pipeline.top_k)[0]
                stages["candidates"].append(time.perf_counter() - t)
                t = time.perf_counter()
                regions = credible_regions(surface, levels=(0.5, 0.9))
                stages["regions"].append(time.perf_counter() - t)
                n_polygons.append(sum(len(r.geometry.geoms) for r in regions))
                t = time.perf_counter()
                grid = pipeline.predictor.time_posterior_given_place(e[None], [[top.lat_deg, top.lon_deg]])[0]
                estimate = pipeline.predictor.estimate_time(grid)
                stages["time"].append(time.perf_counter() - t)
                t = time.perf_counter()
                place = (pipeline.surface_maker.score_place(e, claims.lat_deg, claims.lon_deg)
                         if claims.has_place else None)
                verify_claims(claims, place=place, pred_latlon_deg=(top.lat_deg, top.lon_deg), time_grid=grid,
                              time_estimate=estimate, heads_trained=pipeline.heads)
                stages["claims"].append(time.perf_counter() - t)
            rows.append((res, run_s, {k: statistics.median(v) for k, v in stages.items()},
                         statistics.median(n_polygons), out.stat().st_size / len(paths), os.getloadavg()[0]))

    print("| res deg | run s/photo | surface | candidates | regions | time | claims | polygons/photo | "
          "gpkg KB/photo | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for res, run_s, st, polys, size, load in rows:
        print(f"| {res:g} | {run_s:.3f} | {st['surface']:.3f} | {st['candidates']:.3f} | {st['regions']:.3f} | "
              f"{st['time']:.4f} | {st['claims']:.4f} | {polys:.0f} | {size / 1024:.0f} | {load:.1f} |")


if __name__ == "__main__":
    main()
