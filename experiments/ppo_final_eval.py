"""Did PPO raise the reward? The training curve compares the first updates' prompts with the
last updates' (other prompts, so prompt difficulty moves it); this compares finished PPO runs with
the policy they started from **on the same prompts**: ``--prompts`` hh prompts that none of the
runs trained on, each answered ``--samples`` times by the SFT policy and by each run's final
policy with the paper's evaluation settings (T 0.8, top-p 0.9, repetition penalty 1.1; each prompt
batch from the same seed for every policy), scored by the reward model. Reported per run: the
paired reward difference with a 95% bootstrap interval over prompts, the share of prompts where
the run's answers score higher, and the answers' length.

    RMCLEAN_DATA_DIR=../shared/data python experiments/bench_ppo.py --reward-model rm-helpful --no-cost ...
    RMCLEAN_DATA_DIR=../shared/data python experiments/ppo_final_eval.py --reward-model rm-helpful \
        ppo-bench/learning-bench_ppo ppo-bench/learning-bench_ppo_no_eos_penalty_lam1

Samples are kept in ``--work`` (resumable); writes ``experiments/results/<name>.{json,md}``
(``--name``, default ``ppo_final_eval``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from machine import machine  # experiments/machine.py

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"


def trained_prompts(prompts: list[str], summary: dict) -> set[str]:
    """The prompts a finished run (its ``summary.json``) drew in its training batches."""
    from rmclean.configs import from_record
    from rmclean.train.ppo import PPOConfig, batch_indices, split_prompts

    config = from_record(PPOConfig, summary["config"])
    train, _ = split_prompts(prompts, config)
    return {train[index] for update in range(config.updates)
            for index in batch_indices(update, len(train), config)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished rmclean ppo run folders (summary.json, policy/)")
    parser.add_argument("--reward-model", required=True, help="the train-rm folder the runs were trained against")
    parser.add_argument("--subset", default="helpful-base")
    parser.add_argument("--prompts", type=int, default=128, help="prompts none of the runs trained on")
    parser.add_argument("--samples", type=int, default=2, help="answers per prompt and policy")
    parser.add_argument("--seed", type=int, default=0, help="which unseen prompts")
    parser.add_argument("--work", type=Path, default=Path("ppo-final-eval"), help="samples (resumable)")
    parser.add_argument("--name", default="ppo_final_eval", help="stem of the result files")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import rmclean
    from rmclean.downstream.bon import interval, resample_prompts
    from rmclean.downstream.design import sample_prompts
    from rmclean.files import write_results
    from rmclean.members.reward_models import as_scorer, load_reward_model
    from rmclean.train.ppo import PPOConfig, rewards_of, split_prompts
    from rmclean.train.rollout import EVAL_SAMPLING

    pairs, _ = rmclean.split_invalid(rmclean.load_pairs("hh-rlhf", subset=args.subset))
    summaries = {run: json.loads((run / "summary.json").read_text()) for run in args.runs}
    settings = {(s["config"]["first_turn"], s["config"]["max_new_tokens"], s["config"]["max_prompt_tokens"],
                 s["config"]["policy"]) for s in summaries.values()}
    if len(settings) != 1:
        raise SystemExit(f"the runs differ in first_turn / max_new_tokens / max_prompt_tokens / policy: {settings}")
    cut, max_new_tokens, max_prompt_tokens, policy = settings.pop()
    seen = set().union(*(trained_prompts(list(pairs["prompt"]), summary) for summary in summaries.values()))
    candidates, _ = split_prompts(list(pairs["prompt"]), PPOConfig(first_turn=cut, eval_prompts=0))  # deduplicated
    unseen = [candidates[i] for i in np.random.default_rng([args.seed, 31]).permutation(len(candidates))
              if candidates[i] not in seen][: args.prompts]
    score = as_scorer(load_reward_model(args.reward_model))

    def rewards(policy_name: str, file: Path) -> tuple[np.ndarray, float]:
        """``(prompts, samples)`` rewards of a policy's answers, and their mean length in words."""
        answers = sample_prompts(unseen, file, policy=policy_name, samples=args.samples, max_new_tokens=max_new_tokens,
                                 max_prompt_tokens=max_prompt_tokens, generation_batch=32, **EVAL_SAMPLING)
        flat = [answer for per_prompt in answers for answer in per_prompt]
        scored = rewards_of(score, [p for p in unseen for _ in range(args.samples)], flat)
        return scored.reshape(len(unseen), args.samples), float(np.mean([len(answer.split()) for answer in flat]))

    sft, sft_words = rewards(policy, args.work / "sft.jsonl")
    resampled = resample_prompts(len(unseen), 2000, seed=args.seed)
    report = {"machine": machine(), "reward_model": str(args.reward_model), "subset": args.subset,
              "prompts": len(unseen), "samples": args.samples, "prompts_trained_on": len(seen),
              "sft": {**interval(sft.mean(axis=1), resampled), "words": sft_words}, "runs": {}}
    for run, summary in summaries.items():
        trained, words = rewards(str(run / "policy"), args.work / f"{run.name}.jsonl")
        difference = trained.mean(axis=1) - sft.mean(axis=1)
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        config = summary["config"]
        report["runs"][run.name] = {
            "settings": {key: config[key] for key in ("lam", "missing_eos_penalty", "beta", "seed", "policy_lr")},
            "updates": summary["updates"], "reward": interval(trained.mean(axis=1), resampled),
            "minus_sft": interval(difference, resampled), "prompts_higher": float((difference > 0).mean()),
            "words": words, "kl_k3_last_10": float(np.mean([row["kl_k3"] for row in metrics[-10:]]))}
    lines = [f"Reward model `{args.reward_model}` on {len(unseen)} hh-rlhf {args.subset} prompts that none of the runs "
             f"trained on{' (first turn)' if cut else ''}, {args.samples} answers each per policy, T 0.8, top-p 0.9, "
             f"repetition penalty 1.1, up to {max_new_tokens} new tokens; machine: {report['machine']}.", "",
             "| policy | GAE λ | missing-EOS penalty | seed | updates | reward [95% interval] | minus SFT (paired) | "
             "prompts where higher | words per answer | KL k3 (last 10 updates) |",
             "|---|---:|---:|---:|---:|---|---|---:|---:|---:|",
             f"| SFT (SmolLM2-135M-Instruct) | | | | 0 | {report['sft']['mean']:+.3f} [{report['sft']['low']:+.3f}, "
             f"{report['sft']['high']:+.3f}] | | | {sft_words:.1f} | 0 |"]
    for name, entry in report["runs"].items():
        setting, reward, minus = entry["settings"], entry["reward"], entry["minus_sft"]
        lines.append(f"| `{name}` | {setting['lam']:g} | {setting['missing_eos_penalty']:g} | {setting['seed']} | "
                     f"{entry['updates']} | {reward['mean']:+.3f} [{reward['low']:+.3f}, {reward['high']:+.3f}] | "
                     f"{minus['mean']:+.3f} [{minus['low']:+.3f}, {minus['high']:+.3f}] | {entry['prompts_higher']:.2f} | "
                     f"{entry['words']:.1f} | {entry['kl_k3_last_10']:.2f} |")
    markdown = "\n".join(lines + [""])
    write_results(RESULTS / args.name, report, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
