"""The offline demo: SunWorld photos -> train a small model from scratch -> predict held-out photos -> metrics.

Everything runs on a CPU with nothing downloaded. Outputs in the demo folder: sunworld/ (JPEGs with EXIF and
manifest.csv), run/ (model.safetensors, history), predictions.json (per test photo: truth and prediction),
metrics.json and metrics.md (the evaluation table), results.gpkg (the first 40 test photos: points, candidates,
credible regions, claim verdicts) and rasters/ (global and regional probability GeoTIFFs of three of them).
Re-running resumes: finished photos, features and epochs are kept.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from gtloc_engine.evaluation.runner import evaluate_embeddings, markdown_table
from gtloc_engine.inference.predictor import Predictor
from gtloc_engine.io.atomic import atomic_write
from gtloc_engine.model.checkpoint import load_checkpoint
from gtloc_engine.model.config import preset
from gtloc_engine.records import read_manifest
from gtloc_engine.training.trainer import MODEL_FILE, TrainConfig, Trainer

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """Sized to finish in under 3 minutes on 2 CPU cores."""

    n_photos: int = 3000
    seed: int = 0
    preset: str = "small"
    epochs: int = 10
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
    atomic_write(out / "predictions.json", lambda tmp: tmp.write_text(json.dumps(results, indent=2) + "\n"))
    atomic_write(out / "metrics.json", lambda tmp: tmp.write_text(json.dumps(metrics, indent=2) + "\n"))
    atomic_write(out / "metrics.md", lambda tmp: tmp.write_text(table + "\n"))
    print(table)

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
