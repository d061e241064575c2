"""--device: one clear error where the GPU asked for is not there, and the CPU's results when the model computes on
another device.

The other device is torch's lazy-tensor backend on TorchScript (torch._lazy.ts_backend): a device that is not the
CPU and runs on this machine's CPU. An operation that mixes one of its tensors with a host tensor raises, as it would
on CUDA ("Input tensor is not a lazy tensor"), so a run that finishes kept every encoder call, model constant and
intermediate of the computation on the device, and crossed to the host only where numpy takes over
(gtloc_engine/device.py). No GPU is needed, and none is used when there is one.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch

from gtloc_engine.device import resolve_device
from gtloc_engine.errors import GtlocError
from gtloc_engine.evaluation.runner import evaluate_records
from gtloc_engine.inference.search import CollectionSearch, SearchQuery, TimeWindow
from gtloc_engine.inference.pipeline import PhotoPipeline, PipelineConfig
from gtloc_engine.inference.predictor import Predictor
from gtloc_engine.io.exif import write_jpeg_with_exif
from gtloc_engine.model.checkpoint import load_checkpoint
from gtloc_engine.records import read_manifest

NO_CUDA = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def lazy_device():
    try:
        import torch._lazy
        import torch._lazy.ts_backend
    except ImportError as exc:  # a torch without it (it is internal): nothing to test the device path on
        pytest.skip(f"torch {torch.__version__} has no lazy TorchScript backend ({exc})")
    torch._lazy.ts_backend.init()
    return torch.device("lazy")


@pytest.fixture(scope="module")
def album(tmp_path_factory, toy_manifest):
    """A photo claiming a place and a time, one claiming a time only, one with no metadata."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("device_album")
    images = [Image.open(p).convert("RGB") for p in sorted((toy_manifest.parent / "img").glob("*.png"))[:3]]
    write_jpeg_with_exif(images[0], folder / "claimed.jpg", lat_deg=40.42, lon_deg=-3.70,
                         local_datetime=dt.datetime(2021, 6, 1, 12, 0))
    write_jpeg_with_exif(images[1], folder / "time_only.jpg", local_datetime=dt.datetime(2020, 1, 2, 8, 0))
    images[2].save(folder / "plain.png")
    return folder


