"""Best-of-n against the gold model (``rmclean compare --stage bon CONFIG``), the
synthetic-gold design of Gao et al. 2022: the SFT policy answers every held-out prompt
``samples`` times (sampled once, cached, shared by every arm and seed); each proxy picks its
best of n, and the gold model scores the pick. ``gold`` as its own proxy is the upper bound.

For n ≤ ``samples`` the gold reward of best-of-n is the exact expectation over random n-subsets
of the samples (the sample ranked i-th of N by the proxy is the pick of a random n-subset with
probability C(i−1, n−1) / C(N, n)), so no subset noise enters; its KL to the SFT policy is
log n − (n − 1)/n. Intervals are 95% bootstrap intervals over prompts (the seeds averaged
inside each resample). Win / tie / lose compare the pick's gold reward with an SFT sample's
(and with the ``noisy`` arm's pick) for the same prompt; a difference within ``tie`` gold
standard deviations is a tie.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..features.views import feature_views
from .config import DownstreamConfig
from .design import (
    design_record,
    design_text,
    flat_hh,
    gold_model,
    make_design,
    proxy_arms,
    sample_features,
    sample_prompts,
)


def bon_weights(n_samples: int, n: int) -> np.ndarray:
    """``(n_samples,)``: the chance that the sample ranked i-th (ascending, by the proxy) is the
    best of a random n-subset, C(i−1, n−1) / C(N, n)."""
    return np.array([math.comb(i, n - 1) for i in range(n_samples)], dtype=np.float64) / math.comb(n_samples, n)


def bon_kl(n: int) -> float:
    """KL of best-of-n to the sampling policy, log n − (n − 1)/n (nats)."""
    return math.log(n) - (n - 1) / n


def expected_pick(proxy: np.ndarray, gold: np.ndarray, n: int) -> np.ndarray:
    """Per-prompt weights over samples ``(prompts, samples)`` of the proxy's best of n."""
    order = np.argsort(proxy, axis=1, kind="stable")
    weights = np.zeros_like(gold, dtype=np.float64)
    np.put_along_axis(weights, order, np.broadcast_to(bon_weights(gold.shape[1], n), gold.shape), axis=1)
    return weights


def compare(gold: np.ndarray, weights: np.ndarray, other_weights: np.ndarray, band: float) -> np.ndarray:
    """Per prompt ``(prompts, 3)``: the chance the pick (``weights``) beats, ties or loses to
    the other pick (``other_weights``, e.g. uniform: an SFT sample) in gold reward."""
    difference = gold[:, :, None] - gold[:, None, :]
    joint = weights[:, :, None] * other_weights[:, None, :]
    return np.stack([(joint * (difference > band)).sum((1, 2)), (joint * (np.abs(difference) <= band)).sum((1, 2)),
                     (joint * (difference < -band)).sum((1, 2))], axis=1)



def resample_prompts(n_prompts: int, resamples: int, seed: int = 41) -> np.ndarray:
    """``(resamples, n_prompts)`` prompt indices drawn with replacement: one bootstrap resample a row."""
    return np.random.default_rng([0, seed]).integers(0, n_prompts, size=(resamples, n_prompts))


def interval(per_prompt: np.ndarray, resampled: np.ndarray) -> dict[str, float]:
    """The mean of a per-prompt value ``(prompts,)`` with its 95% bootstrap interval over
    ``resampled`` prompts (from :func:`resample_prompts`; the same rows pair two arms)."""
    means = per_prompt[resampled].mean(axis=1)
    return {"mean": float(per_prompt.mean()), "low": float(np.quantile(means, 0.025)),
            "high": float(np.quantile(means, 0.975))}


#: How tables name the values of a record.
COLUMN_NAMES = {"gold_reward": "gold reward", "gain_over_sft": "gain over SFT", "gain_over_noisy": "gain over noisy",
                "vs_sft": "win / tie / lose vs SFT"}


def by_source(values: dict[str, np.ndarray], sources: list[str] | None, resamples: int) -> dict[str, dict]:
    """Each per-prompt value ``(prompts,)`` of ``values`` (e.g. ``gold_reward``, ``gain_over_sft``)
    with its 95% bootstrap interval over the prompts of each source alone; ``{}`` with fewer
    than two sources."""
    if sources is None or len(set(sources)) < 2:
        return {}
    labels = np.asarray(sources, dtype=object)
    table = {}
    for source in sorted(set(sources)):
        index = np.flatnonzero(labels == source)
        resampled = resample_prompts(index.size, resamples, seed=47)
        table[source] = {key: interval(value[index], resampled) for key, value in values.items()}
    return table


