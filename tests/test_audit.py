"""Detection audit: planted flips, detector metrics, ``rmclean audit``."""

from __future__ import annotations

import json

import numpy as np
import pytest

import rmclean
from rmclean.audit import DETECTORS, AuditConfig, audit, audit_features, detection_metrics
from rmclean.cli import main
from rmclean.noise import plant_flips
from rmclean.score import ScoreConfig


def test_plant_flips_is_exact_and_seeded():
    mask = plant_flips(1000, 0.2, seed=3)
    assert mask.sum() == 200
    np.testing.assert_array_equal(mask, plant_flips(1000, 0.2, seed=3))
    assert not np.array_equal(mask, plant_flips(1000, 0.2, seed=4))
    assert plant_flips(200, 0.0, seed=0).sum() == 0


def test_targeted_flips_hit_the_weakest_pairs():
    strength = np.linspace(-3, 3, 200)
    flipped = plant_flips(200, 0.1, seed=0, weakest=strength)
    assert flipped.sum() == 20 and np.abs(strength[flipped]).max() <= np.sort(np.abs(strength))[39]


def test_detection_metrics_on_known_rankings():
    flipped = np.array([True, True, False, False, False])
    perfect = detection_metrics(flipped, np.array([5.0, 4, 3, 2, 1]))
    assert perfect == {"auroc": 1.0, "auprc": 1.0, "precision_at_k": 1.0}
    backwards = detection_metrics(flipped, np.array([1.0, 2, 3, 4, 5]))
    assert backwards["auroc"] == 0.0 and backwards["precision_at_k"] == 0.0
    half = detection_metrics(flipped, np.array([5.0, 1, 4, 2, 3]))
    # positives score 5 and 1, negatives 4, 2, 3: 3 of the 6 (positive, negative) pairs are ordered right
    assert half["precision_at_k"] == 0.5 and half["auroc"] == pytest.approx(3 / 6)


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1])
def test_rates_must_be_between_zero_and_one(rate):
    with pytest.raises(ValueError, match="between 0 and 1"):
        AuditConfig(rates=(rate,))


