"""The results GeoPackage store: cost of appending photos as the collection grows, incremental transactions (rollback
and WAL journal) against the old whole-file rewrite, and what a reader in QGIS sees while the store commits.

Usage (about 8 minutes on 2 shared CPU cores; writes up to 3.4 GB of GeoPackage under --tmp, removed after):

    nice .venv/bin/python bench/bench_store.py --sizes 1000,10000,50000,100000 --old-max 10000 \\
        --out bench/results/bench_store.json

Each photo is what the pipeline writes for one photo: a photos row with every field (a 12 x 24 JSON time
posterior, notes, paths), 5 candidates, 2 credible regions of 64 polygons (~9 vertices each, like the demo's
capped regions) and a 512-d float32 embedding. Photos are appended in batches of 16 with one commit per batch, as
`gtloc predict` does; the old store (gtloc's ResultsStore before the incremental store, kept below as OldStore)
holds every row in memory and rewrites the whole file every 200 photos, its default cadence. Each store runs in its
own process, so peak RSS (getrusage ru_maxrss) is that store's alone. "s per 1,000" is the wall time of the 1,000
photos that bring the collection to that size (rows built, checked, encoded and committed), and the median of the
last five such windows (less sensitive to other jobs on a shared machine).

Last, for each journal mode: a 1,000-photo file gets a commit of 2 photos every ~0.05 s for --concurrent-s seconds
while another process reads the whole photos layer in a loop: real QGIS (a QgsVectorLayer reloaded and iterated,
with QGIS's Python from --qgis-python) when it is there, else sqlite3. Reported: the writer's commit latency, commits
postponed by a lock, and the reader's failed reads (QGIS errors, or a layer that read no photos).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BATCH = 16
OLD_SAVE_EVERY = 200


# ---------------------------------------------------------------------------------------------- synthetic rows


def _regions(rng: np.random.Generator, n_polygons: int = 64) -> list:
    """Two multipolygons (levels 0.5 and 0.9) of n_polygons block-shaped polygons with ~9 vertices each."""
    import shapely

    out = []
    for level, size in ((0.5, 2.0), (0.9, 4.0)):
        x0, y0 = rng.uniform(-170, 150), rng.uniform(-60, 40)
        polygons = []
        for k in range(n_polygons):
            x, y = x0 + (k % 8) * size * 1.5, y0 + (k // 8) * size * 1.5
            ring = shapely.box(x, y, x + size, y + size).exterior.segmentize(size / 2)
            polygons.append(shapely.Polygon(ring))
        out.append((level, shapely.MultiPolygon(polygons)))
    return out


def make_rows(n_templates: int = 64, seed: int = 0) -> list[tuple[dict, list[dict], list[dict], np.ndarray]]:
    """n_templates realistic (photo, candidates, regions, embedding) sets; photo i uses template i % n."""
    import shapely

    from gtloc_engine.io.results_schema import PHOTO_FIELDS, utc_datetime_text

    rng = np.random.default_rng(seed)
    templates = []
    for _ in range(n_templates):
        lat, lon = float(rng.uniform(-60, 70)), float(rng.uniform(-180, 180))
        grid = rng.dirichlet(np.ones(12 * 24)).reshape(12, 24)
        photo = dict.fromkeys(PHOTO_FIELDS)
        photo.update(
            model_sha256="m" * 64, point_source="claim", claimed_lat_deg=lat, claimed_lon_deg=lon,
            claimed_time_local="2021-07-14T21:30:05", claimed_utc_offset_min=120, pred_lat_deg=lat + 1,
            pred_lon_deg=lon + 1, top1_prob=0.12, pred_month=7, pred_month_pos=6.4, pred_hour_local=20.5,
            month_spread=1.2, hour_spread=2.5, time_given="claimed place", place_given="image", place_level=0.42,
            place_dist_km=131.0, place_in_90=True, time_level=0.3, claim_month_err=0.2, claim_hour_err=1.0,
            place_verdict="consistent", time_verdict="consistent", verdict="consistent",
            map_time=utc_datetime_text(dt.datetime(2021, 7, 14, 19, 30, 5, tzinfo=dt.UTC)),
            map_time_local="2021-07-14T21:30:05", map_time_source="claim",
            time_posterior=json.dumps(np.round(grid, 6).tolist(), separators=(",", ":")),
            raster_global=None, raster_regional=None, notes="EXIF GPS altitude missing",
            processed_at_utc=dt.datetime.now(dt.UTC).isoformat(), geometry=shapely.Point(lon, lat))
        candidates = [{"sha256": None, "rank": r, "probability": 0.1 / r, "radius_km": 100.0,
                       "lat_deg": lat + r, "lon_deg": lon, "geometry": shapely.Point(lon, lat + r)}
                      for r in range(1, 6)]
        regions = [{"sha256": None, "level": level, "area_km2": 1.5e6, "mass": level + 0.001, "geometry": geom}
                   for level, geom in _regions(rng)]
        templates.append((photo, candidates, regions, rng.standard_normal(512).astype(np.float32)))
    return templates


def _photo_rows(templates, i: int):
    photo, candidates, regions, emb = templates[i % len(templates)]
    path, sha = f"/cases/2024-017/photos/IMG_{i:07d}.jpg", f"{i:064x}"
    photo = {**photo, "path": path, "file_name": path.rsplit("/", 1)[1], "sha256": sha}
    return path, sha, photo, [{**c, "sha256": sha} for c in candidates], [{**r, "sha256": sha} for r in regions], emb


# ---------------------------------------------------------------------------------------------- one store, one process


def run_store(kind: str, n: int, out: Path, checkpoints: list[int], limit_s: float) -> None:
    """Append n photos with store `kind` (delete | wal | old); print one JSON line per checkpoint size."""
    templates = make_rows()
    if kind == "old":
        store = OldStore(out)
    else:
        from gtloc_engine.io.geopackage import ResultsStore

        store = ResultsStore.open(out, journal_mode=kind)
    start = window = time.perf_counter()
    windows: list[float] = []  # wall seconds of each successive 1,000 photos
    for i in range(n):
        path, sha, photo, candidates, regions, emb = _photo_rows(templates, i)
        store.set_results(path, photo, candidates, regions)
        if kind == "old":
            store.embeddings[(sha, "m" * 64)] = emb
            if (i + 1) % OLD_SAVE_EVERY == 0:
                store.save()
        else:
            store.set_embedding(sha, "m" * 64, emb)
            if (i + 1) % BATCH == 0:
                store.commit()
        done = i + 1
        if done % 1000 == 0:
            now = time.perf_counter()
            windows.append(now - window)
            if done in checkpoints:
                print(json.dumps({"kind": kind, "n": done, "s_per_1000": round(now - window, 3),
                                  "s_per_1000_median5": round(float(np.median(windows[-5:])), 3),
                                  "load_average": round(os.getloadavg()[0], 2),
                                  "elapsed_s": round(now - start, 1),
                                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                                  "file_mb": round(out.stat().st_size / 2**20, 1)}), flush=True)
            window = now
            if now - start > limit_s:
                print(json.dumps({"kind": kind, "stopped_at": done, "elapsed_s": round(now - start, 1)}), flush=True)
                break
    if kind != "old":
        store.close()


def run_reader(kind: str, out: Path, stop_file: Path) -> None:
    """Read the whole photos layer in a loop until stop_file exists: 'qgis' reloads a QgsVectorLayer (the OGR
    provider opens a GeoPackage it only reads with NOLOCK=ON) and iterates its features, 'sqlite' runs SELECT * in a
    fresh sqlite3 connection; print the scan times and every failed or incomplete read."""
    scans, problems = [], []
    if kind == "qgis":
        from qgis.core import Qgis, QgsApplication, QgsVectorLayer

        app = QgsApplication([], False)
        app.initQgis()
        QgsApplication.messageLog().messageReceived.connect(
            lambda message, tag, level: level >= Qgis.Warning and problems.append(f"{tag}: {message}"[:200]))
        layer = QgsVectorLayer(f"{out}|layername=photos", "photos", "ogr")
    while not stop_file.exists():
        t = time.perf_counter()
        if kind == "qgis":
            layer.dataProvider().reloadData()
            layer.reload()
            n = sum(1 for _ in layer.getFeatures())
            QgsApplication.processEvents()
        else:
            import sqlite3

            try:
                with sqlite3.connect(f"{out.resolve().as_uri()}?mode=ro", uri=True, timeout=30) as db:
                    n = len(db.execute("SELECT * FROM photos").fetchall())
                db.close()
            except sqlite3.Error as exc:
                problems.append(str(exc))
                continue
        if n == 0:
            problems.append("read 0 photos")
        scans.append(time.perf_counter() - t)
    print(json.dumps({"reader": kind, "scans": len(scans), "failed": len(problems),
                      "scan_p50_s": round(float(np.median(scans)), 4) if scans else None,
                      "scan_max_s": round(max(scans), 4) if scans else None, "first_problems": problems[:3]}),
          flush=True)


def run_concurrent(kind: str, out: Path, base: int, seconds: float, reader_python: str, reader: str) -> None:
    """Fill `base` photos, then for `seconds` commit a batch of 2 photos every ~0.05 s while a reader process
    reads the whole photos layer in a loop; the writer's commit latencies and the reader's failed reads."""
    from gtloc_engine.io.geopackage import ResultsStore

    templates = make_rows()
    store = ResultsStore.open(out, journal_mode=kind)
    for i in range(base):
        path, sha, photo, candidates, regions, emb = _photo_rows(templates, i)
        store.set_results(path, photo, candidates, regions)
        store.set_embedding(sha, "m" * 64, emb)
        if (i + 1) % 256 == 0:
            store.commit()
    store.commit()
    stop = out.with_suffix(".stop")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    reader_proc = subprocess.Popen([reader_python, __file__, "--reader", reader, str(out), str(stop)],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    time.sleep(5.0)  # QGIS starts
    commits, postponed, i = [], 0, base
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(2):
            path, sha, photo, candidates, regions, emb = _photo_rows(templates, i)
            store.set_results(path, photo, candidates, regions)
            store.set_embedding(sha, "m" * 64, emb)
            i += 1
        t = time.perf_counter()
        postponed += not store.commit()
        commits.append(time.perf_counter() - t)
        time.sleep(0.05)  # the pipeline computes between commits
    store.close()
    stop.touch()
    reader_result = json.loads(reader_proc.communicate(timeout=300)[0].strip().splitlines()[-1])
    print(json.dumps({"kind": kind, "concurrent": True, "base": base, "seconds": seconds, "commits": len(commits),
                      "commit_p50_ms": round(1000 * float(np.median(commits)), 2),
                      "commit_p99_ms": round(1000 * float(np.quantile(commits, 0.99)), 2),
                      "commit_max_ms": round(1000 * max(commits), 2), "postponed": postponed,
                      "reader": reader_result}), flush=True)


# ---------------------------------------------------------------------------------------------- the old store


class OldStore:
    """gtloc's ResultsStore before the incremental store (format 1): every row in memory, `save` writes all of it
    to a temp file with pyogrio (GDAL) and renames it over the target. Kept here as the baseline."""

    def __init__(self, path: Path):
        self.path = path
        self.photos, self.candidates, self.regions, self.embeddings = {}, {}, {}, {}

    def set_results(self, key, photo, candidates, regions):
        self.photos[key] = {**photo, "path": key}
        self.candidates[key] = [{**c, "path": key} for c in candidates]
        self.regions[key] = [{**r, "path": key} for r in regions]

    def save(self) -> None:
        import sqlite3

        import geopandas as gpd
        import pandas as pd
        import pyogrio

        from gtloc_engine.io.results_schema import CANDIDATE_FIELDS, PHOTO_FIELDS, REGION_FIELDS

        dtypes = {"str": object, "float": "float64", "int": "Int64", "bool": "boolean", "datetime": object}
        building = self.path.with_name(f".{self.path.name}.tmp.gpkg")
        for name, kinds, geometry_type, rows in (
                ("photos", PHOTO_FIELDS, "Point", list(self.photos.values())),
                ("candidates", CANDIDATE_FIELDS, "Point", [r for rs in self.candidates.values() for r in rs]),
                ("regions", REGION_FIELDS, "MultiPolygon", [r for rs in self.regions.values() for r in rs])):
            columns = {k: pd.Series([r.get(k) for r in rows], dtype=dtypes[kind]) for k, kind in kinds.items()}
            frame = gpd.GeoDataFrame(columns, geometry=[r.get("geometry") for r in rows], crs="EPSG:4326")
            pyogrio.write_dataframe(frame, building, layer=name, driver="GPKG", geometry_type=geometry_type,
                                    promote_to_multi=geometry_type.startswith("Multi"),
                                    dataset_options={"VERSION": "1.2"})
        with sqlite3.connect(building) as db:
            db.execute("CREATE TABLE embeddings (fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, sha256 TEXT NOT "
                       "NULL, model_sha256 TEXT NOT NULL, dim INTEGER NOT NULL, embedding BLOB NOT NULL)")
            db.executemany("INSERT INTO embeddings (sha256, model_sha256, dim, embedding) VALUES (?, ?, ?, ?)",
                           [(s, m, int(v.size), v.astype("<f4").tobytes()) for (s, m), v in self.embeddings.items()])
        db.close()
        os.replace(building, self.path)


# ---------------------------------------------------------------------------------------------- driver


def _child(args: list[str], timeout_s: float) -> list[dict]:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout_s,
                          check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"bench child {args} failed: {proc.stderr[-3000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="collection sizes to report (photos)")
    parser.add_argument("--old-max", type=int, default=10000, help="largest size the old store is run to")
    parser.add_argument("--old-limit-s", type=float, default=240.0, help="stop the old store after this long")
    parser.add_argument("--concurrent-base", type=int, default=1000, help="photos in the file a reader reads")
    parser.add_argument("--concurrent-s", type=float, default=30.0, help="seconds of commits under a reader")
    parser.add_argument("--qgis-python", default=str(Path(__file__).resolve().parents[1] / ".venv-qgis/bin/python"),
                        help="QGIS's Python for the QGIS reader (a sqlite3 reader without it)")
    parser.add_argument("--tmp", default=None, help="folder for the GeoPackages (default: a temp folder)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--run", nargs=3, metavar=("KIND", "N", "FILE"), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoints", default="", help=argparse.SUPPRESS)
    parser.add_argument("--limit-s", type=float, default=1e9, help=argparse.SUPPRESS)
    parser.add_argument("--reader", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--concurrent", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        kind, n, out = args.run
        run_store(kind, int(n), Path(out), [int(c) for c in args.checkpoints.split(",") if c], args.limit_s)
        return
    if args.reader:
        run_reader(args.reader[0], Path(args.reader[1]), Path(args.reader[2]))
        return
    if args.concurrent:
        kind, base, seconds, out, reader_python, reader = args.concurrent
        run_concurrent(kind, Path(out), int(base), float(seconds), reader_python, reader)
        return

    sizes = sorted(int(s) for s in args.sizes.split(","))
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="gtloc-bench-store-"))
    tmp.mkdir(parents=True, exist_ok=True)
    results: dict = {"started_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "sizes": sizes,
                     "batch": BATCH, "old_save_every": OLD_SAVE_EVERY, "load_average": os.getloadavg(), "runs": []}
    t0 = time.perf_counter()
    try:
        for kind in ("delete", "wal", "old") if args.old_max > 0 else ("delete", "wal"):
            n = min(max(sizes), args.old_max) if kind == "old" else max(sizes)
            checkpoints = [s for s in sizes if s <= n]
            out = tmp / f"{kind}.gpkg"
            limit = args.old_limit_s if kind == "old" else 1e9
            rows = _child(["--run", kind, str(n), str(out), "--checkpoints", ",".join(map(str, checkpoints)),
                           "--limit-s", str(limit)], timeout_s=3600)
            for row in rows:
                print(json.dumps(row), flush=True)
            results["runs"] += rows
            for path in tmp.glob(f"{kind}.gpkg*"):
                path.unlink()
        qgis = Path(args.qgis_python).is_file()
        for kind in ("delete", "wal"):
            out = tmp / f"concurrent_{kind}.gpkg"
            rows = _child(["--concurrent", kind, str(args.concurrent_base), str(args.concurrent_s), str(out),
                           args.qgis_python if qgis else sys.executable, "qgis" if qgis else "sqlite"],
                          timeout_s=1800)
            for row in rows:
                print(json.dumps(row), flush=True)
            results["runs"] += rows
            for path in tmp.glob(f"concurrent_{kind}.*"):
                path.unlink()
    finally:
        if args.tmp is None:
            shutil.rmtree(tmp, ignore_errors=True)
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps({"wall_s": results["wall_s"]}))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    _table(results)


def _table(results: dict) -> None:
    runs = [r for r in results["runs"] if "n" in r]
    print("\n| store | photos | s per 1,000 appended (last 1,000; median of the last 5,000) | peak RSS MB | file MB "
          "| load average |")
    print("|---|---:|---:|---:|---:|---:|")
    names = {"delete": "incremental, rollback journal", "wal": "incremental, WAL (default)",
             "old": "old: whole rewrite every 200"}
    for r in runs:
        print(f"| {names[r['kind']]} | {r['n']:,} | {r['s_per_1000']:.2f}; {r['s_per_1000_median5']:.2f} | "
              f"{r['peak_rss_mb']:.0f} | {r['file_mb']:.0f} | {r['load_average']:.1f} |")
    for r in results["runs"]:
        if "stopped_at" in r:
            print(f"\n{names[r['kind']]} stopped at {r['stopped_at']:,} photos after {r['elapsed_s']} s")
    print("\n| journal | commits | commit p50 / p99 / max ms | postponed | reader | reads | failed reads | "
          "read p50 / max s |")
    print("|---|---:|---|---:|---|---:|---:|---|")
    for r in results["runs"]:
        if r.get("concurrent"):
            q = r["reader"]
            print(f"| {r['kind']} | {r['commits']} | {r['commit_p50_ms']} / {r['commit_p99_ms']} / "
                  f"{r['commit_max_ms']} | {r['postponed']} | {q['reader']} | {q['scans']} | {q['failed']} | "
                  f"{q['scan_p50_s']} / {q['scan_max_s']} |")


if __name__ == "__main__":
    main()
