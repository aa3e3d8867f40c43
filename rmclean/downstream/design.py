"""What both policy stages share: the split (train pairs, clean test pairs, held-out prompts),
the gold reward model, the proxy reward models of every arm, and cached policy samples.

A **gold** reward model is trained once on the clean labels of the training pairs with the
strongest features the config names (or is a reward model the user names) and takes no part in
any training or choice. **Proxies** are trained on the same pairs with planted label flips: one
without denoising (``noisy``), one per denoiser, and an ``oracle`` on the clean labels with the
proxies' features. Reward models are heads per training group (source), and each prompt is
scored by its source's head (:class:`RoutedHeads`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..benefit import benefit_pairs, split
from ..configs import to_record
from ..data.chat import first_turn, to_hh
from ..denoise import plan
from ..features.views import FeatureConfig, feature_views, response_features
from ..files import write_text
from ..members.reward_models import HeadRewardModel, as_scorer, load_reward_model
from ..noise import plant_flips, swap_where
from ..score import training_groups, view_margins
from ..train.losses import LOSSES
from ..train.reward import RewardTrainConfig, preference_metrics, train_head
from .config import DownstreamConfig


def heldout_split(prompts: list[str], sources: np.ndarray, count: int, test_fraction: float = 0.3,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(train, test, held-out prompts)``: pair indices split as ``--stage rm`` splits them
    (stratified by source, ``test_fraction`` clean test pairs), and ``count`` distinct prompts
    of the test part drawn evenly over sources; a training pair whose prompt is held out
    leaves training, so no reward model has seen a held-out prompt."""
    train, test = split(sources, seed, test_fraction)
    distinct = list(dict.fromkeys(prompts[i] for i in test))
    if len(distinct) < count or train.size == 0:
        raise ValueError(f"{len(distinct)} distinct prompts in the test part ({test_fraction:.0%} of "
                         f"{len(prompts)} pairs): the policy stages hold out {count} (downstream.prompts)")
    source_of = {prompts[i]: str(sources[i]) for i in test}
    rng = np.random.default_rng([seed, 31])
    by_source: dict[str, list[str]] = {}
    for prompt in (distinct[i] for i in rng.permutation(len(distinct))):
        by_source.setdefault(source_of[prompt], []).append(prompt)
    heldout: list[str] = []
    while len(heldout) < count:  # round robin over sources
        for queue in by_source.values():
            if queue and len(heldout) < count:
                heldout.append(queue.pop())
    held = set(heldout)
    train = np.array([i for i in train if prompts[i] not in held], dtype=np.int64)
    if train.size == 0:
        raise ValueError("every training pair shares a prompt with a held-out one: lower downstream.prompts")
    return train, test, heldout


@dataclass
class RoutedHeads:
    """Reward heads, one per training group, over the same features; each prompt is scored by
    its group's head (``route``: prompt -> group; other prompts go to ``default``)."""

    heads: dict[str, HeadRewardModel]
    route: dict[str, str]
    default: str

    def groups_of(self, prompts: list[str]) -> list[str]:
        return [self.route.get(prompt, self.default) for prompt in prompts]

    def reward_of_features(self, features: np.ndarray, groups: list[str]) -> np.ndarray:
        """``(n,)`` rewards of feature rows ``(n, dim)``, row i scored by ``groups[i]``'s head."""
        rewards = np.empty(features.shape[0])
        labels = np.array(groups, dtype=object)
        for name, head in self.heads.items():
            index = np.flatnonzero(labels == name)
            if index.size:
                rewards[index] = head.reward_of_features(features[index])
        return rewards

    def reward(self, prompts: list[str], responses: list[str], *, cache_dir=None, progress: bool = False,
               store: bool = False) -> np.ndarray:
        """Reward of each response to its prompt, ``(n,)`` (the feature cache keeps the texts
        only with ``store``)."""
        features = self.heads[self.default].feature_matrix(list(prompts), list(responses), cache_dir=cache_dir,
                                                           progress=progress, store=store)
        return self.reward_of_features(features, self.groups_of(list(prompts)))

    def describe(self) -> dict[str, Any]:
        """What the model is, for a PPO run's summary and resume check."""
        digest = hashlib.sha256("".join(f"{name}:{self.heads[name].fingerprint()};" for name in sorted(self.heads))
                                .encode())
        head = self.heads[self.default]
        return {"kind": "routed heads", "groups": sorted(self.heads), "training": head.training,
                "weights": digest.hexdigest()[:16]}


