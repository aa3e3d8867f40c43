"""Denoisers: selection rules and methods that turn pairs + scores into per-pair actions.

Everything here is a pure function of (pairs, scores, config); writing files is
:mod:`rmclean.export`'s job. Methods (SPEC 2.3, paper section "Denoising"):

============= =====================================================================
flip          swap chosen and rejected of the selected pairs
drop          remove the selected pairs (they stay in the result with action ``drop``)
margin        every pair gets an adaptive margin m_i = clip(scale * strength_mean, 0, m_max)
soft-label    selected pairs get a soft label 1 - alpha_i (label smoothing)
flip+margin   flip the selected pairs, then margins from the strength after the flip
soft-label+margin  soften the selected pairs, margins for all
============= =====================================================================

Selection rules (``select=``): ``fraction:F`` (the F lowest by strength_mean),
``negative`` (strength_mean < 0), ``zscore:Z`` (strength_mean / strength_std < Z) and
``ambiguous:LO,HI`` (pairs whose rank in the strength order lies in the quantile band
[LO, HI)). Every input pair ends up in the result with an ``action`` in
{keep, flip, drop, soften, invalid} and a ``reason``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .configs import to_record
from .data.describe import clip_text
from .score import Scores
from .strength import aggregate, scored_strength
from .train.losses import loss_reading

ACTIONS = ("keep", "flip", "drop", "soften", "invalid")


@dataclass(frozen=True)
class Method:
    """What a denoising method does: ``action`` (``flip``, ``drop`` or ``soften``) on the pairs
    its rule selects, or ``None`` for a method that selects nothing; ``margin``: every pair
    gets an adaptive margin. The reward-model loss that reads its columns follows."""

    action: str | None
    margin: bool = False

    @property
    def loss(self) -> str:
        """The loss of :mod:`rmclean.train.losses` a reward model trains with on this method's output."""
        return loss_reading(margin=self.margin, soft_label=self.action == "soften")


#: Every denoising method (SPEC 2.3): adding one is adding a row here.
METHODS: dict[str, Method] = {
    "flip": Method("flip"),
    "drop": Method("drop"),
    "margin": Method(None, margin=True),
    "soft-label": Method("soften"),
    "flip+margin": Method("flip", margin=True),
    "soft-label+margin": Method("soften", margin=True),
}
ALPHA_FROM_ENSEMBLE = {
    "members": "fraction of members that prefer the rejected response",
    "normal": "Phi(-strength_mean / strength_std)",
}
UNSCORED = "no score for this pair (allow_missing)"  # the reason of a pair without a score
DEFAULT_SELECT = "fraction:0.1"  # the paper flips the lowest 10% (and tries 20%)


class DenoiseError(ValueError):
    """Scores that do not match the pairs, or a rule or option that cannot work."""


@dataclass(frozen=True)
class Selection:
    """A parsed selection rule; ``str()`` gives it back in the ``kind:args`` form."""

    kind: str
    values: tuple[float, ...] = ()

    def __str__(self) -> str:
        return self.kind + (":" + ",".join(f"{v:g}" for v in self.values) if self.values else "")


def parse_selection(rule: str) -> Selection:
    """``fraction:F``, ``negative``, ``zscore:Z`` or ``ambiguous:LO,HI`` as a :class:`Selection`."""
    kind, _, arguments = str(rule).strip().partition(":")
    kind = kind.strip().lower()
    expected = {"fraction": 1, "negative": 0, "zscore": 1, "ambiguous": 2}
    if kind not in expected:
        raise DenoiseError(f"unknown selection rule {rule!r}: use fraction:F, negative, zscore:Z or ambiguous:LO,HI")
    try:
        values = tuple(float(v) for v in arguments.split(",")) if arguments.strip() else ()
    except ValueError:
        raise DenoiseError(f"selection rule {rule!r}: arguments must be numbers") from None
    if len(values) != expected[kind]:
        raise DenoiseError(f"selection rule {rule!r}: {kind} takes {expected[kind]} number(s), got {len(values)}")
    if any(not math.isfinite(v) for v in values):
        raise DenoiseError(f"selection rule {rule!r}: arguments must be finite")
    if kind == "fraction" and not 0 < values[0] < 1:
        raise DenoiseError(f"selection rule {rule!r}: the fraction must lie strictly between 0 and 1")
    if kind == "ambiguous" and not 0 <= values[0] < values[1] <= 1:
        raise DenoiseError(f"selection rule {rule!r}: the band needs 0 <= LO < HI <= 1")
    return Selection(kind, values)


