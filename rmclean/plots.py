"""Matplotlib figures used by the CLI and notebooks. Each function returns the figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .strength import decile_table


def pyplot():
    """``matplotlib.pyplot``, on the file-only Agg backend unless a backend is already chosen:
    ``$MPLBACKEND`` (a Jupyter kernel sets it to its inline backend, so notebooks show the
    figures) or pyplot imported before (the user's choice stands)."""
    import os
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def strength_histogram(strength_mean: np.ndarray, bins: int = 60):
    """Histogram of strength_mean with the share of pairs below zero."""
    plt = pyplot()

    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.hist(strength_mean, bins=bins, color="#4C72B0")
    axes.axvline(0, color="black", linewidth=1)
    negative = float((np.asarray(strength_mean) < 0).mean())
    axes.set_title(f"Preference strength ({negative:.1%} of pairs below 0)")
    axes.set_xlabel("strength_mean = mean over members of r(chosen) − r(rejected)")
    axes.set_ylabel("pairs")
    figure.tight_layout()
    return figure


def strength_by_decile(strength_mean: np.ndarray, strength_std: np.ndarray):
    """Mean and std of strength per strength_mean decile (the paper's U-shaped std)."""
    plt = pyplot()

    rows = decile_table(np.asarray(strength_mean), np.asarray(strength_std))
    bins = [row["bin"] for row in rows]
    figure, left = plt.subplots(figsize=(6, 3.5))
    left.bar(bins, [row["strength_mean"] for row in rows], color="#4C72B0", label="mean")
    left.axhline(0, color="black", linewidth=1)
    left.set_xlabel("decile of strength_mean")
    left.set_ylabel("strength_mean")
    right = left.twinx()
    right.plot(bins, [row["strength_std"] for row in rows], color="#DD8452", marker="o", label="std")
    right.set_ylabel("strength_std", color="#DD8452")
    left.set_xticks(bins)
    left.set_title("Preference strength by decile")
    figure.tight_layout()
    return figure


def strength_by_source(strength_mean: np.ndarray, sources):
    """Box plot of strength_mean per source, each labelled with its pairs and share below 0."""
    plt = pyplot()

    strength_mean, sources = np.asarray(strength_mean), np.asarray(sources)
    names = sorted(set(sources.tolist()))
    figure, axes = plt.subplots(figsize=(7, 0.6 * len(names) + 1.5))
    values = [strength_mean[sources == name] for name in names]
    axes.boxplot(values, vert=False, showfliers=False)
    axes.set_yticks(range(1, len(names) + 1),
                    [f"{name}\n{len(v):,} pairs, {(v < 0).mean():.0%} below 0" for name, v in zip(names, values)],
                    fontsize=7)
    axes.axvline(0, color="black", linewidth=1)
    axes.set_xlabel("strength_mean")
    axes.set_title("Preference strength per source")
    figure.tight_layout()
    return figure


def member_agreement(member_margins: np.ndarray, bins: int = 20):
    """Histogram over pairs of the share of members that prefer the labelled chosen response
    (``member_margins`` of shape ``(pairs, members)``): pairs near 0.5 split the ensemble."""
    plt = pyplot()

    member_margins = np.asarray(member_margins)
    share = (member_margins > 0).mean(axis=1)
    unanimous = float(np.isin(share, (0.0, 1.0)).mean())
    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.hist(share, bins=np.linspace(0, 1, bins + 1), color="#55A868")
    axes.set_xlabel(f"share of the {member_margins.shape[1]} members preferring the labelled chosen")
    axes.set_ylabel("pairs")
    axes.set_title(f"Members' agreement ({unanimous:.0%} of pairs unanimous)")
    figure.tight_layout()
    return figure


def length_histogram(lengths: dict[str, np.ndarray], unit: str = "words", upper: float = 300):
    """Overlaid histograms of lengths per field (e.g. ``{"chosen": ..., "rejected": ...}``), in
    ``unit``, the axis cut at ``upper``."""
    plt = pyplot()

    figure, axes = plt.subplots(figsize=(6, 3))
    for name, values in lengths.items():
        axes.hist(np.asarray(values), bins=60, range=(0, upper), alpha=0.5, label=name)
    axes.set_xlabel(f"length ({unit})")
    axes.set_ylabel("pairs")
    axes.legend()
    figure.tight_layout()
    return figure


def denoise_actions(strength_mean: np.ndarray, actions, bins: int = 50):
    """Stacked histogram of strength_mean (as scored, before any flip) by the action a denoiser
    took on each pair (keep, flip, drop, soften); invalid rows (no strength) are left out."""
    plt = pyplot()

    strength_mean, actions = np.asarray(strength_mean, dtype=np.float64), np.asarray(actions)
    finite = np.isfinite(strength_mean)
    names = [name for name in ("keep", "soften", "flip", "drop") if np.any((actions == name) & finite)]
    colors = {"keep": "#BBBBBB", "soften": "#8172B3", "flip": "#C44E52", "drop": "#DD8452"}
    figure, axes = plt.subplots(figsize=(6, 3.5))
    edges = np.histogram_bin_edges(strength_mean[finite], bins=bins) if finite.any() else bins
    axes.hist([strength_mean[(actions == name) & finite] for name in names], bins=edges, stacked=True,
              color=[colors[name] for name in names],
              label=[f"{name} ({int(np.sum(actions == name)):,})" for name in names])
    axes.axvline(0, color="black", linewidth=1)
    axes.set_xlabel("strength_mean as scored (before any flip)")
    axes.set_ylabel("pairs")
    axes.set_title("What the denoiser did, by preference strength")
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def save(figure, path) -> None:
    """Write a figure to ``path`` (its folder made where missing) and close it."""
    import matplotlib.pyplot as plt

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def agreement_by_strength(agreement: dict):
    """Judge agreement with the dataset labels per strength_mean bin (``agreement`` as
    :func:`rmclean.check.agreement_bins` returns it), with the share of ties below it; beside
    it, where ``agreement`` has them, the paper's three GPT-4 points against the same bins here."""
    plt = pyplot()

    paper = agreement.get("paper") or []
    if paper:
        figure, (axes, paper_axes) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [2, 1]})
        _paper_panel(paper_axes, paper)
    else:
        figure, axes = plt.subplots(figsize=(6.5, 3.8))

    bins = agreement["bins"]
    numbers = [entry["bin"] for entry in bins]
    values = [np.nan if entry["agreement"] is None else entry["agreement"] for entry in bins]
    ties = [entry["ties"] / entry["judged"] if entry["judged"] else 0.0 for entry in bins]
    # pairs with no verdict (no verdict in the reply, an error, not asked yet), as a share of the bin
    unjudged = [(entry["pairs"] - entry["judged"]) / entry["pairs"] if entry["pairs"] else 0.0 for entry in bins]
    axes.bar(numbers, ties, color="#CCCCCC", label="judge tie (incl. order-inconsistent), of judged")
    axes.bar(numbers, unjudged, bottom=1.05 - np.asarray(unjudged), color="#E8A87C", alpha=0.6,
             label="no verdict (invalid, error, pending), of the bin")
    axes.plot(numbers, values, color="#4C72B0", marker="o", label="agreement with dataset label")
    if not any(entry["judged"] for entry in bins):
        axes.text(0.5, 0.5, "no pair was judged: every reply lacked a verdict", transform=axes.transAxes,
                  ha="center", va="center", fontsize=9)
    axes.axhline(0.5, color="black", linewidth=0.8, linestyle=":")
    axes.set_ylim(0, 1.05)
    axes.set_xlabel(f"bin of pairs sorted by strength_mean (about {agreement['bin_size']} pairs each), weakest first")
    axes.set_ylabel("share")
    if len(numbers) <= 25:
        axes.set_xticks(numbers)
    overall = agreement["overall"]["agreement"]
    axes.set_title("LLM judge agreement by preference strength"
                   + (f" (overall {overall:.2f})" if overall is not None else ""))
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return figure


