"""One question, one answer: a photo's top-k places are the same in the JSON output and in the results GeoPackage
(and so in the worker and the plugin, which read the GeoPackage)."""

from __future__ import annotations

import json
import subprocess
import sys

import geopandas as gpd
import pytest


@pytest.mark.parametrize("given_time", [None, "2021-07-01T12:00"])
def test_json_places_equal_the_geopackage_candidates(trained_checkpoint, toy_manifest, tmp_path, given_time):
    photos = sorted((toy_manifest.parent / "img").glob("*.png"))[:2]
    extra = ["--time", given_time] if given_time else []
    common = [sys.executable, "-m", "gtloc_engine.cli", "predict", *map(str, photos), "--model",
              str(trained_checkpoint), "--top-k", "3", "--res-deg", "1", *extra]
    as_json = subprocess.run(common, capture_output=True, text=True)
    assert as_json.returncode == 0, as_json.stderr
    out = tmp_path / "r.gpkg"
    as_gpkg = subprocess.run([*common, "--out", str(out), "--quiet"], capture_output=True, text=True)
    assert as_gpkg.returncode == 0, as_gpkg.stderr
    candidates = gpd.read_file(out, layer="candidates")
    for result in json.loads(as_json.stdout):
        rows = candidates[candidates["path"] == str(photos[[str(p) for p in photos].index(result["photo"])].resolve())]
        rows = rows.sort_values("rank")
        assert [p["rank"] for p in result["places"]] == rows["rank"].tolist() == [1, 2, 3]
        assert [p["lat_deg"] for p in result["places"]] == pytest.approx(rows["lat_deg"].tolist(), abs=1e-6)
        assert [p["lon_deg"] for p in result["places"]] == pytest.approx(rows["lon_deg"].tolist(), abs=1e-6)
        assert [p["probability"] for p in result["places"]] == pytest.approx(rows["probability"].tolist(), rel=1e-5)
