"""Does denoising give better reward models? The denoising-benefit experiment.

    RMCLEAN_DATA_DIR=../shared/data python experiments/denoise_benefit.py [--seeds 3]

On the pooled hh-rlhf test splits (valid pairs; cached features of the default views), for
each seed: split into train (70%) and a clean test part (30%), stratified by source; plant
label flips in the train part at each rate, either at random or targeted at low-strength
pairs (drawn from the 2 × rate fraction with the smallest |strength| under an ensemble trained
on the clean labels: the hard-to-detect kind); score the corrupted train part with the default
ensemble (cross-fitted, per source; the test part never informs a choice); apply each
denoiser (``rmclean.denoise.plan``); train one reward model per denoiser with the matching
loss (``rmclean.train``), plus no denoising and an oracle trained on the uncorrupted labels;
report the clean-test accuracy and mean margin, mean ± sd over seeds.

The reward models are reward heads on the same frozen features, one head per source (the
scorer's finding: one pooled linear head is near chance on hh-rlhf); a test pair is scored by
its source's head. Writes experiments/results/denoise_benefit.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import rmclean
from rmclean.denoise import DenoiseConfig, DenoiseError, plan
from rmclean.score import ScoreConfig, pair_features, training_groups, view_margins
from rmclean.train.reward import RewardTrainConfig, preference_metrics, train_head

RESULTS = Path(__file__).resolve().parent / "results"

DENOISERS = [
    ("flip 10%", DenoiseConfig("flip", "fraction:0.1")),
    ("flip 20%", DenoiseConfig("flip", "fraction:0.2")),
    ("flip negative", DenoiseConfig("flip", "negative")),
    ("drop 10%", DenoiseConfig("drop", "fraction:0.1")),
    ("drop 20%", DenoiseConfig("drop", "fraction:0.2")),
    ("drop negative", DenoiseConfig("drop", "negative")),
    ("margin", DenoiseConfig("margin")),
    ("soft-label 10%", DenoiseConfig("soft-label", "fraction:0.1")),
    ("soft-label 20%", DenoiseConfig("soft-label", "fraction:0.2")),
    ("soft-label negative (α from members)", DenoiseConfig("soft-label", "negative", alpha="members")),
    ("flip+margin 10%", DenoiseConfig("flip+margin", "fraction:0.1")),
    ("flip+margin 20%", DenoiseConfig("flip+margin", "fraction:0.2")),
    ("flip+margin negative", DenoiseConfig("flip+margin", "negative")),
    ("soft-label+margin 10%", DenoiseConfig("soft-label+margin", "fraction:0.1")),
    ("soft-label+margin 20%", DenoiseConfig("soft-label+margin", "fraction:0.2")),
]
LOSS_OF = {"flip": "bt", "drop": "bt", "margin": "margin", "soft-label": "soft-label", "flip+margin": "margin",
           "soft-label+margin": "soft-label+margin"}


def split(sources: np.ndarray, seed: int, test_fraction: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices, stratified by source."""
    rng = np.random.default_rng([seed, 11])
    test = np.zeros(sources.size, dtype=bool)
    for name in np.unique(sources):
        index = rng.permutation(np.flatnonzero(sources == name))
        test[index[: int(round(test_fraction * index.size))]] = True
    return np.flatnonzero(~test), np.flatnonzero(test)


def plant(n_pairs: int, rate: float, seed: int, clean_strength: np.ndarray | None) -> np.ndarray:
    """Which train pairs get flipped: at random, or (with ``clean_strength``) among the
    2 × rate fraction with the smallest |strength|."""
    rng = np.random.default_rng([seed, 13, int(rate * 1000)])
    flipped = np.zeros(n_pairs, dtype=bool)
    count = int(round(rate * n_pairs))
    if count == 0:
        return flipped
    pool = np.arange(n_pairs) if clean_strength is None else np.argsort(np.abs(clean_strength))[: min(n_pairs, 2 * count)]
    flipped[rng.choice(pool, size=count, replace=False)] = True
    return flipped