def _paper_panel(axes, paper: list[dict]) -> None:
    """Grouped bars: the paper's GPT-4 agreement and this check's at the same three places."""
    places = np.arange(len(paper))
    here = [np.nan if row["agreement"] is None else row["agreement"] for row in paper]
    axes.bar(places - 0.2, [row["paper_agreement"] for row in paper], width=0.4, color="#999999",
             label="paper: GPT-4, hh-rlhf validation")
    axes.bar(places + 0.2, here, width=0.4, color="#4C72B0", label="this check")
    for place, value in zip(places, here):
        if np.isnan(value):
            axes.text(place + 0.2, 0.02, "none judged", rotation=90, ha="center", va="bottom", fontsize=7)
    axes.set_xticks(places)
    axes.set_xticklabels([f"{row['point']}\n(bin {row['bin']})" for row in paper], fontsize=8)
    axes.axhline(0.5, color="black", linewidth=0.8, linestyle=":")
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("agreement with dataset label")
    axes.set_title("the paper's figure beside ours", fontsize=10)
    axes.legend(loc="upper left", fontsize=7)


def detection_curves(rows: list[dict], title: str):
    """AUROC against planted flip rate, one line per detector (audit rows: ``rate``,
    ``detector``, ``auroc``), in the order the detectors first appear."""
    plt = pyplot()

    figure, axes = plt.subplots(figsize=(6, 3.5))
    for detector in dict.fromkeys(row["detector"] for row in rows):
        points = [(row["rate"], row["auroc"]) for row in rows if row["detector"] == detector]
        axes.plot(*zip(*points), marker="o", label=detector)
    axes.set_xlabel("planted flip rate")
    axes.set_ylabel("AUROC (finding planted flips)")
    axes.set_title(title)
    axes.legend(fontsize=7)
    figure.tight_layout()
    return figure


