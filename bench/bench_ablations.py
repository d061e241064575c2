"""Ablations on SunWorld, same data and budget, several seeds: does joint place + time training help time?

Trains, for each seed, GT-Loc (joint), GT-Loc with the composed heads' terms, GT-Loc with the poster's literal TML
target, time only (the paper's TimeLoc), location only (GeoCLIP-like) and the regression-head baseline (a
supervised CNN probe of the pixels: the same backbone regressing place and time) on one SunWorld dataset, then
evaluates every model on the test split with the evaluation suite (plus time given the true place, the ig2t head,
for the models with both heads). Reference rows that need no training come from bench/sunworld_ceilings.py:
- "prior": always the most common month and hour of the training photos (the floor any model must beat);
- kNN oracles fed the TRUE sun of each photo: elevation + latitude (what a photo shows without its place-dependent
  part), + the sun's azimuth relative to the region's street grid (what the shadows across the grid show), + the
  true place (the ceiling for a model that knows where the photo was taken);
- chance on place: a random training place, the best single place; R@10 of a random ranking.
Results: <out>/ablations.json (per seed and aggregated) and a markdown table (mean +- sd over seeds) on stdout.

    .venv/bin/python bench/bench_ablations.py --out bench/runs/ablations
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

from gtloc_engine.evaluation.runner import METRIC_COLUMNS, evaluate_records  # noqa: E402
from gtloc_engine.inference.predictor import Predictor  # noqa: E402
from gtloc_engine.model.checkpoint import load_checkpoint  # noqa: E402
from gtloc_engine.model.config import preset  # noqa: E402
from gtloc_engine.synth import write_dataset  # noqa: E402
from gtloc_engine.records import read_manifest  # noqa: E402
from gtloc_engine.training.regression_baseline import RegressionTrainer  # noqa: E402
from gtloc_engine.training.trainer import MODEL_FILE, TrainConfig, Trainer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sunworld_ceilings import chance_rows, oracle_rows  # noqa: E402

VARIANTS = {
    "GT-Loc (joint)": {},
    # The composed InfoNCE/TML terms of the fused heads (ig2t, it2g, gt2i; training/trainer.py), same budget.
    "GT-Loc + composed heads": {"composed_weight": 0.5},
    # The poster's literal TML target 1 - softmax(delta) (it does not sum to 1), everything else as the joint model.
    "GT-Loc, poster TML target": {"tml_target": "poster"},
    "time only (TimeLoc)": {"loc_weight": 0.0},
    "location only (GeoCLIP-like)": {"time_weight": 0.0},
    "regression head": {"regression": True},
}


def train_and_evaluate(name: str, overrides: dict, seed: int, args, manifest: Path, run_dir: Path) -> dict:
    overrides = dict(overrides)
    regression = overrides.pop("regression", False)
    cfg = TrainConfig(
        out_dir=str(run_dir), model=preset(args.preset).to_dict(), manifest=str(manifest), epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, backbone_lr=args.lr, seed=seed, loc_queue=args.queue,
        time_queue=args.queue, warmup_steps=20, cache_dir=str(Path(args.out) / "feature_cache"), progress=False,
        resume=False, tau_delta=args.tau_delta, **overrides,
    )
    test = [r for r in read_manifest(manifest) if r.split == "test"]
    t0 = time.perf_counter()
    if regression:
        trainer = RegressionTrainer(cfg)
        trainer.run()
        metrics = trainer.evaluate_records(test)
    else:
        Trainer(cfg).run()
        metrics, _ = evaluate_records(Predictor(load_checkpoint(run_dir / MODEL_FILE), cache=False), test)
    metrics["train_eval_s"] = time.perf_counter() - t0
    print(f"  seed {seed} {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()), file=sys.stderr)
    return metrics


def aggregate(per_seed: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    keys = sorted({k for m in per_seed for k in m})
    return {k: (float(np.mean([m[k] for m in per_seed if k in m])), float(np.std([m[k] for m in per_seed if k in m])))
            for k in keys}


def table(rows: dict[str, dict[str, tuple[float, float]]]) -> str:
    columns = [(k, h) for k, h in METRIC_COLUMNS if k not in ("acc_1km", "acc_25km")]
    lines = ["| model | " + " | ".join(h for _, h in columns) + " |", "|---|" + "---|" * len(columns)]
    for name, stats in rows.items():
        cells = []
        for key, _ in columns:
            if key not in stats:
                cells.append("-")
                continue
            mean, sd = stats[key]
            fmt = ".2f" if "_err" in key else ".1f"
            cells.append(f"{mean:{fmt}} ± {sd:{fmt}}" if sd > 0 else f"{mean:{fmt}}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/runs/ablations")
    p.add_argument("--n-photos", type=int, default=3000, help="(the demo: 4000)")
    p.add_argument("--n-regions", type=int, default=24, help="SunWorld regions (fewer: place is easier to learn)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--preset", default="small")
    p.add_argument("--epochs", type=int, default=8, help="(the demo: 12)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--queue", type=int, default=1024)
    p.add_argument("--tau-delta", type=float, default=TrainConfig.tau_delta,
                   help="TML target temperature (torus distance)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = p.parse_args()

    out = Path(args.out)
    t0 = time.perf_counter()
    manifest = write_dataset(out / "sunworld", args.n_photos, seed=0, untimed_fraction=0.0,
                             world={"n_regions": args.n_regions})
    per_variant: dict[str, list[dict]] = {v: [] for v in args.variants}
    for seed in args.seeds:
        for name in args.variants:
            slug = name.split(" (")[0].replace(" ", "-").lower()
            per_variant[name].append(train_and_evaluate(name, VARIANTS[name], seed, args, manifest,
                                                        out / f"seed{seed}" / slug))
            partial = {"args": vars(args), "per_seed": per_variant, "finished": False}
            (out / "ablations.partial.json").write_text(json.dumps(partial, indent=2) + "\n")
    rows = {name: aggregate(ms) for name, ms in per_variant.items()}
    references = {**oracle_rows(manifest), **chance_rows(manifest)}
    rows.update({name: {k: (v, 0.0) for k, v in m.items()} for name, m in references.items()})
    result = {"args": vars(args), "wall_s": time.perf_counter() - t0, "per_seed": per_variant,
              "aggregate": {n: {k: list(v) for k, v in s.items()} for n, s in rows.items()}}
    (out / "ablations.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    print(f"\n{len(args.seeds)} seeds, {args.n_photos} photos, {args.epochs} epochs, wall {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