def learnable_pairs(n_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features ``(n_pairs, 16)`` whose labels follow one linear reward exactly."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=16)
    chosen, rejected = rng.normal(size=(n_pairs, 16)), rng.normal(size=(n_pairs, 16))
    swap = (chosen - rejected) @ direction < 0
    chosen[swap], rejected[swap] = rejected[swap].copy(), chosen[swap].copy()
    return chosen, rejected


def test_audit_ranks_planted_flips_first_when_the_reward_is_learnable():
    chosen, rejected = learnable_pairs(600)
    groups = {"first": np.arange(300), "second": np.arange(300, 600)}
    result = audit_features([(chosen, rejected)], groups, ScoreConfig(members=4, folds=3, C=1.0), AuditConfig(rates=(0.2,)))
    auroc = {row["detector"]: row["auroc"] for row in result["rows"]}
    assert auroc["rmclean"] > 0.85 and auroc["oracle"] > 0.85
    by_group = next(row for row in result["rows"] if row["detector"] == "rmclean")["auroc_by_group"]
    assert set(by_group) == {"first", "second"} and min(by_group.values()) > 0.8
    if result["cleanlab"]:
        assert auroc["cleanlab"] > 0.8


def test_audit_on_real_pairs_reports_every_detector(data_dir, minilm_cache):
    pairs = rmclean.load_pairs("hh-rlhf", subset="harmless-base", limit=120, data_dir=data_dir)
    result = audit(pairs, ScoreConfig(members=3, folds=3), AuditConfig(rates=(0.2, 0.3)),
                   cache_dir=minilm_cache, progress=False)
    assert result["pairs"] == 120 and result["backbone"] == "minilm"
    detectors = [row["detector"] for row in result["rows"] if row["rate"] == 0.2]
    assert detectors == [d for d in DETECTORS if result["cleanlab"] or d != "cleanlab"]
    for row in result["rows"]:
        assert 0 <= row["auroc"] <= 1 and 0 <= row["auprc"] <= 1 and 0 <= row["precision_at_k"] <= 1


def test_cli_audit_writes_table_json_and_plot(real_data_env, minilm_cache, tmp_path, capsys):
    out = tmp_path / "audit"
    code = main(["audit", "hh-rlhf", "--subset", "harmless-base", "--limit", "120", "--members", "2",
                 "--folds", "3", "--inject", "0.25", "--resamples", "100", "--cache-dir", str(minilm_cache), "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| detector | AUROC @0.25 | AUPRC @0.25 | P@k @0.25 |" in printed
    result = json.loads((out / "audit.json").read_text())
    assert result["source"]["subset"] == ["harmless-base"] and result["config"]["audit"]["rates"] == [0.25]
    assert "| rmclean in-sample |" in (out / "audit.md").read_text() and "paired interval" in printed
    assert len(result["rows"][0]["auroc_interval"]) == 2
    assert (out / "audit.png").stat().st_size > 1000


def test_two_noisy_views_of_one_reward_find_flips_better_together():
    rng = np.random.default_rng(1)
    latent_chosen, latent_rejected = rng.normal(size=(800, 8)), rng.normal(size=(800, 8))
    direction = rng.normal(size=8)
    swap = (latent_chosen - latent_rejected) @ direction < 0
    latent_chosen[swap], latent_rejected[swap] = latent_rejected[swap].copy(), latent_chosen[swap].copy()

    def view(seed):  # the same pairs seen through independent noise
        noise = np.random.default_rng(seed)
        return (latent_chosen + 1.5 * noise.normal(size=latent_chosen.shape),
                latent_rejected + 1.5 * noise.normal(size=latent_rejected.shape))

    first, second = view(10), view(11)
    groups = {"all": np.arange(800)}
    config = ScoreConfig(members=3, folds=3, C=1.0)

    def auroc(views):
        rows = audit_features(views, groups, config, AuditConfig(rates=(0.2,)))["rows"]
        return next(row["auroc"] for row in rows if row["detector"] == "rmclean")

    together = auroc([first, second])
    assert together > auroc([first]) + 0.01 and together > auroc([second]) + 0.01


def test_bootstrap_aurocs_match_sklearn_on_each_resample_and_pair_the_detectors():
    from sklearn.metrics import roc_auc_score

    from rmclean.audit import bootstrap_aurocs

    rng = np.random.default_rng(3)
    flipped = rng.random(500) < 0.2
    strong = rng.normal(size=500) + 1.5 * flipped
    coarse = np.round(rng.normal(size=500) + 0.5 * flipped, 1)  # many ties
    resampled = bootstrap_aurocs(flipped, {"strong": strong, "coarse": coarse}, resamples=50, seed=4)
    index = np.random.default_rng([4, 17]).integers(0, 500, 500)  # the first resample
    assert resampled["strong"][0] == pytest.approx(roc_auc_score(flipped[index], strong[index]))
    assert resampled["coarse"][0] == pytest.approx(roc_auc_score(flipped[index], coarse[index]))
    assert resampled["strong"].shape == (50,) and resampled["strong"].std() > 0
    assert (resampled["strong"] > resampled["coarse"]).all()  # paired: the better detector wins every resample
    chunked = bootstrap_aurocs(flipped, {"strong": strong, "coarse": coarse}, resamples=50, seed=4, chunk_elements=1200)
    assert np.allclose(chunked["coarse"], resampled["coarse"])  # memory-bounded chunks draw the same resamples


def test_audit_reports_intervals_and_paired_differences():
    chosen, rejected = learnable_pairs(400)
    result = audit_features([(chosen, rejected)], {"all": np.arange(400)}, ScoreConfig(members=3, folds=3, C=1.0),
                            AuditConfig(rates=(0.2,), resamples=200))
    rows = {row["detector"]: row for row in result["rows"]}
    low, high = rows["rmclean"]["auroc_interval"]
    assert low < rows["rmclean"]["auroc"] < high and high - low < 0.1
    assert rows["rmclean"]["minus_rmclean"] == 0 and rows["rmclean"]["minus_rmclean_interval"] == [0, 0]
    single = rows["single member"]
    assert single["minus_rmclean"] == pytest.approx(single["auroc"] - rows["rmclean"]["auroc"])
    assert single["minus_rmclean_interval"][0] <= single["minus_rmclean"] <= single["minus_rmclean_interval"][1]
    from rmclean.audit import to_markdown

    table = to_markdown({**result, "pairs": 400, "backbone": "test"})
    assert "paired interval" in table and "| rmclean | " in table
    quiet = audit_features([(chosen, rejected)], {"all": np.arange(400)}, ScoreConfig(members=3, folds=3, C=1.0),
                           AuditConfig(rates=(0.2,), resamples=0))
    assert "auroc_interval" not in quiet["rows"][0]
