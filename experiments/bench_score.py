"""Scoring benchmark on the pooled hh-rlhf test splits (8,552 pairs).

    RMCLEAN_DATA_DIR=../shared/data python experiments/bench_score.py [--backbone minilm] [--limit N]

In one run, each step in a fresh child process (so wall time and peak memory are its own):

1. M = 1 member per view, first run (empty feature cache): load, embed, train heads;
2. M = 10 members per view, first run (another empty cache): the same, with ten members per view
   and fold;
3. M = 10 per view, rerun on the cache of step 2 (``rmclean score --members 10 × views`` end to end);
4. the detection audit at 20% planted flips on the features of step 2 (10 members per view).

M counts members per view (``ScoreConfig.members``, ``--members``, is the total over views).

Reports ratios measured in this run (M = 10 / M = 1, rerun / first run), embedding
throughput and peak memory, and writes experiments/results/bench_score_<backbone>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def child(arguments: dict) -> dict:
    """One timed step, run inside a child process."""
    started = time.perf_counter()
    import dataclasses

    import rmclean
    from rmclean.audit import AuditConfig, audit_features, to_markdown
    from rmclean.features.views import FeatureConfig, feature_views
    from rmclean.score import ScoreConfig, training_groups, view_margins

    pairs = rmclean.load_pairs("hh-rlhf", limit=arguments["limit"])
    result: dict = {}
    if arguments["step"] == "rerun":
        from rmclean.cli import main

        members = 10 * len(FeatureConfig(backbone=arguments["backbone"]).views)
        code = main(["score", "hh-rlhf", "--backbone", arguments["backbone"], "--members", str(members),
                     "--cache-dir", arguments["cache"], "--out", arguments["out"], "--quiet"]
                    + (["--limit", str(arguments["limit"])] if arguments["limit"] else []))
        assert code == 0
        result["summary"] = json.loads((Path(arguments["out"]) / "summary.json").read_text())["summary"]
    else:
        features = FeatureConfig(backbone=arguments["backbone"])
        config = ScoreConfig(features=features, members=10 * len(features.views))
        valid, _ = rmclean.split_invalid(pairs)
        features_started = time.perf_counter()
        views = feature_views(valid, config.features, cache_dir=arguments["cache"], progress=False)
        result["features_s"] = time.perf_counter() - features_started
        # texts embedded: chosen and rejected per view, plus the prompts of the response+prompt view
        result["texts"] = sum(2 * len(valid) + (len(valid) if view == "response+prompt" else 0) for view in config.features.views)
        result["pairs"] = len(valid)
        groups = training_groups(valid, config)
        heads_started = time.perf_counter()
        if arguments["step"] == "audit":
            audited = audit_features(views, groups, config, AuditConfig(rates=(0.2,)))
            result["audit"] = audited["rows"]
            result["audit_markdown"] = to_markdown(audited)
        else:
            head_config = dataclasses.replace(config.head_config(), members=arguments["members"] * len(views))
            margins = view_margins(views, groups, head_config)
            result["accuracy"] = float((margins.mean(axis=1) > 0).mean())
        result["heads_s"] = time.perf_counter() - heads_started
    result["wall_s"] = time.perf_counter() - started
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def rmclean_default_views() -> tuple[str, ...]:
    from rmclean.features.views import FeatureConfig

    return FeatureConfig().views


def run_child(arguments: dict) -> dict:
    completed = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(arguments)], capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise SystemExit(f"step {arguments['step']} failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--limit", type=int, default=None, help="pairs to use (default: all 8,552)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    with tempfile.TemporaryDirectory() as scratch:
        base = {"backbone": args.backbone, "limit": args.limit}
        one = run_child({**base, "step": "members", "members": 1, "cache": f"{scratch}/cache-1"})
        ten = run_child({**base, "step": "members", "members": 10, "cache": f"{scratch}/cache-10"})
        rerun_started = time.perf_counter()
        rerun = run_child({**base, "step": "rerun", "cache": f"{scratch}/cache-10", "out": f"{scratch}/out"})
        rerun["outer_wall_s"] = time.perf_counter() - rerun_started
        audited = run_child({**base, "step": "audit", "cache": f"{scratch}/cache-10"})

    report = {
        "backbone": args.backbone,
        "pairs": one["pairs"],
        "views": list(rmclean_default_views()),
        "members_1": one,
        "members_10": ten,
        "ratio_members_10_over_1": ten["wall_s"] / one["wall_s"],
        "embedding_texts_per_s": ten["texts"] / ten["features_s"],
        "cached_rerun": {"wall_s": rerun["wall_s"], "peak_rss_mb": rerun["peak_rss_mb"]},
        "ratio_rerun_over_first": rerun["wall_s"] / ten["wall_s"],
        "ensemble_accuracy_by_source": rerun["summary"]["by_source"],
        "ensemble_accuracy": rerun["summary"]["ensemble_accuracy"],
        "fraction_negative": rerun["summary"]["fraction_negative"],
        "audit_rate_0.2": audited["audit"],
    }
    markdown = "\n".join([
        f"Scoring benchmark, {report['pairs']:,} hh-rlhf test pairs, backbone {args.backbone}, "
        f"views {' + '.join(report['views'])}, M members per view, one run (`python experiments/bench_score.py`)",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| M = 10 / M = 1, end to end, first run | {report['ratio_members_10_over_1']:.2f}× |",
        f"| cached rerun / first run (M = 10, `rmclean score`) | {report['ratio_rerun_over_first']:.3f} |",
        f"| embedding throughput (all views; {ten['texts']:,} texts) | {report['embedding_texts_per_s']:.0f} texts/s |",
        f"| heads, M = 10 × 5 folds, share of the first run | {ten['heads_s'] / ten['wall_s']:.1%} |",
        f"| peak memory M = 1 / M = 10 / rerun | {one['peak_rss_mb']:.0f} / {ten['peak_rss_mb']:.0f} / "
        f"{rerun['peak_rss_mb']:.0f} MB |",
        f"| ensemble accuracy vs dataset labels (5-fold) | {report['ensemble_accuracy']:.3f} |",
        f"| pairs with strength_mean < 0 | {report['fraction_negative']:.1%} |",
        "",
        "Accuracy per source: " + ", ".join(
            f"{name.split('/')[1]} {entry['ensemble_accuracy']:.3f}"
            for name, entry in report["ensemble_accuracy_by_source"].items()
        ),
        "",
        "Detection audit at 20% planted flips:",
        "",
        audited["audit_markdown"],
    ])
    from rmclean.files import write_results

    write_results(RESULTS / f"bench_score_{args.backbone}", report, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
