"""What each scoring choice gives, on cached features of the pooled hh-rlhf test splits.

Also compares feature views (``FeatureConfig.views``): the transcript, the response alone, and
the response with its prompt interaction, alone and combined.

    RMCLEAN_DATA_DIR=../shared/data python experiments/tune_heads.py [--backbone minilm]

For every variant (regularisation C, linear or MLP heads, per-source or pooled members,
bootstrap or not) it reports the 5-fold ensemble accuracy against the dataset labels and the
detection audit at 20% planted flips (AUROC of the ensemble mean, mean/std, a single member,
cleanlab and the oracle), all in one run on the same features. Writes
experiments/results/tune_heads_<backbone>.{json,md}. Features must be cached (run
``rmclean score hh-rlhf --backbone ...`` first, or let this script embed them).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

import rmclean
from rmclean.audit import AuditConfig, audit_features
from rmclean.files import write_results
from rmclean.features.views import VIEWS, FeatureConfig, feature_views
from rmclean.score import ScoreConfig, training_groups, view_margins

RESULTS = Path(__file__).resolve().parent / "results"


def variants(base: ScoreConfig) -> list[tuple[str, ScoreConfig]]:
    def views(*names: str) -> ScoreConfig:  # base.members per view (ScoreConfig.members is the total)
        return replace(base, features=replace(base.features, views=names), members=base.members * len(names))

    rows = [(f"linear C={c:g}, per source", replace(base, C=c)) for c in (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.1, 1.0)]
    rows += [
        ("linear C=0.0003, pooled sources", replace(base, group_by=None)),
        ("linear C=0.0003, no bootstrap", replace(base, bootstrap=False)),
        ("mlp, per source", replace(base, head="mlp")),
        ("view: response", views("response")),
        ("view: response+prompt", views("response+prompt")),
        ("views: transcript + response+prompt", views("transcript", "response+prompt")),
        ("views: all three", views("transcript", "response", "response+prompt")),
    ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()

    pairs, _ = rmclean.split_invalid(rmclean.load_pairs("hh-rlhf", limit=args.limit))
    base = ScoreConfig(features=FeatureConfig(backbone=args.backbone, views=("transcript",)), members=args.members)
    features = dict(zip(VIEWS, feature_views(pairs, replace(base.features, views=VIEWS))))
    results = []
    for name, config in variants(base):
        groups = training_groups(pairs, config)
        views = [features[view] for view in config.features.views]
        margins = view_margins(views, groups, config.head_config())
        audited = audit_features(views, groups, config, AuditConfig(rates=(0.2,)))
        auroc = {row["detector"]: row["auroc"] for row in audited["rows"]}
        results.append({"variant": name, "accuracy": float((margins.mean(axis=1) > 0).mean()), "auroc_at_0.2": auroc})
        print(name, f"{results[-1]['accuracy']:.3f}", {k: round(v, 3) for k, v in auroc.items()}, flush=True)

    columns = ("rmclean", "rmclean mean/std", "single member", "rmclean in-sample", "cleanlab", "oracle")
    lines = [
        f"Head variants on {args.backbone} features, {len(pairs):,} pooled hh-rlhf test pairs, "
        f"{args.members} members × 5 folds, audit at 20% planted flips (one run)",
        "",
        "| variant | accuracy | " + " | ".join(f"AUROC {c}" for c in columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for row in results:
        cells = " | ".join(f"{row['auroc_at_0.2'].get(c, float('nan')):.3f}" for c in columns)
        lines.append(f"| {row['variant']} | {row['accuracy']:.3f} | {cells} |")
    write_results(RESULTS / f"tune_heads_{args.backbone}", results, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