def select(strength_mean: np.ndarray, strength_std: np.ndarray, rule: str | Selection) -> np.ndarray:
    """Boolean mask, shape ``(n_pairs,)``, of the pairs ``rule`` selects.

    Ties in the strength order are broken by position, so the result is deterministic.
    A zero std counts as an infinitely confident pair (z = +-inf, or 0 when the mean is 0).
    """
    selection = rule if isinstance(rule, Selection) else parse_selection(rule)
    strength_mean = np.asarray(strength_mean, dtype=np.float64)
    n_pairs = strength_mean.size
    if selection.kind == "negative":
        return strength_mean < 0
    if selection.kind == "zscore":
        return z_scores(strength_mean, strength_std) < selection.values[0]
    rank = np.empty(n_pairs, dtype=np.int64)
    rank[np.argsort(strength_mean, kind="stable")] = np.arange(n_pairs)
    if selection.kind == "fraction":
        return rank < int(round(selection.values[0] * n_pairs))
    low, high = selection.values
    return (rank >= int(round(low * n_pairs))) & (rank < int(round(high * n_pairs)))


def parse_alpha(text: str) -> float | str:
    """``--alpha``: ``members``, ``normal`` or a number."""
    if text in ALPHA_FROM_ENSEMBLE:
        return text
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"--alpha takes a number in [0, 1), 'members' or 'normal', not {text!r}") from None


@dataclass(frozen=True)
class DenoiseConfig:
    """What to do to which pairs. ``select=None`` takes the method's default (``fraction:0.1``;
    ``margin`` alone touches every pair and takes no rule). ``alpha`` is the label-smoothing
    weight for ``soft-label``: a constant in [0, 1) as in the paper, or ``"members"`` /
    ``"normal"`` for a per-pair value from the ensemble (see ``ALPHA_FROM_ENSEMBLE``).
    Margins are ``clip(margin_scale * strength_mean, 0, margin_max)`` after any flip."""

    method: str = field(default="flip", metadata={"help": "denoising method", "choices": METHODS})
    select: str | None = field(default=None, metadata={
        "help": "fraction:F, negative, zscore:Z or ambiguous:LO,HI (default fraction:0.1; margin alone takes none)",
        "metavar": "RULE"})
    alpha: float | str = field(default=0.1, metadata={
        "help": "soft-label smoothing: a constant in [0, 1), or 'members' / 'normal' for a per-pair value from the "
                "ensemble", "metavar": "A", "parse": parse_alpha})
    margin_scale: float = field(default=1.0, metadata={"help": "margin = clip(scale * strength_mean, 0, max)"})
    margin_max: float = field(default=1.0, metadata={"help": "largest margin"})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise DenoiseError(f"unknown method {self.method!r}: use one of {', '.join(METHODS)}")
        if METHODS[self.method].action is None and self.select is not None:
            raise DenoiseError("the margin method gives every pair a margin and takes no selection rule; "
                               "use flip+margin or soft-label+margin to act on selected pairs")
        if self.rule is not None:
            parse_selection(self.rule)
        if isinstance(self.alpha, str):
            if self.alpha not in ALPHA_FROM_ENSEMBLE:
                raise DenoiseError(f"alpha must be a number in [0, 1) or one of {', '.join(ALPHA_FROM_ENSEMBLE)}, "
                                   f"not {self.alpha!r}")
        elif not 0 <= float(self.alpha) < 1:
            raise DenoiseError(f"alpha must lie in [0, 1), not {self.alpha}")
        if not (math.isfinite(self.margin_scale) and self.margin_scale > 0):
            raise DenoiseError(f"margin_scale must be a positive number, not {self.margin_scale}")
        if not (math.isfinite(self.margin_max) and self.margin_max > 0):
            raise DenoiseError(f"margin_max must be a positive number, not {self.margin_max}")

    @property
    def rule(self) -> str | None:
        """The selection rule in force (``None`` for ``margin`` alone)."""
        if METHODS[self.method].action is None:
            return None
        return self.select if self.select is not None else DEFAULT_SELECT

    @property
    def uses_margin(self) -> bool:
        return METHODS[self.method].margin

    @property
    def loss(self) -> str:
        """The reward-model loss that reads this method's columns."""
        return METHODS[self.method].loss


