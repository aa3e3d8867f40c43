"""The bundled reward-head trainer: losses reach training, metrics, save / load, reward API."""

from __future__ import annotations

import numpy as np
import pytest

from dataclasses import replace

from rmclean.features.views import FeatureConfig
from rmclean.members.reward_models import HeadRewardModel
from rmclean.train.reward import RewardTrainConfig, preference_metrics, train_head

TRANSCRIPT = FeatureConfig(views=("transcript",))


def _features(n_pairs=400, dim=12, seed=0):
    """Pairs ordered by one fixed reward direction; ``seed`` draws other pairs."""
    direction = np.random.default_rng(123).normal(size=dim)
    rng = np.random.default_rng(seed)
    chosen, rejected = rng.normal(size=(n_pairs, dim)), rng.normal(size=(n_pairs, dim))
    swap = (chosen - rejected) @ direction < 0
    chosen[swap], rejected[swap] = rejected[swap].copy(), chosen[swap].copy()
    return chosen, rejected


FAST = RewardTrainConfig(features=TRANSCRIPT, epochs=15, learning_rate=3e-2, weight_decay=0.0, batch_size=64)


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_heads_learn_a_known_reward_and_report_curves(head):
    chosen, rejected = _features()
    test_chosen, test_rejected = _features(seed=1)
    model, curves = train_head(chosen, rejected, replace(FAST, head=head),
                               evals={"test": (test_chosen, test_rejected)}, eval_every=5)
    assert curves["epochs"] == [5, 10, 15]
    final = curves["eval"]["test"][-1]
    assert final["accuracy"] > 0.9 and final["mean_margin"] > 0 and 0 <= final["calibration_error"] < 0.5
    assert curves["train_loss"][-1] < curves["train_loss"][0]


def test_margins_soft_labels_and_weights_change_training():
    chosen, rejected = _features()
    plain, _ = train_head(chosen, rejected, FAST)
    margin_config = replace(FAST, loss="margin")
    wide, _ = train_head(chosen, rejected, margin_config, margin=np.full(400, 3.0))
    gap = lambda m: (m.reward_of_features(chosen) - m.reward_of_features(rejected)).mean()  # noqa: E731
    assert gap(wide) > gap(plain)  # a margin asks for larger reward gaps
    soft_config = replace(FAST, loss="soft-label")
    unsure, _ = train_head(chosen, rejected, soft_config, soft_label=np.full(400, 0.6))
    assert 0 < gap(unsure) < gap(plain)  # soft targets of 0.6 pull the gap towards logit(0.6)
    # weight 0 removes pairs: training only on reversed pairs learns the reverse
    weights = np.r_[np.zeros(200), np.ones(200)]
    reversed_model, _ = train_head(np.vstack([chosen[:200], rejected[200:]]),
                                   np.vstack([rejected[:200], chosen[200:]]), FAST, weight=weights)
    assert gap(reversed_model) < 0
    with pytest.raises(ValueError, match="needs a margin"):
        train_head(chosen, rejected, margin_config)
    with pytest.raises(ValueError, match="margin must hold one finite number per pair"):
        train_head(chosen, rejected, margin_config, margin=np.full(400, np.nan))


def test_preference_metrics_by_hand():
    metrics = preference_metrics(np.array([2.0, -1.0, 0.5, 3.0]))
    assert metrics["accuracy"] == 0.75 and metrics["mean_margin"] == pytest.approx(1.125)
    assert metrics["pairs"] == 4 and 0 <= metrics["calibration_error"] <= 1


def test_save_and_load_give_the_same_rewards(tmp_path):
    chosen, rejected = _features()
    model, _ = train_head(chosen, rejected, FAST)
    model.metadata["trained_on"] = "synthetic"
    HeadRewardModel.load(model.save(tmp_path / "rm"))
    loaded = HeadRewardModel.load(tmp_path / "rm")
    np.testing.assert_allclose(loaded.reward_of_features(chosen), model.reward_of_features(chosen), rtol=1e-6)
    assert loaded.features == model.features == TRANSCRIPT and loaded.training == model.training
    assert loaded.metadata == {"trained_on": "synthetic"}
    with pytest.raises(FileNotFoundError, match="not a reward model saved by rmclean train-rm"):
        HeadRewardModel.load(tmp_path)


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown loss"):
        RewardTrainConfig(loss="hinge")
    with pytest.raises(ValueError, match="head must be"):
        RewardTrainConfig(head="tree")


# --- on real pairs: train, save, reward(prompt, response), and use as an ensemble member ------------


@pytest.fixture(scope="module")
def harmless(data_dir):
    import rmclean

    return rmclean.load_pairs("hh-rlhf", subset="harmless-base", limit=160, data_dir=data_dir)


