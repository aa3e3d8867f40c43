"""PPO against each proxy, judged by the gold model (``rmclean compare --stage ppo CONFIG``):
the paper's figures 9 and 10 on a synthetic gold.

Every arm's proxy (one seed, ``ppo.seed``) trains a policy from the same SFT policy with the
same :class:`rmclean.train.ppo.PPOConfig` on the training pairs' prompts. Each final policy, and
the SFT policy itself, answers the held-out prompts ``eval_samples`` times with the paper's
evaluation settings (T 0.8, top-p 0.9, repetition penalty 1.1), and the gold model scores the
answers: gold reward with a 95% bootstrap interval over prompts, and win / tie / lose against
the SFT policy's answers and against the ``noisy`` arm's (a gold difference within ``tie`` gold
standard deviations of the SFT answers is a tie). KL to the reference, perplexity, response
length, EOS and repetition rates are the last 10 updates' means of each run's ``metrics.jsonl``.
Every ``eval_every`` updates on the way, each policy answers the same prompts (sampled inside
the training loop) for its curve of gold reward against KL, and the arms are compared at a
matched KL (the largest every run reached), as Gao et al. 2022 compare reward models. An arm
named ``gold`` (opt-in: ``ppo.arms``) trains against the gold model itself: the most gold reward
the PPO budget can climb, what the proxies' policies are measured against.

Each arm's run lives in ``out/ppo/<arm>-<digest>/``, named by everything it depends on (the
proxy's weights, the PPO settings, the prompts), its answers after update ``u`` in
``eval-<u>.jsonl``: a changed config trains only the arms it changes, more ``updates``
continue each run from its last checkpoint, a killed run resumes, and a rerun with nothing
changed trains and samples nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..check import judge_answers
from ..configs import to_record
from ..features.views import feature_views
from ..judge import JudgeConfig, JudgeError, resolve_api_key
from ..train.ppo import RESUMABLE, describe_reward_model, train_ppo, write_ppo
from ..train.rollout import EVAL_SAMPLING
from .bon import by_source, compare, interval, resample_prompts, source_markdown
from .config import DownstreamConfig
from .design import (
    design_record,
    design_text,
    flat_hh,
    gold_model,
    make_design,
    proxy_arms,
    sample_prompts,
)

#: Metrics of a PPO run averaged over its last updates, as ``metrics.jsonl`` names them.
RUN_METRICS = ("reward_mean", "kl_k1", "kl_k3", "perplexity", "reference_perplexity", "response_length", "eos_rate",
               "repetition_rate")
#: Curves of each run kept for the figure-9 plot.
CURVES = ("reward_mean", "kl_k1", "perplexity", "response_length")
LAST_UPDATES = 10


def policy_stage(pairs, config: DownstreamConfig = DownstreamConfig(), *, out: str | os.PathLike, cache_dir=None,
                 progress: bool = True, report: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the PPO comparison on ``pairs``; returns its record ``{"arms": [{"name",
    "gold_reward": {"mean", "low", "high"}, "kl", "win", "tie", "lose", "vs_noisy", ...}]}``
    with ``sft`` first. Runs and samples go to ``out``."""
    stage, settings = config.ppo, config.downstream
    ppo_config = stage.ppo
    out = Path(out)
    say = report or (lambda _: None)
    if stage.judge is not None:  # a judge that cannot be asked fails before any model work
        resolve_api_key(stage.judge)
        if stage.judge.max_cost is not None and stage.judge.unit_price() is None:
            raise JudgeError(f"ppo.judge.max_cost needs the price of {stage.judge.model_name!r}: set ppo.judge.price")
    design = make_design(pairs, config)
    train_prompts = design.train_prompts()
    say(f"{len(design.valid):,} valid pairs: {design.train.size:,} train the reward models ({len(train_prompts):,} "
        f"distinct prompts for PPO), {len(design.heldout)} held-out prompts for the gold model")
    gold_rm = gold_model(design, config, cache_dir=cache_dir, progress=progress)
    views = feature_views(design.valid, config.benefit.score.features, cache_dir=cache_dir, progress=progress)
    arms = {**proxy_arms(design, views, config, ppo_config.seed), "gold": (gold_rm.model, gold_rm.accuracy)}
    names = list(stage.arms or config.arms)

    def answers(policy: str, path: Path, **reading: Any) -> list[list[str]] | None:
        return sample_prompts(design.heldout, path, policy=policy, samples=stage.eval_samples,
                              max_new_tokens=ppo_config.max_new_tokens, max_prompt_tokens=ppo_config.max_prompt_tokens,
                              generation_batch=32, cache_dir=cache_dir, progress=progress, **reading, **EVAL_SAMPLING)

    def run_answers(run: Path, update: int, **reading: Any) -> list[list[str]] | None:
        """A run's answers after ``update``: from its written policy (the last update), the policy
        in memory on the way (``loaded``), or what the file holds (``read_only``)."""
        return answers(str(run / "policy"), run / f"eval-{update:04d}.jsonl", name=f"{run.name}@update-{update}",
                       **reading)

    def gold_of(samples: list[list[str]]) -> np.ndarray:
        return np.asarray(gold_rm.score(*flat_hh(design.heldout, samples)), dtype=np.float64).reshape(
            len(design.heldout), -1)

    sft_answers = answers(ppo_config.policy, out / "sft" / "eval.jsonl")
    gold = {"sft": gold_of(sft_answers)}
    runs: dict[str, dict[str, Any]] = {}
    evaluations: dict[str, dict[int, np.ndarray]] = {}
    on_the_way = [update for update in stage.evaluation_updates() if update < ppo_config.updates]
    for name in names:
        model, accuracy = arms[name]
        settings_record = {k: v for k, v in to_record(ppo_config).items() if k not in RESUMABLE}  # more updates resume
        run = out / "ppo" / f"{_slug(name)}-{_digest(describe_reward_model(model), settings_record, train_prompts)}"

        def evaluate(update: int, tokenizer, policy, run: Path = run) -> None:  # the policy on the way
            if update in on_the_way:
                run_answers(run, update, loaded=(tokenizer, policy))

        if not _finished(run, ppo_config.updates):
            say(f"{name}: PPO for {ppo_config.updates} updates in {run}")
            result = train_ppo(train_prompts, model, ppo_config, out=run, cache_dir=cache_dir, progress=progress,
                               on_update=evaluate)
            write_ppo(result, run)
            del result
        arm_answers = run_answers(run, ppo_config.updates)
        gold[name] = gold_of(arm_answers)
        evaluations[name] = {}
        for update in on_the_way:
            earlier = run_answers(run, update, read_only=True)
            if earlier is None:
                say(f"{name}: no gold evaluation at update {update}: the run had passed it when it was asked")
            else:
                evaluations[name][update] = gold_of(earlier)
        evaluations[name][ppo_config.updates] = gold[name]
        runs[name] = {"run": str(run), "proxy_accuracy": accuracy, **_run_metrics(run)}
        if stage.judge is not None:
            runs[name]["judge"] = judged(design.heldout, arm_answers, sft_answers, stage.judge, out / "judge.sqlite",
                                         progress)
        say(f"{name}: gold reward {gold[name].mean():.4f} (SFT {gold['sft'].mean():.4f}), KL k1 {runs[name]['kl_k1']:.3f}")
    band = settings.tie * float(gold["sft"].std())
    record = ppo_record(gold, runs, band, settings.resamples, evaluations, design.heldout_sources())
    record.update({**design_record(config, design, gold_rm.accuracy, band, "ppo"), "train_prompts": len(train_prompts)})
    return record


