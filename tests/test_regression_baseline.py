"""The regression-head baseline: its targets decode back exactly, and it learns the toy set's place and time."""

import numpy as np
import pytest
import torch

from gtloc_engine.records import read_manifest
from gtloc_engine.training.regression_baseline import RegressionTrainer, decode_outputs, regression_targets
from tests.test_training import CHANCE_ACC_200KM, toy_config


@pytest.mark.parametrize("lat_deg, lon_deg, theta, phi", [
    (0.0, 0.0, 0.0, 0.0), (89.9, 179.9, 0.999, 0.5), (-45.0, -120.0, 0.25, 0.75), (12.3, -179.99, 0.5, 0.01),
])
def test_targets_decode_back_to_the_same_place_and_time(lat_deg, lon_deg, theta, phi):
    target = regression_targets(torch.tensor([[lat_deg, lon_deg]], dtype=torch.float64),
                                torch.tensor([[theta, phi]], dtype=torch.float64)).numpy()
    latlon, month_hour = decode_outputs(3.0 * target)  # any positive scale decodes the same
    np.testing.assert_allclose(latlon[0], [lat_deg, lon_deg], atol=1e-4)
    np.testing.assert_allclose(month_hour[0], [theta * 12.0, phi * 24.0], atol=1e-3)


def test_untimed_photos_give_nan_time_targets():
    target = regression_targets(torch.tensor([[10.0, 20.0]]), torch.tensor([[float("nan"), float("nan")]]))
    assert torch.isfinite(target[0, :3]).all() and torch.isnan(target[0, 3:]).all()


@pytest.mark.slow
def test_regression_baseline_learns_the_toy_set(toy_manifest, cache_dir, tmp_path):
    trainer = RegressionTrainer(toy_config(tmp_path / "reg", toy_manifest, cache_dir, epochs=40))
    history = trainer.run()
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert not (tmp_path / "reg" / "model.safetensors").exists()  # a baseline, not a gtloc checkpoint
    metrics = trainer.evaluate_records(read_manifest(toy_manifest)[:96])
    assert metrics["photos"] == 96
    assert metrics["acc_2500km"] > 3 * CHANCE_ACC_200KM
    assert metrics["month_err"] < 2.0 and metrics["hour_err"] < 4.5  # chance: 3 and 6
