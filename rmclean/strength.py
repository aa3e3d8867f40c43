"""Preference strength from per-member margins: mean, std, deciles and accuracies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def aggregate(member_margins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(strength_mean, strength_std)`` over members (axis 1): the mean and the population
    std (ddof = 0) of r(chosen) − r(rejected), raw reward scale. Shape ``(n_pairs,)`` each."""
    margins = np.asarray(member_margins, dtype=np.float64)
    if margins.ndim != 2 or margins.shape[1] < 2:
        raise ValueError(f"member_margins must have shape (n_pairs, members >= 2), got {margins.shape}")
    return margins.mean(axis=1), margins.std(axis=1, ddof=0)


def scored_strength(strength_mean, actions) -> np.ndarray:
    """strength_mean of denoised rows as scored, before any flip, shape ``(rows,)``: a denoise
    result holds it in the written orientation (negated for flipped rows), None for invalid rows
    (NaN here)."""
    strength = np.array([np.nan if value is None else value for value in strength_mean], dtype=np.float64)
    return np.where(np.asarray(actions) == "flip", -strength, strength)


def scale_members(member_margins: np.ndarray) -> np.ndarray:
    """Each member's margins divided by their std over pairs, so members of different models
    or views vote on one scale. A member whose margins barely vary (std below 1e-6 of their
    root-mean-square) is divided by the root-mean-square instead; an all-zero member stays 0."""
    margins = np.asarray(member_margins, dtype=np.float64)
    std = margins.std(axis=0)
    rms = np.sqrt((margins**2).mean(axis=0))
    scale = np.where(std > 1e-6 * rms, std, rms)
    return margins / np.where(scale > 0, scale, 1.0)


def decile_table(strength_mean: np.ndarray, strength_std: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Pairs sorted by strength_mean and cut into ``bins`` equal groups (the paper's view:
    std is U-shaped over mean). One row per bin: range and averages of mean and std."""
    order = np.argsort(strength_mean, kind="stable")
    rows = []
    for number, index in enumerate(np.array_split(order, bins), 1):
        if index.size == 0:
            continue
        rows.append(
            {
                "bin": number,
                "pairs": int(index.size),
                "mean_low": float(strength_mean[index].min()),
                "mean_high": float(strength_mean[index].max()),
                "strength_mean": float(strength_mean[index].mean()),
                "strength_std": float(strength_std[index].mean()),
            }
        )
    return rows


def summarize(member_margins: np.ndarray, groups: Sequence[str] | None = None) -> dict[str, Any]:
    """Accuracy against the dataset labels and the shape of the strength distribution.

    ``member_accuracy``: per member, the fraction of pairs with margin > 0;
    ``ensemble_accuracy``: fraction with strength_mean > 0 (ties at exactly 0 count as wrong);
    ``fraction_negative``: fraction with strength_mean < 0 (paper: about 25% on hh-rlhf).
    """
    strength_mean, strength_std = aggregate(member_margins)
    summary: dict[str, Any] = {
        "pairs": int(strength_mean.size),
        "fraction_negative": float((strength_mean < 0).mean()),
        "ensemble_accuracy": float((strength_mean > 0).mean()),
        "member_accuracy": [float(a) for a in (np.asarray(member_margins) > 0).mean(axis=0)],
        "strength_mean_percentiles": {
            f"p{p}": float(np.percentile(strength_mean, p)) for p in (10, 25, 50, 75, 90)
        },
        "deciles": decile_table(strength_mean, strength_std),
    }
    if groups is not None:
        labels = np.asarray(groups)
        summary["by_source"] = {
            str(name): {
                "pairs": int((labels == name).sum()),
                "ensemble_accuracy": float((strength_mean[labels == name] > 0).mean()),
                "fraction_negative": float((strength_mean[labels == name] < 0).mean()),
            }
            for name in dict.fromkeys(labels.tolist())
        }
    return summary