def training_curves(curves: dict):
    """Accuracy and mean margin of each eval set, and the training loss, against epochs."""
    plt = pyplot()

    figure, (accuracy_axes, margin_axes) = plt.subplots(1, 2, figsize=(10, 3.5))
    epochs = curves["epochs"]
    for name, values in curves["eval"].items():
        accuracy_axes.plot(epochs[-len(values):], [m["accuracy"] for m in values], marker="o", label=name)
        margin_axes.plot(epochs[-len(values):], [m["mean_margin"] for m in values], marker="o", label=name)
    if curves["train_loss"]:
        loss_axes = accuracy_axes.twinx()
        loss_axes.plot(epochs[-len(curves["train_loss"]):], curves["train_loss"], color="grey", linestyle="--")
        loss_axes.set_ylabel("training loss (dashed)")
    accuracy_axes.set_xlabel("epoch")
    accuracy_axes.set_ylabel("accuracy")
    margin_axes.set_xlabel("epoch")
    margin_axes.set_ylabel("mean r(chosen) − r(rejected)")
    if curves["eval"]:
        accuracy_axes.legend(fontsize=7)
    figure.tight_layout()
    return figure


def benefit_curves(records: list[dict], rates, noises,
                   methods=("oracle", "none", "flip 20%", "drop 20%", "margin", "soft-label 20%", "flip+margin 20%")):
    """Clean-test accuracy against the planted flip rate, mean ± sd over seeds, one panel per
    noise kind (the denoising-benefit experiment)."""
    plt = pyplot()

    figure, axes = plt.subplots(1, len(noises), figsize=(6 * len(noises), 4), squeeze=False)
    for axis, noise in zip(axes[0], noises):
        for method in methods:
            values = [[row[method]["accuracy"] for row in records
                       if row["noise"] == noise and row["rate"] == rate and "accuracy" in row.get(method, {})]
                      for rate in rates]
            if not any(values):
                continue
            axis.errorbar(rates, [np.mean(v) if v else np.nan for v in values],
                          yerr=[np.std(v) if v else np.nan for v in values], marker="o", capsize=3, label=method)
        axis.set_xlabel("planted flip rate in the train part")
        axis.set_ylabel("clean-test accuracy")
        axis.set_title(f"{noise} flips")
        axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


#: The curves of a PPO run, by metrics.jsonl key, with their axis labels.
PPO_CURVES = (
    ("reward_mean", "reward (raw)"), ("kl_k1", "KL to reference, k1 (k3 dashed)"), ("perplexity", "held-out perplexity"),
    ("response_length", "response length (tokens)"), ("eos_rate", "EOS rate"), ("repetition_rate", "repetition rate"),
    ("entropy", "token entropy"), ("value_loss", "value loss"), ("policy_clip_fraction", "policy clip fraction"),
    ("approx_kl", "approx. KL (new vs rollout)"), ("score_mean", "scaled score"), ("seconds", "seconds per update"),
)


