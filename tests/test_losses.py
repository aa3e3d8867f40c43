"""Reward-model losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from rmclean.train.losses import bradley_terry, label_smoothing, margin_loss, preference_loss, soft_label_loss


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


DELTA = torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64)


def test_bradley_terry_and_margin():
    expected = [-math.log(sigmoid(d)) for d in (2.0, 0.0, -1.0)]
    assert bradley_terry(DELTA).tolist() == pytest.approx(expected)
    assert bradley_terry(DELTA)[1].item() == pytest.approx(math.log(2))
    margin = torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64)
    expected = [-math.log(sigmoid(d - m)) for d, m in ((2.0, 0.5), (0.0, 1.0), (-1.0, 0.0))]
    assert margin_loss(DELTA, margin).tolist() == pytest.approx(expected)


def test_label_smoothing_and_soft_labels_agree():
    alpha = 0.1
    expected = [-(0.9 * math.log(sigmoid(d)) + 0.1 * math.log(sigmoid(-d))) for d in (2.0, 0.0, -1.0)]
    assert label_smoothing(DELTA, alpha).tolist() == pytest.approx(expected)
    soft = torch.full((3,), 0.9, dtype=torch.float64)
    assert soft_label_loss(DELTA, soft).tolist() == pytest.approx(expected)
    # per-pair targets, with a margin
    soft = torch.tensor([1.0, 0.5, 0.2], dtype=torch.float64)
    margin = torch.tensor([0.5, 0.0, 1.0], dtype=torch.float64)
    expected = [-(s * math.log(sigmoid(d - m)) + (1 - s) * math.log(sigmoid(m - d)))
                for d, s, m in zip((2.0, 0.0, -1.0), (1.0, 0.5, 0.2), (0.5, 0.0, 1.0))]
    assert preference_loss(DELTA, "soft-label+margin", margin, soft).tolist() == pytest.approx(expected)


def test_named_losses_and_missing_columns():
    margin = torch.zeros(3, dtype=torch.float64)
    soft = torch.ones(3, dtype=torch.float64)
    bt = bradley_terry(DELTA)
    for name in ("bt", "margin", "soft-label", "soft-label+margin"):  # zero margin, hard labels: all are BT
        assert preference_loss(DELTA, name, margin, soft).tolist() == pytest.approx(bt.tolist())
    with pytest.raises(ValueError, match="needs a margin"):
        preference_loss(DELTA, "margin")
    with pytest.raises(ValueError, match="needs a soft label"):
        preference_loss(DELTA, "soft-label", margin=margin)
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        preference_loss(DELTA, "hinge")


def test_losses_have_gradients():
    delta = DELTA.clone().requires_grad_(True)
    preference_loss(delta, "margin", torch.ones(3, dtype=torch.float64)).sum().backward()
    assert (delta.grad < 0).all()  # raising delta lowers every margin loss