def source_markdown(arms: list[dict[str, Any]], keys: tuple[str, ...]) -> list[str]:
    """The ``by_source`` values ``keys`` of each arm (intervals, or win / tie / lose shares) as a
    Markdown table (none without them)."""
    sources = sorted({source for arm in arms for source in arm.get("by_source", {})})
    if not sources:
        return []
    columns = [(source, key) for source in sources for key in keys]
    lines = ["", "By source of the held-out prompts (95% intervals over that source's prompts alone):", "",
             "| arm | " + " | ".join(f"{source}: {COLUMN_NAMES.get(key, key)}" for source, key in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for arm in arms:
        cells = []
        for source, key in columns:
            value = arm.get("by_source", {}).get(source, {}).get(key)
            cells.append("" if value is None else f"{value['win']:.2f} / {value['tie']:.2f} / {value['lose']:.2f}"
                         if "win" in value else f"{value['mean']:+.4f} [{value['low']:+.4f}, {value['high']:+.4f}]")
        lines.append(f"| {arm['name']} | " + " | ".join(cells) + " |")
    return lines


def best_of_n(pairs, config: DownstreamConfig = DownstreamConfig(), *, out: str | os.PathLike,
              cache_dir=None, progress: bool = True, report: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the best-of-n comparison on ``pairs`` and return its record: ``{"arms": [{"name",
    "gold_reward": {"mean", "low", "high"}, "n", "kl", "win", "tie", "lose", "vs_noisy",
    "curve", "proxy_accuracy"}, ...], ...}`` (see the module docstring); the samples go to
    ``out/samples.jsonl``."""
    bon, settings = config.bon, config.downstream
    out = Path(out)
    say = report or (lambda _: None)
    design = make_design(pairs, config)
    say(f"{len(design.valid):,} valid pairs: {design.train.size:,} train the reward models, {design.test.size:,} "
        f"clean test pairs measure them, {len(design.heldout)} of their prompts are held out for sampling")
    samples = sample_prompts(design.heldout, out / "samples.jsonl", policy=bon.policy, samples=bon.samples,
                             max_new_tokens=bon.max_new_tokens, max_prompt_tokens=bon.max_prompt_tokens,
                             generation_batch=bon.generation_batch, cache_dir=cache_dir, progress=progress,
                             temperature=bon.temperature)
    flat_prompts, flat_samples = flat_hh(design.heldout, samples)
    gold_rm = gold_model(design, config, cache_dir=cache_dir, progress=progress)
    gold_accuracy = gold_rm.accuracy
    gold = np.asarray(gold_rm.score(flat_prompts, flat_samples), dtype=np.float64).reshape(len(design.heldout), -1)
    band = settings.tie * float(gold.std())
    say(f"gold: accuracy {gold_accuracy:.3f} on the clean test pairs; tie band {band:.4f} ({settings.tie:g} gold std)")

    views = feature_views(design.valid, config.benefit.score.features, cache_dir=cache_dir, progress=progress)
    features = sample_features(design.heldout, samples, config.benefit.score.features, cache_dir=cache_dir,
                               progress=progress)
    proxies_by_seed = []
    for seed in range(config.benefit.seeds):
        arms = proxy_arms(design, views, config, seed)
        proxies_by_seed.append({name: (model.reward_of_features(features, model.groups_of(flat_prompts))
                                       .reshape(gold.shape), accuracy) for name, (model, accuracy) in arms.items()})
        say(f"seed {seed}: clean-test accuracy " + ", ".join(f"{n} {a:.3f}" for n, (_, a) in arms.items()))
    record = bon_record(gold, proxies_by_seed, gold_accuracy, band, settings.resamples, design.heldout_sources())
    record.update(design_record(config, design, gold_accuracy, band, "bon"))
    return record


def bon_record(gold: np.ndarray, proxies_by_seed: list[dict[str, tuple[np.ndarray, float]]], gold_accuracy: float,
               band: float, resamples: int = 1000, sources: list[str] | None = None) -> dict[str, Any]:
    """The ``arms`` table from the gold rewards ``(prompts, samples)`` and each seed's proxy
    rewards (and clean-test accuracy) per arm. ``gain_over_noisy``: the arm's gold reward minus
    the ``noisy`` arm's at the largest n, with a paired interval (the same prompts resampled);
    ``by_source``: both at the largest n per source of the prompts (``sources``, one a prompt)."""
    n_prompts, n_samples = gold.shape
    ns = sorted({2 ** k for k in range(int(math.log2(n_samples)) + 1)} | {n_samples})
    uniform = np.full_like(gold, 1.0 / n_samples)
    names = ["sft", *proxies_by_seed[0], "gold"]
    resampled = resample_prompts(n_prompts, resamples)

    def weights_of(name: str, arms: dict, n: int) -> np.ndarray:
        if name == "sft":
            return uniform
        return expected_pick(gold if name == "gold" else arms[name][0], gold, n)

    def pick_reward(name: str, n: int) -> np.ndarray:
        """Per prompt ``(prompts,)``: the gold reward of the arm's best of n, seeds averaged."""
        return np.mean([(weights_of(name, arms, n) * gold).sum(1) for arms in proxies_by_seed], axis=0)

    noisy_at_n = pick_reward("noisy", ns[-1])
    table = []
    for name in names:
        curve = []
        for n in ns if name != "sft" else [1]:
            curve.append({"n": n, "kl": bon_kl(n), "gold_reward": interval(pick_reward(name, n), resampled)})
        last = ns[-1] if name != "sft" else 1
        versus_sft = np.mean([compare(gold, weights_of(name, arms, last), uniform, band) for arms in proxies_by_seed],
                             axis=0)
        versus_noisy = np.mean([compare(gold, weights_of(name, arms, last), weights_of("noisy", arms, ns[-1]), band)
                                for arms in proxies_by_seed], axis=0)
        accuracy = (gold_accuracy if name == "gold" else None if name == "sft" else
                    float(np.mean([arms[name][1] for arms in proxies_by_seed])))
        table.append({"name": name, "n": last, "kl": bon_kl(last), "gold_reward": curve[-1]["gold_reward"],
                      "win": float(versus_sft[:, 0].mean()), "tie": float(versus_sft[:, 1].mean()),
                      "lose": float(versus_sft[:, 2].mean()),
                      "vs_noisy": {"win": float(versus_noisy[:, 0].mean()), "tie": float(versus_noisy[:, 1].mean()),
                                   "lose": float(versus_noisy[:, 2].mean())},
                      "gain_over_noisy": interval(pick_reward(name, last) - noisy_at_n, resampled),
                      "proxy_accuracy": accuracy, "curve": curve,
                      "by_source": by_source({"gold_reward": pick_reward(name, last),
                                              "gain_over_noisy": pick_reward(name, last) - noisy_at_n},
                                             sources, resamples)})
    return {"arms": table, "seeds": len(proxies_by_seed), "samples": n_samples, "tie_band": band,
            "gold_accuracy": gold_accuracy, "note": "sft is one SFT sample (n = 1); gold is the gold model as its own "
                                                    "proxy, the upper bound"}


def bon_markdown(record: dict[str, Any]) -> str:
    """The ``arms`` table and the gold-reward-against-KL curve as Markdown."""
    bon = record["config"]["bon"]
    lines = [f"Best-of-n: {record['heldout_prompts']} held-out prompts × {record['samples']} samples of "
             f"`{bon['policy']}` (T {bon['temperature']:g}, {bon['max_new_tokens']} new tokens), {record['seeds']} "
             f"seed(s); {design_text(record)}. Gold reward of the pick with its 95% bootstrap interval over "
             "prompts.", "",
             "| arm | accuracy | n | KL | gold reward | gain over noisy (paired 95%) | win / tie / lose vs SFT | "
             "win / tie / lose vs noisy |", "|---|---:|---:|---:|---|---|---|---|"]
    for arm in record["arms"]:
        reward, noisy, gain = arm["gold_reward"], arm["vs_noisy"], arm["gain_over_noisy"]
        accuracy = "" if arm["proxy_accuracy"] is None else f"{arm['proxy_accuracy']:.3f}"
        lines.append(f"| {arm['name']} | {accuracy} | {arm['n']} | {arm['kl']:.2f} | {reward['mean']:.4f} "
                     f"[{reward['low']:.4f}, {reward['high']:.4f}] | {gain['mean']:+.4f} [{gain['low']:+.4f}, "
                     f"{gain['high']:+.4f}] | {arm['win']:.2f} / {arm['tie']:.2f} / {arm['lose']:.2f} | "
                     f"{noisy['win']:.2f} / {noisy['tie']:.2f} / {noisy['lose']:.2f} |")
    curves = [arm for arm in record["arms"] if arm["name"] != "sft"]
    ns = [point["n"] for point in curves[0]["curve"]]
    lines += ["", "Gold reward against n (KL = log n − (n − 1)/n):", "",
              "| arm | " + " | ".join(f"n {n} (KL {bon_kl(n):.2f})" for n in ns) + " |",
              "|---|" + "---:|" * len(ns)]
    lines += [f"| {arm['name']} | " + " | ".join(f"{p['gold_reward']['mean']:.4f}" for p in arm["curve"]) + " |"
              for arm in curves]
    lines += source_markdown(record["arms"], ("gold_reward", "gain_over_noisy"))
    return "\n".join(lines) + "\n"


def write_bon(record: dict[str, Any], folder: str | os.PathLike) -> list[Path]:
    """``bon.json``, ``bon.md`` and ``plots/bon.png`` into ``folder``."""
    from .. import plots
    from ..files import write_results

    folder = Path(folder)
    written = write_results(folder / "bon", record, bon_markdown(record))
    figure = plots.gold_against_kl(record, xlabel="KL to the SFT policy, log n − (n − 1)/n (nats)",
                                   title="best-of-n: each proxy picks, the gold model scores")
    plots.save(figure, folder / "plots" / "bon.png")
    return written + [folder / "plots" / "bon.png"]


__all__ = ["best_of_n", "bon_kl", "bon_markdown", "bon_record", "bon_weights", "by_source", "compare", "expected_pick",
           "interval", "resample_prompts", "source_markdown", "write_bon"]
