"""Why do the denoisers lift best-of-n on helpful-base prompts and not on harmless-base? What the
downstream design's ensemble finds among the planted flips, per source: for each seed, the
training labels get the design's planted flips (``downstream.rate``), the seed's ensemble scores
them, and the denoisers' 20% rule flags the weakest pairs. Reported per source: the AUROC of
−strength for the planted flips, the share of flagged pairs that were planted (precision) and
the share of planted flips flagged (recall), mean over seeds.

    RMCLEAN_DATA_DIR=../shared/data python experiments/downstream_detection.py experiments/downstream_hh.json

Features come from the feature cache (the best-of-n stage fills it); writes
``experiments/results/downstream_detection.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from machine import machine  # experiments/machine.py

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from sklearn.metrics import roc_auc_score

    from rmclean.benefit import load_benefit_pairs
    from rmclean.denoise import select
    from rmclean.downstream import make_design, read_downstream_config
    from rmclean.downstream.design import noisy_training
    from rmclean.features.views import feature_views
    from rmclean.files import write_results
    from rmclean.strength import aggregate

    started = time.perf_counter()
    config = read_downstream_config(args.config)
    design = make_design(load_benefit_pairs(config.benefit), config)
    views = feature_views(design.valid, config.benefit.score.features)
    train_views = [(c[design.train], r[design.train]) for c, r in views]
    sources = np.array([str(s) for s in design.sources[design.train]], dtype=object)
    rule = next(iter(d.rule for d in config.benefit.denoisers.values() if d.rule is not None))
    rate = config.downstream.rate
    rows = []
    for seed in range(config.benefit.seeds):
        flipped, _, margins = noisy_training(design, train_views, config, seed)  # as the proxy arms see them
        strength_mean, strength_std = aggregate(margins)
        flagged = select(strength_mean, strength_std, rule)
        for source in sorted(set(sources)):
            index = sources == source
            rows.append({"seed": seed, "source": source, "pairs": int(index.sum()),
                         "planted": float(flipped[index].mean()), "flagged": float(flagged[index].mean()),
                         "auroc": float(roc_auc_score(flipped[index], -strength_mean[index])),
                         "precision": float(flipped[index & flagged].mean()),
                         "recall": float(flagged[index & flipped].mean())})
    summary = {source: {key: float(np.mean([row[key] for row in rows if row["source"] == source]))
                        for key in ("pairs", "planted", "flagged", "auroc", "precision", "recall")}
               for source in sorted(set(sources))}
    record = {"config_file": str(args.config), "rule": rule, "rate": rate, "seeds": config.benefit.seeds,
              "rows": rows, "by_source": summary, "seconds": time.perf_counter() - started, "machine": machine()}
    lines = [f"The downstream design's ensemble against its planted flips ({rate:.0%} of the training labels), and "
             f"the denoisers' rule `{rule}`, per source of the training pairs; mean over {config.benefit.seeds} seeds.",
             "", "| source | training pairs | planted | flagged | AUROC (−strength) | precision | recall |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {source} | {values['pairs']:.0f} | {values['planted']:.3f} | {values['flagged']:.3f} | "
              f"{values['auroc']:.3f} | {values['precision']:.3f} | {values['recall']:.3f} |"
              for source, values in summary.items()]
    lines += ["", f"Machine: {record['machine']}; {record['seconds'] / 60:.1f} min. Config: `{args.config}`."]
    text = "\n".join(lines) + "\n"
    write_results(ROOT / "experiments" / "results" / "downstream_detection", record, text)
    print(text)


if __name__ == "__main__":
    main()
