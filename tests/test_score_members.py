"""``--members`` counts the seeded members in total, split across the feature views (issue #15):
the paper's M = 10 gives ten member columns however many views there are."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

import rmclean
from rmclean.cli import main
from rmclean.features.views import FeatureConfig
from rmclean.members.heads import HeadConfig
from rmclean.score import ScoreConfig, score, split_members, summary_text, view_margins

THREE_VIEWS = ("transcript", "response", "response+prompt")


ROWS = [{"prompt": f"question {i}", "chosen": f"a good and helpful answer {i}",
         "rejected": f"a bad and rude answer {i}"} for i in range(24)]


@pytest.fixture(scope="module")
def pairs():
    return rmclean.load_pairs(ROWS)


@pytest.fixture(scope="module")
def tiny_config(tiny_backbone):
    return ScoreConfig(features=FeatureConfig(backbone=tiny_backbone, max_length=32), members=10, folds=2,
                       group_by=None)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("feature-cache")


@pytest.mark.parametrize("total, views, split", [
    (10, 1, [10]), (10, 2, [5, 5]), (10, 3, [4, 3, 3]), (3, 2, [2, 1]), (2, 2, [1, 1]), (11, 3, [4, 4, 3])])
def test_members_are_split_as_evenly_as_possible_earlier_views_first(total, views, split):
    assert split_members(total, views) == split


def test_view_margins_give_the_total_number_of_columns():
    rng = np.random.default_rng(0)
    views = [(rng.normal(size=(60, 5)), rng.normal(size=(60, 5))) for _ in range(3)]
    groups = {"all": np.arange(60)}
    heads = HeadConfig(members=10, folds=2, C=1.0)
    assert view_margins(views[:2], groups, heads).shape == (60, 10)
    assert view_margins(views, groups, heads).shape == (60, 10)
    assert view_margins(views[:1], groups, heads).shape == (60, 10)
    with pytest.raises(ValueError, match="each view needs at least one"):
        view_margins(views, groups, replace(heads, members=2))


def test_members_10_over_the_two_default_views_gives_10_columns(pairs, tiny_config, cache_dir):
    assert tiny_config.features.views == FeatureConfig().views and len(FeatureConfig().views) == 2
    scores = score(pairs, tiny_config, cache_dir=cache_dir, progress=False)
    assert scores.member_margins.shape == (24, 10)  # not 10 per view (20)
    assert scores.metadata["members"]["seeded"] == 10 and scores.metadata["members"]["per_view"] == [5, 5]
    assert "with 10 linear members per fold (5 per view x 2 views)," in summary_text(scores.metadata, {})


def test_three_views_split_10_members_4_3_3(pairs, tiny_config, cache_dir):
    config = replace(tiny_config, features=replace(tiny_config.features, views=THREE_VIEWS))
    assert config.members_per_view == [4, 3, 3]
    scores = score(pairs, config, cache_dir=cache_dir, progress=False)
    assert scores.member_margins.shape == (24, 10)
    assert scores.metadata["members"] == {"seeded": 10, "member_type": "heads", "views": list(THREE_VIEWS),
                                          "per_view": [4, 3, 3], "reward_models": [], "scale": "per-member std"}
    assert "with 10 linear members per fold (4 + 3 + 3 over 3 views)," in summary_text(scores.metadata, {})


def test_too_few_members_for_the_views_are_clear_errors():
    with pytest.raises(ValueError, match="members must be at least 2"):
        ScoreConfig(members=1)  # two default views, and the strength std needs two members
    with pytest.raises(ValueError, match=r"each view needs at least one: 1 member\(s\) cannot cover 2 views"):
        ScoreConfig(members=1, reward_models=("some/reward-model",))
    with pytest.raises(ValueError, match="cannot cover 3 views; use --members 3 or more, or fewer --views"):
        ScoreConfig(members=2, features=FeatureConfig(views=THREE_VIEWS))
    assert ScoreConfig(members=3, features=FeatureConfig(views=THREE_VIEWS)).members_per_view == [1, 1, 1]
    assert ScoreConfig(members=0, reward_models=("a", "b")).members_per_view == []


def test_finetuned_members_use_no_views_and_count_in_total():
    config = ScoreConfig(members=2, member_type="finetune", features=FeatureConfig(views=THREE_VIEWS))
    assert config.members_per_view == [] and config.finetune_config().members == 2


def test_cli_prints_the_member_count_and_rejects_too_few(tiny_backbone, cache_dir, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    common = ["--backbone", tiny_backbone, "--max-length", "32", "--folds", "2", "--group-by", "none",
              "--cache-dir", str(cache_dir)]
    assert main(["score", str(data), "--members", "10", *common, "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert "with 10 linear members per fold (5 per view x 2 views), 2-fold" in capsys.readouterr().out
    assert main(["score", str(data), "--members", "1", *common, "--out", str(tmp_path / "bad")]) == 1
    assert "members must be at least 2" in capsys.readouterr().err
    assert main(["score", str(data), "--members", "2", "--views", ",".join(THREE_VIEWS), *common,
                 "--out", str(tmp_path / "bad")]) == 1
    assert "each view needs at least one: 2 member(s) cannot cover 3 views" in capsys.readouterr().err
    help_text = _help(capsys)
    assert "ensemble members in total, split across feature views (paper: M = 10)" in " ".join(help_text.split())


def _help(capsys) -> str:
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    return capsys.readouterr().out
