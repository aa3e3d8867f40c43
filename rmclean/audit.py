"""Detection audit: plant label flips, score the corrupted data, and measure how well each
detector finds the planted flips (AUROC, AUPRC, precision@k with k = number of flips).

Detectors (a higher score means "more likely flipped"):

- ``rmclean``: −strength_mean of the cross-fitted ensemble (the default scorer);
- ``rmclean mean/std``: −strength_mean / strength_std;
- ``single member``: −margin of one member of the same ensemble (one reward model);
- ``rmclean in-sample``: −strength_mean with ``folds = 1`` (the paper's mode);
- ``cleanlab``: self-confidence of out-of-fold logistic regression on the same features,
  pairs turned into binary examples of random orientation (needs ``cleanlab``);
- ``oracle``: the same ensemble trained on the uncorrupted labels (an upper reference).

Features come from the cache once; only the heads are retrained per flip rate. Each AUROC
comes with a 95% bootstrap interval over pairs, and every detector's AUROC minus rmclean's with
a *paired* interval (the same resamples for both), which is what says whether one beats the
other in a run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .configs import to_record
from .data.pairs import split_invalid
from .features.views import feature_views
from .files import output_folder, write_json, write_text
from .noise import plant_flips, swap_where
from .score import ScoreConfig, training_groups, view_margins

DETECTORS = ("rmclean", "rmclean mean/std", "single member", "rmclean in-sample", "cleanlab", "oracle")


def rates_list(text: str) -> tuple[float, ...]:
    """``"0.1,0.2"`` -> ``(0.1, 0.2)``."""
    return tuple(float(rate) for rate in text.split(",") if rate.strip())


@dataclass(frozen=True)
class AuditConfig:
    """Flip rates to plant, and the seed that picks which pairs are flipped."""

    rates: tuple[float, ...] = field(default=(0.1, 0.2, 0.3), metadata={
        "help": "flip rates to plant", "flag": "--inject", "metavar": "RATES", "parse": rates_list})
    seed: int = field(default=0, metadata={"help": "which pairs are flipped (and the ensemble's seed)"})
    resamples: int = field(default=1000, metadata={
        "help": "bootstrap resamples for the AUROC intervals and the paired differences (0: none)", "metavar": "N"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "rates", tuple(self.rates))
        for rate in self.rates:
            if not 0 < rate < 1:
                raise ValueError(f"flip rates must be between 0 and 1 (exclusive), got {rate}")
        if self.resamples < 0:
            raise ValueError(f"resamples must be 0 (no intervals) or more, got {self.resamples}")

    def flips(self, n_pairs: int, rate: float) -> np.ndarray:
        """The pairs the audit flips at ``rate`` (:func:`~rmclean.noise.plant_flips`, seeded by
        ``seed`` and the rate), shape ``(n_pairs,)``."""
        return plant_flips(n_pairs, rate, [self.seed, int(round(rate * 1e6))])


def detection_metrics(flipped: np.ndarray, suspicion: np.ndarray) -> dict[str, float]:
    """AUROC, AUPRC and precision@k (k = number of planted flips) of ``suspicion``."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    k = int(flipped.sum())
    top = np.argsort(-suspicion, kind="stable")[:k]
    return {
        "auroc": float(roc_auc_score(flipped, suspicion)),
        "auprc": float(average_precision_score(flipped, suspicion)),
        "precision_at_k": float(flipped[top].mean()) if k else float("nan"),
    }


