"""`gtloc` command line: thin; parses arguments, calls the engine's API, prints JSON or one error line.

Exit codes: 0 all went well; 1 some photos in a batch failed (the others have results); 2 bad input or usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from gtloc_engine import __version__
from gtloc_engine.errors import GtlocError
from gtloc_engine.device import DEVICE_CHOICES

log = logging.getLogger("gtloc")

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR = 0, 1, 2


def _latlon(text: str) -> tuple[float, float]:
    try:
        lat, lon = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"place {text!r} must be LAT,LON in degrees, e.g. 48.85,2.35") from None
    return lat, lon


def _write_json(data, out: str | None) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False)
    if out:
        from gtloc_engine.io.atomic import atomic_write

        atomic_write(Path(out), lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
    else:
        print(text)


def cmd_train(args) -> int:
    from gtloc_engine.model.config import preset
    from gtloc_engine.training.trainer import TrainConfig, Trainer

    overrides = {}
    if args.embed_dim:
        overrides["embed_dim"] = args.embed_dim
    if args.time_input:
        overrides["time_input"] = args.time_input
    model_cfg = preset(args.preset, **overrides)
    if args.backbone:
        model_cfg.backbone.name = args.backbone
    if args.pretrained is not None:
        model_cfg.backbone.pretrained = None if args.pretrained.lower() == "none" else args.pretrained
    if args.train_backbone is not None:
        model_cfg.backbone.trainable = args.train_backbone
    fields = {}
    if args.config:
        try:
            fields = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise GtlocError(f"training config {args.config} cannot be read as JSON ({exc})") from None
    for name in ("epochs", "batch_size", "lr", "seed", "loc_weight", "time_weight", "tml_target", "tau_delta",
                 "composed_weight", "cache_dir", "workers", "val_fraction", "stop_after_epochs"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    cfg = TrainConfig(out_dir=args.out, model={**model_cfg.to_dict(), **fields.pop("model", {})},
                      manifest=args.manifest, photo_dir=args.photos, resume=not args.no_resume,
                      progress=not args.quiet, **fields)
    history = Trainer(cfg).run()
    if history:
        print(json.dumps(history[-1]))
    return EXIT_OK


def _place_gallery(args):
    from gtloc_engine.io.galleries import read_place_gallery

    return read_place_gallery(args.gallery) if args.gallery else None


def _time_gallery(args):
    from gtloc_engine.io.galleries import read_time_gallery

    return read_time_gallery(args.time_gallery) if args.time_gallery else None


def request_params(args, method: str) -> dict:
    """The engine's parameters of `method` (gtloc_engine/protocol.py, the worker's too) from the options that carry
    them: each such option's dest is the parameter's name. predict's --out is out_gpkg when it names a GeoPackage
    or a PostGIS case (any other name is the CLI's own JSON file)."""
    from gtloc_engine.io.store import is_database_target
    from gtloc_engine.protocol import PARAMS

    params = {row.name: getattr(args, row.name) for row in PARAMS[method] if getattr(args, row.name, None) is not None}
    if method == "predict" and args.out and (args.out.lower().endswith(".gpkg") or is_database_target(args.out)):
        params["out_gpkg"] = args.out
    if method == "shadow":
        measurements = _shadow_measurements(args)
        if measurements:
            params["measurements"] = measurements
    return params


def _shadow_measurements(args) -> list[dict]:
    """shadow's measurements: the one given by the flat options (--height-m ... --time; their dests are the fields of
    protocol.MEASUREMENT_PARAMS), then one per --measurement K=V,K=V,..."""
    from gtloc_engine.protocol import MEASUREMENT_PARAMS

    flat = {row.name: getattr(args, row.name) for row in MEASUREMENT_PARAMS
            if getattr(args, row.name, None) is not None}
    return ([flat] if flat else []) + [_measurement_text(text) for text in args.measurements or []]


def _measurement_text(text: str) -> dict:
    """'height_m=10,length_m=4.2,time=2024-06-21T14:05' -> a measurement dict, numbers read as the table says."""
    from gtloc_engine.protocol import MEASUREMENT_PARAMS

    kinds = {row.name: row.kind for row in MEASUREMENT_PARAMS}
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or name not in kinds:
            raise GtlocError(f"--measurement {text!r}: {part!r} is not KEY=VALUE with KEY one of "
                             f"{', '.join(kinds)}")
        if kinds[name] == "number":
            try:
                out[name] = float(value)
            except ValueError:
                raise GtlocError(f"--measurement {text!r}: {name} {value!r} is not a number") from None
        else:
            out[name] = value
    return out


def cmd_predict(args) -> int:
    from gtloc_engine.model.backbone import set_cpu_threads
    from gtloc_engine.protocol import PredictParams

    set_cpu_threads(args.threads)
    request = PredictParams.from_params(request_params(args, "predict"), json_output=True)
    if args.cluster is not None:
        from gtloc_engine.io.store import is_database_target

        if not is_database_target(request.out_gpkg):
            raise GtlocError("--cluster needs --out postgresql://HOST/CASE (or service=NAME): a PostGIS case takes "
                             "every worker's results at once, a GeoPackage one writer at a time")
    if request.out_gpkg is not None:
        return _predict_to_geopackage(request, args)
    from gtloc_engine.inference.predictor import Predictor
    from gtloc_engine.io.galleries import read_time_gallery
    from gtloc_engine.io.photos import iter_photo_paths
    from gtloc_engine.model.checkpoint import load_checkpoint

    model = load_checkpoint(request.model)
    model.backbone.set_precision(args.precision).set_tencrop(request.tencrop)
    time_gallery = read_time_gallery(request.time_gallery) if request.time_gallery else None
    predictor = Predictor(model, time_gallery_fields=time_gallery, global_res_deg=request.res_deg)
    paths = iter_photo_paths(request.photos)
    if not paths:
        raise GtlocError(f"no photos found in {' '.join(request.photos)}")
    results = predictor.predict_photos(paths, top_k=request.top_k, batch_size=request.batch_size,
                                       given_time=request.time)
    for r in results:
        if "error" in r:
            print(f"gtloc: error: {r['error']}", file=sys.stderr)
    _write_json(results, args.out)
    return EXIT_PARTIAL if any("error" in r for r in results) else EXIT_OK


def _constants_printer(quiet: bool):
    """A constants.reporting callback: one stderr line when a constants set starts building (the first run of a
    model waits for it) and one about every 10% with the time left; silent with --quiet."""
    shown: dict[str, int] = {}

    def report(step) -> None:
        if quiet:
            return
        decile = step.done * 10 // max(step.total, 1)
        if shown.get(step.name) == decile:
            return
        shown[step.name] = decile
        eta = "" if step.eta_s is None else f", ~{step.eta_s:.0f} s left"
        print(f"gtloc: building model constants '{step.name}' (first time for this model): "
              f"{step.done:,}/{step.total:,} points{eta}", file=sys.stderr)

    return report


def _predict_to_geopackage(request, args) -> int:
    """Photos -> results GeoPackage or PostGIS case with a progress bar, in this process or on a Dask cluster
    (--cluster); Ctrl-C stops after the current batch (on a cluster: the running chunks) and keeps the work."""
    import signal
    import threading

    from tqdm import tqdm

    from gtloc_engine.inference import constants
    from gtloc_engine.io.store import check_store_target

    check_store_target(request.out_gpkg)  # before the model loads: a wrong --out should cost no time
    cancel = threading.Event()

    def on_interrupt(signum, frame):
        if cancel.is_set():  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        print("gtloc: stopping after the current batch (Ctrl-C again to abort)", file=sys.stderr)
        cancel.set()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    # disable=None: no bar when stderr is not a terminal (logs, subprocesses), and none with --quiet
    bar = tqdm(total=0, unit="photo", disable=True if args.quiet else None, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        if args.cluster is not None:  # the workers load the model; the driver lists photos and adds up progress
            from gtloc_engine.cluster import predict_on_cluster

            summary = predict_on_cluster(request, args.cluster, progress=progress, cancel=cancel,
                                         precision=args.precision, device=args.device)
            print(json.dumps(summary.to_json()))
            return 130 if summary.cancelled else EXIT_PARTIAL if summary.n_failed else EXIT_OK
        with constants.reporting(_constants_printer(args.quiet)):
            pipeline = request.pipeline(precision=args.precision)
            pipeline.warm_up()
        summary = pipeline.run(list(request.photos), request.out_gpkg, rasters_dir=request.rasters_dir,
                               batch_size=request.batch_size, progress=progress, cancel=cancel,
                               given_time=request.time)
    finally:
        bar.close()
        signal.signal(signal.SIGINT, previous)
    print(json.dumps(summary.to_json()))
    if summary.cancelled:
        return 130
    return EXIT_PARTIAL if summary.n_failed else EXIT_OK


def cmd_embed(args) -> int:
    import numpy as np
    import torch

    from gtloc_engine.device import host
    from gtloc_engine.inference.predictor import embed_photos
    from gtloc_engine.io.photos import file_sha256, iter_photo_paths
    from gtloc_engine.model.checkpoint import load_checkpoint
    from gtloc_engine.timecode import torus_coords

    model = load_checkpoint(args.model)
    arrays: dict[str, np.ndarray] = {}
    status = EXIT_OK
    if args.photos:
        paths = iter_photo_paths(args.photos)
        emb, ok, failures = embed_photos(model, paths)  # no gallery needed just to embed
        for _, reason in failures:
            print(f"gtloc: error: {reason}", file=sys.stderr)
        status = EXIT_PARTIAL if failures else EXIT_OK
        arrays["image_emb"] = emb
        arrays["image_path"] = np.array([str(paths[i]) for i in ok])
        arrays["image_sha256"] = np.array([file_sha256(paths[i]) for i in ok])
    with torch.no_grad():
        if args.place:
            arrays["place_latlon_deg"] = np.array(args.place, dtype=np.float64)
            arrays["place_emb"] = host(model.embed_locations(torch.tensor(args.place, dtype=torch.float32)))
        if args.time:
            torus = torus_coords(args.time)
            arrays["time_torus"] = torus
            arrays["time_emb"] = host(model.embed_times(torch.as_tensor(torus, dtype=torch.float32)))
    if not arrays:
        raise GtlocError("nothing to embed: give photos, --place LAT,LON or --time TIMESTAMP")
    from gtloc_engine.io.atomic import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # np.savez(path) would append '.npz' to the temp name
            np.savez(f, **arrays)

    atomic_write(Path(args.out), write)
    print(json.dumps({k: list(v.shape) for k, v in arrays.items()}))
    return status


def cmd_info(args) -> int:
    from safetensors import safe_open

    from gtloc_engine.io.photos import file_sha256
    from gtloc_engine.model.checkpoint import read_header
    from gtloc_engine.protocol import InfoParams

    model = InfoParams.from_params(request_params(args, "info")).model
    header = read_header(model)
    with safe_open(str(model), framework="pt") as f:
        n_values = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    header["file"] = {"path": str(model), "sha256": file_sha256(model), "stored_values": n_values}
    _write_json(header, None)
    return EXIT_OK


def cmd_eval(args) -> int:
    from gtloc_engine.evaluation.runner import evaluate_records, markdown_table
    from gtloc_engine.inference.predictor import Predictor
    from gtloc_engine.model.checkpoint import load_checkpoint
    from gtloc_engine.records import read_manifest

    records = [r for r in read_manifest(args.manifest) if args.split in (None, "all") or r.split == args.split]
    if not records:
        raise GtlocError(f"manifest {args.manifest} has no rows in split {args.split!r}")
    model = load_checkpoint(args.model)
    model.backbone.set_tencrop(args.tencrop)
    predictor = Predictor(model, gallery_latlon_deg=_place_gallery(args), time_gallery_fields=_time_gallery(args))
    metrics, failures = evaluate_records(predictor, records)
    for _, reason in failures:
        print(f"gtloc: error: {reason}", file=sys.stderr)
    _write_json(metrics, args.out)
    print(markdown_table({Path(args.model).name: metrics}), file=sys.stderr)
    return EXIT_PARTIAL if failures else EXIT_OK


def cmd_synth(args) -> int:
    from gtloc_engine.synth import write_dataset

    manifest = write_dataset(args.out, args.n, seed=args.seed, image_size=args.image_size,
                             untimed_fraction=args.untimed_fraction)
    print(manifest)
    return EXIT_OK


def cmd_import_geoclip(args) -> int:
    from gtloc_engine.model.checkpoint import read_header
    from gtloc_engine.model.geoclip_import import import_geoclip

    path = import_geoclip(args.out, package_dir=args.geoclip_dir)
    info = read_header(path)["info"]
    print(json.dumps({"checkpoint": str(path), "geoclip_version": info["geoclip_version"],
                      "gallery": info["gallery"], "time_head": info["time_head"]}))
    return EXIT_OK


def cmd_import_gtloc(args) -> int:
    from gtloc_engine.model.checkpoint import read_header
    from gtloc_engine.model.gtloc_import import import_authors_model

    gallery, note = None, None
    if args.gallery:
        from gtloc_engine.io.galleries import read_place_gallery

        gallery, note = read_place_gallery(args.gallery), f"{Path(args.gallery).name} (given at import)"
    else:
        try:  # GeoCLIP's 100K MP-16 gallery (MIT), the authors' GPS gallery too, when the package is installed
            from gtloc_engine.model.geoclip_import import GALLERY_CSV, find_geoclip_package, read_gallery_csv

            model_dir, version = find_geoclip_package()
            gallery = read_gallery_csv(model_dir / GALLERY_CSV)
            note = f"GeoCLIP {GALLERY_CSV} ({len(gallery)} MP-16 places, geoclip {version})"
        except GtlocError:
            pass
    path = import_authors_model(args.source, args.out, gallery_latlon_deg=gallery, gallery_note=note)
    header = read_header(path)
    info = header["info"]
    print(json.dumps({"checkpoint": str(path), "source_sha256": info["source_sha256"], "licence": info["licence"],
                      "heads_trained": header["heads_trained"], "backbone": info["backbone"],
                      "gallery": info["gallery"]}))
    print(f"gtloc: note: {info['licence_note']}", file=sys.stderr)
    return EXIT_OK


def cmd_demo(args) -> int:
    from gtloc_engine.demo import DemoConfig, run_demo

    run_demo(args.out, DemoConfig(seed=args.seed), progress=not args.quiet)
    return EXIT_OK


def cmd_serve(args) -> int:
    from gtloc_engine.service import serve_stdio

    return serve_stdio()


def cmd_search(args) -> int:
    from gtloc_engine.inference.search import CollectionSearch, write_search_output
    from gtloc_engine.protocol import SearchParams

    request = SearchParams.from_params(request_params(args, "search"))
    output = CollectionSearch(request.gpkg, request.model, config=request.config).search(request.query)
    for note in output["notes"]:
        print(f"gtloc: note: {note}", file=sys.stderr)
    if request.out is None:
        _write_json(output, None)
    elif request.out.suffix.lower() == ".gpkg":
        write_search_output(request.out, output)
        print(json.dumps({"out": str(request.out), "layer": "search_results", "n_results": len(output["results"])}))
    else:
        write_search_output(request.out, output)
    return EXIT_OK


def cmd_shadow(args) -> int:
    from gtloc_engine.protocol import ShadowParams

    params = request_params(args, "shadow")
    if "measurements" not in params:
        raise GtlocError("no shadow measurement: give --height-m and --length-m (or --elev-deg) with --time, or "
                         "--measurement KEY=VALUE,... (see gtloc shadow --help)")
    summary = ShadowParams.from_params(params).run()
    for note in summary["notes"]:
        print(f"gtloc: note: {note}", file=sys.stderr)
    _write_json(summary, None)
    return EXIT_OK


TIME_GALLERY_HELP = (".npy (N, 5) local month, day, hour, minute, second rows to score instead of the uniform month x "
                     "hour grid (e.g. the authors' cvt.npy, which you bring)")


def build_parser() -> argparse.ArgumentParser:
    """The options of predict, search and info whose dest is a name of gtloc_engine/protocol.py's PARAMS carry that
    parameter (request_params); their defaults are the table's, so the CLI and the worker agree."""
    from gtloc_engine.protocol import param

    def default(method: str, name: str):
        return param(method, name).default

    p = argparse.ArgumentParser(prog="gtloc", description="Where and when was this photo taken? (GT-Loc engine)")
    p.add_argument("--version", action="version", version=f"gtloc {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on a CSV manifest or an EXIF photo folder")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="CSV with path,lat_deg,lon_deg,timestamp[,utc_offset_min][,split]")
    src.add_argument("--photos", help="folder of photos with EXIF GPS (and DateTimeOriginal for time)")
    t.add_argument("--out", required=True, help="run folder: model.safetensors, train_state, history.jsonl")
    t.add_argument("--preset", default="gtloc-vitl14", help="model preset: gtloc-vitl14 (paper), small, tiny")
    t.add_argument("--backbone", help="open_clip model name, e.g. ViT-L-14")
    t.add_argument("--pretrained", help="open_clip tag (openai), a local weights file, or 'none' (random)")
    t.add_argument("--train-backbone", dest="train_backbone", action="store_true", default=None)
    t.add_argument("--freeze-backbone", dest="train_backbone", action="store_false")
    t.add_argument("--embed-dim", type=int)
    t.add_argument("--time-input", choices=["angles", "circle"])
    t.add_argument("--config", help="JSON file with TrainConfig fields (command-line flags win)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--loc-weight", type=float, help="0 trains time only (TimeLoc)")
    t.add_argument("--time-weight", type=float, help="0 trains location only (GeoCLIP-like)")
    t.add_argument("--tml-target", choices=["softmax", "poster"])
    t.add_argument("--tau-delta", type=float)
    t.add_argument("--composed-weight", type=float, help="weight of the fused heads' terms (ig2t, it2g, gt2i); 0: off")
    t.add_argument("--val-fraction", type=float)
    t.add_argument("--cache-dir", help="feature cache root (default ~/.cache/gtloc or $GTLOC_CACHE)")
    t.add_argument("--workers", type=int, help="photo decoding threads")
    t.add_argument("--stop-after-epochs", type=int, help="end this run after N epochs; run again to resume")
    t.add_argument("--no-resume", action="store_true", help="start over even if the run folder has a state")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    pr = sub.add_parser("predict", help="where and when: top-k places, most likely month and hour, as JSON; or "
                        "a GeoPackage with claim checks and credible regions (--out X.gpkg)")
    pr.add_argument("photos", nargs="+", help="photo files or folders")
    pr.add_argument("--model", required=True, help="gtloc checkpoint (.safetensors)")
    pr.add_argument("--top-k", type=int, help=f"places per photo (default {default('predict', 'top_k')})")
    pr.add_argument("--batch-size", type=int,
                    help=f"photos per forward pass (default {default('predict', 'batch_size')})")
    pr.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="image backbone weights: bf16 is 2-2.5x faster on CPUs with AVX512-BF16/AMX (cosine > 0.999)")
    pr.add_argument("--threads", type=int, help="torch CPU threads (default: one per physical core)")
    _device_option(pr)
    pr.add_argument("--out", help="RESULTS.gpkg: a GeoPackage (photos, candidates, regions, failures; re-runs "
                    "resume); postgresql://HOST/CASE or service=NAME: a PostGIS case, the same tables (password from "
                    "PGPASSWORD or ~/.pgpass, never here); any other name: the JSON, written there instead of stdout")
    pr.add_argument("--cluster", help="with --out postgresql://...: run on a Dask cluster, tcp://SCHEDULER:8786, or "
                    "local:N for N worker processes on this machine (pip install 'gtloc-engine[cluster]'; "
                    "docs/team-server.md)")
    pr.add_argument("--rasters", dest="rasters_dir", help="with --out X.gpkg: also write each photo's global and "
                    "regional probability GeoTIFFs into this folder")
    pr.add_argument("--res-deg", type=float, help="cell size of the global surface whose modes are the top-k places, "
                    f"and of its credible regions ({default('predict', 'res_deg')} default; 0.5 or 1 is faster and "
                    "coarser)")
    pr.add_argument("--time", help="a known local capture time (ISO 8601, e.g. 2024-07-14T18:30, or EXIF form): "
                    "predict each photo's place given it (where given when, the it2g head)")
    pr.add_argument("--tencrop", action="store_true", default=None,
                    help="average ten crops per photo, as the authors' evaluation (10x the backbone cost)")
    pr.add_argument("--time-gallery", help=TIME_GALLERY_HELP)
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.set_defaults(func=cmd_predict)

    e = sub.add_parser("embed", help="embeddings of photos, places and times in the joint space (.npz)")
    e.add_argument("photos", nargs="*", help="photo files or folders")
    e.add_argument("--model", required=True)
    e.add_argument("--place", action="append", type=_latlon,
                   help="LAT,LON in degrees (repeatable; write --place=-33.9,151.2 for a negative latitude)")
    e.add_argument("--time", action="append", help="local time, ISO 8601 or EXIF format (repeatable)")
    e.add_argument("--out", required=True, help="output .npz (no pickled objects)")
    _device_option(e)
    e.set_defaults(func=cmd_embed)

    ev = sub.add_parser("eval", help="geolocation, time and geo-temporal retrieval metrics on a labelled manifest")
    ev.add_argument("--model", required=True)
    ev.add_argument("--manifest", required=True)
    ev.add_argument("--split", default="test", help="train, val, test, or all (default test)")
    ev.add_argument("--out", help="write the metrics JSON here instead of stdout")
    ev.add_argument("--tencrop", action="store_true", help="average ten crops per photo, as the authors' eval")
    ev.add_argument("--gallery", help="GPS gallery the geolocation metrics take the argmax over: .npy (N, 2) lat/lon "
                    "or a LAT,LON .csv (default: the checkpoint's own)")
    ev.add_argument("--time-gallery", help=TIME_GALLERY_HELP)
    _device_option(ev)
    ev.set_defaults(func=cmd_eval)

    sy = sub.add_parser("synth", help="write a SunWorld dataset: JPEGs with EXIF + manifest.csv")
    sy.add_argument("--out", required=True)
    sy.add_argument("--n", type=int, default=2000, help="number of photos")
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--image-size", type=int, default=64)
    sy.add_argument("--untimed-fraction", type=float, default=0.0, help="share of train photos without a time")
    sy.set_defaults(func=cmd_synth)

    d = sub.add_parser("demo", help="offline demo: SunWorld -> train -> predict -> metrics (CPU, ~3 min)")
    d.add_argument("--out", default="gtloc-demo")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

    ig = sub.add_parser("import-geoclip", help="turn the installed geoclip package's released weights and "
                        "100K gallery into a gtloc checkpoint (ViT-L-14 'openai' backbone; time head untrained)")
    ig.add_argument("--out", required=True, help="checkpoint to write (.safetensors)")
    ig.add_argument("--geoclip-dir",
                    help="a geoclip/model folder (weights/, gps_gallery/) instead of the installed package")
    ig.set_defaults(func=cmd_import_geoclip)

    ia = sub.add_parser("import-gtloc", help="turn the GT-Loc authors' released gtloc.pt (CC BY-NC 4.0) into a gtloc "
                        "checkpoint: location and time encoders, adapter, six heads, and their CLIP if the file has it")
    ia.add_argument("source", help="the authors' gtloc.pt (a plain state_dict; read with weights_only=True)")
    ia.add_argument("--out", required=True, help="checkpoint to write (.safetensors)")
    ia.add_argument("--gallery", help="GPS gallery to store (.npy (N,2) lat/lon or LAT,LON .csv); default: "
                    "GeoCLIP's 100K MP-16 places when the geoclip package is installed")
    ia.set_defaults(func=cmd_import_gtloc)

    i = sub.add_parser("info", help="print a checkpoint's header: config, heads, versions, sha256")
    i.add_argument("model", help="gtloc checkpoint (.safetensors)")
    i.set_defaults(func=cmd_info)

    se = sub.add_parser("search", help="photos of a results GeoPackage that match a place, a time window, a photo "
                        "or a text, ranked in the joint space (JSON, or layer search_results with --out X.gpkg)")
    se.add_argument("gpkg", help="results GeoPackage from gtloc predict --out X.gpkg, or a PostGIS case "
                    "(postgresql://HOST/CASE, service=NAME)")
    se.add_argument("--model", required=True, help="the checkpoint that made its embeddings")
    se.add_argument("--near", type=_latlon, help="LAT,LON: query by place (write --near=-33.9,151.2 for a "
                    "negative latitude); with --month/--hour: place + time")
    se.add_argument("--radius-km", type=float, help="with --near: keep photos whose point is within this distance")
    se.add_argument("--month", help="time of year: 6, or a window 11-2 (Nov to Feb, both included)")
    se.add_argument("--hour", help="local time of day: 14 (14:00-15:00), or a window 22-3 (22:00 to 03:00)")
    se.add_argument("--like", help="a photo: find photos that look taken at the same place and time; with "
                    "--month/--hour: photos of the same place at that time")
    se.add_argument("--text", help="a description, e.g. 'snow at dusk' (needs a CLIP backbone with a text tower)")
    se.add_argument("--within", help="polygon file (GeoJSON, GeoPackage, Shapefile): keep photos inside it")
    se.add_argument("--within-layer", help="the layer of the --within file to use (default: its first)")
    se.add_argument("--claimed-after", help="keep photos whose claimed local time is at or after this")
    se.add_argument("--claimed-before", help="keep photos whose claimed local time is before this")
    se.add_argument("--point-source", help="the place the filters test: point (the claimed place if any, else the "
                    "predicted one), claim or prediction (only that one); default "
                    f"{default('search', 'point_source')}")
    se.add_argument("--pooling", help="score over a time window's grid: max (the best-matching time) or mean (the "
                    f"average); default {default('search', 'pooling')}")
    se.add_argument("--top", dest="top_k", type=int, metavar="K",
                    help=f"number of results (default {default('search', 'top_k')})")
    se.add_argument("--out", help="results.json, or results.gpkg (layer search_results, added to an existing file)")
    _device_option(se)
    se.set_defaults(func=cmd_search)

    sh = sub.add_parser("shadow", help="shadow locus: where on Earth an object's shadow (height and length, or the "
                        "sun's elevation; optionally its bearing) falls at a time, as a likelihood GeoTIFF with "
                        "credible regions; with --photo and --model also fused with the photo's place posterior")
    sh.add_argument("--height-m", dest="height_m", type=float, help="the object's height (any unit, as the length)")
    sh.add_argument("--length-m", dest="length_m", type=float, help="its shadow's length, in the height's unit")
    sh.add_argument("--height-sigma-m", dest="height_sigma_m", type=float, help="the height's uncertainty (sigma)")
    sh.add_argument("--length-sigma-m", dest="length_sigma_m", type=float, help="the length's uncertainty (sigma)")
    sh.add_argument("--elev-deg", dest="elev_deg", type=float,
                    help="the sun's elevation above the horizon instead of height and length, in (0, 90]")
    sh.add_argument("--elev-sigma-deg", dest="elev_sigma_deg", type=float, help="its sigma (default 1)")
    sh.add_argument("--bearing-deg", dest="bearing_deg", type=float,
                    help="where the shadow points, clockwise from true north (the sun stands opposite)")
    sh.add_argument("--bearing-sigma-deg", dest="bearing_sigma_deg", type=float, help="its sigma (default 5)")
    sh.add_argument("--time", dest="time", help="when the shadow was cast, ISO 8601: with Z or +hh:mm an instant "
                    "(2024-06-21T12:05Z); without, the local wall clock at each place, in its real time zone")
    sh.add_argument("--time-sigma-min", dest="time_sigma_min", type=float,
                    help="the time's uncertainty in minutes (default 0)")
    sh.add_argument("--measurement", dest="measurements", action="append", metavar="KEY=VALUE,...",
                    help="one more measurement (another shadow, or the same object at another time), e.g. "
                    "height_m=2,length_m=3.1,time=2024-06-21T16:40 (keys as the options above, with _); repeatable; "
                    "all measurements' loci are multiplied (intersected)")
    sh.add_argument("--photo", help="a photo: fuse the locus with its learned place posterior (needs --model)")
    sh.add_argument("--model", help="gtloc checkpoint (.safetensors) to run on --photo")
    sh.add_argument("--posterior", help="instead of --photo: a photo's global likelihood GeoTIFF (predict --rasters "
                    "writes *_global.tif); the locus takes its grid")
    sh.add_argument("--res-deg", dest="res_deg", type=float,
                    help=f"cell size of the locus in degrees (default {default('shadow', 'res_deg')})")
    sh.add_argument("--top", dest="top_k", type=int, metavar="K",
                    help=f"candidate places per surface (default {default('shadow', 'top_k')})")
    sh.add_argument("--cache-dir", dest="cache_dir",
                    help="model-constant cache (default $GTLOC_CACHE or ~/.cache/gtloc)")
    sh.add_argument("--out", dest="out_dir", required=True,
                    help="folder for shadow_locus.tif, shadow_fused.tif (with a photo) and shadow.gpkg")
    _device_option(sh)
    sh.set_defaults(func=cmd_shadow)

    sv = sub.add_parser("serve",
                        help="engine worker for the QGIS plugin: JSON lines on stdin/stdout (docs/protocol.md)")
    sv.add_argument("--stdio", action="store_true", required=True, help="speak the protocol on stdin/stdout")
    _device_option(sv)
    sv.set_defaults(func=cmd_serve)
    return p


def _device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", metavar="|".join(DEVICE_CHOICES),
                        help="where the model computes: auto (default: the first CUDA GPU torch sees, else the CPU), "
                        "cpu, cuda or cuda:N; an absent GPU is an error, never a silent CPU run")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="gtloc: %(message)s",
                        stream=sys.stderr)
    try:
        if getattr(args, "device", None) is not None:  # before any model loads (gtloc_engine/device.py)
            from gtloc_engine.device import set_default_device

            set_default_device(args.device)
        return args.func(args)
    except GtlocError as exc:
        print(f"gtloc: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("gtloc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
