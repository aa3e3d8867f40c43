"""Faster backbone features, each speed-up switched on in turn: throughput on the same pairs, and
the planted-flip AUROC each gives, in one run.

    RMCLEAN_DATA_DIR=../shared/data python experiments/bench_features.py [--backbone smollm2]
        [--speed-pairs 24] [--pairs-per-source 200] [--variants today,prefix,...]

Variants (``FeatureConfig`` settings of the transcript view; ``today`` is what a run did before):

- ``today``: each text alone, left-truncated on its own, every block, ``--precision auto``;
- ``prefix``: shared-prefix reuse (``prefix_reuse``, the default now): both sides of a pair cut
  at one position, the dialogue run once, both responses on its key/value cache;
- ``prefix+int8``: and the linear layers in dynamic int8 (``--precision int8``);
- ``prefix+layerK``: and only the first K blocks run (``--layer K``);
- ``prefix+int8+layerK``: both;
- ``prefix+L128`` (any ``+LN``): texts cut to N tokens instead of 256 (``--max-length N``);
- ``minilm-default``: what a first run embeds by default today (MiniLM, transcript and
  response+prompt views: the prompts and responses alone too), timed only.

1. **Throughput**: every variant embeds the same ``--speed-pairs`` pairs (spread over the pooled
   hh-rlhf test splits) into a fresh feature cache, in rounds of a few pairs with the variants
   taking turns, so the shared machine's noise falls on all of them alike; texts per second and
   the ratio to ``today``.
2. **Fidelity**: every variant's features of a stratified sample (``--pairs-per-source`` pairs
   of each test split, seed 0), then the detection audit at 20% planted flips (the same flips for
   all; 10 members × 5 folds per source, ``--C``): AUROC per variant and its paired bootstrap
   difference from ``today`` with a 95% interval, and the cosine similarity of the features.
   These features go to the ordinary cache (``$RMCLEAN_CACHE_DIR``), so a killed run resumes.

Writes experiments/results/bench_features.{json,md} after every step (a rerun skips what is there).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import rmclean
from rmclean.audit import AuditConfig, bootstrap_aurocs, detection_metrics, interval
from rmclean.features.backbones import default_cache_dir, resolve_backbone
from rmclean.features.views import FeatureConfig, feature_views, pair_features
from rmclean.files import write_results
from rmclean.noise import swap_where
from rmclean.score import ScoreConfig, training_groups, view_margins

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_features"
ROUND = 4  # pairs per turn in the throughput rounds


def variants(names: list[str], backbone: str) -> dict[str, FeatureConfig]:
    """``{name: FeatureConfig}`` of the transcript view for each variant name."""
    result = {}
    for name in names:
        if name == "minilm-default":  # what a first run embeds today: MiniLM, both default views
            result[name] = FeatureConfig(backbone="minilm")
            continue
        parts = name.split("+")
        layer = next((int(part[5:]) for part in parts if part.startswith("layer")), None)
        length = next((int(part[1:]) for part in parts if part[:1] == "L" and part[1:].isdigit()), 256)
        result[name] = FeatureConfig(backbone=backbone, views=("transcript",), prefix_reuse="prefix" in parts,
                                     precision="int8" if "int8" in parts else "auto", layer=layer, max_length=length)
    return result


def sample(pairs, per_source: int, seed: int = 0):
    """``per_source`` random pairs of each source (all where fewer), in input order; nested in
    ``per_source``."""
    rng = np.random.default_rng(seed)
    sources = np.asarray(pairs["source"])
    # the first ``per_source`` of one seeded order per source: a larger sample holds a smaller one,
    # so a rerun with more pairs reuses the cached features
    chosen = [rng.permutation(np.flatnonzero(sources == source))[:per_source] for source in sorted(set(sources))]
    return pairs.select(np.sort(np.concatenate(chosen)).tolist())


def throughput(pairs, configs: dict[str, FeatureConfig], speed_pairs: int) -> dict[str, dict]:
    """Texts per second of each variant on the same pairs, taking turns (module docstring)."""
    picked = pairs.select(np.linspace(0, len(pairs) - 1, speed_pairs + 1).astype(int).tolist())
    warmup, timed = picked.select([0]), picked.select(range(1, len(picked)))
    seconds = dict.fromkeys(configs, 0.0)
    with tempfile.TemporaryDirectory() as scratch:
        for name, config in configs.items():  # each variant in its own empty cache, models from the real one
            folder = Path(scratch) / name.replace("+", "_")
            folder.mkdir()
            (folder / "models").symlink_to(default_cache_dir() / "models", target_is_directory=True)
            feature_views(warmup, config, cache_dir=folder, progress=False)  # loads the model: not timed
        for start in range(0, len(timed), ROUND):
            chunk = timed.select(range(start, min(start + ROUND, len(timed))))
            for name, config in configs.items():
                began = time.perf_counter()
                feature_views(chunk, config, cache_dir=Path(scratch) / name.replace("+", "_"), progress=False)
                seconds[name] += time.perf_counter() - began
            print(f"throughput: {start + len(chunk)}/{len(timed)} pairs", {k: round(v, 1) for k, v in seconds.items()},
                  flush=True)
    base = seconds.get("today", next(iter(seconds.values())))
    return {name: {"texts_per_second": 2 * len(timed) / value, "speedup": base / value, "seconds": value}
            for name, value in seconds.items()}


def fidelity(pairs, configs: dict[str, FeatureConfig], score_config: ScoreConfig, done: dict) -> dict:
    """AUROC at 20% planted flips of each variant's features, paired differences from ``today``."""
    configs = {name: config for name, config in configs.items() if name != "minilm-default"}
    groups = training_groups(pairs, score_config)
    flipped = AuditConfig().flips(len(pairs), 0.2)
    features = {}
    for name, config in configs.items():
        began = time.perf_counter()
        features[name] = pair_features(pairs, config, progress=True)
        done.setdefault("embedding_seconds", {}).setdefault(name, time.perf_counter() - began)
    suspicion, accuracy = {}, {}
    for name, (chosen, rejected) in features.items():
        noisy = swap_where(flipped, chosen, rejected)
        suspicion[name] = -view_margins([noisy], groups, score_config.head_config()).mean(axis=1)
        accuracy[name] = float((view_margins([(chosen, rejected)], groups, score_config.head_config())
                                .mean(axis=1) > 0).mean())
    resampled = bootstrap_aurocs(flipped, suspicion)
    reference = "today" if "today" in features else next(iter(features))
    rows = {}
    for name, (chosen, rejected) in features.items():
        both, ref = np.vstack([chosen, rejected]), np.vstack(features[reference])
        cosine = (both * ref).sum(1) / (np.linalg.norm(both, axis=1) * np.linalg.norm(ref, axis=1))
        rows[name] = {"auroc": detection_metrics(flipped, suspicion[name])["auroc"], "accuracy": accuracy[name],
                      "difference": detection_metrics(flipped, suspicion[name])["auroc"]
                      - detection_metrics(flipped, suspicion[reference])["auroc"],
                      "interval": interval(resampled[name] - resampled[reference]),
                      "cosine_min": float(cosine.min()), "cosine_median": float(np.median(cosine)),
                      "changed": float((cosine < 0.9999).mean())}
    return rows


