"""GT-Loc's losses: image-location InfoNCE (GeoCLIP style, with a GPS queue) and Temporal Metric Learning, plus
the composed terms of the fused heads.

Each compares L2-normalised queries with L2-normalised location/time/image embeddings of [batch ; queue]. Queues
hold raw coordinates, not embeddings, so they are re-encoded by the current encoder at every step. The composed
terms (not published by the paper; see training/trainer.py) reuse the same two losses with fused queries:
InfoNCE where the key is a place or an image, TML where it is a time.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from gtloc_engine.model.config import MAX_LOGIT_SCALE
from gtloc_engine.timecode import torus_distance

TML_TARGETS = ("softmax", "poster")


class CoordinateQueue:
    """FIFO of the last `size` coordinate rows (lat/lon or torus); `values()` is oldest-first."""

    def __init__(self, size: int, dim: int):
        self.size = size
        self.buffer = torch.zeros(size, dim)
        self.count = 0  # total rows ever pushed; the ring position is count % size

    def push(self, rows: torch.Tensor) -> None:
        rows = rows.detach().to(self.buffer.dtype).cpu()
        if self.size == 0 or len(rows) == 0:
            return
        rows = rows[-self.size:]
        idx = (self.count + torch.arange(len(rows))) % self.size
        self.buffer[idx] = rows
        self.count += len(rows)

    def values(self) -> torch.Tensor:
        n = min(self.count, self.size)
        if n < self.size or self.size == 0:
            return self.buffer[:n]
        start = self.count % self.size
        return torch.cat((self.buffer[start:], self.buffer[:start]))

    def state(self) -> dict[str, torch.Tensor]:
        return {"buffer": self.buffer.clone(), "count": torch.tensor(self.count)}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.buffer = state["buffer"].clone()
        self.count = int(state["count"])


def scaled(logit_scale: torch.Tensor) -> torch.Tensor:
    return logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)


def infonce(query_emb: torch.Tensor, key_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each query against [batch keys ; queue keys]; query i matches key i (image i <-> place i)."""
    logits = scaled(logit_scale) * query_emb @ key_emb.T
    targets = torch.arange(len(query_emb), device=query_emb.device)
    return F.cross_entropy(logits, targets)


location_infonce = infonce  # the image -> place term: images as queries, [batch ; queue] places as keys


def tml_targets(query_torus: torch.Tensor, gallery_torus: torch.Tensor, *, mode: str = "softmax",
                tau_delta: float = 0.05) -> torch.Tensor:
    """Soft targets q_ij from torus distances delta_ij between each query time and each gallery time.

    'softmax': q_ij = softmax_j(-delta_ij / tau_delta), a distribution peaked on close times (the default).
    'poster': q_ij = 1 - softmax_j(delta_ij), the poster's literal formula (rows do not sum to 1).
    """
    delta = torus_distance(query_torus.detach().cpu().numpy()[:, None, :],
                           gallery_torus.detach().cpu().numpy()[None, :, :])
    delta_t = torch.as_tensor(delta.astype(np.float32), device=query_torus.device)
    if mode == "softmax":
        return torch.softmax(-delta_t / tau_delta, dim=1)
    if mode == "poster":
        return 1.0 - torch.softmax(delta_t, dim=1)
    raise ValueError(f"TML target mode {mode!r} must be one of {TML_TARGETS}")


def temporal_metric_loss(query_emb: torch.Tensor, time_emb: torch.Tensor, logit_scale: torch.Tensor,
                         targets: torch.Tensor) -> torch.Tensor:
    """mean_i CE(q_i, p_i) with p_i = softmax_j(scale * <query_i, time_j>): same gradients as KL(q || p).

    The query is an image (TML), a fused image + place (ig2t) or a place (gps_time)."""
    log_p = torch.log_softmax(scaled(logit_scale) * query_emb @ time_emb.T, dim=1)
    return -(targets * log_p).sum(dim=1).mean()