@dataclass
class Design:
    """The pairs and their split: ``prompts`` per valid pair (first turn where set), pair
    indices ``train`` / ``test``, the ``heldout`` prompts, the training ``groups`` (indices into
    ``train``), and each prompt's group (``route``)."""

    valid: Any
    prompts: list[str]
    sources: np.ndarray
    train: np.ndarray
    test: np.ndarray
    heldout: list[str]
    groups: dict[str, np.ndarray]
    route: dict[str, str]

    def routed(self, heads: dict[str, HeadRewardModel]) -> RoutedHeads:
        return RoutedHeads(heads, self.route, next(iter(self.groups)))

    def heldout_sources(self) -> list[str]:
        """The source of each held-out prompt (of its first pair)."""
        source_of: dict[str, str] = {}
        for prompt, source in zip(self.prompts, self.sources):
            source_of.setdefault(prompt, str(source))
        return [source_of[prompt] for prompt in self.heldout]

    def train_prompts(self) -> list[str]:
        """The distinct prompts of the training pairs, in order."""
        return list(dict.fromkeys(self.prompts[i] for i in self.train))


def make_design(pairs, config: DownstreamConfig) -> Design:
    """Split the valid pairs of ``pairs`` (see :func:`heldout_split`)."""
    settings = config.downstream
    valid = benefit_pairs(pairs, config.benefit)
    prompts = [first_turn(p) if settings.first_turn else p for p in valid["prompt"]]
    sources = np.array([str(s) for s in valid["source"]], dtype=object)
    train, test, heldout = heldout_split(prompts, sources, settings.prompts, config.benefit.test_fraction)
    groups = training_groups(valid.select(train), config.benefit.score)
    group_of_source = {str(s): name for name, index in groups.items() for s in np.unique(sources[train][index])}
    default = next(iter(groups))
    route = {p: group_of_source.get(str(s), default) for p, s in zip(prompts, sources)}
    return Design(valid, prompts, sources, train, test, heldout, groups, route)


def train_routed(design: Design, views, config: RewardTrainConfig, **labels) -> RoutedHeads:
    """Heads per training group on the training pairs' features ``views`` (``(chosen,
    rejected)`` per view, training pairs only), with ``labels`` (``flip``, ``weight``,
    ``margin``, ``soft_label``, each ``(n_train,)`` or None) as the loss reads them."""
    chosen, rejected = np.hstack([c for c, _ in views]), np.hstack([r for _, r in views])
    heads = {}
    for name, index in design.groups.items():
        picked = {key: (None if value is None else value[index]) for key, value in labels.items()}
        flip = picked.pop("flip", None)
        c, r = (chosen[index], rejected[index]) if flip is None else swap_where(flip, chosen[index], rejected[index])
        heads[name], _ = train_head(c, r, config, **picked)
    return design.routed(heads)


def clean_test_accuracy(model: RoutedHeads, design: Design, test_views) -> float:
    """Share of the clean test pairs whose chosen response gets the higher reward."""
    chosen, rejected = np.hstack([c for c, _ in test_views]), np.hstack([r for _, r in test_views])
    groups = model.groups_of([design.prompts[i] for i in design.test])
    delta = model.reward_of_features(chosen, groups) - model.reward_of_features(rejected, groups)
    return float(preference_metrics(delta)["accuracy"])


def noisy_training(design: Design, train_views, config: DownstreamConfig, seed: int):
    """``(flipped, noisy views, member margins)`` of one seed: the planted flips ``(n_train,)``
    (``downstream.rate`` of the training labels), the training views with them swapped, and the
    seed's ensemble's margins on those noisy labels ``(n_train, members)``."""
    rate = config.downstream.rate
    flipped = plant_flips(design.train.size, rate, [seed, 13, int(round(rate * 1000))])
    noisy = [swap_where(flipped, c, r) for c, r in train_views]
    member_margins = view_margins(noisy, design.groups, replace(config.benefit.score, seed=seed).head_config())
    return flipped, noisy, member_margins