def ppo_record(gold: dict[str, np.ndarray], runs: dict[str, dict[str, Any]], band: float,
               resamples: int = 1000, evaluations: dict[str, dict[int, np.ndarray]] | None = None,
               sources: list[str] | None = None) -> dict[str, Any]:
    """The ``arms`` table from each arm's final gold rewards ``(prompts, eval samples)`` (``sft``
    among them) and its run's metrics; ``gain_over_sft`` / ``gain_over_noisy``: the gold reward
    difference with a paired interval (the same prompts resampled). ``evaluations``: each run's
    gold rewards by update, for its ``curve`` (gold reward against KL, from SFT at KL 0) and the
    comparison at a matched KL (``matched_kl``: the largest KL every run reached; each curve
    interpolated linearly there, prompt by prompt). ``by_source``: the final gold reward and gains
    per source of the prompts (``sources``, one a prompt)."""
    n_prompts = gold["sft"].shape[0]
    resampled = resample_prompts(n_prompts, resamples, seed=43)

    def per_prompt_versus(name: str, other: str) -> np.ndarray:
        """``(prompts, 3)``: win / tie / lose shares of the arm's answers against the other's."""
        mine, theirs = gold[name], gold[other]
        joined = np.hstack([mine, theirs])
        weights = np.hstack([np.full_like(mine, 1 / mine.shape[1]), np.zeros_like(theirs)])
        other_weights = np.hstack([np.zeros_like(mine), np.full_like(theirs, 1 / theirs.shape[1])])
        return compare(joined, weights, other_weights, band)

    def shares(per_prompt: np.ndarray) -> dict[str, float]:
        win, tie, lose = per_prompt.mean(axis=0)
        return {"win": float(win), "tie": float(tie), "lose": float(lose)}

    sft = gold["sft"].mean(axis=1)
    curves = {name: [(0.0, sft)] + [(kl_at(runs[name]["curves"], update), rewards.mean(axis=1))
                                    for update, rewards in sorted(points.items())]
              for name, points in (evaluations or {}).items()}
    matched_kl = min((max(kl for kl, _ in curve) for curve in curves.values()), default=0.0)
    matched = {name: at_kl(curve, matched_kl) for name, curve in curves.items()} if matched_kl > 0 else {}
    labels = None if sources is None else np.asarray(sources, dtype=object)
    table = []
    for name, rewards in gold.items():
        run = runs.get(name, {})
        against_sft = per_prompt_versus(name, "sft")
        per_prompt = {"gold_reward": rewards.mean(axis=1),
                      **{f"gain_over_{other}": rewards.mean(axis=1) - gold[other].mean(axis=1)
                         for other in ("sft", "noisy") if other in gold}}
        row = {"name": name, **{key: interval(value, resampled) for key, value in per_prompt.items()},
               "kl": run.get("kl_k1", 0.0), **shares(against_sft),
               "vs_noisy": shares(per_prompt_versus(name, "noisy")) if "noisy" in gold else None,
               **{key: value for key, value in run.items() if key != "kl_k1"}}
        row["by_source"] = by_source(per_prompt, sources, resamples)
        for source, values in row["by_source"].items():
            values["vs_sft"] = shares(against_sft[labels == source])
        if name in curves:
            row["curve"] = [{"update": update, "kl": kl, "gold_reward": interval(values, resampled),
                             "gain_over_sft": interval(values - sft, resampled)}
                            for update, (kl, values) in zip([0, *sorted(evaluations[name])], curves[name])]
        if name in matched:
            row["at_matched_kl"] = {"gold_reward": interval(matched[name], resampled),
                                    "gain_over_sft": interval(matched[name] - sft, resampled)}
            if "noisy" in matched:
                row["at_matched_kl"]["gain_over_noisy"] = interval(matched[name] - matched["noisy"], resampled)
        table.append(row)
    return {"arms": table, "tie_band": band, "matched_kl": matched_kl if matched else None,
            "note": "sft is the SFT policy itself; kl is k1 per response over the last updates of each run (at each "
                    "point of a curve: the updates up to it)"}


