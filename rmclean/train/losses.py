"""Per-pair reward-model losses (SPEC 2.3, 2.5).

Every function takes ``delta`` = r(chosen) − r(rejected), a float tensor of shape
``(n_pairs,)``, and returns the loss of each pair, shape ``(n_pairs,)``, in nats; average
them yourself. ``margin`` and ``soft_label`` are the columns ``rmclean denoise`` writes.

================== ==================================================================
bt                 −log σ(Δ)                                  (Bradley–Terry)
margin             −log σ(Δ − m)                              (paper Eq. 6, adaptive margin)
label smoothing    −[(1 − α) log σ(Δ) + α log σ(−Δ)]          (paper Eq. 5)
soft-label         binary cross-entropy of σ(Δ) against a per-pair target s = 1 − α
soft-label+margin  binary cross-entropy of σ(Δ − m) against s
================== ==================================================================
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Every loss by the per-pair columns it reads: ``(margin, soft_label)``.
LOSSES: dict[str, tuple[bool, bool]] = {
    "bt": (False, False),
    "margin": (True, False),
    "soft-label": (False, True),
    "soft-label+margin": (True, True),
}


def loss_reading(*, margin: bool, soft_label: bool) -> str:
    """The loss that reads a ``margin`` and/or a ``soft_label`` per pair (``bt`` for neither)."""
    return next(name for name, reads in LOSSES.items() if reads == (margin, soft_label))


def bradley_terry(delta: torch.Tensor) -> torch.Tensor:
    """−log σ(Δ) per pair."""
    return -F.logsigmoid(delta)


def margin_loss(delta: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """−log σ(Δ − m) per pair: the chosen response must win by at least ``margin``."""
    return -F.logsigmoid(delta - margin)


def label_smoothing(delta: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """−[(1 − α) log σ(Δ) + α log σ(−Δ)] per pair (α constant or per pair)."""
    return -((1 - alpha) * F.logsigmoid(delta) + alpha * F.logsigmoid(-delta))


def soft_label_loss(delta: torch.Tensor, soft_label: torch.Tensor, margin: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy of σ(Δ − m) against the target P(chosen better) = ``soft_label``
    (label smoothing with α = 1 − soft_label; with ``margin`` None, m = 0)."""
    logits = delta if margin is None else delta - margin
    return F.binary_cross_entropy_with_logits(logits, soft_label.to(logits.dtype), reduction="none")


def preference_loss(delta: torch.Tensor, loss: str = "bt", margin: torch.Tensor | None = None,
                    soft_label: torch.Tensor | None = None) -> torch.Tensor:
    """The per-pair loss named ``loss`` (one of :data:`LOSSES`), reading ``margin`` and
    ``soft_label`` where it needs them; a missing column it needs is an error."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}: use one of {', '.join(LOSSES)}")
    reads_margin, reads_soft_label = LOSSES[loss]
    if reads_margin and margin is None:
        raise ValueError(f"the {loss} loss needs a margin per pair (the 'margin' column of rmclean denoise)")
    if reads_soft_label and soft_label is None:
        raise ValueError(f"the {loss} loss needs a soft label per pair (the 'soft_label' column of rmclean denoise)")
    if reads_soft_label:
        return soft_label_loss(delta, soft_label, margin if reads_margin else None)
    return margin_loss(delta, margin) if reads_margin else bradley_terry(delta)


__all__ = ["LOSSES", "bradley_terry", "label_smoothing", "loss_reading", "margin_loss", "preference_loss",
           "soft_label_loss"]
