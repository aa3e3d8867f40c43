"""What each denoising method does to a scored dataset (default: the pooled hh-rlhf test splits).

    RMCLEAN_DATA_DIR=../shared/data rmclean score hh-rlhf --members 20 --out scores
    RMCLEAN_DATA_DIR=../shared/data python experiments/denoise_hh.py --scores scores

For every method (with its default selection, ``fraction:0.1``, and a few other rules) it
reports how many pairs each action touches, the strength of what was changed, and the margins
and soft labels given; counts add up to the input. Writes
experiments/results/denoise_<name>.{json,md}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rmclean.denoise import DenoiseConfig, apply_actions, denoise_summary
from rmclean.files import write_results
from rmclean.score import load_scored

RESULTS = Path(__file__).resolve().parent / "results"

RUNS = [
    DenoiseConfig(method="flip"),
    DenoiseConfig(method="flip", select="fraction:0.2"),
    DenoiseConfig(method="flip", select="negative"),
    DenoiseConfig(method="flip", select="zscore:-1"),
    DenoiseConfig(method="drop"),
    DenoiseConfig(method="margin"),
    DenoiseConfig(method="soft-label"),
    DenoiseConfig(method="soft-label", select="ambiguous:0.1,0.3", alpha="normal"),
    DenoiseConfig(method="flip+margin"),
    DenoiseConfig(method="soft-label+margin", alpha="members"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scores", default="scores", help="a folder written by rmclean score")
    parser.add_argument("--name", default="hh", help="results file suffix")
    args = parser.parse_args()

    pairs, scores, _ = load_scored(args.scores)
    rows = []
    for config in RUNS:
        summary = denoise_summary(apply_actions(pairs, scores, config), config, scores)
        rows.append(summary)
        print(config.method, config.rule, summary["counts"], flush=True)

    def fmt(stats, key="mean"):
        return "" if not stats else f"{stats[key]:.3f}"

    lines = [
        f"Denoising methods on {len(pairs):,} pairs ({scores.metadata.get('mode', '')} scores, "
        f"{scores.member_margins.shape[1]} members), one run",
        "",
        "| method | rule | alpha | keep | flip | drop | soften | invalid | mean strength of changed | "
        "mean margin | pairs with margin > 0 | mean soft label of softened |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for summary in rows:
        counts = summary["counts"]
        changed = next((summary["strength_mean_of"][a] for a in ("flip", "drop", "soften") if counts[a]), None)
        margin = summary.get("margin")
        lines.append(
            f"| {summary['method']} | {summary['select'] or 'every pair'} | "
            f"{summary['config']['alpha'] if summary['method'].startswith('soft') else ''} | "
            + " | ".join(f"{counts[a]:,}" for a in ("keep", "flip", "drop", "soften", "invalid"))
            + f" | {fmt(changed)} | {fmt(margin)} | {format(margin['positive'], ',') if margin else ''} | "
            f"{fmt(summary.get('soft_label_of_softened'))} |"
        )
    write_results(RESULTS / f"denoise_{args.name}", rows, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
