"""The denoising-benefit experiment (``rmclean.experiments``, ``rmclean compare --stage rm``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import rmclean
from rmclean.cli import main
from rmclean.experiments import BenefitConfig, benefit_markdown, denoise_benefit, plant, read_config, split


def test_split_is_stratified_and_planting_is_targeted():
    sources = np.array(["a"] * 100 + ["b"] * 50)
    train, test = split(sources, seed=0, test_fraction=0.3)
    assert np.sum(sources[test] == "a") == 30 and np.sum(sources[test] == "b") == 15
    assert set(train) | set(test) == set(range(150)) and not set(train) & set(test)
    strength = np.linspace(-3, 3, 200)
    flipped = plant(200, 0.1, seed=0, clean_strength=strength)
    assert flipped.sum() == 20 and np.abs(strength[flipped]).max() <= np.sort(np.abs(strength))[39]
    assert plant(200, 0.0, seed=0).sum() == 0


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


SMALL = {"source": "hh-rlhf", "loading": {"subset": ["harmless-base", "helpful-base"], "limit": 600},
         "seeds": 1, "rates": [0.0, 0.3], "noise": ["random"],
         "score": {"members": 3, "folds": 3, "views": ["transcript"]},
         "denoisers": {"flip 20%": {"method": "flip", "select": "fraction:0.2"},
                       "margin": {"method": "margin"},
                       "flip negative": {"method": "flip", "select": "negative"}}}


def test_benefit_on_real_pairs_and_the_compare_command(real_data_env, tmp_path, capsys):
    config = BenefitConfig.from_dict({**SMALL, "loading": {**SMALL["loading"], "data_dir": str(real_data_env)}})
    pairs = rmclean.load_pairs(config.source, **config.loading)
    records = denoise_benefit(pairs, config, cache_dir=tmp_path / "cache", progress=False)
    assert [(r["noise"], r["rate"]) for r in records] == [("random", 0.0), ("random", 0.3)]
    noisy = records[1]
    assert noisy["oracle"]["pairs"] == 180 and set(noisy) >= {"oracle", "none", "flip 20%", "margin", "flip negative"}
    assert noisy["none"]["accuracy"] < noisy["oracle"]["accuracy"]  # 30% flips hurt
    assert noisy["flip 20%"]["found_flips"] > 0.3  # the weakest pairs hold more planted flips than chance
    table = benefit_markdown(records, config, len(pairs))
    assert "| flip 20% |" in table and "**random flips**" in table

    config_file = tmp_path / "benefit.json"
    config_file.write_text(json.dumps(SMALL))
    code = main(["compare", "--stage", "rm", str(config_file), "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    written = json.loads((tmp_path / "out" / "denoise_benefit.json").read_text())
    assert written["config"]["seeds"] == 1 and len(written["records"]) == 2
    assert written["records"][1]["none"]["accuracy"] == pytest.approx(noisy["none"]["accuracy"])  # seeded
    assert (tmp_path / "out" / "denoise_benefit.png").stat().st_size > 1000


def test_score_gaps_from_columns_or_metadata():
    from rmclean.experiments import score_gaps

    top = rmclean.load_pairs([{"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 5, "score_rejected": 2}])
    nested = rmclean.load_pairs([{"prompt": "q", "chosen": "a", "rejected": "b",
                                  "metadata": {"score_chosen": 4.5, "score_rejected": 4.0}}])
    assert score_gaps(top).tolist() == [3.0] and score_gaps(nested).tolist() == [0.5]
    with pytest.raises(ValueError, match="needs score_chosen / score_rejected"):
        score_gaps(rmclean.load_pairs([{"prompt": "q", "chosen": "a", "rejected": "b"}]))
