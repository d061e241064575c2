"""The regression-head baseline of the ablations: GT-Loc's image tower regressing place and time directly.

The same backbone and adapter as GT-Loc, trained on the same photos, batches, schedule and optimiser, but the
adapter's last layer emits seven numbers instead of an embedding: the place as a point on the unit sphere (x, y, z)
and the time as (cos, sin) of the year angle and of the day angle, fitted with a squared error (time terms only for
timed photos). Predictions decode those back to lat/lon and month/hour. This is the classic "predict the
coordinates" design the paper argues retrieval beats; it writes only its history (it has no gtloc checkpoint).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from gtloc_engine.evaluation.metrics import geolocation_metrics, time_metrics
from gtloc_engine.io.batches import iter_pixel_batches
from gtloc_engine.records import Record
from gtloc_engine.model.gtloc import GTLoc
from gtloc_engine.training.trainer import Objective, TrainConfig, Trainer

N_OUTPUTS = 7  # x, y, z on the unit sphere; cos, sin of the year angle; cos, sin of the day angle


def regression_targets(latlon_deg: torch.Tensor, torus: torch.Tensor) -> torch.Tensor:
    """(N, 7) targets; the time columns are NaN where torus is NaN (untimed photos)."""
    lat, lon = torch.deg2rad(latlon_deg[:, 0]), torch.deg2rad(latlon_deg[:, 1])
    year, day = 2 * math.pi * torus[:, 0], 2 * math.pi * torus[:, 1]
    return torch.stack((torch.cos(lat) * torch.cos(lon), torch.cos(lat) * torch.sin(lon), torch.sin(lat),
                        torch.cos(year), torch.sin(year), torch.cos(day), torch.sin(day)), dim=1)


def decode_outputs(out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Regression outputs -> ((N, 2) lat/lon degrees, (N, 2) month position in [0, 12) and hour in [0, 24))."""
    xyz = out[:, :3] / np.maximum(np.linalg.norm(out[:, :3], axis=1, keepdims=True), 1e-12)
    lat_deg = np.degrees(np.arcsin(np.clip(xyz[:, 2], -1, 1)))
    latlon = np.stack((lat_deg, np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0]))), 1)
    month = np.mod(np.arctan2(out[:, 4], out[:, 3]) / (2 * math.pi), 1.0) * 12.0
    hour = np.mod(np.arctan2(out[:, 6], out[:, 5]) / (2 * math.pi), 1.0) * 24.0
    return latlon, np.stack((month, hour), 1)


class RegressionObjective(Objective):
    """Squared errors of the adapter's seven outputs against regression_targets; trains the adapter (and the
    backbone when it trains), nothing of the encoders."""

    @staticmethod
    def trains(name: str, model: GTLoc) -> bool:
        return name == "adapter" or (name == "backbone" and model.cfg.backbone.trainable)

    def outputs(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.adapter(self.image_features(images))

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.outputs(images)
        l_loc = ((out[:, :3] - targets[:, :3]) ** 2).sum(1).mean()
        timed = ~torch.isnan(targets[:, 3])
        l_time = ((out[timed, 3:] - targets[timed, 3:]) ** 2).sum(1).mean() if bool(timed.any()) else torch.zeros(())
        total = self.cfg.loc_weight * l_loc + self.cfg.time_weight * l_time
        return total, {"loss_loc": l_loc.item(), "loss_time": l_time.item(), "loss": total.item()}


class RegressionTrainer(Trainer):
    """Trainer whose objective is coordinate regression; no checkpoints, no resume (a benchmark baseline)."""

    def __init__(self, cfg: TrainConfig):
        super().__init__(dataclasses.replace(cfg, resume=False))
        last = self.model.adapter.mlp[-1]
        self.model.adapter.mlp[-1] = nn.Linear(last.in_features, N_OUTPUTS)
        self.model.heads_trained = dict.fromkeys(self.model.heads_trained, False)
        self.optimizer = self._build_optimizer()
        self.objective = RegressionObjective(self.model, self.cfg)

    def _batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        return {"images": self._image_inputs(idx, train=True),
                "targets": regression_targets(self.latlon[idx], self.torus[idx])}

    def _push_queues(self, idx: np.ndarray, batch: dict[str, torch.Tensor]) -> None:
        """No queues: the regression has no negatives."""

    def _every_parameter_trains_every_step(self) -> bool:
        return self.frozen  # every step reaches all of the adapter; a training backbone's text tower never

    @torch.inference_mode()
    def validate(self) -> dict[str, float]:
        if len(self.val_idx) == 0:
            return {}
        self.model.eval()
        out = torch.cat([self.objective.outputs(self._image_inputs(self.val_idx[i:i + 512], train=False))
                         for i in range(0, len(self.val_idx), 512)]).numpy()
        metrics = score_outputs(out, [self.all_records[i] for i in self.val_idx])
        return {f"val_{k}": v for k, v in metrics.items()}

    def _save(self) -> None:
        """Nothing to save: the history file is written by the training loop."""

    @torch.inference_mode()
    def evaluate_records(self, records: Sequence[Record], *, batch_size: int = 64) -> dict[str, float]:
        """Metrics on labelled photos (e.g. the test split), decoded with the backbone's evaluation transform."""
        self.model.eval()
        outs, ok = [], []
        backbone = self.model.backbone
        for batch in iter_pixel_batches([r.path for r in records], backbone.preprocess, batch_size=batch_size,
                                        workers=self.cfg.workers, draft_px=backbone.image_size):
            if batch.pixels is not None:
                outs.append(self.model.adapter(self.model.image_features(batch.pixels)))
                ok.extend(batch.indices)
        return score_outputs(torch.cat(outs).numpy(), [records[i] for i in ok])


def score_outputs(out: np.ndarray, records: Sequence[Record]) -> dict[str, float]:
    """The evaluation suite's geolocation and time metrics for regression outputs."""
    latlon, month_hour = decode_outputs(out)
    true_ll = np.array([(r.lat_deg, r.lon_deg) for r in records], dtype=np.float64)
    metrics = {"photos": float(len(records)), **geolocation_metrics(true_ll, latlon)}
    timed = np.array([r.torus is not None for r in records])
    if timed.any():
        torus = np.array([r.torus for r in records if r.torus is not None])
        metrics.update(time_metrics(torus * np.array([12.0, 24.0]), month_hour[timed]))
    return metrics