def kl_at(curves: dict[str, list], update: int) -> float:
    """A run's KL to the reference at ``update``: the mean k1 of the :data:`LAST_UPDATES` updates
    up to it (the window the table's ``kl`` uses at the end)."""
    window = [kl for at, kl in zip(curves["update"], curves["kl_k1"]) if update - LAST_UPDATES < at <= update]
    return float(np.mean(window))


def at_kl(curve: list[tuple[float, np.ndarray]], kl: float) -> np.ndarray:
    """Per-prompt gold rewards where a run's curve ``[(kl, per-prompt rewards), ...]`` (in update
    order, from SFT at 0) first reaches ``kl``, interpolated linearly between its two points."""
    for (kl_before, before), (kl_after, after) in itertools.pairwise(curve):
        if kl_after >= kl > kl_before:
            share = (kl - kl_before) / (kl_after - kl_before)
            return (1 - share) * before + share * after
    raise ValueError(f"the curve never reaches KL {kl}")


def judged(prompts: list[str], answers: list[list[str]], sft_answers: list[list[str]], judge: JudgeConfig,
           cache: Path, progress: bool) -> dict[str, float]:
    """The judge's win / tie / lose shares of ``answers`` against the SFT policy's (answer j
    against answer j of the same prompt, both orders); ``undecided``: invalid, failed or left
    by the budget."""
    flat = [(p, a, b) for p, mine, theirs in zip(prompts, answers, sft_answers) for a, b in zip(mine, theirs)]
    verdicts, stats = judge_answers([p for p, _, _ in flat], [a for _, a, _ in flat], [b for _, _, b in flat], judge,
                                    cache=cache, progress=progress)
    shares = {key: float(np.mean([v == verdict for v in verdicts]))
              for key, verdict in (("win", "chosen"), ("tie", "tie"), ("lose", "rejected"))}
    return {**shares, "undecided": 1.0 - sum(shares.values()), "requests": stats.requests}


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9+]+", "-", name.lower()).strip("-")


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _finished(run: Path, updates: int) -> bool:
    """Whether ``run`` holds a written policy after all ``updates``."""
    summary = run / "summary.json"
    return ((run / "policy" / "config.json").is_file() and summary.is_file()
            and json.loads(summary.read_text()).get("updates") == updates)