def to_markdown(result: dict) -> str:
    lines = [f"Backbone {result['backbone']}, transcript view, L = 256 tokens unless a variant says +LN", ""]
    if "throughput" in result:
        lines += [f"**Throughput** ({result['throughput_machine']}) on the same {result['speed_pairs']} pairs "
                  f"(variants taking turns, {ROUND} pairs "
                  "a turn, fresh caches; time per pair covers every text a variant's views read, so "
                  "minilm-default's includes its prompts and responses alone):", "",
                  "| variant | transcripts/s | seconds per pair | × today's speed |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {row['texts_per_second']:.2f} | {row['seconds'] / result['speed_pairs']:.2f} | "
                  f"{row['speedup']:.2f}× |" for name, row in result["throughput"].items()]
        lines.append("")
    if "fidelity" in result:
        lines += [f"**Fidelity** ({result['fidelity_machine']}) on {result['fidelity_pairs']:,} pairs ({result['pairs_per_source']} per test split, "
                  f"seed 0); audit at 20% planted flips, {result['members']} members × 5 folds per source, "
                  f"C = {result['C']:g}:", "",
                  "| variant | accuracy | AUROC | − today [95% paired interval] | feature cosine to today (min / median) "
                  "| texts with cosine < 0.9999 |",
                  "|---|---:|---:|---|---|---:|"]
        lines += [f"| {name} | {row['accuracy']:.3f} | {row['auroc']:.3f} | {row['difference']:+.3f} "
                  f"[{row['interval'][0]:+.3f}, {row['interval'][1]:+.3f}] | "
                  f"{row['cosine_min']:.4f} / {row['cosine_median']:.4f} | "
                  f"{format(row['changed'], '.1%') if 'changed' in row else ''} |"
                  for name, row in result["fidelity"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="smollm2")
    parser.add_argument("--variants",
                        default="today,prefix,prefix+int8,prefix+layer22,prefix+int8+layer22,prefix+int8+layer26,minilm-default")
    parser.add_argument("--speed-pairs", type=int, default=24)
    parser.add_argument("--pairs-per-source", type=int, default=200)
    parser.add_argument("--C", type=float, default=0.0001)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--fidelity-variants", default=None,
                        help="variants the fidelity step audits, any names (default: those of --variants but minilm-default)")
    parser.add_argument("--skip", default="", help="steps to skip: throughput, fidelity")
    parser.add_argument("--redo", default="", help="steps to run again although their results are saved")
    args = parser.parse_args()

    configs = variants(args.variants.split(","), args.backbone)
    saved = RESULTS.with_suffix(".json")
    result = json.loads(saved.read_text()) if saved.is_file() else {}
    if result.get("backbone") != args.backbone:
        result = {"backbone": args.backbone}
    if result.get("variants") != list(configs):  # the throughput table is of these variants
        result.pop("throughput", None)
    result["variants"] = list(configs)
    result.update(fingerprint=resolve_backbone(args.backbone).fingerprint())
    pairs, _ = rmclean.split_invalid(rmclean.load_pairs("hh-rlhf"))

    for step in args.redo.split(","):
        result.pop(step, None)
    if "throughput" not in result and "throughput" not in args.skip:
        result.update(throughput=throughput(pairs, configs, args.speed_pairs), speed_pairs=args.speed_pairs,
                      throughput_machine=machine())
        write_results(RESULTS, result, to_markdown(result))
    if "fidelity" not in result and "fidelity" not in args.skip:
        subset = sample(pairs, args.pairs_per_source)
        score_config = replace(ScoreConfig(), members=args.members, C=args.C)
        audited = variants(args.fidelity_variants.split(","), args.backbone) if args.fidelity_variants else configs
        result.update(fidelity=fidelity(subset, audited, score_config, result), fidelity_pairs=len(subset),
                      pairs_per_source=args.pairs_per_source, members=args.members, C=args.C,
                      fidelity_machine=machine())
        write_results(RESULTS, result, to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