def ppo_curves(metrics: list[dict]):
    """Every logged curve of a PPO run against the update, one panel each (the paper's
    figure 9 among them: reward, KL, perplexity, length)."""
    plt = pyplot()

    figure, axes = plt.subplots(3, 4, figsize=(14, 8))
    updates = [row["update"] for row in metrics]
    for axis, (key, label) in zip(axes.flat, PPO_CURVES):
        axis.plot(updates, [row.get(key) if row.get(key) is not None else np.nan for row in metrics], color="#4C72B0")
        if key == "reward_mean":
            evaluated = [(row["update"], row["eval_reward_mean"]) for row in metrics if "eval_reward_mean" in row]
            if evaluated:
                axis.plot(*zip(*evaluated), marker="o", color="#DD8452", label="held-out samples")
                axis.legend(fontsize=7)
        if key == "kl_k1":
            axis.plot(updates, [row["kl_k3"] for row in metrics], color="#4C72B0", linestyle="--")
        if key == "perplexity" and metrics and metrics[0].get("reference_perplexity") is not None:
            axis.axhline(metrics[0]["reference_perplexity"], color="grey", linewidth=1)
        axis.set_title(label, fontsize=9)
        axis.set_xlabel("update", fontsize=8)
    figure.tight_layout()
    return figure


def gold_against_kl(record: dict, xlabel: str, title: str, value: str = "gold_reward"):
    """Gold reward against KL, one line per arm's ``curve`` with its 95% interval band, and the
    SFT policy as a horizontal line (the downstream stages: best-of-n over n, PPO over its
    evaluations). ``value``: ``gold_reward``, or ``gain_over_sft`` (paired: narrower intervals)."""
    plt = pyplot()

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for arm in record["arms"]:
        if arm["name"] == "sft":
            axis.axhline(arm["gold_reward"]["mean"] if value == "gold_reward" else 0.0, color="grey", linewidth=1,
                         label="sft")
            continue
        if not arm.get("curve"):
            continue
        kl = [point["kl"] for point in arm["curve"]]
        rewards = [point[value] for point in arm["curve"]]
        style = {"linestyle": "--"} if arm["name"] in ("gold", "oracle") else {}
        line, = axis.plot(kl, [r["mean"] for r in rewards], marker="o", label=arm["name"], **style)
        axis.fill_between(kl, [r["low"] for r in rewards], [r["high"] for r in rewards], color=line.get_color(),
                          alpha=0.12)
    axis.set_xlabel(xlabel)
    axis.set_ylabel({"gold_reward": "gold reward", "gain_over_sft": "gold reward − SFT's (paired)"}.get(value, value))
    axis.set_title(title)
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def downstream_ppo_curves(record: dict):
    """The paper's figure 9 per arm: proxy reward, KL to the reference, perplexity and response
    length against the PPO update (the downstream PPO stage)."""
    plt = pyplot()

    figure, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    labels = {"reward_mean": "proxy reward (raw)", "kl_k1": "KL to reference (k1)",
              "perplexity": "held-out perplexity", "response_length": "response length (tokens)"}
    for arm in record["arms"]:
        curves = arm.get("curves")
        if not curves:
            continue
        for axis, key in zip(axes, labels):
            axis.plot(curves["update"], curves[key], label=arm["name"],
                      **({"linestyle": "--"} if arm["name"] == "oracle" else {}))
    for axis, (key, label) in zip(axes, labels.items()):
        axis.set_title(label, fontsize=9)
        axis.set_xlabel("update", fontsize=8)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    return figure


def win_tie_lose(record: dict):
    """The paper's figure 10: each arm's win / tie / lose share against the SFT policy in gold
    reward, as stacked bars."""
    plt = pyplot()

    arms = [arm for arm in record["arms"] if arm["name"] != "sft"]
    figure, axis = plt.subplots(figsize=(7, 0.5 * len(arms) + 1.2))
    names = [arm["name"] for arm in arms]
    left = np.zeros(len(arms))
    for key, colour in (("win", "#55A868"), ("tie", "#BBBBBB"), ("lose", "#C44E52")):
        values = np.array([arm[key] for arm in arms])
        axis.barh(names, values, left=left, color=colour, label=key)
        left += values
    axis.set_xlim(0, 1)
    axis.set_xlabel("share of held-out answers against the SFT policy's (gold reward)")
    axis.invert_yaxis()
    axis.legend(fontsize=7, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    figure.tight_layout()
    return figure
