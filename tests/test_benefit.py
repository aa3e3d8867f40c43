"""The denoising-benefit experiment (``rmclean.benefit``, ``rmclean compare --stage rm``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import rmclean
from rmclean.cli import main
from rmclean.benefit import BenefitConfig, benefit_markdown, denoise_benefit, read_config, split


def test_split_is_stratified():
    sources = np.array(["a"] * 100 + ["b"] * 50)
    train, test = split(sources, seed=0, test_fraction=0.3)
    assert np.sum(sources[test] == "a") == 30 and np.sum(sources[test] == "b") == 15
    assert set(train) | set(test) == set(range(150)) and not set(train) & set(test)


def test_bad_configs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="rates must lie in"):
        BenefitConfig(rates=(0.6,))
    with pytest.raises(ValueError, match="noise kinds"):
        BenefitConfig(noise=("adversarial",))
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"seeds": 1, "rate": [0.1]}))
    with pytest.raises(ValueError, match=r"config.json: unknown keys \['rate'\]"):
        read_config(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_config(path)
    path.write_text(json.dumps({"score": {"views": ["transcript"]}, "reward": {"views": ["response"]}}))
    with pytest.raises(ValueError, match=r"reward settings \['views'\]: the reward heads read the scorer's features"):
        read_config(path)
    path.write_text(json.dumps({"score": {"members": 3, "colour": "red"}}))
    with pytest.raises(ValueError, match=r"unknown ScoreConfig setting\(s\) \['colour'\]"):
        read_config(path)


SMALL = {"source": "hh-rlhf", "loading": {"subset": ["harmless-base", "helpful-base"], "limit": 600},
         "seeds": 1, "rates": [0.0, 0.3], "noise": ["random"],
         "score": {"members": 3, "folds": 3, "views": ["transcript"]},
         "denoisers": {"flip 20%": {"method": "flip", "select": "fraction:0.2"},
                       "margin": {"method": "margin"},
                       "flip negative": {"method": "flip", "select": "negative"}}}


def test_benefit_on_real_pairs_and_the_compare_command(real_data_env, minilm_cache, tmp_path, capsys):
    config = BenefitConfig.from_dict({**SMALL, "loading": {**SMALL["loading"], "data_dir": str(real_data_env)}})
    pairs = rmclean.load_pairs(config.source, **config.loading)
    records = denoise_benefit(pairs, config, cache_dir=minilm_cache, progress=False)
    assert [(r["noise"], r["rate"]) for r in records] == [("random", 0.0), ("random", 0.3)]
    noisy = records[1]
    assert noisy["oracle"]["pairs"] == 180 and set(noisy) >= {"oracle", "none", "flip 20%", "margin", "flip negative"}
    assert noisy["none"]["accuracy"] < noisy["oracle"]["accuracy"]  # 30% flips hurt
    assert noisy["flip 20%"]["found_flips"] > 0.3  # the weakest pairs hold more planted flips than chance
    table = benefit_markdown(records, config, len(pairs))
    assert "| flip 20% |" in table and "**random flips**" in table

    config_file = tmp_path / "benefit.json"
    config_file.write_text(json.dumps(SMALL))
    code = main(["compare", "--stage", "rm", str(config_file), "--cache-dir", str(minilm_cache),
                 "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    written = json.loads((tmp_path / "out" / "denoise_benefit.json").read_text())
    assert written["config"]["seeds"] == 1 and len(written["records"]) == 2
    # one feature config: the reward heads read the scorer's views, and the record says so
    assert written["config"]["score"]["views"] == written["config"]["reward"]["views"] == ["transcript"]
    assert written["records"][1]["none"]["accuracy"] == pytest.approx(noisy["none"]["accuracy"])  # seeded
    assert (tmp_path / "out" / "denoise_benefit.png").stat().st_size > 1000


def test_score_gaps_from_columns_or_metadata():
    from rmclean.benefit import score_gaps

    top = rmclean.load_pairs([{"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 5, "score_rejected": 2}])
    nested = rmclean.load_pairs([{"prompt": "q", "chosen": "a", "rejected": "b",
                                  "metadata": {"score_chosen": 4.5, "score_rejected": 4.0}}])
    assert score_gaps(top).tolist() == [3.0] and score_gaps(nested).tolist() == [0.5]
    with pytest.raises(ValueError, match="needs score_chosen / score_rejected"):
        score_gaps(rmclean.load_pairs([{"prompt": "q", "chosen": "a", "rejected": "b"}]))


def test_three_test_sets_from_independent_verdicts(tmp_path):
    from rmclean.benefit import read_judgements, testset_metrics

    delta = np.array([2.0, 1.0, -1.0, -3.0, 0.5])
    independent = np.array(["chosen", "rejected", "rejected", "tie", ""], dtype=object)
    sets = testset_metrics(delta, independent)
    assert sets["original"]["accuracy"] == pytest.approx(3 / 5) and sets["original"]["pairs"] == 5
    assert sets["agreeing"]["pairs"] == 1 and sets["agreeing"]["accuracy"] == 1.0
    # relabelled by the independent verdict: pair 1 is now wrong, pair 2 right; ties decide nothing
    assert sets["independent"]["pairs"] == 3 and sets["independent"]["accuracy"] == pytest.approx(2 / 3)
    assert sets["independent"]["mean_margin"] == pytest.approx((2.0 - 1.0 + 1.0) / 3)
    assert testset_metrics(delta, np.array(["tie"] * 5, dtype=object))["agreeing"] is None

    table = tmp_path / "gold.jsonl"
    table.write_text('{"pair_id": "a", "judge_verdict": "chosen"}\n{"pair_id": "b", "judge_verdict": "rejected"}\n')
    assert read_judgements(table) == {"a": "chosen", "b": "rejected"}
    numeric_looking = {"0123456789012345": "chosen", "12e4567890123456": "tie"}  # ids stay text
    table.write_text("".join(json.dumps({"pair_id": k, "judge_verdict": v}) + "\n" for k, v in numeric_looking.items()))
    assert read_judgements(table) == numeric_looking
    csv = tmp_path / "gold.csv"
    csv.write_text("pair_id,judge_verdict\n" + "".join(f"{k},{v}\n" for k, v in numeric_looking.items()))
    assert read_judgements(csv) == numeric_looking
    table.write_text('{"pair_id": "a", "judge_verdict": "chosen"}\n{"pair_id": "b", "judge_verdict": true}\n')
    with pytest.raises(ValueError, match=r"gold.jsonl, line 2, field judge_verdict: True is not one of"):
        read_judgements(table)
    table.write_text('{"pair_id": "a", "label": 1}\n')
    with pytest.raises(ValueError, match=r"missing \['judge_verdict'\]"):
        read_judgements(table)
    with pytest.raises(ValueError, match="no such judgements file"):
        read_judgements(tmp_path / "nothing")


TOPICS = ["baking bread", "fixing a bike", "learning French", "saving money", "planting tomatoes", "writing a CV",
          "training a puppy", "running a marathon", "cleaning an oven", "choosing a laptop", "painting a room",
          "making coffee", "reading faster", "sleeping better", "tying a tie", "filing taxes"]


def scripted_pairs(n: int, reversed_every: int) -> list[dict[str, str]]:
    """Pairs whose better answer the test judge server can read (``quality=N``); every
    ``reversed_every``-th pair carries the wrong label, as noisy test labels do."""
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        good = f" Here is a clear, friendly step-by-step guide to {topic}, with tips and a safety note ({i}). quality=5"
        bad = f" No idea about {topic}. Look it up yourself, I can't be bothered ({i}). quality=2"
        reverse = i % reversed_every == 0
        rows.append({"prompt": f"\n\nHuman: Can you help me with {topic}? (question {i})\n\nAssistant:",
                     "chosen": bad if reverse else good, "rejected": good if reverse else bad})
    return rows


def test_compare_measures_the_three_test_sets_with_a_real_judge(tmp_path, capsys, monkeypatch):
    """score → check (the test judge server, which reads each answer's real quality) → compare
    with those judgements: the reward models are measured on the original (noisy) test labels,
    the agreeing pairs and the judge's labels."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from judge_server import JudgeServer

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-experiments")
    rows = scripted_pairs(160, reversed_every=5)  # 32 labels reversed
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    cache = str(tmp_path / "cache")
    assert main(["score", str(data), "--members", "3", "--folds", "3", "--views", "transcript",
                 "--cache-dir", cache, "--quiet", "--out", str(tmp_path / "scores")]) == 0
    with JudgeServer() as server:
        assert main(["check", str(tmp_path / "scores"), "--base-url", server.url, "--model", "judge-test",
                     "--cache", str(tmp_path / "judge.sqlite"), "--quiet", "--out", str(tmp_path / "check")]) == 0
    capsys.readouterr()

    config = {"source": str(data), "seeds": 1, "rates": [0.0, 0.2], "noise": ["random"],
              "score": {"members": 3, "folds": 3, "views": ["transcript"]},
              "denoisers": {"flip negative": {"method": "flip", "select": "negative"}},
              "judgements": str(tmp_path / "check")}
    (tmp_path / "benefit.json").write_text(json.dumps(config))
    code = main(["compare", "--stage", "rm", str(tmp_path / "benefit.json"), "--cache-dir", cache,
                 "--out", str(tmp_path / "out"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    records = json.loads((tmp_path / "out" / "denoise_benefit.json").read_text())["records"]
    sets = records[0]["oracle"]["testsets"]
    test_ids = round(0.3 * 160)
    reversed_in_test = sets["original"]["pairs"] - sets["agreeing"]["pairs"]
    assert sets["original"]["pairs"] == sets["independent"]["pairs"] == test_ids  # the judge decided every pair
    assert 0 < reversed_in_test < test_ids / 2
    for record in records:
        for method in ("oracle", "none", "flip negative"):
            measured = record[method]["testsets"]
            # the reward model learns the real quality, so the noisy original labels under-report it
            assert measured["independent"]["accuracy"] > measured["original"]["accuracy"]
            assert measured["agreeing"]["accuracy"] >= measured["independent"]["accuracy"]
    assert "three test sets" in out and "| flip negative |" in out


def test_a_config_may_pool_several_sources(tmp_path):
    from rmclean.benefit import load_benefit_pairs

    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"}) + "\n"
                             for i in range(4)))
    second.write_text(json.dumps({"prompt": "q", "chosen": "", "rejected": "bad"}) + "\n"
                      + json.dumps({"prompt": "r", "chosen": "fine", "rejected": "worse"}) + "\n")
    config = BenefitConfig.from_dict({"source": [str(first), {"source": str(second), "allow_empty": True}],
                                      "loading": {"limit": 3}})
    pairs = load_benefit_pairs(config)
    assert len(pairs) == 3 + 2 and sorted(set(pairs["source"])) == sorted({pairs["source"][0], pairs["source"][-1]})
    assert "empty_response" in pairs["flags"][3]  # the second entry's own option
    with pytest.raises(ValueError, match="is empty"):  # without it the empty response is an error
        load_benefit_pairs(BenefitConfig(source=[str(first), str(second)]))
    with pytest.raises(ValueError, match="needs a 'source' key"):
        load_benefit_pairs(BenefitConfig(source=[{"path": str(first)}]))


def test_planted_test_noise_gives_the_three_test_sets_without_a_judge(tmp_path):
    """With test_noise the test labels are flipped too and the data's own labels act as the
    independent ones: a reward model that learns the real quality scores 1 - test_noise on the
    noisy labels and near 1 on the agreeing and independent sets."""
    rows = scripted_pairs(150, reversed_every=10**6)  # only pair 0 mislabelled
    config = BenefitConfig.from_dict({"seeds": 2, "rates": [0.0, 0.2], "noise": ["random"], "test_noise": 0.3,
                                      "score": {"members": 3, "folds": 3, "views": ["transcript"]},
                                      "denoisers": {"drop 20%": {"method": "drop", "select": "fraction:0.2"}}})
    records = denoise_benefit(rmclean.load_pairs(rows), config, cache_dir=tmp_path / "cache", progress=False)
    for record in records:
        sets = record["none"]["testsets"]
        assert sets["original"]["pairs"] == sets["independent"]["pairs"] == 45
        assert sets["agreeing"]["pairs"] == 45 - round(0.3 * 45)
        assert sets["original"]["accuracy"] == pytest.approx(record["none"]["accuracy"])
        assert sets["original"]["accuracy"] < 0.8 < sets["independent"]["accuracy"] <= sets["agreeing"]["accuracy"]
    table = benefit_markdown(records, config, 150)
    assert "30% of its labels flipped too" in table and "three test sets" in table
    with pytest.raises(ValueError, match="not both"):
        BenefitConfig(test_noise=0.2, judgements="check/")
    with pytest.raises(ValueError, match="test_noise must lie"):
        BenefitConfig(test_noise=0.5)
