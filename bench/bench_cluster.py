"""Distributed batch prediction: photos per second into a PostGIS case with 1 vs 2 Dask worker processes
(gtloc_engine/cluster.py), against the same pipeline in one process, on the tiny model.

Usage (a few minutes on 2 CPU cores; run it on a quiet machine, nothing else busy):

    nice .venv/bin/python bench/bench_cluster.py --photos 480 --workers 1,2 --out bench/results/bench_cluster.json

Without --model it trains the tiny preset on the toy set of the tests (tests/conftest.write_toy_set, 30 epochs,
~10 s) and predicts that set's photos. It starts a throwaway PostgreSQL + PostGIS on a unix socket
(tests/postgis_cluster.py) and gives each run a fresh database. Each run is one `predict_on_cluster` call on a
new local cluster (threads_per_worker=1, OMP_NUM_THREADS = cores / workers), timed from the call to its return:

    total_s       everything: cluster start, each worker importing torch and loading the model, every photo
    steady_photos_per_s   photos committed after the first committed batch, per second since then (the rate a
                  long job settles at, without the start-up)

"1 process" is PhotoPipeline.run in this process into the case (no Dask), the model loaded before the clock starts.
With the tiny model a photo costs little backbone and much per-photo work (surfaces, credible regions, claims,
the case's transactions), so this measures how that work spreads over worker processes, not GPU throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the toy-set writer and the throwaway PostgreSQL server


def _model(args, work: Path) -> tuple[Path, Path]:
    """(checkpoint, photo folder): the given ones, or the tiny model trained on the toy set and its photos."""
    from conftest import write_toy_set

    manifest = write_toy_set(work / "toy", args.photos, seed=0)
    photos = manifest.parent / "img"
    if args.model:
        return Path(args.model), photos
    from gtloc_engine.model import preset
    from gtloc_engine.training.trainer import MODEL_FILE, TrainConfig, Trainer

    run = work / "run"
    Trainer(TrainConfig(out_dir=str(run), model=preset("tiny").to_dict(), manifest=str(manifest), epochs=30,
                        batch_size=64, lr=1e-3, loc_queue=128, time_queue=128, warmup_steps=10,
                        cache_dir=str(work / "features"), progress=False)).run()
    return run / MODEL_FILE, photos


def _timed(run) -> dict:
    """Run `run(progress)`; total seconds and the steady rate after the first committed batch."""
    marks: list[tuple[float, int]] = []
    start = time.perf_counter()
    summary = run(lambda done, total: marks.append((time.perf_counter(), done)))
    end = time.perf_counter()
    first = next(((t, done) for t, done in marks if done > 0), None)
    steady = None
    if first is not None and end > first[0]:
        steady = (summary.n_done + summary.n_skipped - first[1]) / (end - first[0])
    return {"total_s": round(end - start, 2), "steady_photos_per_s": None if steady is None else round(steady, 2),
            "n_done": summary.n_done, "n_failed": summary.n_failed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=480, help="toy photos to predict")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare, e.g. 1,2")
    parser.add_argument("--model", help="a checkpoint (default: the tiny model trained here)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--chunk-photos", type=int, default=64)
    parser.add_argument("--res-deg", type=float, default=1.0, help="surface cell size (the tests' 1 deg)")
    parser.add_argument("--out", help="write the numbers as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("GTLOC_CACHE", tempfile.mkdtemp(prefix="gtloc-bench-cache-"))

    from postgis_cluster import PgServer

    from gtloc_engine.cluster import predict_on_cluster
    from gtloc_engine.inference.pipeline import PhotoPipeline, PipelineConfig

    work = Path(tempfile.mkdtemp(prefix="gtloc-bench-cluster-"))
    model, photos = _model(args, work)
    server = PgServer.start()
    cores = os.cpu_count() or 1
    rows = []
    try:
        params = {"model": str(model), "photos": [str(photos)], "top_k": 5, "batch_size": args.batch_size,
                  "res_deg": args.res_deg, "cache_dir": str(work / "constants")}
        pipeline = PhotoPipeline(model, top_k=5, cache_dir=work / "constants",
                                 config=PipelineConfig(global_res_deg=args.res_deg))
        pipeline.warm_up()
        case = server.create_database("bench_one_process")
        rows.append({"run": "1 process (no Dask)", **_timed(
            lambda progress: pipeline.run([photos], case, batch_size=args.batch_size, progress=progress))})
        for n in (int(w) for w in args.workers.split(",")):
            case = server.create_database(f"bench_workers_{n}")
            os.environ["OMP_NUM_THREADS"] = str(max(1, cores // n))
            rows.append({"run": f"{n} Dask worker{'s' if n > 1 else ''}", **_timed(
                lambda progress, n=n, case=case: predict_on_cluster({**params, "out_gpkg": case}, f"local:{n}",
                                                                    chunk_photos=args.chunk_photos,
                                                                    progress=progress))})
    finally:
        server.stop()
    result = {"photos": args.photos, "cores": cores, "batch_size": args.batch_size, "chunk_photos": args.chunk_photos,
              "res_deg": args.res_deg, "model": "tiny (trained here)" if not args.model else str(args.model),
              "runs": rows}
    print("| run | total s | steady photos/s |\n|---|---|---|")
    for row in rows:
        print(f"| {row['run']} | {row['total_s']} | {row['steady_photos_per_s']} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