def _run_metrics(run: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = rows[-LAST_UPDATES:]
    return {**{key: float(np.mean([row[key] for row in last])) for key in RUN_METRICS},
            "update_seconds": float(np.median([row["seconds"] for row in rows])),  # evaluations on the way excluded
            "curves": {key: [row[key] for row in rows] for key in ("update", *CURVES)}}


def ppo_markdown(record: dict[str, Any]) -> str:
    """The ``arms`` table of the PPO stage as Markdown."""
    ppo = record["config"]["ppo"]
    lines = [f"PPO per arm from `{ppo['policy']}`: {ppo['updates']} updates × {ppo['batch_size']} episodes × "
             f"{ppo['max_new_tokens']} new tokens, β {ppo['beta']:g}, seed {ppo['seed']}, on {record['train_prompts']:,} "
             f"training prompts; {design_text(record)}. Each policy answers {record['heldout_prompts']} held-out "
             f"prompts {ppo['eval_samples']} time(s) (T 0.8, top-p 0.9, repetition penalty 1.1).", "",
             "| arm | proxy accuracy | gold reward [95%] | gain over noisy (paired 95%) | win / tie / lose vs SFT | "
             "vs noisy | KL k1 | perplexity | length | EOS rate |", "|---|---:|---|---|---|---|---:|---:|---:|---:|"]
    for arm in record["arms"]:
        reward, noisy = arm["gold_reward"], arm["vs_noisy"]
        accuracy = f"{arm['proxy_accuracy']:.3f}" if "proxy_accuracy" in arm else ""
        versus_noisy = "" if noisy is None or arm["name"] == "noisy" else \
            f"{noisy['win']:.2f} / {noisy['tie']:.2f} / {noisy['lose']:.2f}"
        run = (f"{arm['kl']:.3f} | {arm['perplexity']:.2f} | {arm['response_length']:.1f} | {arm['eos_rate']:.2f}"
               if "perplexity" in arm else "0 | | |")
        gain = arm.get("gain_over_noisy")
        gain = "" if gain is None else f"{gain['mean']:+.4f} [{gain['low']:+.4f}, {gain['high']:+.4f}]"
        lines.append(f"| {arm['name']} | {accuracy} | {reward['mean']:.4f} [{reward['low']:.4f}, {reward['high']:.4f}] | "
                     f"{gain} | {arm['win']:.2f} / {arm['tie']:.2f} / {arm['lose']:.2f} | {versus_noisy} | {run} |")
    lines += source_markdown(record["arms"], ("gain_over_sft", "gain_over_noisy", "vs_sft"))
    lines += _curve_markdown(record)
    judged_arms = [arm for arm in record["arms"] if "judge" in arm]
    if judged_arms:
        lines += ["", "The LLM judge against the SFT policy's answers (both orders; undecided: invalid, failed or "
                  "left by the budget):", "", "| arm | win | tie | lose | undecided |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {arm['name']} | {arm['judge']['win']:.2f} | {arm['judge']['tie']:.2f} | {arm['judge']['lose']:.2f} "
                  f"| {arm['judge']['undecided']:.2f} |" for arm in judged_arms]
    return "\n".join(lines) + "\n"


def _curve_markdown(record: dict[str, Any]) -> list[str]:
    """The gold reward at each evaluation on the way, and every arm at the matched KL."""
    def span(value: dict[str, float]) -> str:
        return f"{value['mean']:+.4f} [{value['low']:+.4f}, {value['high']:+.4f}]"

    lines = []
    curved = [arm for arm in record["arms"] if len(arm.get("curve", ())) > 2]
    if curved:
        lines += ["", "Gold reward on the way (KL k1: the mean of the 10 updates up to each evaluation):", "",
                  "| arm | update | KL k1 | gold reward [95%] | gain over SFT [95%] |", "|---|---:|---:|---|---|"]
        lines += [f"| {arm['name']} | {point['update']} | {point['kl']:.3f} | {span(point['gold_reward'])} | "
                  f"{span(point['gain_over_sft'])} |" for arm in curved for point in arm["curve"][1:]]
    if record.get("matched_kl") is not None:
        lines += ["", f"At a matched KL of {record['matched_kl']:.3f} (the largest every run reached; each run's gold "
                  "reward interpolated linearly between its evaluations, from SFT at KL 0, prompt by prompt):", "",
                  "| arm | gold reward [95%] | gain over SFT [95%] | gain over noisy (paired 95%) |", "|---|---|---|---|"]
        for arm in record["arms"]:
            if "at_matched_kl" in arm:
                at = arm["at_matched_kl"]
                noisy = span(at["gain_over_noisy"]) if "gain_over_noisy" in at and arm["name"] != "noisy" else ""
                lines.append(f"| {arm['name']} | {span(at['gold_reward'])} | {span(at['gain_over_sft'])} | {noisy} |")
    return lines


def write_policy_stage(record: dict[str, Any], folder: str | os.PathLike) -> list[Path]:
    """``ppo.json``, ``ppo.md``, ``plots/ppo_curves.png`` (figure 9),
    ``plots/ppo_win_tie_lose.png`` (figure 10) and ``plots/ppo_gold_kl.png`` (gold reward
    against KL at each evaluation) into ``folder``."""
    from .. import plots
    from ..files import write_results

    folder = Path(folder)
    written = write_results(folder / "ppo", record, ppo_markdown(record))
    figures = {"ppo_curves.png": plots.downstream_ppo_curves(record), "ppo_win_tie_lose.png": plots.win_tie_lose(record),
               "ppo_gold_kl.png": plots.gold_against_kl(record, xlabel="KL to the reference, k1 (nats)",
                                                        title="PPO: each proxy trains, the gold model scores",
                                                        value="gain_over_sft")}
    for name, figure in figures.items():
        plots.save(figure, folder / "plots" / name)
    return written + [folder / "plots" / name for name in figures]


__all__ = ["at_kl", "kl_at", "policy_stage", "ppo_markdown", "ppo_record", "write_policy_stage"]
