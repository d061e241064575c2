"""Benchmark: GeoCLIP's predict vs the bare ViT-L/14 forward vs gtloc predict with the imported GeoCLIP checkpoint.

One run, one machine, one process, so the ratios compare like with like:
  (a) geoclip's GeoCLIP.predict(path, top_k=5), built with from_pretrained=True, clip_pretrained=False
      (its released heads and gallery, a random ViT-L/14: same compute, no hub);
  (b) the bare ViT-L/14 image forward (open_clip, the backbone gtloc uses; and geoclip's transformers CLIP);
  (c) gtloc: `import-geoclip` checkpoint -> load_checkpoint(load_backbone=False) -> Predictor.predict_photos,
      per photo (batch 1) and batched, fp32 and bf16; gallery embeddings from the disk cache (cold cost shown).
Backbones have random weights (no OpenAI weights offline): timings are those of the real model, predictions are not.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_predict.py --out bench/results.json

Needs the optional geoclip package (pip install -e '.[geoclip]'). Prints a markdown table for bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch


def load_avg() -> float:
    return os.getloadavg()[0]


def timed(fn, reps: int) -> tuple[float, list[float]]:
    """Fastest wall seconds of `reps` calls (after the caller's warm-up), and all of them. The minimum, not the
    median: other processes share the CPUs, and they only ever add time."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), times


def interleaved(fns: dict, rounds: int) -> dict[str, float]:
    """Fastest seconds of each function over `rounds` rounds, run A B C A B C ...: a load spike from another
    process then hits every contender instead of one, so ratios stay fair on a shared machine."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: min(ts) for name, ts in times.items()}


def make_photos(folder: Path, n: int) -> list[Path]:
    """Real-photo JPEGs: crops and flips of geoclip's Kauai.png, 1600 x 1200 (a phone-sized decode)."""
    import importlib.util

    from PIL import Image, ImageOps

    kauai = Path(next(iter(importlib.util.find_spec("geoclip").submodule_search_locations))) / "images" / "Kauai.png"
    base = Image.open(kauai).convert("RGB")
    paths = []
    for i in range(n):
        w, h = base.size
        crop = base.crop((i * 7 % 60, i * 11 % 50, w - i * 5 % 40, h - i * 3 % 30))
        img = crop.resize((1600, 1200), Image.BICUBIC)
        if i % 2:
            img = ImageOps.mirror(img)
        path = folder / f"photo_{i:02d}.jpg"
        img.save(path, quality=92)
        paths.append(path)
    return paths


def bench_geoclip(r: dict, photos: list[Path], pixels: torch.Tensor, reps: int, geoclip_reps: int, log) -> None:
    """(a) GeoCLIP as a user runs it, and (b) its transformers ViT-L/14 forward; the model is freed on return."""
    from geoclip import GeoCLIP

    t0 = time.perf_counter()
    geoclip = GeoCLIP(from_pretrained=True, clip_pretrained=False).eval()
    r["geoclip_build_s"] = time.perf_counter() - t0
    log(f"geoclip built in {r['geoclip_build_s']:.1f} s")
    clip = geoclip.image_encoder.CLIP
    with torch.inference_mode():
        clip.get_image_features(pixel_values=pixels[:1])  # warm-up
        r["geoclip_vit_forward_b1_s"], _ = timed(lambda: clip.get_image_features(pixel_values=pixels[:1]), reps)
    log(f"geoclip ViT-L/14 forward b1 {r['geoclip_vit_forward_b1_s']:.2f} s")
    r["geoclip_predict_s"], r["geoclip_predict_all_s"] = timed(lambda: geoclip.predict(str(photos[0]), top_k=5),
                                                               geoclip_reps)
    log(f"geoclip predict {r['geoclip_predict_s']:.2f} s per photo")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8, help="photos per batch for the batched runs")
    ap.add_argument("--reps", type=int, default=3, help="interleaved rounds of each gtloc/backbone measurement")
    ap.add_argument("--geoclip-reps", type=int, default=2, help="timed GeoCLIP.predict calls (~24 s each)")
    ap.add_argument("--out", help="write all numbers as JSON here")
    args = ap.parse_args()

    from gtloc_engine.inference.predictor import Predictor
    from gtloc_engine.io.atomic import atomic_write_text
    from gtloc_engine.io.batches import iter_pixel_batches
    from gtloc_engine.model.checkpoint import load_checkpoint
    from gtloc_engine.model.geoclip_import import import_geoclip

    torch.set_grad_enabled(False)
    r: dict = {"date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
               "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": sys.version.split()[0],
               "batch": args.batch, "load_avg_1min": {"start": load_avg()}}
    try:
        with open("/proc/cpuinfo") as f:
            r["cpu_model"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        r["cpu_model"] = platform.processor()
    work = Path(tempfile.mkdtemp(prefix="gtloc-bench-"))
    photos = make_photos(work, args.batch)
    pixels = torch.randn(args.batch, 3, 224, 224)

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')} load {load_avg():.2f}] {msg}", file=sys.stderr, flush=True)

    bench_geoclip(r, photos, pixels, args.reps, args.geoclip_reps, log)
    r["load_avg_1min"]["after_geoclip"] = load_avg()

    # (c) gtloc: import, load, build the gallery constants once (cold), then from the disk cache (warm).
    ckpt = work / "geoclip.safetensors"
    t0 = time.perf_counter()
    import_geoclip(ckpt)
    r["gtloc_import_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = load_checkpoint(ckpt, load_backbone=False)  # random ViT-L/14 in place of the OpenAI weights
    r["gtloc_load_s"] = time.perf_counter() - t0
    cache = work / "cache"
    t0 = time.perf_counter()
    Predictor(model, cache_dir=cache)
    r["gtloc_gallery_cold_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    predictor = Predictor(model, cache_dir=cache)
    r["gtloc_gallery_warm_s"] = time.perf_counter() - t0
    log(f"gtloc import {r['gtloc_import_s']:.1f} s, load {r['gtloc_load_s']:.1f} s, gallery cold "
        f"{r['gtloc_gallery_cold_s']:.1f} s / warm {r['gtloc_gallery_warm_s']:.2f} s")

    def measure(tag: str) -> None:
        backbone = model.backbone
        one, batch = photos[:1], photos
        fns = {
            "bare_b1": lambda: backbone(pixels[:1]),
            "predict_b1": lambda: predictor.predict_photos(one, top_k=5, batch_size=1),
            "bare_batch": lambda: backbone(pixels),
            "predict_batch": lambda: predictor.predict_photos(batch, top_k=5, batch_size=args.batch),
        }
        with torch.inference_mode():
            backbone(pixels[:1])  # warm-up (oneDNN primitive creation)
            backbone(pixels)
            for name, secs in interleaved(fns, args.reps).items():
                r[f"{tag}_{name}_s"] = secs
        log(f"{tag}: " + ", ".join(f"{k} {r[f'{tag}_{k}_s']:.2f} s" for k in fns))
        # What a photo costs besides the forward, measured directly rather than as a difference of two noisy
        # totals: decode + preprocess, then adapter -> posterior over 100K places -> top-5 and time notes.
        r[f"{tag}_decode_b1_s"], _ = timed(
            lambda: next(iter_pixel_batches(one, backbone.preprocess, batch_size=1, draft_px=backbone.image_size)),
            args.reps)
        features = torch.randn(1, backbone.feature_dim)
        r[f"{tag}_post_backbone_b1_s"], _ = timed(
            lambda: predictor.predict_embeddings(model.embed_features(features).numpy(), top_k=5), args.reps)

    measure("fp32")
    r["load_avg_1min"]["after_fp32"] = load_avg()
    model.backbone.set_precision("bf16")
    measure("bf16")
    r["load_avg_1min"]["end"] = load_avg()

    b = args.batch
    r["ratios"] = {
        "geoclip_predict_over_gtloc_fp32_b1": r["geoclip_predict_s"] / r["fp32_predict_b1_s"],
        "geoclip_predict_over_gtloc_bf16_b1": r["geoclip_predict_s"] / r["bf16_predict_b1_s"],
        "gtloc_fp32_b1_total_over_bare": r["fp32_predict_b1_s"] / r["fp32_bare_b1_s"],
        "beyond_backbone_over_bare_fp32": (r["fp32_decode_b1_s"] + r["fp32_post_backbone_b1_s"])
        / r["fp32_bare_b1_s"],
        "beyond_backbone_over_bare_bf16": (r["bf16_decode_b1_s"] + r["bf16_post_backbone_b1_s"])
        / r["bf16_bare_b1_s"],
        "gtloc_fp32_batched_throughput_over_bare": r["fp32_bare_batch_s"] / r["fp32_predict_batch_s"],
        "gtloc_bf16_batched_throughput_over_bare_bf16": r["bf16_bare_batch_s"] / r["bf16_predict_batch_s"],
        "bf16_over_fp32_speedup_batched": r["fp32_predict_batch_s"] / r["bf16_predict_batch_s"],
    }
    q = r["ratios"]
    rows = [
        ("(a) geoclip `GeoCLIP.predict`, 1 photo", r["geoclip_predict_s"], 1.0),
        ("(b) geoclip's transformers ViT-L/14 forward, batch 1", r["geoclip_vit_forward_b1_s"], None),
        ("(b) open_clip ViT-L/14 forward fp32, batch 1", r["fp32_bare_b1_s"], None),
        (f"(b) open_clip ViT-L/14 forward fp32, batch {b} (per photo)", r["fp32_bare_batch_s"] / b, None),
        ("(c) gtloc predict fp32, 1 photo", r["fp32_predict_b1_s"], r["geoclip_predict_s"] / r["fp32_predict_b1_s"]),
        (f"(c) gtloc predict fp32, batch {b} (per photo)", r["fp32_predict_batch_s"] / b,
         r["geoclip_predict_s"] * b / r["fp32_predict_batch_s"]),
        ("(b) open_clip ViT-L/14 forward bf16, batch 1", r["bf16_bare_b1_s"], None),
        (f"(b) open_clip ViT-L/14 forward bf16, batch {b} (per photo)", r["bf16_bare_batch_s"] / b, None),
        ("(c) gtloc predict bf16, 1 photo", r["bf16_predict_b1_s"], r["geoclip_predict_s"] / r["bf16_predict_b1_s"]),
        (f"(c) gtloc predict bf16, batch {b} (per photo)", r["bf16_predict_batch_s"] / b,
         r["geoclip_predict_s"] * b / r["bf16_predict_batch_s"]),
        ("gtloc besides the forward: JPEG decode + preprocess, 1 photo", r["fp32_decode_b1_s"], None),
        ("gtloc besides the forward: adapter + posterior over 100K places + top-5, 1 photo",
         r["fp32_post_backbone_b1_s"], None),
    ]
    print("| what | seconds | speed-up vs (a) |\n|---|---:|---:|")
    for name, secs, speedup in rows:
        print(f"| {name} | {secs:.3f} | {'' if speedup is None else f'{speedup:.1f}x'} |")
    print(f"\n- gtloc fp32 batched throughput / bare fp32 backbone batched: "
          f"{q['gtloc_fp32_batched_throughput_over_bare']:.3f} (bf16: "
          f"{q['gtloc_bf16_batched_throughput_over_bare_bf16']:.3f})")
    print(f"- gtloc per photo besides the backbone forward (decode + adapter + posterior + top-5): "
          f"{100 * q['beyond_backbone_over_bare_fp32']:.1f}% of the fp32 forward "
          f"({100 * q['beyond_backbone_over_bare_bf16']:.1f}% of the bf16 one); whole gtloc predict / bare forward, "
          f"batch 1: {q['gtloc_fp32_b1_total_over_bare']:.3f}")
    print(f"- one-off: import {r['gtloc_import_s']:.1f} s, load {r['gtloc_load_s']:.1f} s, 100K gallery "
          f"embeddings cold {r['gtloc_gallery_cold_s']:.1f} s, then from the disk cache "
          f"{r['gtloc_gallery_warm_s']:.2f} s; geoclip build {r['geoclip_build_s']:.1f} s")
    print(f"- {r['cpu_model']}, {r['machine']}, torch {r['torch']} ({r['torch_threads']} threads), {r['date_utc']}, "
          f"1-min load average {r['load_avg_1min']}")
    if args.out:
        atomic_write_text(args.out, json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
