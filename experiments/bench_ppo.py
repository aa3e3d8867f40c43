"""PPO with SmolLM2 against a reward model trained by `rmclean train-rm` on hh-rlhf: what one update
costs on this machine, and whether the reward rises while the KL stays bounded.

1. **cost** (skip with ``--no-cost``): ``--cost-updates`` updates of ``--batch`` episodes ×
   ``--max-new-tokens`` tokens, with each critic (the first update is the warm-up and is left
   out): seconds per update split into generation, reward, scoring (the policy's pass, kept for
   training, and the reference's), training (backward passes and steps), and the peak RSS;
2. **learning**: ``--updates`` updates on the prompts of ``--subset`` (held-out prompts sampled
   with the paper's settings every 10 updates), resumable: rerun the same command after a kill.

    rmclean train-rm hh-rlhf --subset helpful-base --views transcript --out rm-helpful
    RMCLEAN_DATA_DIR=../shared/data python experiments/bench_ppo.py --reward-model rm-helpful \
        --lam 0.95 --missing-eos-penalty 1                # the README's cost runs (earlier defaults)
    RMCLEAN_DATA_DIR=../shared/data python experiments/bench_ppo.py --reward-model rm-helpful --no-cost \
        --lam 1 --missing-eos-penalty 0 --seed 1 --name bench_ppo_no_eos_penalty_lam1_seed1

``experiments/ppo_final_eval.py`` then compares finished runs with the SFT policy on the same prompts.

Writes ``experiments/results/<name>.{json,md}`` and ``<name>_curves.png`` (``--name``, default
``bench_ppo``).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from machine import machine  # experiments/machine.py

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
STAGES = ("generate_s", "reward_s", "score_s", "train_s", "eval_s", "seconds")


def update_seconds(row: dict) -> float:
    """An update's seconds without its held-out evaluation (every 10 updates)."""
    return row["seconds"] - row.get("eval_s", 0.0)


