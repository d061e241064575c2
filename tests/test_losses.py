"""InfoNCE with a GPS queue, Temporal Metric Learning targets and loss, the coordinate queue."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gtloc_engine.timecode import torus_distance
from gtloc_engine.training.losses import (
    CoordinateQueue, location_infonce, temporal_metric_loss, tml_targets,
)


def test_queue_is_fifo_and_wraps():
    q = CoordinateQueue(4, 2)
    q.push(torch.tensor([[1.0, 1], [2, 2], [3, 3]]))
    assert q.values()[:, 0].tolist() == [1, 2, 3]
    q.push(torch.tensor([[4.0, 4], [5, 5]]))
    assert q.values()[:, 0].tolist() == [2, 3, 4, 5]
    q.push(torch.arange(12.0).reshape(6, 2))  # more rows than the queue: keep the newest
    assert q.values()[:, 0].tolist() == [4, 6, 8, 10]
    restored = CoordinateQueue(4, 2)
    restored.load_state(q.state())
    assert torch.equal(restored.values(), q.values())
    assert len(CoordinateQueue(0, 2).values()) == 0


def test_infonce_is_cross_entropy_against_batch_and_queue():
    torch.manual_seed(0)
    img = F.normalize(torch.randn(4, 8), dim=-1)
    loc = F.normalize(torch.randn(10, 8), dim=-1)
    scale = torch.tensor(2.0)
    expected = F.cross_entropy(scale.exp() * img @ loc.T, torch.arange(4))
    torch.testing.assert_close(location_infonce(img, loc, scale), expected)


def test_infonce_is_low_when_images_sit_on_their_places():
    loc = F.normalize(torch.randn(6, 16), dim=-1)
    aligned = location_infonce(loc[:3], loc, torch.tensor(np.log(50.0)))
    shuffled = location_infonce(loc[[1, 2, 0]], loc, torch.tensor(np.log(50.0)))
    assert aligned < 0.1 < shuffled


def test_softmax_targets_are_distributions_peaked_on_close_times():
    times = torch.tensor([[0.995, 0.5], [0.005, 0.5], [0.5, 0.5], [0.5, 0.0]])
    q = tml_targets(times, times, mode="softmax", tau_delta=0.05)
    torch.testing.assert_close(q.sum(1), torch.ones(4))
    # Dec 31 and Jan 1 (theta 0.995 vs 0.005) are neighbours across the wrap.
    assert q[0, 1] > q[0, 2] and q[0, 1] > 0.3
    expected = torch.softmax(-torch.as_tensor(torus_distance(times[:, None].numpy(), times[None].numpy()),
                                              dtype=torch.float32) / 0.05, dim=1)
    torch.testing.assert_close(q, expected)


def test_poster_targets_follow_the_literal_formula():
    times = torch.rand(5, 2)
    q = tml_targets(times, times, mode="poster")
    d = torch.as_tensor(torus_distance(times[:, None].numpy(), times[None].numpy()), dtype=torch.float32)
    torch.testing.assert_close(q, 1 - torch.softmax(d, dim=1))
    assert not torch.allclose(q.sum(1), torch.ones(5))


def test_unknown_target_mode_is_rejected():
    with pytest.raises(ValueError, match="poster"):
        tml_targets(torch.rand(2, 2), torch.rand(2, 2), mode="hard")


def test_tml_equals_kl_plus_target_entropy_and_is_minimal_at_the_target():
    torch.manual_seed(1)
    img = F.normalize(torch.randn(5, 8), dim=-1)
    tim = F.normalize(torch.randn(7, 8), dim=-1)
    q = torch.softmax(torch.randn(5, 7), dim=1)
    scale = torch.tensor(1.5)
    loss = temporal_metric_loss(img, tim, scale, q)
    log_p = torch.log_softmax(scale.exp() * img @ tim.T, dim=1)
    kl = F.kl_div(log_p, q, reduction="batchmean")
    entropy = -(q * q.log()).sum(1).mean()
    torch.testing.assert_close(loss, kl + entropy)
    assert loss >= entropy
