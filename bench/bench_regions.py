"""Credible regions of speckled posteriors: polygons, vertices, time and GeoPackage bytes per photo, exact regions
(no polygon cap) against the default RegionConfig (at most max_polygons polygons per level, regions.py).

Usage (a weak model's posteriors, e.g. the demo's; without --model: a random `tiny` model and random embeddings):

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_regions.py --model gtloc-demo/run/model.safetensors \\
        --photos gtloc-demo/sunworld/photos --n 10

Times are process CPU seconds of credible_regions (one thread), medians over the photos; the GeoPackage holds the
regions layer of all photos, written by ResultsStore as the pipeline does (write: wall seconds per photo).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely

from gtloc_engine.inference.regions import RegionConfig, credible_regions
from gtloc_engine.inference.surfaces import SurfaceMaker
from gtloc_engine.io.geopackage import ResultsStore

UNCAPPED = RegionConfig(max_polygons=10**9)


def embeddings(args) -> tuple:
    if args.model:
        from gtloc_engine.inference.predictor import embed_photos
        from gtloc_engine.io.photos import iter_photo_paths
        from gtloc_engine.model.checkpoint import load_checkpoint

        model = load_checkpoint(args.model)
        emb, _, _ = embed_photos(model, iter_photo_paths([args.photos])[: args.n])
        return model, emb
    from gtloc_engine.model import GTLoc, preset

    model = GTLoc(preset("tiny"), seed=0)
    return model, np.random.default_rng(0).normal(size=(args.n, model.cfg.embed_dim)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint (default: a random tiny model)")
    parser.add_argument("--photos", help="folder of photos (with --model)")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--res", type=float, default=0.25, help="global surface cell size, degrees")
    args = parser.parse_args()
    model, emb = embeddings(args)
    with tempfile.TemporaryDirectory() as tmp:
        maker = SurfaceMaker(model, global_res_deg=args.res, cache_dir=tmp)
        surfaces = maker.global_surfaces(emb)
        print(f"{len(surfaces)} photos, {args.res:g} deg; per level: median polygons / vertices / mass / area "
              "(million km2) / block deg")
        print("| regions | s/photo | 50%: polygons, vertices, mass, area, block | 90%: same | GeoPackage KB/photo "
              "| write s/photo |")
        print("|---|---:|---|---|---:|---:|")
        for name, config in (("exact (no cap)", UNCAPPED), (f"max_polygons={RegionConfig().max_polygons}",
                                                            RegionConfig())):
            seconds, per_level = [], {0.5: [], 0.9: []}
            store = ResultsStore.open(Path(tmp) / f"{name.split()[0].replace('=', '')}.gpkg")
            for i, surface in enumerate(surfaces):
                t = time.process_time()
                regions = credible_regions(surface, levels=(0.5, 0.9), config=config)
                seconds.append(time.process_time() - t)
                for r in regions:
                    per_level[r.level].append((len(r.geometry.geoms), shapely.get_num_coordinates(r.geometry),
                                               r.mass, r.area_km2 / 1e6, r.cell_deg))
                key = f"/photo/{i}.jpg"
                store.set_results(key, {"path": key}, [], [
                    {"path": key, "sha256": "-", "level": r.level, "area_km2": r.area_km2, "mass": r.mass,
                     "geometry": r.geometry} for r in regions])
            t = time.perf_counter()
            size_kb = store.save().stat().st_size / 1024 / len(surfaces)
            save_s = (time.perf_counter() - t) / len(surfaces)
            cells = []
            for level in (0.5, 0.9):
                med = [statistics.median(v[j] for v in per_level[level]) for j in range(5)]
                cells.append(f"{med[0]:.0f}, {med[1]:.0f}, {med[2]:.3f}, {med[3]:.0f}, {med[4]:g}")
            print(f"| {name} | {statistics.median(seconds):.2f} | {cells[0]} | {cells[1]} | {size_kb:.0f} "
                  f"| {save_s:.2f} |")


if __name__ == "__main__":
    main()
