"""The best-of-n downstream comparison (rmclean.downstream): the exact best-of-n expectation,
win / tie / lose, the held-out split, cached and resumable samples, config errors, and
``rmclean compare --stage bon`` end to end on a tiny policy and a tiny backbone."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

import rmclean
from rmclean.cli import main
from rmclean.downstream import (DownstreamConfig, bon_kl, bon_weights, compare, expected_pick, heldout_split,
                                read_downstream_config, sample_prompts)


@pytest.fixture(autouse=True)
def private_feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RMCLEAN_CACHE_DIR", str(tmp_path / "feature-cache"))


def test_best_of_n_weights_are_the_exact_expectation_over_subsets():
    rng = np.random.default_rng(0)
    proxy, gold = rng.normal(size=(3, 6)), rng.normal(size=(3, 6))
    for n in (1, 2, 3, 6):
        assert bon_weights(6, n).sum() == pytest.approx(1.0)
        brute = np.array([np.mean([gold[p, max(subset, key=lambda i: proxy[p, i])]
                                   for subset in itertools.combinations(range(6), n)]) for p in range(3)])
        assert (expected_pick(proxy, gold, n) * gold).sum(1) == pytest.approx(brute)
    # the gold model as its own proxy: the expected pick only rises with n
    rewards = [(expected_pick(gold, gold, n) * gold).sum(1).mean() for n in range(1, 7)]
    assert all(b > a for a, b in zip(rewards, rewards[1:]))
    assert bon_kl(1) == 0 and bon_kl(16) == pytest.approx(math.log(16) - 15 / 16)


def test_win_tie_lose_sum_to_one_and_respect_the_tie_band():
    gold = np.array([[0.0, 1.0, 2.0]])
    uniform = np.full((1, 3), 1 / 3)
    best = np.array([[0.0, 0.0, 1.0]])
    win, tie, lose = compare(gold, best, uniform, band=0.5)[0]
    assert (win, tie, lose) == pytest.approx((2 / 3, 1 / 3, 0))
    assert compare(gold, uniform, uniform, band=0.0)[0] == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert compare(gold, best, uniform, band=5.0)[0] == pytest.approx([0, 1, 0])


def test_held_out_prompts_come_from_the_test_part_spread_over_sources_and_leave_training():
    prompts = [f"p{i % 100}" for i in range(200)]  # each prompt twice
    sources = np.array(["a" if i % 100 < 50 else "b" for i in range(200)])
    train, test, heldout = heldout_split(prompts, sources, 6, test_fraction=0.3)
    assert test.size == 60 and not set(train) & set(test)
    assert len(set(heldout)) == 6 and sum(int(p[1:]) < 50 for p in heldout) == 3
    assert set(heldout) <= {prompts[i] for i in test}
    assert not set(heldout) & {prompts[i] for i in train}
    with pytest.raises(ValueError, match="downstream.prompts"):
        heldout_split(prompts, sources, 100)


def test_samples_are_cached_resumed_and_refused_from_other_settings(tiny_policy, tmp_path, monkeypatch):
    import rmclean.train.rollout as rollout

    settings = {"policy": tiny_policy, "samples": 3, "max_new_tokens": 8, "max_prompt_tokens": 64,
                "generation_batch": 6, "temperature": 1.0}
    path = tmp_path / "samples.jsonl"
    prompts = [f"\n\nHuman: question {i}?\n\nAssistant:" for i in range(5)]
    first = sample_prompts(prompts, path, **settings)
    assert len(first) == 5 and all(len(row) == 3 for row in first)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # killed mid-write
    loads = []
    original = rollout.load_policy
    monkeypatch.setattr(rollout, "load_policy", lambda *a, **k: loads.append(1) or original(*a, **k))
    resumed = sample_prompts(prompts, path, **settings)
    assert loads == [1] and resumed == first  # the same samples as the run never stopped
    assert sample_prompts(prompts, path, **settings) == resumed and loads == [1]  # a rerun loads no model
    with pytest.raises(ValueError, match="other settings"):
        sample_prompts(prompts, path, **{**settings, "max_new_tokens": 9})


@pytest.mark.parametrize("values, message", [
    ({"denoisers": {"x": {"method": "unknown"}}}, "unknown method"),
    ({"bon": {"samples": 0}}, "bon.samples must be at least 1"),
    ({"bon": {"colour": 1}}, "bon: unknown BestOfNConfig setting"),
    ({"ppo": {"beta": -1}}, "beta must be 0 or more"),
    ({"ppo": {"arms": ["noisy", "flip 10%"]}}, "not arms of this experiment"),
    ({"downstream": {"rate": 0.5}}, "downstream.rate must lie"),
    ({"score": {"views": ["transcript"]}, "gold": {"views": ["transcript"]}}, "proxies' features"),
    ({"score": {"reward_models": ["gold-rm"]}, "gold": "gold-rm"}, "also a proxy"),
    ({"ppo": {"judge": {"backend": "oracle"}}}, "ppo.judge: judge backend must be one of"),
])
def test_bad_configs_are_clear_errors_before_any_model_work(values, message, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    with pytest.raises(ValueError, match=message) as caught:
        read_downstream_config(path)
    assert str(path) in str(caught.value)


def test_the_rm_stage_reads_the_same_file():
    from rmclean.benefit import BenefitConfig

    values = {"seeds": 2, "score": {"views": ["transcript"]}, "gold": {"views": ["response"]},
              "downstream": {"prompts": 8}, "bon": {"samples": 4}, "ppo": {"updates": 3, "arms": ["flip"]}}
    assert BenefitConfig.from_dict(values).seeds == 2
    config = DownstreamConfig.from_dict(values)
    assert config.downstream.prompts == 8 and config.bon.samples == 4 and config.benefit.seeds == 2
    assert config.ppo.ppo.updates == 3 and config.ppo.ppo.first_turn and config.ppo.arms == ("flip",)
    assert config.arms == ("noisy", "flip", "margin", "flip+margin", "soft-label+margin", "oracle")


def _rows(count):
    rows = []
    for i in range(count):
        good, bad = f" a good and helpful answer about topic {i}", f" a bad rude reply {i}"
        rows.append({"prompt": f"\n\nHuman: tell me about topic {i}?\n\nAssistant:", "chosen": good, "rejected": bad})
    return rows


def _stage_config(tmp_path, tiny_backbone, seeds: int, **stage) -> Path:
    """A policy-stage config file over 100 synthetic pairs on tiny-BERT features, with ``stage``
    (``bon=...`` or ``ppo=...``) as its stage section."""
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in _rows(100)))
    config = {"source": str(data), "seeds": seeds,
              "score": {"backbone": tiny_backbone, "views": ["transcript"], "max_length": 32, "members": 3, "folds": 3},
              "reward": {"epochs": 20, "learning_rate": 0.01, "weight_decay": 0.0},
              "gold": {"backbone": tiny_backbone, "views": ["transcript", "response"], "max_length": 32,
                       "epochs": 20, "learning_rate": 0.01, "weight_decay": 0.0},
              "downstream": {"prompts": 6, "resamples": 200}, **stage}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_compare_stage_bon_end_to_end(tiny_policy, tiny_backbone, tmp_path, monkeypatch):
    path = _stage_config(tmp_path, tiny_backbone, seeds=2,
                         bon={"samples": 4, "max_new_tokens": 8, "policy": tiny_policy})
    out = tmp_path / "bon"
    assert main(["compare", "--stage", "bon", str(path), "--out", str(out), "--quiet"]) == 0
    record = json.loads((out / "bon.json").read_text())
    names = [arm["name"] for arm in record["arms"]]
    assert names == ["sft", "noisy", "flip", "margin", "flip+margin", "soft-label+margin", "oracle", "gold"]
    arms = {arm["name"]: arm for arm in record["arms"]}
    for arm in record["arms"]:
        assert arm["win"] + arm["tie"] + arm["lose"] == pytest.approx(1.0)
        reward = arm["gold_reward"]
        assert reward["low"] <= reward["mean"] <= reward["high"]
    assert [p["n"] for p in arms["noisy"]["curve"]] == [1, 2, 4] and arms["noisy"]["kl"] == pytest.approx(bon_kl(4))
    # the gold model as its own proxy is the upper bound at every n, and beats SFT
    for name, arm in arms.items():
        if name not in ("sft", "gold"):
            assert all(g["gold_reward"]["mean"] >= p["gold_reward"]["mean"] - 1e-12
                       for g, p in zip(arms["gold"]["curve"], arm["curve"]))
    assert arms["gold"]["gold_reward"]["mean"] > arms["sft"]["gold_reward"]["mean"]
    assert arms["noisy"]["gain_over_noisy"] == {"mean": 0.0, "low": 0.0, "high": 0.0}
    for arm in record["arms"]:  # the paired gain is the difference of the two means
        gain = arm["gain_over_noisy"]
        assert gain["mean"] == pytest.approx(arm["gold_reward"]["mean"] - arms["noisy"]["gold_reward"]["mean"])
        assert gain["low"] <= gain["mean"] <= gain["high"]
    assert arms["gold"]["lose"] < arms["gold"]["win"]
    assert 0.5 <= arms["oracle"]["proxy_accuracy"] <= 1 and record["heldout_prompts"] == 6
    assert (out / "plots" / "bon.png").stat().st_size > 0 and "| oracle |" in (out / "bon.md").read_text()
    # nothing changed: the rerun samples nothing (no policy is loaded) and gives the same table
    import rmclean.train.rollout as rollout

    monkeypatch.setattr(rollout, "load_policy", lambda *a, **k: pytest.fail("the rerun loaded the policy"))
    samples_before = (out / "samples.jsonl").read_text()
    assert main(["compare", "--stage", "bon", str(path), "--out", str(out), "--quiet"]) == 0
    assert (out / "samples.jsonl").read_text() == samples_before
    assert json.loads((out / "bon.json").read_text())["arms"] == record["arms"]


def test_too_few_prompts_is_an_error_before_sampling(tiny_backbone, tmp_path):
    from rmclean.downstream import best_of_n

    config = DownstreamConfig.from_dict({"score": {"backbone": tiny_backbone, "views": ["transcript"]},
                                         "gold": {"backbone": tiny_backbone, "views": ["response"]},
                                         "downstream": {"prompts": 20}, "bon": {"policy": "/no/such/policy"}})
    with pytest.raises(ValueError, match="downstream.prompts"):
        best_of_n(rmclean.load_pairs(_rows(20)), config, out=tmp_path)


def test_compare_stage_ppo_trains_each_arm_once_and_judges_it_with_the_gold_model(tiny_policy, tiny_backbone,
                                                                                   tmp_path, monkeypatch, capsys):
    import rmclean.downstream.ppo as stage
    import rmclean.train.rollout as rollout

    path = _stage_config(tmp_path, tiny_backbone, seeds=1,
                         ppo={"arms": ["noisy", "oracle"], "policy": tiny_policy, "updates": 3, "batch_size": 4,
                              "policy_lr": 1e-2, "critic_lr": 1e-2, "max_new_tokens": 8, "eval_prompts": 2,
                              "critic_warmup": 1, "eval_samples": 2, "eval_every": 2})
    out = tmp_path / "ppo"
    trained = []
    original = stage.train_ppo
    monkeypatch.setattr(stage, "train_ppo", lambda prompts, model, *a, **k: trained.append(model.describe()["weights"])
                        or original(prompts, model, *a, **k))
    assert main(["compare", "--stage", "ppo", str(path), "--out", str(out), "--quiet"]) == 0
    record = json.loads((out / "ppo.json").read_text())
    arms = {arm["name"]: arm for arm in record["arms"]}
    assert list(arms) == ["sft", "noisy", "oracle"] and len(set(trained)) == 2
    for arm in record["arms"]:
        assert arm["win"] + arm["tie"] + arm["lose"] == pytest.approx(1.0)
        assert arm["gold_reward"]["low"] <= arm["gold_reward"]["mean"] <= arm["gold_reward"]["high"]
    assert arms["sft"]["kl"] == 0 and arms["sft"]["win"] == pytest.approx(arms["sft"]["lose"])  # SFT against itself
    assert arms["noisy"]["vs_noisy"]["win"] == pytest.approx(arms["noisy"]["vs_noisy"]["lose"])
    assert arms["oracle"]["gain_over_sft"]["mean"] == pytest.approx(
        arms["oracle"]["gold_reward"]["mean"] - arms["sft"]["gold_reward"]["mean"])
    # the trained policy left the reference: k3 is positive whenever they differ on a sampled token
    # (k1, the reported kl, is unbiased but may be negative over a few episodes)
    assert arms["oracle"]["kl_k3"] > 0 and len(arms["oracle"]["curves"]["kl_k1"]) == 3
    assert 0 <= arms["oracle"]["proxy_accuracy"] <= 1 and arms["oracle"]["perplexity"] > 1
    oracle_updates = [json.loads(line) for line in (Path(arms["oracle"]["run"]) / "metrics.jsonl").read_text().splitlines()]
    assert arms["oracle"]["update_seconds"] == pytest.approx(np.median([row["seconds"] for row in oracle_updates]))
    runs = sorted(p.name for p in (out / "ppo").iterdir())
    answers = {(run, update): (out / "ppo" / run / f"eval-000{update}.jsonl").read_text().splitlines()[1:]
               for run in runs for update in (2, 3)}
    sft_answers = (out / "sft" / "eval.jsonl").read_text().splitlines()[1:]
    assert all(lines != sft_answers and len(lines) == 6 for lines in answers.values())  # trained policies answer
    assert all(answers[run, 2] != answers[run, 3] for run in runs)  # the policy on the way is not the final one
    assert len(runs) == 2 and all((out / "ppo" / run / "policy" / "config.json").exists() for run in runs)
    # gold reward against KL: SFT at 0, then each evaluation, the last one the table's
    for name in ("noisy", "oracle"):
        curve = arms[name]["curve"]
        assert [point["update"] for point in curve] == [0, 2, 3]
        assert curve[0]["gold_reward"] == arms["sft"]["gold_reward"] and curve[0]["kl"] == 0
        assert curve[-1]["gold_reward"] == arms[name]["gold_reward"] and curve[-1]["kl"] == pytest.approx(arms[name]["kl"])
        assert curve[1]["kl"] == pytest.approx(np.mean(arms[name]["curves"]["kl_k1"][:2]))
    if record["matched_kl"] is not None:  # both runs reached a positive KL (k1 may be negative over a few episodes)
        assert record["matched_kl"] == pytest.approx(min(max(p["kl"] for p in arms[n]["curve"]) for n in ("noisy", "oracle")))
        assert "gain_over_noisy" in arms["oracle"]["at_matched_kl"]
    for name in ("ppo.md", "plots/ppo_curves.png", "plots/ppo_win_tie_lose.png", "plots/ppo_gold_kl.png"):
        assert (out / name).stat().st_size > 0
    # nothing changed: no training, no sampling, the same table
    monkeypatch.setattr(rollout, "load_policy", lambda *a, **k: pytest.fail("the rerun loaded a policy"))
    assert main(["compare", "--stage", "ppo", str(path), "--out", str(out), "--quiet"]) == 0
    assert len(trained) == 2 and json.loads((out / "ppo.json").read_text())["arms"] == record["arms"]
    # an evaluation the finished runs had passed is left out, said, and retrains nothing
    config = json.loads(path.read_text())
    config["ppo"]["eval_every"] = 1
    path.write_text(json.dumps(config))
    assert main(["compare", "--stage", "ppo", str(path), "--out", str(out)]) == 0
    assert "no gold evaluation at update 1" in capsys.readouterr().out
    again = {arm["name"]: arm for arm in json.loads((out / "ppo.json").read_text())["arms"]}
    assert len(trained) == 2 and [point["update"] for point in again["noisy"]["curve"]] == [0, 2, 3]
    # two more arms, a denoiser and the gold model itself: only they train
    monkeypatch.undo()
    monkeypatch.setenv("RMCLEAN_CACHE_DIR", str(tmp_path / "feature-cache"))
    monkeypatch.setattr(stage, "train_ppo", lambda prompts, model, *a, **k: trained.append(model.describe()["weights"])
                        or original(prompts, model, *a, **k))
    config = json.loads(path.read_text())
    config["ppo"]["arms"] = ["noisy", "flip", "oracle", "gold"]
    path.write_text(json.dumps(config))
    assert main(["compare", "--stage", "ppo", str(path), "--out", str(out), "--quiet"]) == 0
    assert len(trained) == 4 and len(list((out / "ppo").iterdir())) == 4
    with_gold = json.loads((out / "ppo.json").read_text())
    gold_arm = next(arm for arm in with_gold["arms"] if arm["name"] == "gold")
    assert gold_arm["proxy_accuracy"] == with_gold["gold_accuracy"] and trained[-1] not in trained[:-1]
    gold_run = json.loads((Path(gold_arm["run"]) / "summary.json").read_text())
    assert gold_run["reward_model"]["training"]["views"] == ["transcript", "response"]  # the gold's, not the proxies'
    # one more update: each run continues from its checkpoint, and its last answers are now a point on the way
    config["ppo"].update(updates=4, eval_every=3)
    path.write_text(json.dumps(config))
    assert main(["compare", "--stage", "ppo", str(path), "--out", str(out), "--quiet"]) == 0
    longer = {arm["name"]: arm for arm in json.loads((out / "ppo.json").read_text())["arms"]}
    assert len(trained) == 8 and len(list((out / "ppo").iterdir())) == 4
    assert [point["update"] for point in longer["noisy"]["curve"]] == [0, 3, 4]
    assert longer["noisy"]["curve"][1]["gold_reward"] == arms["noisy"]["gold_reward"]


def test_ppo_stage_asks_the_llm_judge_both_orders_once_and_refuses_a_judge_without_a_key(
        tiny_policy, tiny_backbone, tmp_path, monkeypatch):
    from judge_server import JudgeServer

    from rmclean.downstream import policy_stage
    from rmclean.judge import JudgeError

    rows = _rows(60)
    config = {"score": {"backbone": tiny_backbone, "views": ["transcript"], "max_length": 32, "members": 3, "folds": 3},
              "gold": {"backbone": tiny_backbone, "views": ["response"], "max_length": 32},
              "downstream": {"prompts": 4, "resamples": 50},
              "ppo": {"arms": ["noisy"], "policy": tiny_policy, "updates": 2, "batch_size": 4, "max_new_tokens": 6,
                      "policy_lr": 3e-2, "eval_prompts": 2, "critic_warmup": 0, "eval_samples": 2}}
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    remote = DownstreamConfig.from_dict({**config, "ppo": {**config["ppo"], "judge": {"base_url": "https://api.example.com/v1"}}})
    with pytest.raises(JudgeError, match="OPENAI_API_KEY"):  # before any model work: no folder is written
        policy_stage(rmclean.load_pairs(rows), remote, out=tmp_path / "remote", progress=False)
    assert not (tmp_path / "remote").exists()
    with JudgeServer() as server:
        judged = DownstreamConfig.from_dict({**config, "ppo": {**config["ppo"], "judge": {
            "base_url": server.url, "model": "judge-test", "concurrency": 2}}})
        record = policy_stage(rmclean.load_pairs(rows), judged, out=tmp_path / "out", progress=False)
        sent = len(server.log)
        verdicts = record["arms"][1]["judge"]
        pairs = [(p, a, b) for p, mine, theirs in zip(sorted(record_prompts(tmp_path / "out")), *answer_rows(tmp_path / "out"))
                 for a, b in zip(mine, theirs)]
        asked = {(p, a.strip(), b.strip()) for p, a, b in pairs} | {(p, b.strip(), a.strip()) for p, a, b in pairs}
        assert sent == len(asked) > 4  # every (prompt, answer, SFT answer) in both orders, each request once
        assert verdicts["win"] + verdicts["tie"] + verdicts["lose"] + verdicts["undecided"] == pytest.approx(1.0)
        policy_stage(rmclean.load_pairs(rows), judged, out=tmp_path / "out", progress=False)
        assert len(server.log) == sent  # the answers are cached


def answer_rows(out):
    """The noisy policy's and the SFT policy's held-out answers, prompt by prompt (sorted)."""
    def rows(path):
        lines = [json.loads(line) for line in path.read_text().splitlines()[1:]]
        return [row["samples"] for row in sorted(lines, key=lambda row: row["prompt"])]
    run = next((out / "ppo").iterdir())
    return rows(run / "eval-0002.jsonl"), rows(out / "sft" / "eval.jsonl")


def record_prompts(out):
    return [json.loads(line)["prompt"] for line in (out / "sft" / "eval.jsonl").read_text().splitlines()[1:]]


def test_gold_reward_at_a_matched_kl_is_read_off_each_curve_prompt_by_prompt():
    from rmclean.downstream.ppo import at_kl, ppo_record

    curve = [(0.0, np.array([0.0, 1.0])), (0.5, np.array([1.0, 1.0])), (0.2, np.array([5.0, 5.0])),
             (1.0, np.array([3.0, 1.0]))]
    assert at_kl(curve, 0.25) == pytest.approx([0.5, 1.0])  # where the curve first reaches the KL
    assert at_kl(curve, 0.6) == pytest.approx([4.0, 3.0])  # on the way up again, half-way from 0.2 to 1.0
    with pytest.raises(ValueError, match="never reaches"):
        at_kl(curve, 1.5)
    gold = {"sft": np.zeros((4, 2)), "noisy": np.full((4, 2), 2.0), "flip": np.full((4, 2), 3.0)}
    runs = {"noisy": {"kl_k1": 0.4, "curves": {"update": [1, 2, 3, 4], "kl_k1": [0.2, 0.2, 0.6, 0.6]}},
            "flip": {"kl_k1": 0.1, "curves": {"update": [1, 2, 3, 4], "kl_k1": [0.1, 0.1, 0.1, 0.1]}}}
    evaluations = {"noisy": {2: np.ones((4, 2)), 4: gold["noisy"]}, "flip": {4: gold["flip"]}}
    record = ppo_record(gold, runs, band=0.1, resamples=50, evaluations=evaluations)
    arms = {arm["name"]: arm for arm in record["arms"]}
    assert [(p["update"], p["kl"]) for p in arms["noisy"]["curve"]] == [(0, 0.0), (2, pytest.approx(0.2)),
                                                                       (4, pytest.approx(0.4))]
    assert record["matched_kl"] == pytest.approx(0.1)  # the largest KL both runs reached
    assert arms["noisy"]["at_matched_kl"]["gold_reward"]["mean"] == pytest.approx(0.5)  # half-way from SFT to update 2
    assert arms["flip"]["at_matched_kl"]["gain_over_noisy"]["mean"] == pytest.approx(2.5)
    assert "curve" not in arms["sft"] and "at_matched_kl" not in arms["sft"]
    runs["flip"]["curves"]["kl_k1"] = [-0.1] * 4  # a run that never left the reference: no matched KL
    record = ppo_record(gold, runs, band=0.1, resamples=50, evaluations=evaluations)
    assert record["matched_kl"] is None and all("at_matched_kl" not in arm for arm in record["arms"])


def test_each_source_of_the_held_out_prompts_gets_its_own_numbers():
    from rmclean.downstream import bon_record
    from rmclean.downstream.bon import source_markdown
    from rmclean.downstream.ppo import ppo_record

    rng = np.random.default_rng(0)
    sources = ["harmless-base"] * 5 + ["helpful-base"] * 3
    gold = {"sft": rng.normal(size=(8, 2)), "noisy": rng.normal(size=(8, 2)), "flip": rng.normal(size=(8, 2)) + 1}
    runs = {name: {"kl_k1": 0.2, "curves": {"update": [1, 2], "kl_k1": [0.1, 0.3]}} for name in ("noisy", "flip")}
    record = ppo_record(gold, runs, band=0.1, resamples=50, sources=sources)
    flip = next(arm for arm in record["arms"] if arm["name"] == "flip")
    helpful = flip["by_source"]["helpful-base"]
    assert helpful["gold_reward"]["mean"] == pytest.approx(gold["flip"][5:].mean())
    assert helpful["gain_over_noisy"]["mean"] == pytest.approx(gold["flip"][5:].mean() - gold["noisy"][5:].mean())
    shares = [flip["by_source"][s]["vs_sft"] for s in ("harmless-base", "helpful-base")]
    assert all(sum(share.values()) == pytest.approx(1.0) for share in shares)
    assert flip["win"] == pytest.approx((5 * shares[0]["win"] + 3 * shares[1]["win"]) / 8)  # the sources make the whole
    table = source_markdown(record["arms"], ("gain_over_noisy", "vs_sft"))
    assert "| helpful-base: gain over noisy | helpful-base: win / tie / lose vs SFT |" in table[3]
    assert table[-1].startswith("| flip | ") and table[-1].count(" / ") == 4 and len(table) == 5 + 3
    # best-of-n: the pick at the largest n, per source
    proxies = [{"noisy": (rng.normal(size=(8, 4)), 0.5), "flip": (rng.normal(size=(8, 4)), 0.6)}]
    bon = bon_record(rng.normal(size=(8, 4)), proxies, 0.7, band=0.1, resamples=50, sources=sources)
    assert {arm["name"]: sorted(arm["by_source"]) for arm in bon["arms"]}["flip"] == ["harmless-base", "helpful-base"]
    assert bon_record(rng.normal(size=(8, 4)), proxies, 0.7, band=0.1, resamples=50)["arms"][0]["by_source"] == {}
