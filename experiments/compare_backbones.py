"""Backbones and mixed-backbone panels on the pooled hh-rlhf test splits (8,552 pairs).

    RMCLEAN_DATA_DIR=../shared/data python experiments/compare_backbones.py

Needs the features cached (``rmclean score hh-rlhf`` for MiniLM's default views, and
``rmclean score hh-rlhf --backbone smollm2 --views transcript`` for SmolLM2), or embeds them.

In one run:

1. embedding throughput of each backbone on the same 96 transcripts, float32 and bfloat16
   autocast (``--precision``), in a fresh cache, so the cost of each choice is a ratio;
2. for each panel of feature views (one backbone, or members over several backbones): the
   5-fold ensemble accuracy against the dataset labels (overall and per source) and the
   detection audit at 20% planted flips (AUROC of the ensemble mean, mean/std, a single
   member, in-sample, cleanlab on the same features and the oracle; the ensemble's AUROC per
   source too), 10 members × 5 folds per source and view (``--members`` counts per view here;
   ``ScoreConfig.members`` is the total over views, so each panel gets ``members × views``).

Writes experiments/results/compare_backbones.{json,md}.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import rmclean
from rmclean.audit import AuditConfig, audit_features
from rmclean.features.backbones import resolve_backbone
from rmclean.features.embedding import embed_texts
from rmclean.files import write_results
from rmclean.configs import from_record
from rmclean.features.views import pair_features, scoring_texts
from rmclean.score import ScoreConfig, training_groups, view_margins

RESULTS = Path(__file__).resolve().parent / "results"

PANELS = [
    ("minilm: transcript", dict(views=("transcript",))),
    ("minilm: transcript + response+prompt (default)", dict(views=("transcript", "response+prompt"))),
    ("smollm2: transcript, C=0.0001", dict(views=("smollm2:transcript",), C=0.0001)),
    ("smollm2: transcript, C=0.0003", dict(views=("smollm2:transcript",))),
    ("smollm2: transcript, C=0.001", dict(views=("smollm2:transcript",), C=0.001)),
    ("minilm transcript + smollm2 transcript", dict(views=("transcript", "smollm2:transcript"))),
    ("minilm transcript + response+prompt + smollm2 transcript",
     dict(views=("transcript", "response+prompt", "smollm2:transcript"))),
]


def throughput(pairs, backbone_names: list[str], sample: int) -> dict[str, dict[str, float]]:
    """Texts per second of each backbone, float32 and bfloat16, on the same transcripts
    (every 89th chosen transcript: a spread of lengths), each with an empty feature cache
    (model loading included: about a second)."""
    texts = scoring_texts(pairs)[0][::89][:sample]
    rates: dict[str, dict[str, float]] = {}
    for name in backbone_names:
        backbone = resolve_backbone(name)
        rates[name] = {}
        cache = Path(tempfile.mkdtemp())  # keeps a dequantized GGUF between runs; features are cleared
        embed_texts(backbone, texts[:4], 256, cache_dir=cache, progress=False)  # warm up
        for precision in ("float32", "bfloat16"):
            shutil.rmtree(cache / "features")
            started = time.perf_counter()
            embed_texts(backbone, texts, 256, cache_dir=cache, progress=False, precision=precision)
            rates[name][precision] = len(texts) / (time.perf_counter() - started)
        shutil.rmtree(cache)
        print(name, {k: round(v, 1) for k, v in rates[name].items()}, flush=True)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--sample", type=int, default=96, help="texts per throughput measurement")
    parser.add_argument("--members", type=int, default=10)
    args = parser.parse_args()

    pairs, _ = rmclean.split_invalid(rmclean.load_pairs("hh-rlhf", limit=args.limit))
    rates = throughput(pairs, ["minilm", "smollm2"], args.sample)
    base = ScoreConfig(members=args.members)
    groups = training_groups(pairs, base)
    sources = np.array(pairs["source"])
    features: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    results = []
    for name, options in PANELS:
        config = from_record(ScoreConfig, {"members": args.members * len(options["views"]), **options})
        for view in config.features.views:
            if view not in features:
                features[view] = pair_features(pairs, config.features, view=view)
        views = [features[view] for view in config.features.views]
        margins = view_margins(views, groups, config.head_config())
        correct = margins.mean(axis=1) > 0
        audited = audit_features(views, groups, config, AuditConfig(rates=(0.2,)))
        rows = {row["detector"]: row for row in audited["rows"]}
        results.append({
            "panel": name, "views": list(config.features.views), "C": config.C,
            "accuracy": float(correct.mean()),
            "accuracy_by_source": {s: float(correct[sources == s].mean()) for s in sorted(set(sources))},
            "auroc_at_0.2": {detector: row["auroc"] for detector, row in rows.items()},
            "cleanlab_minus_rmclean": ([rows["cleanlab"]["minus_rmclean"], *rows["cleanlab"]["minus_rmclean_interval"]]
                                       if "cleanlab" in rows else None),
            "rmclean_auroc_by_source": rows["rmclean"]["auroc_by_group"],
            "oracle_auroc_by_source": rows["oracle"]["auroc_by_group"],
        })
        print(name, f"{results[-1]['accuracy']:.3f}", {k: round(v, 3) for k, v in results[-1]["auroc_at_0.2"].items()},
              flush=True)

    minilm_rate = rates["minilm"]["bfloat16"]
    lines = [
        f"Backbones and panels on {len(pairs):,} pooled hh-rlhf test pairs, {args.members} members × 5 folds per "
        "source and view, audit at 20% planted flips; one run",
        "",
        f"Embedding throughput on the same {args.sample} transcripts (L = 256), as a ratio to MiniLM in bfloat16:",
        "",
        "| backbone | float32 | bfloat16 autocast |",
        "|---|---:|---:|",
    ]
    for backbone, by_precision in rates.items():
        lines.append(f"| {backbone} | {by_precision['float32'] / minilm_rate:.2f} | {by_precision['bfloat16'] / minilm_rate:.2f} |")
    columns = ("rmclean", "rmclean mean/std", "single member", "rmclean in-sample", "cleanlab", "oracle")
    source_names = sorted(set(sources))
    lines += [
        "",
        "| panel | accuracy | " + " | ".join(f"AUROC {c}" for c in columns) + " | rmclean − cleanlab [paired 95%] |",
        "|---|---:|" + "---:|" * (len(columns) + 1),
    ]
    for row in results:
        cells = " | ".join(f"{row['auroc_at_0.2'].get(c, float('nan')):.3f}" for c in columns)
        lead = row["cleanlab_minus_rmclean"]
        lead_cell = f"{-lead[0]:+.3f} [{-lead[2]:+.3f}, {-lead[1]:+.3f}]" if lead else "n/a"
        lines.append(f"| {row['panel']} | {row['accuracy']:.3f} | {cells} | {lead_cell} |")
    lines += [
        "",
        "Per source: accuracy / rmclean AUROC / oracle AUROC",
        "",
        "| panel | " + " | ".join(s.split("/")[1] if "/" in s else s for s in source_names) + " |",
        "|---|" + "---:|" * len(source_names),
    ]
    for row in results:
        cells = " | ".join(
            f"{row['accuracy_by_source'][s]:.3f} / {row['rmclean_auroc_by_source'].get(s, float('nan')):.3f} / "
            f"{row['oracle_auroc_by_source'].get(s, float('nan')):.3f}" for s in source_names)
        lines.append(f"| {row['panel']} | {cells} |")
    write_results(RESULTS / "compare_backbones", {"throughput": rates, "panels": results}, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
