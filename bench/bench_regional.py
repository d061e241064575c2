"""Regional surfaces (the ~1 km rasters around a photo's modes): each way of computing them against every cell
through the location encoder, and what each costs.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_regional.py --out bench/results/regional.json   # GeoCLIP's encoder
    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_regional.py --preset tiny                      # a random one

With the optional geoclip package, the encoder is GeoCLIP's released one (`import-geoclip`; the image side is not
used): its weights, not random ones, decide how much structure lies below the lattice's spacing. Queries are unit
vectors near the embeddings of known places (0.7 and 1.0 x N(0, 1/D) noise), so each posterior has peaks and
spread in its windows, as a photo's has. Every variant reads the same global surface (the exact reference's) and
so the same modes; windows are compared cell by cell:
  - L1: the sum of |mass - exact mass| over the window, over the exact window mass (0: the same, 2: disjoint);
  - window mass: |mass / exact mass - 1|;
  - top cell: how many cells the densest cell lies from the exact one.
Seconds are wall time per photo (3 windows), after one warm-up call.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PLACES = [(48.86, 2.35), (-33.87, 151.21), (40.71, -74.01), (35.68, 139.69), (-1.29, 36.82), (64.1, -21.9),
          (-17.7, 179.9), (78.2, 15.6)]  # the last two: a window across the antimeridian, one at 78 N
VARIANTS = {  # name -> SurfaceConfig changes from the default
    "every branch on one lattice (before)": {"branch_lattices": False, "regional_refine_cells": 0},
    "branch lattices": {"regional_refine_cells": 0},
    "branch lattices + 256 densest cells exact (default)": {},
    "branch lattices + 1024 densest cells exact": {"regional_refine_cells": 1024},
}
SWEEP = {  # --sweep: denser lattices instead (the finest branch's, then the coarser branches')
    "every branch on one lattice, 8 samples per period": {"branch_lattices": False, "regional_refine_cells": 0,
                                                          "samples_per_period": 8.0},
    "every branch on one lattice, 16 samples per period": {"branch_lattices": False, "regional_refine_cells": 0,
                                                           "samples_per_period": 16.0},
    "branch lattices at 8 samples per period": {"regional_refine_cells": 0, "branch_samples_per_period": 8.0},
    "branch lattices at 16 samples per period": {"regional_refine_cells": 0, "branch_samples_per_period": 16.0},
}
BEFORE, BRANCHES = "every branch on one lattice (before)", "branch lattices"


def window_errors(got, exact) -> list[tuple[float, float, int]]:
    rows = []
    for a, b in zip(got, exact):
        top_a = np.unravel_index(np.argmax(a.density_per_km2), a.shape)
        top_b = np.unravel_index(np.argmax(b.density_per_km2), b.shape)
        rows.append((float(np.abs(a.mass_per_cell - b.mass_per_cell).sum() / b.total_mass),
                     abs(a.total_mass / b.total_mass - 1), max(abs(i - j) for i, j in zip(top_a, top_b))))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", help="a random model of this preset instead of GeoCLIP's encoder (e.g. tiny)")
    ap.add_argument("--cell-km", type=float, default=1.0)
    ap.add_argument("--cache-dir", help="the model's grid constants (default: built into a temporary folder)")
    ap.add_argument("--sweep", action="store_true", help="also denser lattices (slow: ~10 s a photo at 16 samples)")
    ap.add_argument("--out", help="write the numbers as JSON here")
    args = ap.parse_args()

    from gtloc_engine.inference.surfaces import SurfaceConfig, SurfaceMaker
    from gtloc_engine.model import GTLoc, preset
    from gtloc_engine.model.checkpoint import load_checkpoint

    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        if args.preset:
            model, source = GTLoc(preset(args.preset), seed=0), f"random {args.preset}"
        else:
            from gtloc_engine.model.geoclip_import import import_geoclip

            model = load_checkpoint(import_geoclip(Path(tmp) / "geoclip.safetensors"), load_backbone=False)
            source = "GeoCLIP's released location encoder"
        base = SurfaceConfig()  # the pipeline's: 0.25 deg global surfaces from the 0.5 deg cached grid, 50 km windows

        def maker(**changes) -> SurfaceMaker:
            return SurfaceMaker(model, global_res_deg=0.25, cache_dir=args.cache_dir or tmp,
                                config=dataclasses.replace(base, **changes))

        exact = maker(branch_lattices=False, regional_sample_km=args.cell_km)
        g = torch.Generator().manual_seed(0)
        queries = []
        for lat, lon in PLACES:
            e = model.embed_locations(torch.tensor([[lat, lon]]))[0]
            for noise in (0.7, 1.0):
                q = e + noise * torch.randn(e.shape, generator=g) / math.sqrt(e.numel())
                queries.append((q / q.norm()).numpy())
        surfaces = [exact.global_surface(q) for q in queries]
        t0 = time.perf_counter()
        reference = [exact.regional_surfaces(q, s, cell_km=args.cell_km) for q, s in zip(queries, surfaces)]
        r: dict = {"date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "encoder": source,
                   "cell_km": args.cell_km, "photos": len(queries), "torch_threads": torch.get_num_threads(),
                   "exact_s_per_photo": (time.perf_counter() - t0) / len(queries), "variants": {}}
        print(f"{source}, {len(queries)} queries, {args.cell_km} km cells; every cell exactly: "
              f"{r['exact_s_per_photo']:.2f} s a photo", file=sys.stderr)
        print("| path | s per photo (3 windows) | L1 median | L1 90th pct | L1 max | window mass, max off | "
              "top cell > 1 cell off |\n|---|---:|---:|---:|---:|---:|---:|")
        outputs = {}

        def row(name: str, got, against, seconds: float | None) -> dict:
            e = np.array([w for a, b in zip(got, against) for w in window_errors(a, b)])
            v = {"s_per_photo": seconds, "l1_median": float(np.median(e[:, 0])),
                 "l1_p90": float(np.quantile(e[:, 0], 0.9)), "l1_max": float(e[:, 0].max()),
                 "window_mass_max_off": float(e[:, 1].max()), "top_cell_off_gt1": int((e[:, 2] > 1).sum()),
                 "windows": len(e)}
            print(f"| {name} | {'' if seconds is None else f'{seconds:.3f}'} | {v['l1_median']:.3f} | "
                  f"{v['l1_p90']:.3f} | {v['l1_max']:.3f} | {v['window_mass_max_off']:.3f} | "
                  f"{v['top_cell_off_gt1']} of {v['windows']} |", flush=True)
            return v

        for name, changes in {**VARIANTS, **(SWEEP if args.sweep else {})}.items():
            m = maker(**changes)
            m.regional_surfaces(queries[0], surfaces[0], cell_km=args.cell_km)  # warm-up
            t0 = time.perf_counter()
            outputs[name] = [m.regional_surfaces(q, s, cell_km=args.cell_km) for q, s in zip(queries, surfaces)]
            r["variants"][name] = row(name, outputs[name], reference, (time.perf_counter() - t0) / len(queries))
        # What the branch lattices alone change against the path they replaced (not against the reference).
        for name in [BRANCHES, *(n for n in SWEEP if args.sweep and n.startswith("branch"))]:
            r["variants"][f"{name}, against the one lattice"] = row(f"{name}, against the one lattice (not the "
                                                                    "reference)", outputs[name], outputs[BEFORE], None)
    if args.out:
        Path(args.out).write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