def proxy_arms(design: Design, views, config: DownstreamConfig, seed: int) -> dict[str, tuple[RoutedHeads, float]]:
    """Every proxy arm of one seed, ``{name: (model, clean-test accuracy)}``: ``noisy`` (the
    training labels with planted flips), one per denoiser (scored by the seed's ensemble on the
    noisy labels), ``oracle`` (the clean labels). ``views``: every valid pair's proxy features."""
    benefit = config.benefit
    reward_config = replace(benefit.reward, seed=seed)
    train_views = [(c[design.train], r[design.train]) for c, r in views]
    test_views = [(c[design.test], r[design.test]) for c, r in views]
    _, noisy, member_margins = noisy_training(design, train_views, config, seed)

    def arm(arm_views, arm_config: RewardTrainConfig, **labels) -> tuple[RoutedHeads, float]:
        model = train_routed(design, arm_views, arm_config, **labels)
        return model, clean_test_accuracy(model, design, test_views)

    arms = {"noisy": arm(noisy, reward_config)}
    for name, denoiser in benefit.denoisers.items():
        planned = plan(member_margins, denoiser)
        reads_margin, reads_soft_label = LOSSES[denoiser.loss]
        arms[name] = arm(noisy, replace(reward_config, loss=denoiser.loss), flip=planned.flip,
                         weight=np.where(planned.drop, 0.0, 1.0), margin=planned.margin if reads_margin else None,
                         soft_label=planned.soft_label if reads_soft_label else None)
    arms["oracle"] = arm(train_views, reward_config)
    return arms


@dataclass
class Gold:
    """The gold reward model: ``model`` (anything with ``reward(prompts, responses)``),
    ``score(prompts, responses) -> (n,)`` rewards as the stages read them, and ``accuracy`` on
    the clean test pairs."""

    model: Any
    score: Callable[[list[str], list[str]], np.ndarray]
    accuracy: float


def gold_model(design: Design, config: DownstreamConfig, *, cache_dir=None, progress: bool = True) -> Gold:
    """The gold model: heads trained on the clean training labels with ``config.gold``'s
    features, or the named reward model."""
    if isinstance(config.gold, RewardTrainConfig):
        views = feature_views(design.valid, config.gold.features, cache_dir=cache_dir, progress=progress)
        model = train_routed(design, [(c[design.train], r[design.train]) for c, r in views], config.gold)
        accuracy = clean_test_accuracy(model, design, [(c[design.test], r[design.test]) for c, r in views])

        def score(prompts, responses):  # samples stay in the feature cache: a rerun reads them
            return model.reward(prompts, responses, cache_dir=cache_dir, progress=progress, store=True)

        return Gold(model, score, accuracy)
    model = load_reward_model(config.gold)
    score = as_scorer(model, cache_dir=cache_dir)
    test = design.valid.select(design.test)
    prompts = [design.prompts[i] for i in design.test]
    delta = (np.asarray(score(prompts, list(test["chosen"])), dtype=np.float64)
             - np.asarray(score(prompts, list(test["rejected"])), dtype=np.float64))
    return Gold(model, score, float(preference_metrics(delta)["accuracy"]))


def flat_hh(prompts: list[str], samples: list[list[str]]) -> tuple[list[str], list[str]]:
    """Every (prompt, sample) as a reward model reads it, prompt-major: ``data.chat.to_hh``, the
    rendering ``rmclean ppo`` rewards with, so a sample scores the same in training and here."""
    rendered = [to_hh(prompt, sample) for prompt, row in zip(prompts, samples) for sample in row]
    return [prompt for prompt, _ in rendered], [response for _, response in rendered]


def sample_features(prompts: list[str], samples: list[list[str]], features: FeatureConfig, *, cache_dir=None,
                    progress: bool = True) -> np.ndarray:
    """Features of every (prompt, sample), ``(prompts * samples, dim)`` (views side by side),
    kept in the feature cache."""
    flat_prompts, responses = flat_hh(prompts, samples)
    return np.hstack([response_features(flat_prompts, responses, features, view=view, cache_dir=cache_dir,
                                        progress=progress) for view in features.views])


