"""Benchmark: the QGIS plugin's link to the engine worker (`gtloc serve --stdio`) through qgis_plugin.engine_client.

Worker start to hello, `info` round trip (median of 50), and `predict` of one photo: the first request (model load
and model constants) and again on the same worker (model kept) on a fresh GeoPackage. engine_client is plain Python,
so any interpreter runs this; the worker runs in the engine's Python:

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_worker.py --engine .venv/bin/python \\
        --model gtloc-demo/run/model.safetensors --photo some.jpg

Prints a markdown table (milliseconds; load average alongside: the machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qgis_plugin.engine_client import EngineClient, engine_command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", required=True, help="the engine's Python or gtloc executable")
    parser.add_argument("--model", required=True)
    parser.add_argument("--photo", required=True)
    args = parser.parse_args()

    client = EngineClient(engine_command(args.engine))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        client.start()
        rows.append(("start -> hello", time.perf_counter() - t0))
        client.request("info")
        trips = []
        for _ in range(50):
            t0 = time.perf_counter()
            client.request("info")
            trips.append(time.perf_counter() - t0)
        rows.append(("info round trip (median of 50)", statistics.median(trips)))
        for label, name in (("predict 1 photo, first request (model load, constants)", "a"),
                            ("predict 1 photo, same worker (model kept)", "b")):
            t0 = time.perf_counter()
            client.request("predict", {"model": args.model, "photos": [args.photo],
                                       "out_gpkg": os.path.join(tmp, f"{name}.gpkg"),
                                       "rasters_dir": os.path.join(tmp, name)})
            rows.append((label, time.perf_counter() - t0))
        client.stop()
    print(f"load average (1 min): {os.getloadavg()[0]:.2f}\n")
    print("| step | ms |\n|---|---|")
    for label, seconds in rows:
        print(f"| {label} | {seconds * 1000:.1f} |")


if __name__ == "__main__":
    main()
