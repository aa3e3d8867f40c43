"""How much of a reward model's spread can a policy change? A reward model's score of a policy's
answers splits into the spread between prompts (a hard question scores low whatever the answer)
and the spread between answers to one prompt, which is all that PPO can climb. This scores the
SFT policy's samples that ``rmclean compare --stage bon`` keeps (``samples.jsonl`` in its run
folder: n answers per prompt) with a reward model and reports both.

    rmclean train-rm hh-rlhf --subset helpful-base --views transcript --out rm-helpful
    RMCLEAN_DATA_DIR=../shared/data python experiments/downstream.py --stage bon experiments/downstream_hh.json
    python experiments/reward_spread.py --reward-model rm-helpful --samples downstream-work/samples.jsonl

Writes ``experiments/results/reward_spread.{json,md}``.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reward-model", required=True, help="a train-rm output folder")
    parser.add_argument("--samples", type=Path, required=True, help="samples.jsonl of a best-of-n run folder")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from rmclean.files import write_results
    from rmclean.members.reward_models import as_scorer, load_reward_model
    from rmclean.train.ppo import rewards_of

    lines = [json.loads(line) for line in args.samples.read_text(encoding="utf-8").splitlines()]
    identity, rows = lines[0]["identity"], lines[1:]
    score = as_scorer(load_reward_model(args.reward_model))
    prompts = [row["prompt"] for row in rows for _ in row["samples"]]
    answers = [answer for row in rows for answer in row["samples"]]
    rewards = rewards_of(score, prompts, answers).reshape(len(rows), -1)  # (prompts, answers per prompt)
    report = {
        "machine": machine(), "reward_model": str(args.reward_model), "samples": identity,
        "prompts": len(rows), "answers_per_prompt": rewards.shape[1],
        "std_total": float(rewards.std()),
        "std_between_prompts": float(rewards.mean(axis=1).std()),
        "std_within_prompt": float(np.sqrt(rewards.var(axis=1, ddof=1).mean())),
        "best_minus_mean": float((rewards.max(axis=1) - rewards.mean(axis=1)).mean()),
    }
    markdown = "\n".join([
        f"Reward model `{args.reward_model}` on {len(rows)} prompts × {rewards.shape[1]} answers of "
        f"{identity['policy']} (T {identity['temperature']:g}, up to {identity['max_new_tokens']} new tokens); "
        f"machine: {report['machine']}.", "",
        "| spread of the reward | std |", "|---|---:|",
        f"| all answers | {report['std_total']:.3f} |",
        f"| between prompts (each prompt's mean answer) | {report['std_between_prompts']:.3f} |",
        f"| within a prompt (what a policy can climb) | {report['std_within_prompt']:.3f} |", "",
        f"The best of {rewards.shape[1]} answers scores {report['best_minus_mean']:.3f} above the prompt's mean answer.", ""])
    write_results(RESULTS / "reward_spread", report, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