def test_device_names_resolve_and_a_gpu_that_is_not_there_is_refused():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto").type == ("cpu" if NO_CUDA else "cuda")
    assert resolve_device(None) == resolve_device("auto")
    for bad in ("tpu", "gpu", "cuda:x", "cuda:-1", ""):
        with pytest.raises(GtlocError, match="is not one of auto, cpu, cuda, cuda:N"):
            resolve_device(bad)
    if NO_CUDA:
        for name in ("cuda", "cuda:1"):
            with pytest.raises(GtlocError, match=r"sees no CUDA GPU on this machine; use --device cpu") as exc:
                resolve_device(name)
            assert "\n" not in str(exc.value)
    else:
        with pytest.raises(GtlocError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU, so --device cuda is not refused here")
def test_predict_on_an_absent_gpu_says_so_in_one_line_before_anything_loads(tmp_path, album):
    missing_model = tmp_path / "not_there.safetensors"  # were the model read first, its error would come instead
    proc = subprocess.run([sys.executable, "-m", "gtloc_engine.cli", "predict", str(album), "--model",
                           str(missing_model), "--out", str(tmp_path / "case.gpkg"), "--device", "cuda"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gtloc: error: device 'cuda': torch "), proc.stderr
    assert not (tmp_path / "case.gpkg").exists()


def _rows(gpkg: Path, layer: str) -> gpd.GeoDataFrame:
    return gpd.read_file(gpkg, layer=layer).sort_values(["path"] + (["rank"] if layer == "candidates" else [])
                                                         ).reset_index(drop=True)


def test_a_run_on_another_device_gives_the_cpus_results(lazy_device, trained_checkpoint, cache_dir, album, tmp_path):
    # 0.25 deg: the cached 0.5 deg grid upsampled and refined; rasters: the regional windows and their exact cells.
    config = PipelineConfig(global_res_deg=0.25)
    runs = {}
    for name, device in (("cpu", "cpu"), ("lazy", lazy_device)):
        pipe = PhotoPipeline(trained_checkpoint, top_k=3, cache_dir=cache_dir, config=config, device=device)
        assert pipe.model.device.type == name and pipe.surface_maker.device.type == name
        summary = pipe.run([album], tmp_path / f"{name}.gpkg", rasters_dir=tmp_path / f"rasters_{name}")
        assert summary.n_done == 3 and not summary.failures, summary.failures
        runs[name] = summary
    cpu, dev = _rows(tmp_path / "cpu.gpkg", "photos"), _rows(tmp_path / "lazy.gpkg", "photos")
    assert list(cpu["verdict"]) == list(dev["verdict"]) and list(cpu["sun_check"]) == list(dev["sun_check"])
    for column in ("top1_prob", "place_level", "time_level", "pred_hour_local", "pred_month", "sun_regime_mass"):
        np.testing.assert_allclose(dev[column].astype(float), cpu[column].astype(float), atol=1e-3, err_msg=column)
    np.testing.assert_allclose(dev["place_evidence"].astype(float), cpu["place_evidence"].astype(float), rtol=1e-3)
    assert cpu["place_level"].notna().sum() == 1 and cpu["time_level"].notna().sum() == 2  # the claims were checked
    cand_cpu, cand_dev = _rows(tmp_path / "cpu.gpkg", "candidates"), _rows(tmp_path / "lazy.gpkg", "candidates")
    top = (cand_cpu["rank"] == 1).to_numpy()
    for axis in ("lat_deg", "lon_deg"):  # top-1 place within one 0.25 deg cell
        assert np.all(np.abs(cand_dev[axis].to_numpy()[top] - cand_cpu[axis].to_numpy()[top]) <= 0.25 + 1e-9)
    assert len(runs["cpu"].rasters) == len(runs["lazy"].rasters) == 3 * 4  # global + 3 regional per photo
    for a, b in zip(sorted(runs["cpu"].rasters), sorted(runs["lazy"].rasters)):
        with rasterio.open(a) as ra, rasterio.open(b) as rb:
            ma, mb = ra.read(1, masked=True).filled(0), rb.read(1, masked=True).filled(0)
            assert ra.transform == rb.transform and ma.shape == mb.shape
            np.testing.assert_allclose(mb, ma, atol=1e-3 * float(ma.max()), err_msg=Path(a).name)


def test_predictions_search_and_metrics_on_another_device_match_the_cpus(lazy_device, trained_checkpoint,
                                                                         cache_dir, album, toy_manifest, tmp_path):
    photos = sorted(album.iterdir())
    PhotoPipeline(trained_checkpoint, top_k=3, cache_dir=cache_dir, config=PipelineConfig(global_res_deg=1.0),
                  device="cpu").run([album], tmp_path / "case.gpkg")
    records = read_manifest(toy_manifest)[:40]
    out = {}
    for name, device in (("cpu", "cpu"), ("lazy", lazy_device)):
        model = load_checkpoint(trained_checkpoint, device=device)
        predictor = Predictor(model, cache_dir=cache_dir, global_res_deg=1.0)
        results = predictor.predict_photos(photos, top_k=2, given_time="2021-06-01T12:00")
        emb, ok, _ = predictor.embed_photos(photos)
        posterior = predictor.time_posterior_given_place(emb, np.array([[40.42, -3.70]] * len(ok)))
        gallery = predictor.location_posterior(emb)
        search = CollectionSearch(tmp_path / "case.gpkg", trained_checkpoint, model=model).search(
            SearchQuery(near_latlon_deg=(40.42, -3.70), window=TimeWindow.parse("6", "12"), top_k=3))
        metrics, failed = evaluate_records(predictor, records)
        assert not failed
        out[name] = (results, posterior, gallery, search, metrics)
    (r_cpu, t_cpu, g_cpu, s_cpu, m_cpu), (r_dev, t_dev, g_dev, s_dev, m_dev) = out["cpu"], out["lazy"]
    np.testing.assert_allclose(t_dev, t_cpu, atol=1e-5)
    np.testing.assert_allclose(g_dev, g_cpu, atol=1e-5)
    assert [r["path"] for r in s_dev["results"]] == [r["path"] for r in s_cpu["results"]]
    np.testing.assert_allclose([r["score"] for r in s_dev["results"]], [r["score"] for r in s_cpu["results"]],
                               atol=1e-4)
    assert m_dev.keys() == m_cpu.keys() and {"acc_2500km", "hour_err", "geotemporal_r@10"} <= m_cpu.keys()
    np.testing.assert_allclose([m_dev[k] for k in m_cpu], [m_cpu[k] for k in m_cpu], rtol=1e-3, atol=1e-3)
    assert json.dumps([r["time"] for r in r_dev]) == json.dumps([r["time"] for r in r_cpu])
    for a, b in zip(r_cpu, r_dev):
        assert abs(a["places"][0]["lat_deg"] - b["places"][0]["lat_deg"]) <= 1.0
        assert abs(a["places"][0]["lon_deg"] - b["places"][0]["lon_deg"]) <= 1.0
