"""Planted label noise, for the detection audit and the denoising-benefit experiment: which
pairs to flip (:func:`plant_flips`), and their features swapped (:func:`swap_where`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def plant_flips(n_pairs: int, rate: float, seed: int | Sequence[int], *,
                weakest: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask, shape ``(n_pairs,)``, of exactly ``round(rate * n_pairs)`` pairs to flip,
    drawn with ``numpy.random.default_rng(seed)``: at random among all pairs, or, given a
    strength per pair (``weakest``, ``(n_pairs,)``), among the ``2 × rate`` fraction with the
    smallest |strength| (targeted flips: the kind that is hard to detect)."""
    rng = np.random.default_rng(seed)
    count = int(round(rate * n_pairs))
    pool = np.arange(n_pairs) if weakest is None else np.argsort(np.abs(weakest))[: min(n_pairs, 2 * count)]
    flipped = np.zeros(n_pairs, dtype=bool)
    flipped[rng.choice(pool, size=count, replace=False)] = True
    return flipped


def swap_where(flipped: np.ndarray, chosen: np.ndarray, rejected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(chosen, rejected)`` features ``(n_pairs, dim)`` with the rows of ``flipped`` pairs swapped."""
    return np.where(flipped[:, None], rejected, chosen), np.where(flipped[:, None], chosen, rejected)


__all__ = ["plant_flips", "swap_where"]
