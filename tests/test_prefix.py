"""Shared-prefix embedding of pairs (rmclean.features.prefix): the plan, equivalence with full
passes, a cache of its own, resuming, and the options that switch each speed-up off."""

from __future__ import annotations

import numpy as np
import pytest

from rmclean.features import cache, prefix
from rmclean.features.backbones import load_model, resolve_backbone
from rmclean.features.cache import FeatureCache
from rmclean.features.embedding import embed_texts
from rmclean.features.prefix import cut_ids, embed_pairs, plan_pair
from rmclean.features.views import FeatureConfig, pair_features

DIALOGUE = "\n\nHuman: " + " ".join(f"word{i}" for i in range(30)) + "?\n\nAssistant:"
PAIRS = [
    (DIALOGUE + " yes, that works", DIALOGUE + " no, try the other way round instead"),
    ("\n\nHuman: hi\n\nAssistant: hello there", "\n\nHuman: hi\n\nAssistant: hello there"),  # identical sides
    ("\n\nHuman: hi\n\nAssistant: hello", "\n\nHuman: hi\n\nAssistant: hello there friend"),  # one side a prefix
    ("completely different", "texts with nothing shared"),
    (DIALOGUE + " " + "long answer " * 40, DIALOGUE + " short"),  # a response longer than the budget
]


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory) -> str:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    import torch

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-decoder")
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("minilm").path)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_plan_cuts_both_sides_at_one_position_and_never_cuts_a_response():
    shared = list(range(100))
    first, second = shared + [1000, 1001], shared + [2000] * 12
    plan = plan_pair(first, second, max_length=64)
    assert plan.cut_first == plan.cut_second == len(second) - 64  # the longer side keeps 64 tokens
    assert len(cut_ids(second, plan.cut_second, 0)) == 64 and len(cut_ids(first, plan.cut_first, 0)) == 54
    assert plan.shared == 100 - plan.cut_first  # what is left of the dialogue runs once
    # a response alone longer than the budget: each side is cut on its own, nothing shared
    plan = plan_pair(shared[:10] + [1] * 80, shared[:10] + [2], max_length=64)
    assert (plan.cut_first, plan.cut_second, plan.shared) == (26, 0, 0)
    # identical sides still each keep one token of their own (their last state is a feature)
    plan = plan_pair(shared[:20], shared[:20], max_length=64)
    assert plan.shared == 19
    # a leading special token (a BOS) is kept and does not count as shared dialogue
    plan = plan_pair([0, 5, 1], [0, 6, 2], max_length=64, leading=1)
    assert plan.shared == 0
    assert cut_ids([0, 1, 2, 3, 4], 2, leading=1) == [0, 3, 4]


def test_pairs_match_full_passes_of_the_cut_texts(tiny_decoder, tmp_path):
    """Shared-prefix reuse changes no feature beyond float rounding: each side equals a full
    pass over the same (pair-cut) tokens."""
    import torch

    backbone = resolve_backbone(tiny_decoder)
    first_texts, second_texts = map(list, zip(*PAIRS))
    first, second = embed_pairs(backbone, first_texts, second_texts, max_length=48, cache_dir=tmp_path,
                                progress=False, precision="float32")
    tokenizer, model = load_model(backbone, tmp_path, precision="float32")
    reused = 0
    for index, (a, b) in enumerate(PAIRS):
        ids_a, ids_b = tokenizer(a)["input_ids"], tokenizer(b)["input_ids"]
        plan = plan_pair(ids_a, ids_b, 48, leading=prefix._leading_specials(tokenizer))
        reused += plan.shared > 0
        for ids, cut, got in ((ids_a, plan.cut_first, first[index]), (ids_b, plan.cut_second, second[index])):
            kept = cut_ids(ids, cut, prefix._leading_specials(tokenizer))
            assert len(kept) <= 48
            with torch.inference_mode():
                hidden = model(input_ids=torch.tensor([kept])).last_hidden_state[0]
            expected = torch.cat([hidden[-1], hidden.mean(0)]).numpy()
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert reused >= 3  # the test exercises the reuse path, not only the fallback
    # identical sides give the same features (to float rounding: they sit at different places in the pass)
    np.testing.assert_allclose(first[1], second[1], rtol=1e-5, atol=1e-6)


def test_pair_features_have_a_cache_of_their_own_and_resume(tiny_decoder, tmp_path, monkeypatch):
    backbone = resolve_backbone(tiny_decoder)
    first_texts, second_texts = map(list, zip(*PAIRS))
    single = embed_texts(backbone, first_texts + second_texts, 48, cache_dir=tmp_path, progress=False,
                         precision="float32")
    plain = FeatureCache(backbone, 48, tmp_path, "float32")
    paired = FeatureCache(backbone, 48, tmp_path, "float32", variant="pairs")
    assert plain.folder != paired.folder and paired.folder.name.endswith("-pairs-v2")
    # a pair run reads nothing from the single-text cache: it embeds everything itself
    runs = []
    real = prefix._embed_plan
    monkeypatch.setattr(prefix, "_embed_plan", lambda *args: runs.append(1) or real(*args))
    first, second = embed_pairs(backbone, first_texts, second_texts, 48, cache_dir=tmp_path, progress=False,
                                precision="float32")
    assert len(runs) == len(PAIRS)
    # the pair with a too-long response is cut side by side like single texts: the same features
    np.testing.assert_allclose(first[4], single[4], rtol=1e-5, atol=1e-6)
    # a second run reads the cache bit for bit and runs nothing
    again = embed_pairs(backbone, first_texts, second_texts, 48, cache_dir=tmp_path, progress=False,
                        precision="float32")
    assert len(runs) == len(PAIRS)
    np.testing.assert_array_equal(again[0], first)
    np.testing.assert_array_equal(again[1], second)
    # the pair cache's metadata says what it holds; a folder written for other features is refused
    import json

    meta = json.loads((paired.folder / "meta.json").read_text())
    assert meta["variant"] == "pairs" and meta["layer"] is None


