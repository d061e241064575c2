"""Benchmark: the analyst's path (`gtloc predict FOLDER --out case.gpkg [--rasters DIR]`) vs the bare backbone forward.

One process, interleaved rounds (bare forward, pipeline -> GeoPackage, pipeline -> GeoPackage + rasters, repeated),
so a load spike from another process hits every contender and the ratios compare like with like:
  - the paper-size model: `import-geoclip` (GeoCLIP's released location encoder, adapter, logit scale) with a
    random ViT-L/14 in place of the OpenAI weights (same compute; predictions are not real);
  - full-size JPEGs (1600 x 1200, bench_predict.make_photos), half of them with an EXIF GPS + time claim written
    by exiftool, so the claim check and the time posterior given the place run as they do on real case photos;
  - the per-stage profile of PhotoPipeline.run (pipeline.StageProfile: decode wait, forward, adapter, global
    surface + candidates, regions, claim place score, time posterior, claims, sun check, thumbnails, GeoPackage
    write, the global raster, the regional surfaces and their rasters), and the global surface and candidates timed
    apart on the same embeddings;
  - the first photo of a fresh model: constants cold (a fresh cache folder), then of the same model cached.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_analyst_path.py --out bench/results/analyst_path.json

Needs the optional geoclip package (pip install -e '.[geoclip]') and exiftool. Prints markdown tables for
bench/README.md. The machine is shared: the 1-minute load average is recorded at each step.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import load_avg, make_photos  # noqa: E402  (the same photos as bench_predict)

# A claimed place and time per claimed photo (Kauai, the photos' scene, and a few others): lat, lon, local time.
CLAIMS = [(22.07, -159.50, "2023:07:14 10:30:00"), (48.86, 2.35, "2022:12:02 15:10:00"),
          (-33.87, 151.21, "2021:03:21 08:05:00"), (40.71, -74.01, "2024:10:09 18:45:00")]


def add_claims(photos: list[Path]) -> None:
    """EXIF GPS and DateTimeOriginal into every other photo (exiftool), so the claim path is timed too."""
    for k, path in enumerate(photos[::2]):
        lat, lon, when = CLAIMS[k % len(CLAIMS)]
        subprocess.run(["exiftool", "-q", "-overwrite_original", f"-GPSLatitude={abs(lat)}",
                        f"-GPSLatitudeRef={'N' if lat >= 0 else 'S'}", f"-GPSLongitude={abs(lon)}",
                        f"-GPSLongitudeRef={'E' if lon >= 0 else 'W'}", f"-DateTimeOriginal={when}", str(path)],
                       check=True)


def bench_int8(pipe, pixels: torch.Tensor, emb, rounds: int, log) -> dict:
    """The issue's int8 rule on this CPU: speed-up of the image tower (interleaved with fp32), feature cosine, and
    the top-1 place of the photos' global surfaces (same cell or a neighbour). torch's own int8 dynamic quantisation
    (torch.ao.quantization.quantize_dynamic, nn.Linear only: attention's fused in-projection stays fp32)."""
    import copy

    import numpy as np
    from torch.ao.quantization import quantize_dynamic

    visual = pipe.model.backbone.clip.visual
    quantised = quantize_dynamic(copy.deepcopy(visual), {torch.nn.Linear}, dtype=torch.qint8)
    quantised(pixels[:1])  # warm-up
    times = {"fp32": [], "int8": []}
    for _ in range(rounds):
        for name, tower in (("fp32", visual), ("int8", quantised)):
            t0 = time.perf_counter()
            features = tower(pixels)
            times[name].append(time.perf_counter() - t0)
            if name == "fp32":
                f32 = features
            else:
                i8 = features
    cosine = torch.nn.functional.cosine_similarity(f32, i8).numpy()
    emb8 = pipe.model.embed_features(i8).numpy()
    maker, same = pipe.surface_maker, 0
    for a, b in zip(emb, emb8):
        sa, sb = maker.global_surface(a), maker.global_surface(b)
        ra = np.unravel_index(np.argmax(sa.density_per_km2), sa.shape)
        rb = np.unravel_index(np.argmax(sb.density_per_km2), sb.shape)
        same += max(abs(int(x) - int(y)) for x, y in zip(ra, rb)) <= 1
    out = {"fp32_s_per_photo": min(times["fp32"]) / len(pixels), "int8_s_per_photo": min(times["int8"]) / len(pixels),
           "speedup_per_round": [f / q for f, q in zip(times["fp32"], times["int8"])],
           "cosine_min": float(cosine.min()), "cosine_mean": float(cosine.mean()),
           "top1_place_same_cell_or_neighbour": same / len(emb)}
    out["speedup_median"] = statistics.median(out["speedup_per_round"])
    log(f"int8: {out}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="photos per run")
    ap.add_argument("--batch", type=int, default=4, help="photos per batch (the look-ahead overlaps batches)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the fastest of each is reported")
    ap.add_argument("--int8", action="store_true",
                    help="also time torch's int8 dynamic quantisation of the image tower's Linear layers against fp32")
    ap.add_argument("--device", default="cpu", help="where the model computes: cpu (default), cuda, cuda:N, auto")
    ap.add_argument("--out", help="write all numbers as JSON here")
    args = ap.parse_args()

    import gtloc_engine.inference.pipeline as pipeline_module
    from gtloc_engine.inference.pipeline import PhotoPipeline, StageProfile
    from gtloc_engine.inference.surfaces import find_candidates
    from gtloc_engine.io.atomic import atomic_write_text
    from gtloc_engine.io.batches import iter_pixel_batches
    from gtloc_engine.model.checkpoint import load_checkpoint
    from gtloc_engine.device import host, resolve_device, synchronize
    from gtloc_engine.model.geoclip_import import import_geoclip

    device = resolve_device(args.device)
    if args.int8 and device.type != "cpu":
        ap.error("--int8 times torch's CPU int8 kernels: leave --device at cpu")
    torch.set_grad_enabled(False)
    r: dict = {"date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
               "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "n_photos": args.n,
               "rounds": args.rounds, "backbone": "ViT-L-14 (random weights)", "device": str(device),
               "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               "load_avg_1min": {"start": load_avg()},
               "proc_loadavg": {"start": Path("/proc/loadavg").read_text().strip()}}

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')} load {load_avg():.2f}] {msg}", file=sys.stderr, flush=True)

    work = Path(tempfile.mkdtemp(prefix="gtloc-analyst-"))
    try:
        (work / "photos").mkdir()
        photos = make_photos(work / "photos", args.n)
        add_claims(photos)
        ckpt = import_geoclip(work / "geoclip.safetensors")
        # The OpenAI weights cannot be fetched here: the pipeline loads the checkpoint with a random ViT-L/14.
        pipeline_module.load_checkpoint = functools.partial(load_checkpoint, load_backbone=False)

        # First photo of a fresh model (constants cold: a fresh cache folder), then of the same model cached.
        cache = work / "cache"
        for tag in ("cold", "cached"):
            t0 = time.perf_counter()
            pipe = PhotoPipeline(ckpt, cache_dir=cache, device=device)
            t_load = time.perf_counter() - t0
            pipe.warm_up()
            t_constants = time.perf_counter() - t0 - t_load
            pipe.run(photos[:1], work / f"first_{tag}.gpkg", batch_size=1)
            r[f"first_photo_{tag}"] = {"total_s": time.perf_counter() - t0, "load_s": t_load,
                                       "constants_s": t_constants}
            log(f"first photo, constants {tag}: {r[f'first_photo_{tag}']}")

        backbone = pipe.model.backbone
        pixels = next(iter_pixel_batches(photos, backbone.preprocess, batch_size=args.n,
                                         draft_px=backbone.image_size)).pixels.to(device)
        # The serial runs (overlap_forward off) give the per-stage profile: with the look-ahead thread, the forward
        # and the geodata share the cores and each stage's seconds include the other's interference.
        profiles = {"gpkg": StageProfile(), "rasters": StageProfile(), "gpkg_serial": StageProfile(),
                    "rasters_serial": StageProfile()}
        counter = iter(range(10**6))
        overlapped, serial = pipe.config, dataclasses.replace(pipe.config, overlap_forward=False)

        def run(kind: str) -> None:
            k = next(counter)
            pipe.profile = profiles[kind]
            pipe.config = serial if kind.endswith("_serial") else overlapped
            try:
                pipe.run(photos, work / f"{kind}_{k}.gpkg", batch_size=args.batch,
                         rasters_dir=(work / f"rasters_{k}") if kind.startswith("rasters") else None)
            finally:
                pipe.profile, pipe.config = None, overlapped

        fns = {"bare_forward": lambda: [backbone(pixels[i:i + args.batch]) for i in range(0, args.n, args.batch)],
               "gpkg": lambda: run("gpkg"), "gpkg_rasters": lambda: run("rasters"),
               "gpkg_serial": lambda: run("gpkg_serial"), "gpkg_rasters_serial": lambda: run("rasters_serial")}
        backbone(pixels[:args.batch])  # warm-up (oneDNN primitives)
        times: dict[str, list[float]] = {name: [] for name in fns}
        for rnd in range(args.rounds):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                synchronize(device)  # a GPU's queued kernels belong to the contender that queued them
                times[name].append(time.perf_counter() - t0)
            log(f"round {rnd + 1}: " + ", ".join(f"{k} {v[-1] / args.n:.3f} s/photo" for k, v in times.items()))
        r["seconds_per_photo"] = {name: min(ts) / args.n for name, ts in times.items()}
        r["all_seconds"] = times
        # Ratios within each round (the contenders ran back to back, under the same load), then their median.
        r["ratio_vs_forward_per_round"] = {name: [t / b for t, b in zip(ts, times["bare_forward"])]
                                           for name, ts in times.items()}
        r["ratio_vs_forward"] = {name: statistics.median(qs) for name, qs in r["ratio_vs_forward_per_round"].items()}
        n_runs = args.rounds * args.n
        r["stages_s_per_photo"] = {kind: {name: s / n_runs for name, s in prof.seconds.items()}
                                   for kind, prof in profiles.items()}
        backbone_stages = ("decode", "forward", "adapter")
        # The geodata stage: everything a photo costs after its embedding (what a GPU backbone would wait for).
        # "regional_surfaces" runs inside "rasters"; the COG writes run on the background writer thread, and what the
        # main thread waits for them is "raster_wait".
        nested = ("regional_surfaces", "raster_global_write", "raster_regional_write")
        r["geodata_s_per_photo"] = {
            kind: sum(s for name, s in st.items() if name not in backbone_stages and name not in nested)
            for kind, st in r["stages_s_per_photo"].items()}
        r["geodata_photos_per_s"] = {kind: 1.0 / s for kind, s in r["geodata_s_per_photo"].items()}

        # The global surface and the candidates apart, on the photos' own embeddings.
        emb = host(pipe.model.embed_images(pixels))
        maker = pipe.surface_maker
        t_surface, t_cand = [], []
        for e in emb:
            t0 = time.perf_counter()
            surface = maker.global_surface(e)
            t1 = time.perf_counter()
            find_candidates(surface, pipe.top_k, radius_km=maker.config.candidate_radius_km)
            t_surface.append(t1 - t0)
            t_cand.append(time.perf_counter() - t1)
        r["split_s_per_photo"] = {"global_surface": min(t_surface), "candidates": min(t_cand)}
        if args.int8:
            r["int8"] = bench_int8(pipe, pixels, emb, args.rounds, log)
        r["load_avg_1min"]["end"] = load_avg()
        r["proc_loadavg"]["end"] = Path("/proc/loadavg").read_text().strip()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    sp, q = r["seconds_per_photo"], r["ratio_vs_forward"]
    print("| path | s per photo (fastest round) | vs forward (median of per-round ratios) |\n|---|---:|---:|")
    for name, label in (("bare_forward", "bare ViT-L/14 forward (batch)"), ("gpkg", "`--out case.gpkg`"),
                        ("gpkg_rasters", "`--out case.gpkg --rasters DIR`"),
                        ("gpkg_serial", "`--out case.gpkg`, forward not overlapped"),
                        ("gpkg_rasters_serial", "`--out case.gpkg --rasters DIR`, forward not overlapped")):
        print(f"| {label} | {sp[name]:.3f} | {q[name]:.3f}x |")
    print("\n| stage (s per photo, serial runs) | --out case.gpkg | + --rasters |\n|---|---:|---:|")
    st = r["stages_s_per_photo"]
    for name in dict.fromkeys([*st["rasters_serial"], *st["gpkg_serial"]]):
        print(f"| {name} | {st['gpkg_serial'].get(name, 0.0):.4f} | {st['rasters_serial'].get(name, 0.0):.4f} |")
    print(f"| geodata (all after the embedding) | {r['geodata_s_per_photo']['gpkg_serial']:.4f} | "
          f"{r['geodata_s_per_photo']['rasters_serial']:.4f} |")
    print(f"\n- geodata alone (serial runs): {r['geodata_photos_per_s']['gpkg_serial']:.1f} photos/s (gpkg), "
          f"{r['geodata_photos_per_s']['rasters_serial']:.1f} photos/s (with rasters)")
    print(f"- apart: global surface {r['split_s_per_photo']['global_surface']:.4f} s, candidates "
          f"{r['split_s_per_photo']['candidates']:.4f} s per photo")
    if "int8" in r:
        i8 = r["int8"]
        print(f"- int8 dynamic image tower: {i8['int8_s_per_photo']:.3f} vs fp32 {i8['fp32_s_per_photo']:.3f} s per "
              f"photo ({i8['speedup_median']:.2f}x, median of rounds), feature cosine min {i8['cosine_min']:.4f}, "
              f"top-1 place same cell or a neighbour {100 * i8['top1_place_same_cell_or_neighbour']:.0f}%")
    for tag in ("cold", "cached"):
        f = r[f"first_photo_{tag}"]
        print(f"- first photo, constants {tag}: {f['total_s']:.1f} s (load {f['load_s']:.1f} s, constants "
              f"{f['constants_s']:.1f} s)")
    print(f"- {r['machine']}, torch {r['torch']} ({r['torch_threads']} threads), {r['date_utc']}, "
          f"/proc/loadavg {r['proc_loadavg']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
