"""The offline demo: SunWorld photos -> train a small model from scratch -> predict held-out photos -> metrics.

Everything runs on a CPU with nothing downloaded. Outputs in the demo folder: sunworld/ (JPEGs with EXIF,
manifest.csv, scenes.csv), run/ (model.safetensors, history), predictions.json (per test photo: truth and
prediction), metrics.json and metrics.md (the evaluation table), chance.json (what guessing reaches on the same
test photos), results.gpkg (the first 40 test photos: points, candidates, credible regions, claim verdicts) and
rasters/ (global and regional probability GeoTIFFs of three of them). Re-running resumes: finished photos,
features and epochs are kept.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gtloc_engine.evaluation.runner import evaluate_embeddings, markdown_table
from gtloc_engine.geo import haversine_km
from gtloc_engine.inference.predictor import Predictor
from gtloc_engine.io.atomic import atomic_write
from gtloc_engine.model.checkpoint import load_checkpoint
from gtloc_engine.model.config import preset
from gtloc_engine.records import read_manifest
from gtloc_engine.training.trainer import MODEL_FILE, TrainConfig, Trainer

log = logging.getLogger(__name__)


def chance_levels(train_latlon_deg: np.ndarray, test_latlon_deg: np.ndarray, n_retrieval: int) -> dict[str, float]:
    """What guessing reaches on the test photos, for reading the demo's and the benchmarks' place numbers:
    - a random training place: the expected share of test photos within 2500 km of one training photo's place
      drawn at random, and the median distance to it;
    - the best single place: the training photo's place with the most training photos within 2500 km, guessed for
      every test photo (chosen on the training split, scored on the test split);
    - retrieval: R@10 of a random ranking of n_retrieval photos, 10 / n_retrieval (in %)."""
    train = np.asarray(train_latlon_deg, dtype=np.float64)
    test = np.asarray(test_latlon_deg, dtype=np.float64)
    rng = np.random.default_rng(0)
    ref = train[rng.choice(len(train), size=min(len(train), 2000), replace=False)]
    d_test = haversine_km(test[:, None, :], ref[None, :, :])  # (test, ref)
    d_train = haversine_km(ref[:, None, :], train[None, :, :])  # (ref, train)
    best = int(np.argmax((d_train <= 2500.0).sum(axis=1)))
    return {
        "random_place_acc_2500km": float(100.0 * np.mean(d_test <= 2500.0)),
        "random_place_median_km": float(np.median(d_test)),
        "best_place_acc_2500km": float(100.0 * np.mean(d_test[:, best] <= 2500.0)),
        "retrieval_r@10": float(100.0 * min(10, n_retrieval) / max(n_retrieval, 1)),
    }


@dataclass
class DemoConfig:
    """Sized to finish in under 3 minutes on 2 CPU cores."""

    n_photos: int = 4000
    seed: int = 0
    preset: str = "small"
    epochs: int = 12
    batch_size: int = 128
    lr: float = 1e-3  # heads and backbone alike: the backbone starts from random weights
    untimed_fraction: float = 0.3  # like MP-16, many training photos carry no capture time
    # SunWorld's default 300 regions leave ~8 training photos per region at this size: too few to learn a place.
    n_regions: int = 24


def run_demo(out_dir: str | Path, cfg: DemoConfig = DemoConfig(), *, progress: bool = True) -> dict:
    """Run the whole demo into `out_dir`; returns the test metrics."""
    from gtloc_engine.synth import write_dataset

    out = Path(out_dir)
    log.info("writing %d SunWorld photos to %s", cfg.n_photos, out / "sunworld")
    manifest = write_dataset(out / "sunworld", cfg.n_photos, seed=cfg.seed, untimed_fraction=cfg.untimed_fraction,
                             world={"n_regions": cfg.n_regions})
    train_cfg = TrainConfig(
        out_dir=str(out / "run"), model=preset(cfg.preset).to_dict(), manifest=str(manifest), epochs=cfg.epochs,
        batch_size=cfg.batch_size, lr=cfg.lr, backbone_lr=cfg.lr, seed=cfg.seed, loc_queue=1024, time_queue=1024,
        warmup_steps=20, cache_dir=str(out / "feature_cache"), progress=progress,
    )
    Trainer(train_cfg).run()
    predictor = Predictor(load_checkpoint(out / "run" / MODEL_FILE))
    test = [r for r in read_manifest(manifest) if r.split == "test"]
    emb, ok, failures = predictor.embed_photos([r.path for r in test])
    predictions = predictor.predict_embeddings(emb, top_k=5)
    results = []
    for i, pred in zip(ok, predictions):
        r = test[i]
        truth = {"lat_deg": r.lat_deg, "lon_deg": r.lon_deg}
        if r.torus is not None:
            truth.update(month_pos=round(r.torus[0] * 12, 3), hour_local=round(r.torus[1] * 24, 3))
        results.append({"photo": str(r.path), "truth": truth, **pred})
    results += [{"photo": str(test[i].path), "error": reason} for i, reason in failures]
    metrics = evaluate_embeddings(predictor, emb, [test[i] for i in ok])
    table = markdown_table({f"GT-Loc ({cfg.preset}, SunWorld test)": metrics})
    all_records = read_manifest(manifest)
    chance = chance_levels(np.array([(r.lat_deg, r.lon_deg) for r in all_records if r.split == "train"]),
                           np.array([(test[i].lat_deg, test[i].lon_deg) for i in ok]),
                           sum(test[i].torus is not None for i in ok))
    atomic_write(out / "predictions.json", lambda tmp: tmp.write_text(json.dumps(results, indent=2) + "\n"))
    atomic_write(out / "metrics.json", lambda tmp: tmp.write_text(json.dumps(metrics, indent=2) + "\n"))
    atomic_write(out / "chance.json", lambda tmp: tmp.write_text(json.dumps(chance, indent=2) + "\n"))
    atomic_write(out / "metrics.md", lambda tmp: tmp.write_text(table + "\n"))
    print(table)
    print(f"chance: {chance['random_place_acc_2500km']:.1f}% within 2500 km of a random training place, "
          f"{chance['best_place_acc_2500km']:.1f}% of the best single place; R@10 {chance['retrieval_r@10']:.1f}%")

    # The analyst's products for the first test photos: results.gpkg (their SunWorld EXIF place and time are the
    # claims, checked against the model) and GeoTIFFs for three of them. 1-degree surfaces and 40 photos keep
    # this part to ~15 s of CPU (credible regions of a diffuse posterior are many small polygons); rasters come first
    # because a re-run skips photos already in the GeoPackage.
    from gtloc_engine.inference.pipeline import PhotoPipeline, PipelineConfig

    pipeline = PhotoPipeline(out / "run" / MODEL_FILE, cache_dir=out / "feature_cache",
                             config=PipelineConfig(global_res_deg=1.0))
    gpkg_photos = [test[i].path for i in ok][:40]
    pipeline.run(gpkg_photos[:3], out / "results.gpkg", rasters_dir=out / "rasters")
    summary = pipeline.run(gpkg_photos, out / "results.gpkg")
    log.info("wrote %s: %d photos (%d new), %d failed", summary.out_gpkg, summary.n_photos, summary.n_done,
             summary.n_failed)
    return metrics
