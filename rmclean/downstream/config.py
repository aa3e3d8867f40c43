"""The downstream experiment's settings, read from the same JSON file as ``--stage rm``: its
keys (:class:`rmclean.benefit.BenefitConfig`: data, scorer, reward heads, denoisers), the
``gold`` model, the ``downstream`` settings both policy stages share, and a section per stage,
``bon`` and ``ppo``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..benefit import BenefitConfig
from ..configs import from_record, to_record
from ..denoise import DenoiseConfig, DenoiseError
from ..features.views import FeatureConfig
from ..judge import JudgeConfig
from ..train.ppo import PPOConfig
from ..train.reward import RewardTrainConfig

#: The paper's denoisers, each with one rule fixed in advance (README, "Does denoising give
#: better reward models?": the 20% rules recover most of what planted flips cost).
DOWNSTREAM_DENOISERS: dict[str, DenoiseConfig] = {
    "flip": DenoiseConfig("flip", "fraction:0.2"),
    "margin": DenoiseConfig("margin"),
    "flip+margin": DenoiseConfig("flip+margin", "fraction:0.2"),
    "soft-label+margin": DenoiseConfig("soft-label+margin", "fraction:0.2"),
}
#: The gold default: heads on SmolLM2 transcript features, the strongest CPU features measured here.
GOLD = RewardTrainConfig(features=FeatureConfig(views=("smollm2:transcript",)))
#: Where the PPO stage's defaults leave :class:`PPOConfig`'s: a budget per arm that fits CPU runs, and
#: hh prompts cut to their first turn as in the best-of-n stage.
PPO_STAGE_DEFAULTS: dict[str, Any] = {"updates": 50, "first_turn": True}
#: Proxy arms besides one per denoiser: no denoising, and the clean labels with the proxies' features.
BASE_ARMS = ("noisy", "oracle")


@dataclass(frozen=True)
class DownstreamSettings:
    """What both policy stages share: the held-out prompts, the planted noise, the comparison."""

    prompts: int = field(default=128, metadata={
        "help": "prompts held out for evaluation, drawn from the clean test part (their pairs leave training)"})
    rate: float = field(default=0.3, metadata={"help": "share of training labels flipped for the proxies"})
    first_turn: bool = field(default=True, metadata={"help": "cut hh prompts to their first human turn"})
    tie: float = field(default=0.1, metadata={"help": "tie band, in gold reward standard deviations over samples"})
    resamples: int = field(default=1000, metadata={"help": "bootstrap resamples over prompts"})

    def __post_init__(self) -> None:
        if self.prompts < 1 or self.resamples < 1:
            raise ValueError("downstream.prompts and downstream.resamples must be at least 1")
        if not 0 <= self.rate < 0.5:
            raise ValueError(f"downstream.rate must lie in [0, 0.5), got {self.rate}")
        if self.tie < 0:
            raise ValueError(f"downstream.tie must be 0 or more, got {self.tie}")


@dataclass(frozen=True)
class BestOfNConfig:
    """The best-of-n stage: SFT samples per held-out prompt."""

    samples: int = field(default=16, metadata={"help": "SFT samples per prompt (the largest n)"})
    policy: str = field(default="smollm2", metadata={"help": "the SFT policy: smollm2, a folder, a .gguf or a Hub id"})
    max_new_tokens: int = field(default=48, metadata={"help": "longest sample in tokens"})
    max_prompt_tokens: int = field(default=256, metadata={"help": "prompts are cut on the left to this many tokens"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (1: the policy itself)"})
    generation_batch: int = field(default=32, metadata={"help": "samples generated together (speed only)"})

    def __post_init__(self) -> None:
        for name in ("samples", "max_new_tokens", "max_prompt_tokens", "generation_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"bon.{name} must be at least 1, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise ValueError(f"bon.temperature must be positive, got {self.temperature}")


@dataclass(frozen=True)
class PPOStageConfig:
    """The PPO stage: which arms get a policy, how each is trained (:class:`PPOConfig`, the
    same for every arm) and how the policies are sampled for the gold model, at the end and
    every ``eval_every`` updates on the way."""

    arms: tuple[str, ...] | None = field(default=None, metadata={
        "help": "proxy arms to train a policy against (default: noisy, each denoiser, oracle); 'gold' adds a "
                "policy trained against the gold model itself, the most this PPO budget can gain"})
    eval_samples: int = field(default=2, metadata={
        "help": "samples per held-out prompt from each policy at each evaluation (the paper's settings: T 0.8, "
                "top-p 0.9, repetition penalty 1.1)"})
    eval_every: int | None = field(default=25, metadata={
        "help": "the gold model also judges each policy every N updates on the way (answers sampled from the "
                "policy as it is then), for gold reward against KL; None: at the end only", "metavar": "N"})
    judge: JudgeConfig | None = field(default=None, metadata={
        "help": "an LLM judge for win / tie / lose against the SFT policy's answers too (the paper's metric): "
                "JudgeConfig settings, asked in both orders as rmclean check asks"})
    ppo: PPOConfig = field(default=PPOConfig(**PPO_STAGE_DEFAULTS), metadata={"flatten": True})

    def __post_init__(self) -> None:
        if self.arms is not None:
            object.__setattr__(self, "arms", tuple(self.arms))
        if self.eval_samples < 1:
            raise ValueError(f"ppo.eval_samples must be at least 1, got {self.eval_samples}")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(f"ppo.eval_every must be at least 1 (or null: at the end only), got {self.eval_every}")

    def evaluation_updates(self) -> list[int]:
        """The updates after which the gold model judges each policy: every ``eval_every``, and the last."""
        every = self.eval_every or self.ppo.updates
        return sorted({*range(every, self.ppo.updates, every), self.ppo.updates})


@dataclass(frozen=True)
class DownstreamConfig:
    """One experiment file for every stage (see the module docstring)."""

    benefit: BenefitConfig = BenefitConfig(denoisers=DOWNSTREAM_DENOISERS)
    gold: RewardTrainConfig | str = GOLD
    downstream: DownstreamSettings = DownstreamSettings()
    bon: BestOfNConfig = BestOfNConfig()
    ppo: PPOStageConfig = PPOStageConfig()

    def __post_init__(self) -> None:
        if isinstance(self.gold, str) and self.gold in self.benefit.score.reward_models:
            raise ValueError(f"the gold model {self.gold} is also a proxy (score.reward_models): the gold model must "
                             "take no part in training")
        if isinstance(self.gold, RewardTrainConfig):
            if self.gold.model_type != "heads":
                raise ValueError("a trained gold is a reward head (gold.mode 'heads'); name a fine-tuned gold model "
                                 "by its folder instead")
            if self.gold.features == self.benefit.score.features:
                raise ValueError("the gold model reads the proxies' features: give it stronger ones (gold.views), "
                                 "or it is only the oracle again")
        if unknown := sorted(set(self.ppo.arms or ()) - {*self.arms, "gold"}):
            raise ValueError(f"ppo.arms {unknown} are not arms of this experiment: {', '.join(self.arms)}, gold")

    @property
    def arms(self) -> tuple[str, ...]:
        """The proxy arms: ``noisy``, one per denoiser, ``oracle``."""
        return ("noisy", *self.benefit.denoisers, "oracle")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DownstreamConfig:
        """A config from plain values; unknown keys in any section are errors."""
        values = dict(values)
        gold = values.pop("gold", None)
        sections = {name: dict(values.pop(name, {})) for name in ("downstream", "bon", "ppo")}
        judge = sections["ppo"].pop("judge", None)
        if "denoisers" not in values:
            values["denoisers"] = {name: to_record(d) for name, d in DOWNSTREAM_DENOISERS.items()}
        benefit = BenefitConfig.from_dict(values)
        if isinstance(gold, dict):
            gold = from_record(RewardTrainConfig, gold)
        return cls(benefit, GOLD if gold is None else gold,
                   _section(DownstreamSettings, "downstream", sections["downstream"]),
                   _section(BestOfNConfig, "bon", sections["bon"]),
                   _section(PPOStageConfig, "ppo", {**PPO_STAGE_DEFAULTS, **sections["ppo"]},
                            judge=None if judge is None else _section(JudgeConfig, "ppo.judge", judge)))


def _section(cls: type, name: str, values: dict[str, Any], **given: Any):
    try:
        return from_record(cls, values, **given)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def read_downstream_config(path: str | os.PathLike) -> DownstreamConfig:
    """A :class:`DownstreamConfig` from a JSON file; errors name the file."""
    path = Path(path)
    try:
        return DownstreamConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such config file") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    except (TypeError, ValueError, DenoiseError) as exc:
        raise ValueError(f"{path}: {exc}") from None


__all__ = ["BASE_ARMS", "DOWNSTREAM_DENOISERS", "GOLD", "BestOfNConfig", "DownstreamConfig", "DownstreamSettings",
           "PPOStageConfig", "read_downstream_config"]