def soft_labels(member_margins: np.ndarray, alpha: float | str) -> np.ndarray:
    """Soft labels ``1 - alpha_i``, shape ``(n_pairs,)``: the probability that the chosen
    response is better, constant or from the ensemble (``"members"``, ``"normal"``)."""
    from scipy.special import ndtr

    member_margins = np.asarray(member_margins, dtype=np.float64)
    if not isinstance(alpha, str):
        return np.full(member_margins.shape[0], 1.0 - float(alpha))
    if alpha == "members":
        return (member_margins > 0).mean(axis=1) + 0.5 * (member_margins == 0).mean(axis=1)
    return ndtr(z_scores(*aggregate(member_margins)))


def z_scores(strength_mean: np.ndarray, strength_std: np.ndarray) -> np.ndarray:
    """strength_mean / strength_std per pair; a zero std counts as an infinitely confident
    pair (a huge ±z, or 0 when the mean is 0 too)."""
    strength_mean = np.asarray(strength_mean, dtype=np.float64)
    strength_std = np.asarray(strength_std, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(strength_std > 0, strength_mean / strength_std, np.sign(strength_mean) * np.inf)
    return np.nan_to_num(z, nan=0.0)


@dataclass(frozen=True)
class Plan:
    """What a method does to scored pairs, as arrays of shape ``(n_pairs,)``: boolean masks
    ``selected``, ``flip``, ``drop``, ``soften``; ``margin`` (clipped strength after any flip;
    0 unless the method uses margins); ``soft_label`` (1 unless softened); and the strength
    (before any flip)."""

    selected: np.ndarray
    flip: np.ndarray
    drop: np.ndarray
    soften: np.ndarray
    margin: np.ndarray
    soft_label: np.ndarray
    strength_mean: np.ndarray
    strength_std: np.ndarray


def plan(member_margins: np.ndarray, config: DenoiseConfig) -> Plan:
    """Apply ``config`` to per-member margins ``(n_pairs, members)`` (all finite): the
    array form of :func:`denoise`, for trainers and experiments. A rule that selects no
    pair or every pair is an error."""
    member_margins = np.asarray(member_margins, dtype=np.float64)
    strength_mean, strength_std = aggregate(member_margins)
    n_pairs = strength_mean.size
    selected = np.zeros(n_pairs, dtype=bool)
    if config.rule is not None:
        selected = select(strength_mean, strength_std, config.rule)
        if not selected.any():
            raise DenoiseError(f"the rule {config.rule} selects no pair of the {n_pairs} scored; choose a looser rule")
        if selected.all():
            raise DenoiseError(f"the rule {config.rule} selects all {n_pairs} scored pairs; choose a stricter rule")
    action = METHODS[config.method].action
    flip, drop, soften = (selected & (action == name) for name in ("flip", "drop", "soften"))
    oriented = np.where(flip, -strength_mean, strength_mean)
    margin = (np.clip(config.margin_scale * oriented, 0.0, config.margin_max) if config.uses_margin
              else np.zeros(n_pairs))
    soft_label = np.where(soften, soft_labels(member_margins, config.alpha), 1.0)
    return Plan(selected, flip, drop, soften, margin, soft_label, strength_mean, strength_std)


def match_scores(pairs, scores: Scores, allow_missing: bool = False) -> tuple[np.ndarray, list[str]]:
    """Row of ``scores`` for each pair of ``pairs`` (-1 where it has none), and the scored
    pair_ids that match no pair. Mismatches are errors unless ``allow_missing``."""
    position = {pair_id: index for index, pair_id in enumerate(scores.pair_id)}
    if len(position) != len(scores.pair_id):
        raise DenoiseError("the scores hold the same pair_id twice; they were not written by rmclean score")
    valid_ids = [pid for pid, error in zip(pairs["pair_id"], pairs["error"]) if error is None]
    rows = np.array([position.get(pid, -1) for pid in pairs["pair_id"]], dtype=np.int64)
    valid = np.array([error is None for error in pairs["error"]], dtype=bool)
    missing = [pid for pid, row, ok in zip(pairs["pair_id"], rows, valid) if ok and row < 0]
    extra = sorted(set(scores.pair_id) - set(valid_ids))
    if (missing or extra) and not allow_missing:
        raise DenoiseError(
            f"the scores do not match the pairs: {len(missing)} valid pair(s) have no score"
            + (f" (first: {missing[0]})" if missing else "")
            + f", {len(extra)} scored pair_id(s) are not among the pairs" + (f" (first: {extra[0]})" if extra else "")
            + "; score this dataset again, or pass allow_missing=True (--allow-missing) to keep the "
            "unmatched pairs as invalid with a reason"
        )
    return rows, extra


def denoise(pairs, scores: Scores, method: str = "flip", select: str | None = None, *,
            alpha: float | str = 0.1, margin_scale: float = 1.0, margin_max: float = 1.0,
            allow_missing: bool = False):
    """Apply a denoising method to ``pairs`` (from :func:`rmclean.load_pairs`) given their
    ``scores`` (from :func:`rmclean.score`); see :class:`DenoiseConfig` for the options.

    Returns a ``datasets.Dataset`` with every input row in input order: the canonical
    columns with chosen/rejected already swapped for flipped pairs, the input's extra
    columns, and ``action``, ``reason``, ``selected``, ``margin`` (0 unless the method uses
    margins; None for dropped and invalid rows), ``soft_label`` (P(chosen better); 1 unless softened), ``strength_mean``
    ``strength_std`` and ``member_margins`` (in the written orientation: negated for flipped
    pairs; None for invalid rows). :func:`denoise_summary` gives the counts and the config.
    """
    config = DenoiseConfig(method=method, select=select, alpha=alpha, margin_scale=margin_scale,
                           margin_max=margin_max)
    return apply_actions(pairs, scores, config, allow_missing=allow_missing)


def apply_actions(pairs, scores: Scores, config: DenoiseConfig, allow_missing: bool = False):
    """:func:`denoise` with a ready :class:`DenoiseConfig`."""
    import datasets

    rows, _ = match_scores(pairs, scores, allow_missing)
    n_rows = len(pairs)
    errors = list(pairs["error"])
    scored = rows >= 0
    if scores.member_margins.size and not np.all(np.isfinite(scores.member_margins[rows[scored]])):
        bad = next(pid for pid, row in zip(pairs["pair_id"], rows)
                   if row >= 0 and not np.all(np.isfinite(scores.member_margins[row])))
        raise DenoiseError(f"the scores of pair {bad} are not finite (NaN or inf): margins would be NaN; "
                           "score the dataset again")
    if not scored.any():
        raise DenoiseError("no pair has a score: nothing to denoise")
    margins = scores.member_margins[rows[scored]]
    planned = plan(margins, config)
    strength_mean, strength_std = planned.strength_mean, planned.strength_std

    def spread(values: np.ndarray, fill) -> np.ndarray:  # per scored pair -> per input row
        out = np.full(n_rows, fill, dtype=values.dtype)
        out[scored] = values
        return out

    selected, flip = spread(planned.selected, False), spread(planned.flip, False)
    drop, soften = spread(planned.drop, False), spread(planned.soften, False)
    mean_before, std_out = spread(strength_mean, np.nan), spread(strength_std, np.nan)
    mean_out = np.where(flip, -mean_before, mean_before)  # in the written orientation
    soft, margin = spread(planned.soft_label, 1.0), spread(planned.margin, np.nan)

    action, reason = [], []
    for index in range(n_rows):
        if errors[index] is not None:
            action.append("invalid"), reason.append(errors[index])
        elif not scored[index]:
            action.append("invalid"), reason.append(UNSCORED)
        else:
            name, why = _action(config, bool(drop[index]), bool(flip[index]), bool(soften[index]),
                                strength_mean=float(mean_before[index]), margin=float(margin[index]),
                                soft_label=float(soft[index]))
            action.append(name), reason.append(why)

    chosen, rejected = list(pairs["chosen"]), list(pairs["rejected"])
    for index in np.flatnonzero(flip):
        chosen[index], rejected[index] = rejected[index], chosen[index]
    usable = scored & ~drop
    table = pairs.remove_columns(["chosen", "rejected"]).to_pandas()
    table.insert(list(pairs.column_names).index("chosen"), "chosen", chosen)
    table.insert(list(pairs.column_names).index("rejected"), "rejected", rejected)
    table["action"] = action
    table["reason"] = reason
    table["selected"] = selected
    table["margin"] = [float(m) if ok else None for m, ok in zip(margin, usable)]
    table["soft_label"] = [float(s) if ok else None for s, ok in zip(soft, scored)]
    table["strength_mean"] = [float(m) if ok else None for m, ok in zip(mean_out, scored)]
    table["strength_std"] = [float(s) if ok else None for s, ok in zip(std_out, scored)]
    oriented = np.where(flip[:, None], -1.0, 1.0)[scored] * margins
    member_column: list[Any] = [None] * n_rows
    for index, values in zip(np.flatnonzero(scored), oriented):
        member_column[index] = values.tolist()
    table["member_margins"] = member_column
    return datasets.Dataset.from_pandas(table, preserve_index=False)


def _action(config: DenoiseConfig, drop: bool, flip: bool, soften: bool, *,
            strength_mean: float, margin: float, soft_label: float) -> tuple[str, str]:
    """The action of one scored pair and its reason (strength before any flip)."""
    strength = f"strength_mean {strength_mean:.3g}"
    if drop:
        return "drop", f"selected by {config.rule} ({strength})"
    if flip:
        return "flip", f"selected by {config.rule} ({strength})" + (f"; margin {margin:.3g}" if config.uses_margin else "")
    if soften:
        return "soften", f"selected by {config.rule} ({strength}); soft label {soft_label:.3g}" + (
            f"; margin {margin:.3g}" if config.uses_margin else "")
    if config.uses_margin:
        return "keep", f"margin {margin:.3g} ({strength})"
    return "keep", f"not selected by {config.rule} ({strength})"


def denoise_summary(result, config: DenoiseConfig, scores: Scores | None = None) -> dict[str, Any]:
    """Counts per action (adding up to the input rows), the strength of what each action
    touched, the margins and soft labels given, and the config (for ``summary.json``)."""
    actions = np.array(result["action"])
    original = scored_strength(result["strength_mean"], actions)  # strength before any flip

    def stats(values: np.ndarray) -> dict[str, float] | None:
        values = values[np.isfinite(values)]
        if values.size == 0:
            return None
        return {"count": int(values.size), "mean": float(values.mean()), "min": float(values.min()),
                "max": float(values.max())}

    counts = {name: int((actions == name).sum()) for name in ACTIONS}
    summary: dict[str, Any] = {
        "method": config.method,
        "select": config.rule,
        "config": to_record(config),
        "rows": int(len(actions)),
        "counts": counts,
        "selected": int(np.sum(result["selected"])),
        "strength_mean_of": {name: stats(original[actions == name]) for name in ACTIONS if name != "invalid"},
    }
    if config.uses_margin:
        margins = np.array([np.nan if v is None else v for v in result["margin"]], dtype=np.float64)
        summary["margin"] = {**stats(margins), "positive": int(np.sum(margins > 0))}
    if METHODS[config.method].action == "soften":
        soft = np.array([np.nan if v is None else v for v in result["soft_label"]], dtype=np.float64)
        summary["soft_label_of_softened"] = stats(soft[actions == "soften"])
    if scores is not None:
        summary["scores"] = {"mode": scores.mode, "members": int(scores.member_margins.shape[1]) if len(scores) else 0}
    return summary


def summary_text(result, summary: dict[str, Any], config: DenoiseConfig, examples: int = 0) -> str:
    """The short human report of ``rmclean denoise``: counts per action, unscored pairs, and
    the ``examples`` changed pairs of lowest strength."""
    counts = ", ".join(f"{name} {count:,}" for name, count in summary["counts"].items())
    lines = [f"{config.method} ({config.rule or 'every pair'}) on {summary['rows']:,} rows: {counts}"]
    unmatched = sum(reason == UNSCORED for reason in result["reason"])
    if unmatched:
        lines.append(f"{unmatched:,} pair(s) had no score and were written as invalid (--allow-missing)")
    if examples > 0:
        lines.append(examples_text(result, examples))
    return "\n".join(lines)


def examples_text(result, count: int) -> str:
    """The ``count`` changed pairs of lowest original strength, with their texts cut short."""
    changed = [i for i, action in enumerate(result["action"]) if action in ("flip", "drop", "soften")]
    original = {i: result[i]["strength_mean"] * (-1 if result[i]["action"] == "flip" else 1) for i in changed}
    lines = []
    for number, index in enumerate(sorted(changed, key=original.get)[:count], 1):
        row = result[index]
        lines.append(f"[{number}] {row['action']} {row['source']} row {row['row']}  id {row['pair_id']}  "
                     f"strength_mean {original[index]:.3f} (std {row['strength_std']:.3f})")
        was_chosen, was_rejected = ((row["rejected"], row["chosen"]) if row["action"] == "flip"
                                    else (row["chosen"], row["rejected"]))
        lines.append(f"    prompt:          {clip_text(row['prompt'], tail=True)}")
        lines.append(f"    labelled better: {clip_text(was_chosen)}")
        lines.append(f"    labelled worse:  {clip_text(was_rejected)}")
    return "\n".join(lines)


__all__ = ["ACTIONS", "METHODS", "DenoiseConfig", "DenoiseError", "Method", "Plan", "Selection", "apply_actions", "denoise",
           "denoise_summary", "examples_text", "match_scores", "parse_alpha", "parse_selection", "plan", "select",
           "soft_labels", "summary_text", "z_scores"]