def sample_prompts(prompts: list[str], path: Path, *, policy: str, samples: int, max_new_tokens: int,
                   max_prompt_tokens: int, generation_batch: int, cache_dir=None, progress: bool = True,
                   name: str | None = None, loaded: tuple[Any, Any] | None = None, read_only: bool = False,
                   **sampling: float) -> list[list[str]] | None:
    """``samples`` responses of ``policy`` to each prompt, ``[prompt][sample]``, sampled with
    ``sampling`` (``temperature``, ``top_p``, ``repetition_penalty``). ``name``: how the file
    names the policy (default: its resolved folder, or the id); ``loaded``: the policy already
    in memory as ``(tokenizer, model)``, used instead of loading ``policy``; ``read_only``:
    return what the file holds, or None where it lacks samples, and never sample.

    Prompts are sampled in fixed batches, each seeded from its first prompt, and each batch is
    appended to ``path`` (JSON lines: the settings, then one line a prompt) when done: a
    stopped run resumes with the first unfinished batch and ends with the samples a run never
    stopped would have; a rerun reads them and loads no model. A file from other settings is
    refused."""
    import torch
    from tqdm.auto import tqdm

    from ..train import rollout

    folder = Path(str(policy)).expanduser()
    named = name if name is not None else str(folder.resolve()) if folder.exists() else str(policy)
    identity = {"policy": named, "samples": samples, "max_new_tokens": max_new_tokens,
                "max_prompt_tokens": max_prompt_tokens, "generation_batch": generation_batch, **sampling}
    rows: list[dict[str, Any]] = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # the line a kill cut short
                break
        if rows and rows[0] != {"identity": identity}:
            raise ValueError(f"{path} holds samples from other settings ({rows[0]}); pass another --out")
    done = {row["prompt"]: row["samples"] for row in rows[1:] if len(row.get("samples", ())) == samples}
    per_batch = max(1, generation_batch // samples)
    batches = [prompts[start:start + per_batch] for start in range(0, len(prompts), per_batch)]
    todo = [batch for batch in batches if not all(p in done for p in batch)]
    if todo and read_only:
        return None
    if todo:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, "".join(json.dumps(row) + "\n" for row in [{"identity": identity}, *rows[1:]]))
        tokenizer, model = loaded or rollout.load_policy(str(policy), cache_dir)
        bar = tqdm(total=sum(map(len, todo)), desc=f"samples of {name or Path(str(policy)).name}", unit="prompt",
                   disable=not progress)
        with path.open("a", encoding="utf-8") as handle:
            for batch in todo:
                texts, templated = rollout.render_prompts(tokenizer, batch)
                torch.manual_seed(int.from_bytes(hashlib.sha256(batch[0].encode()).digest()[:4], "little"))
                sampled = rollout.sample(tokenizer, model, [text for text in texts for _ in range(samples)],
                                         max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens,
                                         add_special_tokens=not templated, **sampling)
                answers = rollout.response_texts(tokenizer, sampled)
                lines = []
                for number, prompt in enumerate(batch):
                    done[prompt] = answers[number * samples:(number + 1) * samples]
                    lines.append(json.dumps({"prompt": prompt, "samples": done[prompt]}) + "\n")
                handle.write("".join(lines))
                handle.flush()
                bar.update(len(batch))
        bar.close()
    return [done[p] for p in prompts]


def design_record(config: DownstreamConfig, design: Design, gold_accuracy: float, band: float,
                  stage: str) -> dict[str, Any]:
    """What a stage's record says of its design: the settings it ran with (the stage's own
    section only), the pair counts, the gold model's clean-test accuracy and the tie band."""
    return {"config": {"benefit": to_record(config.benefit),
                       "gold": config.gold if isinstance(config.gold, str) else to_record(config.gold),
                       "downstream": to_record(config.downstream), stage: to_record(getattr(config, stage))},
            "pairs": len(design.valid), "train_pairs": int(design.train.size), "test_pairs": int(design.test.size),
            "heldout_prompts": len(design.heldout), "gold_accuracy": gold_accuracy, "tie_band": band}


def design_text(record: dict[str, Any]) -> str:
    """One sentence on the proxies, the gold model and the tie band of a stage's record."""
    config = record["config"]
    gold = config["gold"] if isinstance(config["gold"], str) else f"heads on {', '.join(config['gold']['views'])}"
    return (f"proxies trained on {record['train_pairs']:,} pairs with {config['downstream']['rate']:.0%} planted "
            f"flips; gold: {gold} on the clean labels (clean-test accuracy {record['gold_accuracy']:.3f}); accuracy "
            f"is on the {record['test_pairs']:,} clean test pairs; tie band {record['tie_band']:.4f} (gold reward)")


__all__ = ["Design", "Gold", "RoutedHeads", "clean_test_accuracy", "design_record", "design_text", "flat_hh", "gold_model", "heldout_split", "make_design", "noisy_training", "proxy_arms",
           "sample_features", "sample_prompts", "train_routed"]