def test_train_on_real_pairs_save_and_score_with_it(harmless, minilm_cache, tmp_path):
    import rmclean
    from rmclean.score import ScoreConfig, score
    from rmclean.train.reward import train_reward_model

    train, test = harmless.select(range(120)), harmless.select(range(120, 160))
    config = RewardTrainConfig(features=TRANSCRIPT, epochs=10)
    model, metrics = train_reward_model(train, config, evals={"held-out": test}, eval_every=5,
                                        cache_dir=minilm_cache, progress=False)
    assert set(metrics["eval"]) == {"held-out"} and metrics["eval"]["held-out"]["pairs"] == 40
    assert metrics["train"]["accuracy"] > 0.6  # it fits its training pairs
    folder = model.save(tmp_path / "rm")
    loaded = HeadRewardModel.load(folder)
    one = loaded.reward(test["prompt"][0], test["chosen"][0], cache_dir=minilm_cache)
    assert one.shape == (1,) and np.isfinite(one).all()
    delta = (loaded.reward(test["prompt"], test["chosen"], cache_dir=minilm_cache)
             - loaded.reward(test["prompt"], test["rejected"], cache_dir=minilm_cache))
    assert preference_metrics(delta)["accuracy"] == pytest.approx(metrics["eval"]["held-out"]["accuracy"])
    # the saved model is an ensemble member for rmclean score --reward-model
    scores = score(test, ScoreConfig(members=0, reward_models=(str(folder), str(folder))),
                   cache_dir=minilm_cache, progress=False)
    np.testing.assert_allclose(scores.member_margins[:, 0] * np.std(delta), delta, rtol=1e-5)
    # a denoise export's columns reach the loss; dropped rows are not trained on
    rows = [{"prompt": p, "chosen": c, "rejected": r, "margin": 0.5, "soft_label": 0.9, "action": a}
            for p, c, r, a in zip(train["prompt"], train["chosen"], train["rejected"], ["keep"] * 100 + ["drop"] * 20)]
    exported = rmclean.load_pairs(rows, allow_empty=True)  # hh has an empty final turn or two
    _, margin_metrics = train_reward_model(exported, RewardTrainConfig(loss="soft-label+margin", epochs=2,
                                                                       features=TRANSCRIPT),
                                           cache_dir=minilm_cache, progress=False)
    assert margin_metrics["train"]["pairs"] == 100


def test_finetune_mode_with_a_margin_loss_saves_a_model_with_the_reward_api(tiny_backbone, tmp_path):
    import rmclean
    from rmclean.members.reward_models import HFRewardModel
    from rmclean.train.reward import load_reward_model, train_reward_model

    rows = [{"prompt": f"question {i}", "chosen": f"a good and helpful answer {i}",
             "rejected": f"a bad and rude answer {i}", "margin": 0.5} for i in range(40)]
    pairs = rmclean.load_pairs(rows)
    config = RewardTrainConfig(model_type="finetune", loss="margin", features=FeatureConfig(backbone=tiny_backbone,
                               max_length=32), epochs=6, learning_rate=3e-3, batch_size=8)
    model, metrics = train_reward_model(pairs.select(range(32)), config, evals={"held-out": pairs.select(range(32, 40))},
                                        progress=False)
    assert metrics["eval"]["held-out"]["accuracy"] == 1.0 and metrics["eval"]["held-out"]["mean_margin"] > 0
    folder = model.save(tmp_path / "model")
    loaded = load_reward_model(folder)
    assert isinstance(loaded, HFRewardModel) and loaded.max_length == 32
    good, bad = loaded.reward(["question 99"] * 2, ["a good and helpful answer 99", "a bad and rude answer 99"])
    assert good > bad
    with pytest.raises(FileNotFoundError, match="not a reward model saved by rmclean train-rm"):
        load_reward_model(tmp_path)


def test_cli_train_rm_on_a_denoise_folder_writes_the_spec_files(data_dir, minilm_cache, tmp_path, capsys):
    import json

    from rmclean.cli import main

    cache = str(minilm_cache)
    common = ["--data-dir", str(data_dir), "--cache-dir", cache, "--quiet"]
    assert main(["score", "hh-rlhf", "--subset", "harmless-base", "--limit", "120", "--members", "3", "--folds", "3",
                 "--views", "transcript", "--out", str(tmp_path / "scores"), *common]) == 0
    assert main(["denoise", str(tmp_path / "scores"), "--method", "flip+margin", "--out", str(tmp_path / "denoised")]) == 0
    held_out = tmp_path / "held_out.jsonl"
    test_pairs = __import__("rmclean").load_pairs("hh-rlhf", subset="harmless-base", data_dir=data_dir).select(range(120, 180))
    held_out.write_text("".join(json.dumps({"chosen": p + c, "rejected": p + r}) + "\n"
                                for p, c, r in zip(test_pairs["prompt"], test_pairs["chosen"], test_pairs["rejected"])))
    capsys.readouterr()
    code = main(["train-rm", str(tmp_path / "denoised"), "--loss", "margin", "--views", "transcript", "--epochs", "6",
                 "--eval", f"held-out={held_out}", "--eval-every", "2", "--out", str(tmp_path / "rm"), *common])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "trained a heads reward model (margin loss) on 120 pairs" in printed and "held-out: accuracy" in printed
    metrics = json.loads((tmp_path / "rm" / "metrics.json").read_text())
    assert set(metrics["eval"]["held-out"]) >= {"accuracy", "mean_margin"}
    assert metrics["curves"]["epochs"] == [2, 4, 6] and len(metrics["curves"]["eval"]["held-out"]) == 3
    assert (tmp_path / "rm" / "plots" / "curves.png").stat().st_size > 1000
    assert main(["score", "hh-rlhf", "--subset", "harmless-base", "--limit", "40", "--members", "0",
                 "--reward-model", str(tmp_path / "rm" / "model"), "--reward-model", str(tmp_path / "rm" / "model"),
                 "--out", str(tmp_path / "rescored"), *common]) == 0
    raw = ["hh-rlhf", "--subset", "harmless-base", "--limit", "60"]
    assert main(["train-rm", *raw, "--loss", "soft-label", "--out", str(tmp_path / "x"), *common]) == 1
    assert "needs a soft label" in capsys.readouterr().err
    assert main(["train-rm", str(tmp_path / "denoised"), "--eval", "nonsense", "--out", str(tmp_path / "x"), *common]) == 1
    assert "--eval takes NAME=SOURCE" in capsys.readouterr().err