def bootstrap_aurocs(flipped: np.ndarray, suspicion: dict[str, np.ndarray], resamples: int = 1000,
                     seed: int = 0, chunk_elements: int = 20_000_000) -> dict[str, np.ndarray]:
    """AUROC of each detector on ``resamples`` bootstrap resamples of the pairs, the same
    resamples for every detector (so differences are paired): ``{detector: (resamples,)}``;
    NaN for a resample without a flipped or a kept pair.

    A resample is a vector of multiplicities, so each AUROC is a weighted Mann–Whitney count
    over one sort of the scores (ties between a flipped and a kept pair count one half).
    Resamples are drawn in chunks of about ``chunk_elements`` weights, so memory stays
    bounded on large datasets."""
    rng = np.random.default_rng([seed, 17])
    n_pairs = flipped.size
    positive = flipped.astype(bool)
    sorted_by: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    for detector, scores in suspicion.items():
        order = np.argsort(scores, kind="stable")
        sorted_scores = scores[order]
        starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # runs of equal scores
        run = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, n_pairs]))
        sorted_by[detector] = (order, positive[order], starts, run)
    aurocs: dict[str, list[np.ndarray]] = {detector: [] for detector in suspicion}
    chunk = max(1, chunk_elements // max(n_pairs, 1))
    for first in range(0, resamples, chunk):
        weights = np.stack([np.bincount(rng.integers(0, n_pairs, n_pairs), minlength=n_pairs)
                            for _ in range(min(chunk, resamples - first))]).astype(np.float64)
        for detector, (order, sorted_positive, starts, run) in sorted_by.items():
            sorted_weights = weights[:, order]
            negative_weights = np.where(sorted_positive, 0.0, sorted_weights)
            per_run = np.add.reduceat(negative_weights, starts, axis=1)  # negatives in each run
            below, tied = (np.cumsum(per_run, axis=1) - per_run)[:, run], per_run[:, run]
            positive_weights = np.where(sorted_positive, sorted_weights, 0.0)
            wins = (positive_weights * (below + 0.5 * tied)).sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                aurocs[detector].append(wins / (positive_weights.sum(axis=1) * negative_weights.sum(axis=1)))
    return {detector: np.concatenate(values) for detector, values in aurocs.items()}


def interval(values: np.ndarray) -> list[float]:
    """The central 95% of ``values`` (NaNs left out): ``[low, high]``."""
    return [float(np.nanpercentile(values, 2.5)), float(np.nanpercentile(values, 97.5))]


def audit(pairs, score_config: ScoreConfig = ScoreConfig(), config: AuditConfig = AuditConfig(), *,
          cache_dir=None, progress: bool = True) -> dict[str, Any]:
    """Run the audit on the valid pairs of ``pairs`` (features of every view of
    ``score_config.views`` from the cache, see :func:`audit_features`)."""
    valid, _ = split_invalid(pairs)
    views = feature_views(valid, score_config.features, cache_dir=cache_dir, progress=progress)
    result = audit_features(views, training_groups(valid, score_config), score_config, config)
    return {"pairs": len(valid), "backbone": score_config.features.backbone, **result}


def audit_features(views: list[tuple[np.ndarray, np.ndarray]], groups: dict[str, np.ndarray],
                   score_config: ScoreConfig, config: AuditConfig) -> dict[str, Any]:
    """The audit on feature views, each ``(chosen, rejected)`` of shape ``(n_pairs, dim)``:
    returns ``{"rows": [...], ...}`` with one row per (rate, detector): ``rate``, ``detector``,
    ``auroc``, ``auprc``, ``precision_at_k`` and ``auroc_by_group`` (per training group). cleanlab sees all views' features side by side."""
    heads = score_config.head_config()
    n_pairs = views[0][0].shape[0]
    clean_margins = view_margins(views, groups, heads).mean(axis=1)
    rows: list[dict[str, Any]] = []
    for rate in config.rates:
        flipped = config.flips(n_pairs, rate)
        noisy = [swap_where(flipped, chosen, rejected) for chosen, rejected in views]
        margins = view_margins(noisy, groups, heads)
        strength_mean, strength_std = margins.mean(axis=1), margins.std(axis=1)
        suspicion = {
            "rmclean": -strength_mean,
            "rmclean mean/std": -strength_mean / np.maximum(strength_std, 1e-12),
            "single member": -margins[:, 0],
            "rmclean in-sample": -view_margins(noisy, groups, replace(heads, folds=1)).mean(axis=1),
            "oracle": np.where(flipped, clean_margins, -clean_margins),
        }
        cleanlab_scores = cleanlab_suspicion(np.hstack([c for c, _ in noisy]), np.hstack([r for _, r in noisy]),
                                              groups, score_config)
        if cleanlab_scores is not None:
            suspicion["cleanlab"] = cleanlab_scores
        resampled = bootstrap_aurocs(flipped, suspicion, config.resamples, config.seed) if config.resamples else {}
        rmclean_auroc = detection_metrics(flipped, suspicion["rmclean"])["auroc"]
        for detector in DETECTORS:
            if detector in suspicion:
                by_group = {name: detection_metrics(flipped[index], suspicion[detector][index])["auroc"]
                            for name, index in groups.items() if 0 < flipped[index].sum() < index.size}
                row = {"rate": rate, "detector": detector, **detection_metrics(flipped, suspicion[detector]),
                       "auroc_by_group": by_group}
                if resampled:
                    row["auroc_interval"] = interval(resampled[detector])
                    row["minus_rmclean"] = row["auroc"] - rmclean_auroc
                    row["minus_rmclean_interval"] = interval(resampled[detector] - resampled["rmclean"])
                rows.append(row)
    return {
        "config": {"score": to_record(score_config), "audit": to_record(config)},
        "cleanlab": _cleanlab_available(),
        "rows": rows,
    }


def _cleanlab_available() -> bool:
    try:
        import cleanlab  # noqa: F401
    except ImportError:
        return False
    return True


def cleanlab_suspicion(chosen, rejected, groups, config: ScoreConfig) -> np.ndarray | None:
    """cleanlab's self-confidence on randomly oriented binary examples, per group, with
    out-of-fold probabilities from an L2 logistic regression (same C and folds)."""
    if not _cleanlab_available():
        return None
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.preprocessing import StandardScaler

    suspicion = np.zeros(chosen.shape[0])
    for number, index in enumerate(groups.values()):
        rng = np.random.default_rng([config.seed, 7, number])
        first_is_chosen = rng.random(index.size) < 0.5
        differences = chosen[index] - rejected[index]
        features = np.where(first_is_chosen[:, None], differences, -differences)
        labels = first_is_chosen.astype(int)
        model = LogisticRegression(C=config.C, max_iter=2000)
        folds = StratifiedKFold(n_splits=max(config.folds, 2), shuffle=True, random_state=config.seed)
        probabilities = cross_val_predict(
            model, StandardScaler().fit_transform(features), labels, cv=folds, method="predict_proba"
        )
        suspicion[index] = 1.0 - get_label_quality_scores(labels, probabilities, method="self_confidence")
    return suspicion


def to_markdown(result: dict[str, Any]) -> str:
    """The audit table: one row per detector, AUROC / AUPRC / P@k per planted rate; with
    intervals, a second table of AUROC and its difference from rmclean's, each with its 95%
    interval."""
    rates = sorted({row["rate"] for row in result["rows"]})
    by_key = {(row["rate"], row["detector"]): row for row in result["rows"]}

    def table(columns: list[str], cells_of) -> list[str]:
        """Header, separator and one line per detector that has a row; ``cells_of(detector,
        row)`` gives the ``len(columns)`` cells of one rate, ``None`` where it has none."""
        lines = ["| detector | " + " | ".join(f"{c} @{r:g}" for r in rates for c in columns) + " |",
                 "|---|" + "---:|" * (len(columns) * len(rates))]
        for detector in DETECTORS:
            cells = []
            for rate in rates:
                row = by_key.get((rate, detector))
                cells += (row and cells_of(detector, row)) or ["n/a"] * len(columns)
            if any(cell != "n/a" for cell in cells):
                lines.append(f"| {detector} | " + " | ".join(cells) + " |")
        return lines

    lines = table(["AUROC", "AUPRC", "P@k"],
                  lambda detector, row: [f"{row[m]:.3f}" for m in ("auroc", "auprc", "precision_at_k")])
    if any("auroc_interval" in row for row in result["rows"]):
        def with_intervals(detector: str, row: dict[str, Any]) -> list[str] | None:
            if "auroc_interval" not in row:
                return None
            (low, high), (lead_low, lead_high) = row["auroc_interval"], row["minus_rmclean_interval"]
            lead = "—" if detector == "rmclean" else f"{row['minus_rmclean']:+.3f} [{lead_low:+.3f}, {lead_high:+.3f}]"
            return [f"{row['auroc']:.3f} [{low:.3f}, {high:.3f}]", lead]

        lines += ["", "AUROC with its 95% bootstrap interval, and minus rmclean's with a paired interval "
                  "(an interval below 0 means rmclean is better in this run):", ""]
        lines += table(["AUROC", "− rmclean"], with_intervals)
    return "\n".join(lines) + "\n"


AUDIT_OUTPUTS = ("audit.json", "audit.md", "audit.png")  # what `rmclean audit` writes into its folder


def write_audit(result: dict[str, Any], folder: str | os.PathLike) -> list[Path]:
    """Write ``audit.json``, ``audit.md`` and ``audit.png`` into ``folder`` as one unit
    (:func:`rmclean.files.output_folder`)."""
    from .plots import detection_curves, save

    folder = Path(folder)
    title = f"Detection audit, {result['pairs']:,} pairs, {result['backbone']}"
    with output_folder(folder, owned=AUDIT_OUTPUTS, produced_by="rmclean audit") as staging:
        write_json(staging / "audit.json", result)
        write_text(staging / "audit.md", to_markdown(result))
        save(detection_curves(result["rows"], title), staging / "audit.png")
    return [folder / name for name in AUDIT_OUTPUTS]
