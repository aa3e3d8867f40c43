"""Fine-tuned members and trained reward models as members, with a tiny BERT the tests build,
fine-tune and save themselves (a few steps on CPU)."""

from __future__ import annotations

import numpy as np
import pytest

import rmclean
from rmclean.features.backbones import BackboneError
from rmclean.features.views import FeatureConfig, scoring_texts
from rmclean.members.finetune import FinetuneConfig, finetune_reward_model
from rmclean.members.reward_models import load_reward_model, pair_deltas
from rmclean.score import ScoreConfig, score
from rmclean.strength import scale_members


@pytest.fixture(scope="module")
def pairs():
    """Pairs whose preference is learnable from one word."""
    rows = [{"prompt": f"question {i}", "chosen": f"a good and helpful answer {i}",
             "rejected": f"a bad and rude answer {i}"} for i in range(48)]
    return rmclean.load_pairs(rows)


FAST = dict(finetune_learning_rate=3e-3, finetune_epochs=6, group_by=None)


def test_finetuned_members_learn_and_score_held_out_pairs(tiny_backbone, pairs):
    scores = score(pairs, ScoreConfig(features=FeatureConfig(backbone=tiny_backbone, max_length=32),
                                      member_type="finetune", members=2, folds=2, **FAST),
                   progress=False)
    assert scores.member_margins.shape == (48, 2)
    assert (scores.member_margins > 0).mean() > 0.9  # each pair scored by members that never saw it
    assert scores.metadata["members"] == {"seeded": 2, "member_type": "finetune", "views": [], "per_view": [],
                                          "reward_models": [], "scale": "raw reward"}
    assert scores.metadata["collapsed_pairs"] is None


@pytest.fixture(scope="module")
def trained_reward_model(tiny_backbone, pairs, tmp_path_factory):
    chosen, rejected = scoring_texts(pairs)
    tokenizer, model = finetune_reward_model(tiny_backbone, chosen, rejected,
                                             FinetuneConfig(epochs=6, learning_rate=3e-3, max_length=32))
    folder = tmp_path_factory.mktemp("reward-model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_reward_models_alone_and_mixed_with_seeded_members(trained_reward_model, pairs, tmp_path):
    margins = pair_deltas(load_reward_model(trained_reward_model, max_length=32), pairs)
    assert (margins > 0).mean() > 0.9
    alone = score(pairs, ScoreConfig(features=FeatureConfig(max_length=32), members=0,
                                     reward_models=(trained_reward_model, trained_reward_model)), progress=False)
    # members of different models are put on one scale (each divided by its std over pairs)
    unit = scale_members(margins[:, None])[:, 0]
    np.testing.assert_allclose(alone.member_margins, np.stack([unit, unit], axis=1), rtol=1e-5)
    assert np.isfinite(alone.member_margins).all()
    assert alone.metadata["members"]["scale"] == "per-member std"
    mixed = score(pairs, ScoreConfig(features=FeatureConfig(max_length=32), members=2, folds=2,
                                     reward_models=(trained_reward_model,), group_by=None),
                  cache_dir=tmp_path, progress=False)
    assert mixed.member_margins.shape == (48, 3)  # 2 members in total (1 per default view) + 1 reward model
    assert mixed.metadata["members"]["per_view"] == [1, 1]
    np.testing.assert_allclose(mixed.member_margins[:, 2], unit, rtol=1e-5)


def test_one_reward_model_alone_is_not_an_ensemble(trained_reward_model):
    with pytest.raises(ValueError, match="members must be at least 2"):
        ScoreConfig(members=0, reward_models=(trained_reward_model,))


def test_a_classifier_with_two_labels_is_not_a_reward_model(tiny_backbone, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    AutoModelForSequenceClassification.from_pretrained(tiny_backbone, num_labels=2).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_backbone).save_pretrained(tmp_path)
    with pytest.raises(BackboneError, match="has 2 output labels"):
        load_reward_model(tmp_path).reward(["q"], ["a"])


def test_cli_reward_model_option(trained_reward_model, tmp_path, capsys):
    from rmclean.cli import main

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(
        f'{{"prompt": "q{i}", "chosen": "a good and helpful answer", "rejected": "a bad and rude answer {i}"}}\n'
        for i in range(10)))
    code = main(["score", str(data), "--members", "0", "--reward-model", trained_reward_model,
                 "--reward-model", trained_reward_model, "--max-length", "32", "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 0
    assert "0 linear members per fold + 2 reward model(s)" in capsys.readouterr().out
