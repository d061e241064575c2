"""The offline demo end to end at a reduced size, and `gtloc eval` on what it wrote."""

import json
import subprocess
import sys

from gtloc_engine.demo import DemoConfig, run_demo


def test_demo_writes_predictions_metrics_and_a_model_then_resumes(tmp_path):
    cfg = DemoConfig(n_photos=160, epochs=2, batch_size=32)
    metrics = run_demo(tmp_path, cfg, progress=False)
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    assert len(predictions) == metrics["photos"] == 16  # the 10% test split
    first = predictions[0]
    assert {"lat_deg", "lon_deg", "month_pos", "hour_local"} <= set(first["truth"])
    assert len(first["places"]) == 5 and 1 <= first["time"]["month"] <= 12
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert (tmp_path / "metrics.md").read_text().startswith("| model |")
    assert 0 <= metrics["acc_2500km"] <= 100 and 0 <= metrics["tps"] <= 100
    # A second run finds photos and epochs done and only re-evaluates.
    history = (tmp_path / "run" / "history.jsonl").read_text()
    run_demo(tmp_path, cfg, progress=False)
    assert (tmp_path / "run" / "history.jsonl").read_text() == history

    proc = subprocess.run([sys.executable, "-m", "gtloc_engine.cli", "eval", "--model",
                           str(tmp_path / "run" / "model.safetensors"), "--manifest",
                           str(tmp_path / "sunworld" / "manifest.csv")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == metrics