def test_a_killed_pair_run_keeps_finished_shards(tiny_decoder, tmp_path, monkeypatch):
    backbone = resolve_backbone(tiny_decoder)
    many = [(f"\n\nHuman: question {i}?\n\nAssistant: yes {i}", f"\n\nHuman: question {i}?\n\nAssistant: no {i}")
            for i in range(12)]
    first_texts, second_texts = map(list, zip(*many))
    monkeypatch.setattr(cache, "SHARD_SIZE", 4)
    real = prefix._embed_plan
    done = []

    def dies_after_six(*args):
        if len(done) == 6:
            raise KeyboardInterrupt
        done.append(1)
        return real(*args)

    monkeypatch.setattr(prefix, "_embed_plan", dies_after_six)
    with pytest.raises(KeyboardInterrupt):
        embed_pairs(backbone, first_texts, second_texts, 64, cache_dir=tmp_path, progress=False, precision="float32")
    done.clear()
    monkeypatch.setattr(prefix, "_embed_plan", lambda *args: done.append(1) or real(*args))
    embed_pairs(backbone, first_texts, second_texts, 64, cache_dir=tmp_path, progress=False, precision="float32")
    assert len(done) == 12 - 6  # three shards of two pairs were kept


def test_options_switch_each_speed_up_off(tiny_decoder, tmp_path):
    import datasets

    pairs = datasets.Dataset.from_dict({"prompt": [DIALOGUE, "\n\nHuman: hi\n\nAssistant:"],
                                        "chosen": [" yes, that works", " hello"],
                                        "rejected": [" no, try the other way round instead", " bye"]})
    reuse = FeatureConfig(backbone=tiny_decoder, views=("transcript",), max_length=256, precision="float32")
    off = FeatureConfig(backbone=tiny_decoder, views=("transcript",), max_length=256, precision="float32",
                        prefix_reuse=False)
    with_reuse = pair_features(pairs, reuse, cache_dir=tmp_path, progress=False)
    without = pair_features(pairs, off, cache_dir=tmp_path, progress=False)
    for a, b in zip(with_reuse, without):  # the texts fit: only float rounding differs
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # early exit: a model of two blocks, features of its own cache
    early = pair_features(pairs, FeatureConfig(backbone=tiny_decoder, views=("transcript",), max_length=256,
                                               precision="float32", layer=2), cache_dir=tmp_path, progress=False)
    assert early[0].shape == with_reuse[0].shape and not np.allclose(early[0], with_reuse[0])
    assert FeatureCache(resolve_backbone(tiny_decoder), 256, tmp_path, "float32", layer=2,
                        variant="pairs").folder.is_dir()
    _, model = load_model(resolve_backbone(tiny_decoder), tmp_path, layer=2, precision="float32")
    assert len(model.layers) == 2
    # int8: dynamic quantization of the linear layers, a cache of its own
    quantized = pair_features(pairs, FeatureConfig(backbone=tiny_decoder, views=("transcript",), max_length=256,
                                                   precision="int8"), cache_dir=tmp_path, progress=False)
    assert quantized[0].shape == with_reuse[0].shape
    assert FeatureCache(resolve_backbone(tiny_decoder), 256, tmp_path, "int8", variant="pairs").folder.is_dir()
    with pytest.raises(ValueError, match="layer must be at least 1"):
        FeatureConfig(layer=0)


def test_each_process_embeds_its_share_of_the_pairs(tiny_decoder, tmp_path, monkeypatch):
    """Launched distributed, a process embeds only its share of the pairs, then waits for the
    others before reading all of them back (here the other share is embedded beforehand)."""
    backbone = resolve_backbone(tiny_decoder)
    first_texts, second_texts = map(list, zip(*PAIRS))
    other = embed_pairs(backbone, first_texts[1::2], second_texts[1::2], 48, cache_dir=tmp_path, progress=False,
                        precision="float32")  # "the other process" embeds its share
    waits, runs = [], []
    real = prefix._embed_plan
    monkeypatch.setattr(prefix, "process_share", lambda items: list(items)[0::2])
    monkeypatch.setattr(prefix, "wait_for_everyone", lambda: waits.append(1))
    monkeypatch.setattr(prefix, "_embed_plan", lambda *args: runs.append(1) or real(*args))
    first, second = embed_pairs(backbone, first_texts, second_texts, 48, cache_dir=tmp_path, progress=False,
                                precision="float32")
    assert len(runs) == len(PAIRS[0::2]) and waits == [1]
    np.testing.assert_array_equal(first[1::2], other[0])
    np.testing.assert_array_equal(second[1::2], other[1])


def test_a_slow_run_writes_a_shard_at_least_every_shard_seconds(tiny_decoder, tmp_path, monkeypatch):
    """Shards are written by time too, so a killed slow run (a big backbone on a CPU) loses at most
    SHARD_SECONDS of work, not SHARD_SIZE texts."""
    backbone = resolve_backbone(tiny_decoder)
    monkeypatch.setattr(cache, "SHARD_SECONDS", 0.0)
    first_texts, second_texts = map(list, zip(*PAIRS[:3]))
    embed_pairs(backbone, first_texts, second_texts, 48, cache_dir=tmp_path, progress=False, precision="float32")
    folder = FeatureCache(backbone, 48, tmp_path, "float32", variant="pairs").folder
    assert len(list(folder.glob("shard-*.npz"))) == 3
