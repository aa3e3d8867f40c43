"""Seeded reward-model heads on frozen features, trained together as one batched model.

Every member of every fold is a row of one stacked weight tensor, so M members × K folds
cost one pass over the features per optimisation step, not M × K separate fits.

- ``linear`` heads: r(x, y) = w · φ(x, y). The Bradley–Terry loss −log σ(r_c − r_r) is then
  an L2-regularised logistic regression on feature differences (convex; members differ by
  their bootstrap resample). Regularisation follows scikit-learn's convention:
  0.5 ‖w‖² + C Σ_i loss_i.
- ``mlp`` heads: r = v · gelu(U φ + b) + c with one hidden layer; members differ by their
  initialisation seed, data order and bootstrap resample (non-convex, so seeds matter).

With ``folds = K > 1`` (cross-fitting) every pair is scored only by the M members of the
fold that did not train on it; ``folds = 1`` is the paper's in-sample mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class HeadConfig:
    """How the heads are trained. Defaults: see the README's scoring section for how they
    were chosen."""

    members: int = 10
    folds: int = 5
    head: str = "linear"
    C: float = 0.0003
    bootstrap: bool = True
    hidden: int = 64
    epochs: int = 30
    min_steps: int = 300
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.members < 1:
            raise ValueError(f"members must be at least 1, got {self.members}")
        if self.folds < 1:
            raise ValueError(f"folds must be at least 1, got {self.folds}")
        if self.head not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp', got {self.head!r}")
        if self.C <= 0:
            raise ValueError(f"C must be positive, got {self.C}")


def fold_assignment(n_pairs: int, folds: int, seed: int) -> np.ndarray:
    """Fold index (0..folds-1) of each pair: a seeded random balanced split."""
    if folds > 1 and n_pairs < folds:
        raise ValueError(f"{n_pairs} pairs cannot be split into {folds} folds; use fewer folds (--folds)")
    rng = np.random.default_rng([seed, 1])
    return rng.permutation(np.arange(n_pairs) % folds)


def member_margins(chosen: np.ndarray, rejected: np.ndarray, config: HeadConfig, progress: bool = False) -> np.ndarray:
    """Per-member margins r_m(chosen) − r_m(rejected), shape ``(n_pairs, members)``.

    ``chosen`` and ``rejected`` are feature matrices of shape ``(n_pairs, dim)``. With
    ``folds > 1`` pair i's margins come from the members of its own held-out fold.
    """
    import torch

    n_pairs = chosen.shape[0]
    folds = fold_assignment(n_pairs, config.folds, config.seed)
    # weights[g, i]: how often model g = (fold k, member m) sees pair i in training
    weights = np.zeros((config.folds * config.members, n_pairs), dtype=np.float32)
    for k in range(config.folds):
        train = np.flatnonzero(folds != k) if config.folds > 1 else np.arange(n_pairs)
        for m in range(config.members):
            rng = np.random.default_rng([config.seed, 2, k, m])
            if config.bootstrap:
                weights[k * config.members + m] = np.bincount(rng.choice(train, size=train.size), minlength=n_pairs)
            else:
                weights[k * config.members + m, train] = 1.0
    chosen_t = torch.from_numpy(np.ascontiguousarray(chosen, dtype=np.float32))
    rejected_t = torch.from_numpy(np.ascontiguousarray(rejected, dtype=np.float32))
    weights_t = torch.from_numpy(weights)
    if config.head == "linear":
        score = _fit_linear(chosen_t - rejected_t, weights_t, config)
    else:
        score = _fit_mlp(chosen_t, rejected_t, weights_t, config, progress)
    margins_all = score(chosen_t, rejected_t)  # (models, n_pairs)
    margins_all = margins_all.reshape(config.folds, config.members, n_pairs)
    if config.folds == 1:
        return margins_all[0].T.numpy().astype(np.float64)
    return margins_all[folds, :, np.arange(n_pairs)].numpy().astype(np.float64)


def _standardizer(features):
    mean = features.mean(0)
    scale = features.std(0).clamp(min=1e-6)
    return mean, scale


def _fit_linear(differences, weights, config: HeadConfig):
    """Batched L2 logistic regression through the origin on standardized differences."""
    import torch

    # Differences are antisymmetric in (chosen, rejected): scale them, never centre them.
    scale = differences.pow(2).mean(0).sqrt().clamp(min=1e-6)
    x = differences / scale
    models, dim = weights.shape[0], x.shape[1]
    w = torch.zeros(models, dim, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], lr=1, max_iter=500, tolerance_grad=1e-6, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = w @ x.T  # (models, n)
        loss = config.C * (weights * torch.nn.functional.softplus(-logits)).sum() + 0.5 * (w * w).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    coefficients = (w.detach() / scale)  # raw feature scale

    def score(chosen, rejected):
        return coefficients @ (chosen - rejected).T

    return score


def _fit_mlp(chosen, rejected, weights, config: HeadConfig, progress: bool):
    """Batched one-hidden-layer reward heads, trained with AdamW on minibatches."""
    import torch
    from tqdm.auto import tqdm

    mean, scale = _standardizer(torch.cat([chosen, rejected]))
    models, dim, hidden = weights.shape[0], chosen.shape[1], config.hidden
    generator = torch.Generator().manual_seed(config.seed)
    first = torch.randn(models, dim, hidden, generator=generator) / dim**0.5
    bias = torch.zeros(models, 1, hidden)
    second = torch.randn(models, hidden, generator=generator) / hidden**0.5
    parameters = [p.requires_grad_() for p in (first, bias, second)]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)

    def reward(features):
        """(n, dim) shared by all models, or (models, n, dim) -> (models, n)."""
        pattern = "nd,gdh->gnh" if features.dim() == 2 else "gnd,gdh->gnh"
        hidden_states = torch.nn.functional.gelu(torch.einsum(pattern, (features - mean) / scale, first) + bias)
        return torch.einsum("gnh,gh->gn", hidden_states, second)

    n_pairs = chosen.shape[0]
    batch = min(256, n_pairs)
    steps_per_pass = -(-n_pairs // batch)
    steps = max(config.epochs * steps_per_pass, config.min_steps)
    order_rng = np.random.default_rng([config.seed, 3])
    rows = torch.arange(models).unsqueeze(1)
    for step in tqdm(range(steps), desc="training heads", disable=not progress):
        if step % steps_per_pass == 0:  # each member sees the pairs in its own order
            permutations = torch.from_numpy(np.stack([order_rng.permutation(n_pairs) for _ in range(models)]))
        start = (step % steps_per_pass) * batch
        index = permutations[:, start:start + batch]  # (models, b)
        margins = reward(chosen[index]) - reward(rejected[index])
        batch_weights = weights[rows, index]
        loss = (batch_weights * torch.nn.functional.softplus(-margins)).sum() / batch_weights.sum().clamp(min=1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def score(chosen_features, rejected_features):
        with torch.no_grad():
            return reward(chosen_features) - reward(rejected_features)

    return score
