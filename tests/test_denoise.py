"""Denoisers: selection rules, methods, actions and their bookkeeping (``rmclean.denoise``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import rmclean
from rmclean.denoise import DenoiseConfig, DenoiseError, denoise, denoise_summary, parse_selection, select
from rmclean.score import Scores


def _pairs(n_pairs: int = 20):
    rows = [{"prompt": f"question {i}", "chosen": f"answer A{i}", "rejected": f"answer B{i}"} for i in range(n_pairs)]
    return rmclean.load_pairs(rows)


def _scores(pairs, strength_mean, spread=0.5, members=4):
    """Scores whose members scatter symmetrically around ``strength_mean``."""
    offsets = np.linspace(-spread, spread, members)
    margins = np.asarray(strength_mean, dtype=float)[:, None] + offsets[None, :]
    return Scores(list(pairs["pair_id"]), margins, "5-fold")


@pytest.fixture
def pairs():
    return _pairs()


@pytest.fixture
def scores(pairs):
    return _scores(pairs, np.arange(len(pairs)) / 4 - 0.875)  # pairs 0..3 negative


# --- selection rules ---------------------------------------------------------------------


def test_selection_rules():
    strength_mean = np.array([0.5, -1.0, 2.0, -0.2, 1.0, 0.1, 0.0, 3.0, -3.0, 0.3])
    strength_std = np.array([1.0, 0.5, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    assert np.flatnonzero(select(strength_mean, strength_std, "fraction:0.2")).tolist() == [1, 8]
    assert np.flatnonzero(select(strength_mean, strength_std, "negative")).tolist() == [1, 3, 8]
    # z = mean/std; zero std counts as +-inf (0 when the mean is 0 too)
    assert np.flatnonzero(select(strength_mean, strength_std, "zscore:0.1")).tolist() == [1, 3, 6, 8]
    # ranks 4 and 5 of 10 (the middle of the strength order)
    order = np.argsort(strength_mean, kind="stable")
    assert set(np.flatnonzero(select(strength_mean, strength_std, "ambiguous:0.4,0.6"))) == set(order[4:6])
    assert str(parse_selection("ambiguous:0.4,0.6")) == "ambiguous:0.4,0.6"


@pytest.mark.parametrize(
    "rule, message",
    [
        ("fraction:0", "strictly between 0 and 1"),
        ("fraction:1.5", "strictly between 0 and 1"),
        ("fraction", "takes 1 number"),
        ("zscore:abc", "must be numbers"),
        ("ambiguous:0.6,0.4", "0 <= LO < HI <= 1"),
        ("lowest:3", "unknown selection rule"),
        ("fraction:nan", "finite"),
    ],
)
def test_bad_selection_rules_are_clear_errors(rule, message):
    with pytest.raises(DenoiseError, match=message):
        parse_selection(rule)


def test_rule_that_selects_nothing_or_everything_is_an_error(pairs):
    positive = _scores(pairs, np.linspace(1, 2, len(pairs)), spread=0.1)
    with pytest.raises(DenoiseError, match="selects no pair"):
        denoise(pairs, positive, "flip", "negative")
    with pytest.raises(DenoiseError, match="selects all 20"):
        denoise(pairs, positive, "flip", "zscore:1000")


# --- methods -------------------------------------------------------------------------------


def test_flip_swaps_the_selected_pairs_and_keeps_the_rest(pairs, scores):
    result = denoise(pairs, scores, "flip", "negative")
    actions = result["action"]
    assert actions[:4] == ["flip"] * 4 and set(actions[4:]) == {"keep"}
    for index in range(len(pairs)):
        swapped = actions[index] == "flip"
        assert result[index]["chosen"] == pairs[index]["rejected" if swapped else "chosen"]
        assert result[index]["rejected"] == pairs[index]["chosen" if swapped else "rejected"]
    # strengths are written in the new orientation; the reason keeps the original one
    np.testing.assert_allclose(result["strength_mean"][:4], -scores.strength_mean[:4])
    assert "selected by negative (strength_mean -0.875)" in result[0]["reason"]
    assert result["margin"] == [0.0] * len(pairs)  # no margins without a margin method
    assert result["soft_label"] == [1.0] * len(pairs)


def test_drop_keeps_every_row_with_its_action(pairs, scores):
    result = denoise(pairs, scores, "drop", "fraction:0.25")
    assert len(result) == len(pairs)
    assert result["action"][:5] == ["drop"] * 5 and result["action"].count("drop") == 5
    assert result["margin"][:5] == [None] * 5


def test_a_new_method_is_one_row_of_the_table(pairs, scores, monkeypatch):
    from rmclean.denoise import METHODS, Method

    monkeypatch.setitem(METHODS, "drop+margin", Method("drop", margin=True))
    config = DenoiseConfig("drop+margin", "fraction:0.2")
    assert config.loss == "margin" and DenoiseConfig("soft-label+margin").loss == "soft-label+margin"
    result = denoise(pairs, scores, "drop+margin", "fraction:0.2")
    actions = np.array(result["action"])
    assert (actions == "drop").sum() == 4 and (actions == "keep").sum() == 16
    kept = actions == "keep"
    np.testing.assert_allclose(np.array(result["margin"], dtype=float)[kept],  # margins: the strength, clipped
                               np.clip(scores.strength_mean[kept], 0, 1))
    assert denoise_summary(result, config)["margin"]["positive"] > 0


def test_margin_is_clipped_strength_after_any_flip(pairs, scores):
    strength = scores.strength_mean
    result = denoise(pairs, scores, "margin", margin_scale=0.5, margin_max=1.0)
    assert set(result["action"]) == {"keep"}
    np.testing.assert_allclose(result["margin"], np.clip(0.5 * strength, 0, 1.0))
    flipped = denoise(pairs, scores, "flip+margin", "negative", margin_scale=0.5, margin_max=1.0)
    expected = np.clip(0.5 * np.where(strength < 0, -strength, strength), 0, 1.0)
    np.testing.assert_allclose(flipped["margin"], expected)
    assert flipped["action"].count("flip") == 4
    with pytest.raises(DenoiseError, match="takes no selection rule"):
        denoise(pairs, scores, "margin", "negative")


def test_soft_labels_constant_and_from_the_ensemble(pairs):
    margins = np.tile([1.0, 1.0, -1.0, -1.0], (len(pairs), 1)) + np.linspace(-0.9, 0.9, len(pairs))[:, None]
    scores = Scores(list(pairs["pair_id"]), margins, "5-fold")
    constant = denoise(pairs, scores, "soft-label", "fraction:0.1", alpha=0.2)
    assert constant["action"][:2] == ["soften"] * 2 and constant["soft_label"][:2] == [0.8, 0.8]
    assert constant["chosen"] == pairs["chosen"]  # softening never swaps
    members = denoise(pairs, scores, "soft-label", "fraction:0.1", alpha="members")
    expected = (margins[:2] > 0).mean(axis=1)
    np.testing.assert_allclose(members["soft_label"][:2], expected)
    normal = denoise(pairs, scores, "soft-label+margin", "fraction:0.1", alpha="normal")
    from scipy.stats import norm

    np.testing.assert_allclose(normal["soft_label"][:2], norm.cdf(margins[:2].mean(1) / margins[:2].std(1)))
    assert all(label == 1.0 for label in normal["soft_label"][2:])
    assert normal["margin"][0] == 0.0 and normal["margin"][-1] > 0


@pytest.mark.parametrize("options, message", [
    (dict(alpha=1.0), "alpha must lie in"),
    (dict(alpha="votes"), "alpha must be a number"),
    (dict(margin_max=0.0), "margin_max"),
    (dict(method="invert"), "unknown method"),
])
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(DenoiseError, match=message):
        DenoiseConfig(**options)


def test_counts_add_up_and_summary_records_the_rule(pairs, scores):
    config = DenoiseConfig(method="flip", select="fraction:0.2")
    result = rmclean.denoise(pairs, scores, method="flip", select="fraction:0.2")
    summary = denoise_summary(result, config, scores)
    assert sum(summary["counts"].values()) == summary["rows"] == len(pairs)
    assert summary["counts"]["flip"] == 4 and summary["select"] == "fraction:0.2"
    assert summary["strength_mean_of"]["flip"]["max"] < 0  # what was flipped was the weakest
    json.dumps(summary)


# --- bookkeeping: invalid rows, mismatches, bad numbers -----------------------------------------


def test_invalid_rows_stay_with_their_reason(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(10)]
    rows[3]["chosen"] = True  # a JSON boolean where text belongs
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pairs = rmclean.load_pairs(path, on_error="skip")
    valid, _ = rmclean.split_invalid(pairs)
    scores = _scores(valid, np.linspace(-1, 1, len(valid)))
    result = denoise(pairs, scores, "flip", "fraction:0.2")
    assert len(result) == 10 and result["action"][3] == "invalid"
    assert "line 4" in result["reason"][3] and "chosen" in result["reason"][3]
    assert result["strength_mean"][3] is None


def test_scores_that_do_not_match_are_an_error_unless_allowed(pairs, scores):
    partial = Scores(scores.pair_id[:15], scores.member_margins[:15], scores.mode)
    with pytest.raises(DenoiseError, match="5 valid pair\\(s\\) have no score"):
        denoise(pairs, partial, "flip", "negative")
    result = denoise(pairs, partial, "flip", "negative", allow_missing=True)
    assert result["action"][15:] == ["invalid"] * 5
    assert all("no score" in reason for reason in result["reason"][15:])
    extra = Scores(scores.pair_id + ["feedfacefeedface"], np.vstack([scores.member_margins, [[0.0] * 4]]), "5-fold")
    with pytest.raises(DenoiseError, match="1 scored pair_id\\(s\\) are not among the pairs.*feedfacefeedface"):
        denoise(pairs, extra, "flip", "negative")


def test_non_finite_scores_are_an_error(pairs, scores):
    broken = scores.member_margins.copy()
    broken[7, 2] = np.nan
    with pytest.raises(DenoiseError, match=f"scores of pair {pairs['pair_id'][7]} are not finite"):
        denoise(pairs, Scores(scores.pair_id, broken, "5-fold"), "flip+margin")