def run(arguments: dict) -> dict:
    """One PPO run in this process (called in a child, so its peak memory is its own)."""
    import rmclean
    from rmclean.members.reward_models import load_reward_model
    from rmclean.train.ppo import PPOConfig, train_ppo, write_ppo

    pairs, _ = rmclean.split_invalid(rmclean.load_pairs("hh-rlhf", subset=arguments["subset"]))
    config = PPOConfig(**arguments["config"])
    started = time.perf_counter()
    result = train_ppo(list(pairs["prompt"]), load_reward_model(arguments["reward_model"]), config,
                       out=arguments["out"], progress=arguments["progress"])
    write_ppo(result, arguments["out"])
    return {"metrics": result.metrics, "summary": result.summary, "wall_s": time.perf_counter() - started,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child(arguments: dict) -> dict:
    """:func:`run` in a fresh Python process."""
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'experiments')!r});"
            "from bench_ppo import run; print('RESULT' + json.dumps(run(json.loads(sys.argv[1]))))")
    process = subprocess.run([sys.executable, "-c", code, json.dumps(arguments)], stdout=subprocess.PIPE, text=True)
    if process.returncode != 0:
        raise SystemExit(f"the PPO run failed ({process.returncode})")
    return json.loads(next(line[6:] for line in process.stdout.splitlines() if line.startswith("RESULT")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reward-model", required=True)
    parser.add_argument("--subset", default="helpful-base")
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--cost-updates", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--policy-lr", type=float, default=None, help="default: PPOConfig's")
    parser.add_argument("--beta", type=float, default=None, help="default: PPOConfig's")
    parser.add_argument("--missing-eos-penalty", type=float, default=None, help="default: PPOConfig's")
    parser.add_argument("--lam", type=float, default=None, help="GAE lambda (default: PPOConfig's)")
    parser.add_argument("--seed", type=int, default=None, help="prompt order, sampling, initialisation (default: PPOConfig's)")
    parser.add_argument("--no-cost", action="store_true", help="skip the cost runs (learning only)")
    parser.add_argument("--name", default="bench_ppo", help="stem of the result files")
    parser.add_argument("--work", type=Path, default=Path("ppo-bench"), help="run folders (the learning run resumes)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from rmclean.files import write_results
    from rmclean.train.ppo import PPOConfig

    settings = {"batch_size": args.batch, "max_new_tokens": args.max_new_tokens, "first_turn": True,
                **({"policy_lr": args.policy_lr, "critic_lr": 3 * args.policy_lr} if args.policy_lr else {}),
                **({"beta": args.beta} if args.beta is not None else {}),
                **({"missing_eos_penalty": args.missing_eos_penalty} if args.missing_eos_penalty is not None else {}),
                **({"lam": args.lam} if args.lam is not None else {}),
                **({"seed": args.seed} if args.seed is not None else {})}
    base = {"subset": args.subset, "reward_model": str(args.reward_model), "progress": True}
    costs = {}
    for critic in () if args.no_cost else ("head", "copy"):  # the default critic, and MOSS-RLHF's trunk copy
        shutil.rmtree(args.work / f"cost-{critic}", ignore_errors=True)
        cost = child({**base, "out": str(args.work / f"cost-{critic}"),
                      "config": {**settings, "critic": critic, "updates": args.cost_updates, "critic_warmup": 0,
                                 "sample_every": 1000}})
        timed = cost["metrics"][1:]
        breakdown = {stage: float(np.median([row.get(stage, 0.0) for row in timed])) for stage in STAGES}
        breakdown["seconds_without_eval"] = float(np.median([update_seconds(row) for row in timed]))
        costs[critic] = {"updates_timed": len(timed), "median_seconds": breakdown, "peak_rss_mb": cost["peak_rss_mb"]}
    learning_folder = args.work / f"learning-{args.name}"
    learning = child({**base, "out": str(learning_folder),
                      "config": {**settings, "updates": args.updates, "sample_every": 10}})
    metrics = learning["metrics"]
    # the run's peak memory is the largest over the processes that trained part of it
    peak_file = learning_folder / "peak_rss_mb.json"
    peaks = json.loads(peak_file.read_text()) if peak_file.exists() else {}
    if learning["summary"]["resumed_from_update"] < args.updates:
        peaks[str(learning["summary"]["resumed_from_update"])] = learning["peak_rss_mb"]
        peak_file.write_text(json.dumps(peaks))
    learning_peak = max(peaks.values()) if "0" in peaks else None  # known only if every process recorded it
    # per-update cost over the whole run: many more updates than the cost runs, same machine state
    seconds_each = np.array([update_seconds(row) for row in metrics[1:]])
    window = max(1, min(10, len(metrics) // 5))

    def mean(key: str, rows) -> float:
        values = [row[key] for row in rows if row.get(key) is not None]
        return float(np.mean(values)) if values else float("nan")

    evaluated = [(row["update"], row["eval_reward_mean"]) for row in metrics if "eval_reward_mean" in row]
    report = {
        "machine": machine(), "settings": {**settings, "subset": args.subset, "reward_model": str(args.reward_model)},
        "cost": costs,
        "learning": {"updates": len(metrics), "peak_rss_mb": learning_peak,
                     "update_seconds_quartiles": [float(q) for q in np.percentile(seconds_each, [25, 50, 75])],
                     "stage_seconds_median": {stage: float(np.median([row.get(stage, 0.0) for row in metrics[1:]]))
                                              for stage in STAGES[:4]},
                     "reward_first": mean("reward_mean", metrics[:window]), "reward_last": mean("reward_mean", metrics[-window:]),
                     "kl_k1_last": mean("kl_k1", metrics[-window:]), "kl_k3_last": mean("kl_k3", metrics[-window:]),
                     "kl_k3_max": max(row["kl_k3"] for row in metrics),
                     "perplexity_first": metrics[0]["perplexity"], "perplexity_last": metrics[-1]["perplexity"],
                     "reference_perplexity": metrics[0]["reference_perplexity"],
                     "eos_rate_first": mean("eos_rate", metrics[:window]), "eos_rate_last": mean("eos_rate", metrics[-window:]),
                     "length_first": mean("response_length", metrics[:window]),
                     "length_last": mean("response_length", metrics[-window:]),
                     "eval_reward_before": learning["summary"]["initial_eval_reward_mean"], "eval_rewards": evaluated,
                     "seconds_per_update": mean("seconds", metrics)},
        "window": window,
    }
    updates = np.arange(1, len(metrics) + 1)
    rewards = np.array([row["reward_mean"] for row in metrics])
    slope, intercept = np.polyfit(updates, rewards, 1)
    residual = rewards - (slope * updates + intercept)
    slope_se = float(np.sqrt(residual.var(ddof=2) / ((updates - updates.mean()) ** 2).sum()))
    report["learning"].update({"reward_slope_per_100": float(slope * 100), "reward_slope_95": 1.96 * slope_se * 100,
                               "score_first": mean("score_mean", metrics[:window]),
                               "score_last": mean("score_mean", metrics[-window:])})
    learned = report["learning"]
    defaults = {**asdict(PPOConfig()), **settings}
    lines = [f"PPO with SmolLM2-135M-Instruct against `{args.reward_model}` on hh-rlhf {args.subset} prompts (first turn), "
             f"{args.batch} episodes × {args.max_new_tokens} new tokens per update, policy lr {defaults['policy_lr']:g}, "
             f"β {defaults['beta']:g}, missing-EOS penalty {defaults['missing_eos_penalty']:g}, GAE λ {defaults['lam']:g}, critic "
             f"{defaults['critic']}, seed {defaults['seed']}; machine: {report['machine']}.", ""]
    if costs:
        lines += [f"**One update** (median of {args.cost_updates - 1} after a warm-up update, critic and policy both "
                  "trained), seconds, with the default critic (a value head on the policy's hidden states) and with "
                  "MOSS-RLHF's (its own copy of the policy's trunk):", "",
                  "| stage | " + " | ".join(f"critic: {c}" for c in costs) + " |", "|---|" + "---:|" * len(costs)]
        lines += [f"| {stage.removesuffix('_s')} | " + " | ".join(f"{costs[c]['median_seconds'][stage]:.1f}" for c in costs)
                  + " |" for stage in STAGES[:-2]]
        lines += ["| **total per update (the held-out perplexity pass and bookkeeping included)** | "
                  + " | ".join(f"**{costs[c]['median_seconds']['seconds_without_eval']:.1f}**" for c in costs) + " |",
                  "| peak RSS (MB) | " + " | ".join(f"{costs[c]['peak_rss_mb']:,.0f}" for c in costs) + " |", ""]
    lines += [
        f"**{learned['updates']} updates** (window of {window} updates at each end):", "",
        "| measure | start | end |", "|---|---:|---:|",
        f"| reward (raw, training episodes) | {learned['reward_first']:.3f} | {learned['reward_last']:.3f} |",
        f"| score PPO maximises (EOS penalty, scaled, clipped) | {learned['score_first']:.3f} | {learned['score_last']:.3f} |",
        f"| reward of held-out samples (T 0.8, top-p 0.9) | {learned['eval_reward_before']:.3f} | "
        f"{evaluated[-1][1] if evaluated else float('nan'):.3f} |",
        f"| KL to the reference, k1 / k3 per response | 0 / 0 | {learned['kl_k1_last']:.3f} / {learned['kl_k3_last']:.3f} |",
        f"| held-out perplexity (reference {learned['reference_perplexity']:.2f}) | {learned['perplexity_first']:.2f} | "
        f"{learned['perplexity_last']:.2f} |",
        f"| response length (tokens) | {learned['length_first']:.1f} | {learned['length_last']:.1f} |",
        f"| EOS rate | {learned['eos_rate_first']:.2f} | {learned['eos_rate_last']:.2f} |", "",
        f"Trend of the training reward over the run: {learned['reward_slope_per_100']:+.3f} per 100 updates "
        f"(± {learned['reward_slope_95']:.3f}, 95%; the batch's reward std is about "
        f"{np.mean([row['reward_std'] for row in metrics]):.2f}).",
        "Held-out sample reward every 10 updates: " + ", ".join(f"{u}: {r:.3f}" for u, r in evaluated), "",
        f"Largest k3 over the run: {learned['kl_k3_max']:.3f}; " + (
            f"peak RSS {learned['peak_rss_mb']:,.0f} MB." if learned["peak_rss_mb"] else
            "peak RSS not known (the run's first part was trained before this script recorded it)."),
        "",
        "Seconds per update over the run's updates after the first (the every-10-updates evaluation left out): "
        "median {1:.1f}, quartiles {0:.1f} / {2:.1f}; stage medians: ".format(*learned["update_seconds_quartiles"])
        + ", ".join(f"{stage.removesuffix('_s')} {seconds:.1f}" for stage, seconds in learned["stage_seconds_median"].items())
        + ".", ""]
    markdown = "\n".join(lines)
    write_results(RESULTS / args.name, report, markdown)
    shutil.copy(args.work / f"learning-{args.name}" / "plots" / "curves.png", RESULTS / f"{args.name}_curves.png")
    print(markdown)


if __name__ == "__main__":
    main()
