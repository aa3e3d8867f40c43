"""What a small local judge does with ``verdict="choice"``: SmolLM2-135M-Instruct on a seeded
sample of the hh-rlhf test splits, both orders, its verdicts and whether its probabilities side
with the dataset label once the two orders are compared.

    RMCLEAN_DATA_DIR=../shared/data python experiments/judge_choice.py [--pairs-per-source 10]

Scores come from ``rmclean.score`` with its defaults on the same sample (the notebooks' sample:
``rmclean.sample_per_source``, seed 0, so their feature cache serves it). For each pair the
reply of each order carries P(A), P(B), P(C); "across orders" is the sign of
log(P_ab(A)/P_ab(B)) - log(P_ba(A)/P_ba(B)), positive when the model prefers the dataset's chosen
response in both positions taken together (position bias cancels).

Writes experiments/results/judge_choice.{json,md}.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine  # noqa: E402

import rmclean  # noqa: E402
from rmclean.files import write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "judge_choice"


def probabilities(reply: str) -> list[float]:
    return [float(value) for value in re.findall(r"P\([ABC]\) ([0-9.]+)", reply)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs-per-source", type=int, default=10)
    args = parser.parse_args()

    valid, _ = rmclean.split_invalid(rmclean.load_pairs("hh-rlhf"))
    pairs = rmclean.sample_per_source(valid, args.pairs_per_source, seed=0)
    began = time.perf_counter()
    scores = rmclean.score(pairs, rmclean.ScoreConfig(), progress=False)
    judge = rmclean.JudgeConfig(backend="local", verdict="choice")
    result = rmclean.check(pairs, scores, judge, rmclean.CheckConfig(bin_size=len(pairs)))
    seconds = time.perf_counter() - began
    frame = result.judgements
    ab = np.array([probabilities(reply) for reply in frame["reply_ab"]])
    ba = np.array([probabilities(reply) for reply in frame["reply_ba"]])
    across = np.log(ab[:, 0] / ab[:, 1]) - np.log(ba[:, 0] / ba[:, 1])
    record = {
        "pairs": len(pairs), "pairs_per_source": args.pairs_per_source, "machine": machine(), "seconds": seconds,
        "judge_verdict": {k: int(v) for k, v in frame["judge_verdict"].value_counts().items()},
        "orders": {f"{a}/{b}": int(n) for (a, b), n in frame.groupby(["verdict_ab", "verdict_ba"]).size().items()},
        "mean_probabilities_ab": ab.mean(axis=0).round(3).tolist(),
        "mean_probabilities_ba": ba.mean(axis=0).round(3).tolist(),
        "across_orders_sides_with_label": int((across > 0).sum()),
    }
    lines = [f"SmolLM2-135M-Instruct as a local judge with `verdict=\"choice\"` on {len(pairs)} hh-rlhf test pairs "
             f"({args.pairs_per_source} per split, `rmclean.sample_per_source`, seed 0); {record['machine']}; "
             f"{seconds / 60:.1f} min with scoring.", "",
             "| | count |", "|---|---:|"]
    lines += [f"| pair verdict {name} | {count} |" for name, count in record["judge_verdict"].items()]
    lines += [f"| orders (chosen as A / chosen as B) {name} | {count} |" for name, count in record["orders"].items()]
    lines += ["", f"Mean P(A), P(B), P(C) with chosen as A: {record['mean_probabilities_ab']}; with chosen as B: "
              f"{record['mean_probabilities_ba']}.",
              f"Across the two orders its probabilities side with the dataset label on "
              f"{record['across_orders_sides_with_label']} of {len(pairs)} pairs."]
    write_results(RESULTS, record, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
