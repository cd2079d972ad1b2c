"""SupConLoss against an independent NumPy implementation, and its numerical edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from embetter_plug import SupConLoss


def supcon_numpy(features: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Khosla et al. (2020), eq. 2 ("L_out"), one anchor at a time in float64."""
    z = features / np.linalg.norm(features, axis=1, keepdims=True)
    per_anchor = []
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue
        sims = np.array([z[i] @ z[a] for a in others]) / temperature
        log_denominator = logsumexp(sims)
        terms = [z[i] @ z[p] / temperature - log_denominator for p in positives]
        per_anchor.append(-np.mean(terms))
    return float(np.mean(per_anchor)) if per_anchor else 0.0


@pytest.mark.parametrize("temperature", [0.07, 0.5, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_numpy_reference(temperature, seed):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(24, 6))
    labels = rng.integers(0, 4, size=24)
    got = SupConLoss(temperature)(torch.tensor(feats, dtype=torch.float32), torch.tensor(labels))
    assert got.item() == pytest.approx(supcon_numpy(feats, labels, temperature), rel=1e-4)


def test_anchors_without_positives_are_left_out():
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(7, 5))
    labels = np.array([0, 0, 0, 1, 1, 2, 3])  # classes 2 and 3 have no positive
    got = SupConLoss(0.1)(torch.tensor(feats, dtype=torch.float32), torch.tensor(labels))
    assert np.isfinite(got.item())
    assert got.item() == pytest.approx(supcon_numpy(feats, labels, 0.1), rel=1e-4)


def test_no_positive_at_all_gives_zero_with_a_gradient_path():
    feats = torch.randn(4, 3, requires_grad=True)
    loss = SupConLoss()(feats, torch.arange(4))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(feats.grad).all()


def test_one_class_batch_and_single_sample():
    feats = torch.randn(6, 4, requires_grad=True)
    loss = SupConLoss()(feats, torch.zeros(6, dtype=torch.long))
    loss.backward()
    # every other sample is a positive: the loss is log(n - 1) minus the mean similarity term
    ref = supcon_numpy(feats.detach().numpy().astype(np.float64), np.zeros(6), 0.07)
    assert loss.item() == pytest.approx(ref, rel=1e-4)
    assert torch.isfinite(feats.grad).all()
    assert SupConLoss()(torch.randn(1, 4), torch.tensor([1])).item() == 0.0


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e30])
def test_large_logits_and_extreme_norms_stay_finite(scale):
    rng = np.random.default_rng(3)
    base = rng.normal(size=(16, 8))
    labels = rng.integers(0, 3, size=16)
    feats = torch.tensor(base * scale, dtype=torch.float32, requires_grad=True)
    loss = SupConLoss(temperature=1e-4)(feats, torch.tensor(labels))  # logits up to 1e4
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(feats.grad).all()
    assert loss.item() == pytest.approx(supcon_numpy(base, labels, 1e-4), rel=1e-3)


@pytest.mark.parametrize("scale", [0.0, 1e-30])
def test_zero_or_vanishing_embedding_has_finite_gradient(scale):
    feats = (torch.ones(4, 3) * scale).requires_grad_()
    loss = SupConLoss()(feats, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(feats.grad).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        SupConLoss(temperature=0)
    with pytest.raises(ValueError, match="2-D"):
        SupConLoss()(torch.randn(2, 3, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels has 3"):
        SupConLoss()(torch.randn(2, 3), torch.tensor([0, 1, 1]))