def train_and_test(train_views, test_views, train_groups, test_groups, rm_config, *, flip=None, weight=None,
                   margin=None, soft_label=None) -> dict[str, float]:
    """One head per source on the (possibly denoised) train part; metrics on the clean test part."""
    chosen, rejected = np.hstack([c for c, _ in train_views]), np.hstack([r for _, r in train_views])
    if flip is not None:
        chosen, rejected = np.where(flip[:, None], rejected, chosen), np.where(flip[:, None], chosen, rejected)
    test_chosen, test_rejected = np.hstack([c for c, _ in test_views]), np.hstack([r for _, r in test_views])
    delta = np.zeros(test_chosen.shape[0])
    for name, index in train_groups.items():
        pick = (lambda a: None if a is None else a[index])  # noqa: E731
        model, _ = train_head(chosen[index], rejected[index], rm_config, margin=pick(margin),
                              soft_label=pick(soft_label), weight=pick(weight))
        test_index = test_groups[name]
        delta[test_index] = model.reward_of_features(test_chosen[test_index]) - model.reward_of_features(test_rejected[test_index])
    return preference_metrics(delta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rates", default="0,0.1,0.2,0.3,0.4")
    parser.add_argument("--noise", default="random,targeted")
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=RewardTrainConfig().epochs)
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    started = time.perf_counter()

    pairs, _ = rmclean.split_invalid(rmclean.load_pairs("hh-rlhf", limit=args.limit))
    score_config = ScoreConfig(members=args.members)
    rm_config = RewardTrainConfig(views=score_config.views, epochs=args.epochs)
    views = [pair_features(pairs, score_config, view=view)[:2] for view in score_config.views]
    sources = np.array(pairs["source"])
    records = []
    for seed in range(args.seeds):
        train, test = split(sources, seed)
        config = replace(score_config, seed=seed)
        rm = replace(rm_config, seed=seed)
        train_groups = training_groups(pairs.select(train), config)
        test_source = sources[test]
        test_groups = {name: np.flatnonzero(np.isin(test_source, np.unique(sources[train][index])))
                       for name, index in train_groups.items()}
        train_views = [(c[train], r[train]) for c, r in views]
        test_views = [(c[test], r[test]) for c, r in views]
        clean_strength = view_margins(train_views, train_groups, config.head_config()).mean(axis=1)
        oracle = train_and_test(train_views, test_views, train_groups, test_groups, rm)
        for noise in args.noise.split(","):
            for rate in rates:
                flipped = plant(train.size, rate, seed, clean_strength if noise == "targeted" else None)
                noisy = [(np.where(flipped[:, None], r, c), np.where(flipped[:, None], c, r)) for c, r in train_views]
                row = {"seed": seed, "noise": noise, "rate": rate, "oracle": oracle,
                       "none": train_and_test(noisy, test_views, train_groups, test_groups, rm)}
                member_margins = view_margins(noisy, train_groups, config.head_config())
                for name, denoiser in DENOISERS:
                    try:
                        planned = plan(member_margins, denoiser)
                    except DenoiseError as exc:  # e.g. a rule that selects nothing
                        row[name] = {"skipped": str(exc)}
                        continue
                    loss_config = replace(rm, loss=LOSS_OF[denoiser.method])
                    row[name] = train_and_test(
                        noisy, test_views, train_groups, test_groups, loss_config,
                        flip=planned.flip, weight=np.where(planned.drop, 0.0, 1.0),
                        margin=planned.margin if denoiser.uses_margin else None,
                        soft_label=planned.soft_label if denoiser.method.startswith("soft-label") else None)
                    row[name]["found_flips"] = float(flipped[planned.selected].mean()) if planned.selected.any() else None
                records.append(row)
                best = max((n for n, _ in DENOISERS if "accuracy" in row[n]), key=lambda n: row[n]["accuracy"])
                print(f"seed {seed} {noise} {rate:.1f}: oracle {oracle['accuracy']:.3f} none {row['none']['accuracy']:.3f} "
                      f"best {best} {row[best]['accuracy']:.3f}  ({time.perf_counter() - started:.0f} s)", flush=True)
    write(records, rates, args, time.perf_counter() - started, len(pairs))


def write(records, rates, args, elapsed: float, n_pairs: int) -> None:
    methods = ["oracle", "none"] + [name for name, _ in DENOISERS]
    lines = [f"Denoising benefit on {n_pairs:,} pooled hh-rlhf test pairs (70% train with planted flips, 30% clean "
             f"test), {args.seeds} seeds, reward heads per source on the default features; clean-test accuracy, "
             f"mean ± sd over seeds; {elapsed / 60:.0f} minutes in all.", ""]
    summary = {}
    for noise in args.noise.split(","):
        lines += [f"**{noise} flips**", "", "| method | " + " | ".join(f"{r:.0%}" for r in rates) + " |",
                  "|---|" + "---:|" * len(rates)]
        for method in methods:
            cells = []
            for rate in rates:
                values = [row[method]["accuracy"] for row in records
                          if row["noise"] == noise and row["rate"] == rate and "accuracy" in row[method]]
                summary[(noise, rate, method)] = values
                cells.append(f"{np.mean(values):.3f} ± {np.std(values):.3f}" if values else "n/a")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += ["", "Share of the clean-test accuracy lost to the noise that each denoiser recovers over the seeds: "
                  "(mean method − mean none) / (mean oracle − mean none). Every method is fixed in advance; "
                  "picking the best row is itself a choice made on the test part.",
                  "", "| method | " + " | ".join(f"{r:.0%}" for r in rates if r > 0) + " |",
                  "|---|" + "---:|" * sum(r > 0 for r in rates)]
        for method in methods[2:]:
            cells = []
            for rate in rates:
                if rate == 0:
                    continue
                mean = {m: np.mean(summary[(noise, rate, m)]) if summary[(noise, rate, m)] else np.nan
                        for m in ("oracle", "none", method)}
                lost = mean["oracle"] - mean["none"]
                cells.append(f"{(mean[method] - mean['none']) / lost:.2f}" if lost > 0.005 else
                             f"n/a (lost {lost:.3f})")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / "denoise_benefit"
    stem.with_suffix(".json").write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot(summary, rates, args.noise.split(","), stem.with_suffix(".png"))
    print("\n".join(lines))


def plot(summary, rates, noises, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(noises), figsize=(6 * len(noises), 4), squeeze=False)
    for axis, noise in zip(axes[0], noises):
        for method in ("oracle", "none", "flip 10%", "flip 20%", "drop 20%", "margin", "soft-label 20%",
                       "flip+margin 20%"):
            means = [np.mean(summary[(noise, r, method)]) if summary[(noise, r, method)] else np.nan for r in rates]
            sds = [np.std(summary[(noise, r, method)]) if summary[(noise, r, method)] else np.nan for r in rates]
            axis.errorbar(rates, means, yerr=sds, marker="o", capsize=3, label=method)
        axis.set_xlabel("planted flip rate in the train part")
        axis.set_ylabel("clean-test accuracy")
        axis.set_title(f"{noise} flips")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
