"""SmolLM2's hidden layers as feature views, and non-convex (MLP) members on its features.

    RMCLEAN_DATA_DIR=../shared/data python experiments/smollm2_layers.py [--subsets harmless-base,helpful-base]

Two more tries at a detector clearly better than cleanlab on the same features (issue #3):

1. **Layers as views.** One SmolLM2 pass keeps several hidden layers (last token + mean over
   tokens of each, transcript left-truncated to 256 tokens, bfloat16 autocast where native). Each
   layer alone, and members over several layers (each layer a view with its own members, on one
   scale), go through the detection audit at 20% planted flips; cleanlab sees the layers'
   features side by side.
2. **MLP members** (non-convex, so the seeds give real diversity) on the final layer, with weight
   decay from light to heavy, alone and averaged with the linear members.

Per subset, 10 members per view × 5 folds (``--members`` counts per view here; a panel of n
layers gets ``ScoreConfig(members=10 * n)``, the total), C = 0.0001 (the best SmolLM2 setting in
compare_backbones).
The layer features are saved once per subset under the cache folder
(``$RMCLEAN_CACHE_DIR/experiments/smollm2_layers/``; 10–13 minutes of embedding per subset
here). Writes experiments/results/smollm2_layers.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import rmclean
from rmclean.audit import (
    AuditConfig,
    audit_features,
    bootstrap_aurocs,
    cleanlab_suspicion,
    detection_metrics,
    interval,
)
from rmclean.features.backbones import default_cache_dir, load_model, resolve_backbone, resolve_precision
from rmclean.features.embedding import pool_hidden_states
from rmclean.files import write_results
from rmclean.features.views import scoring_texts
from rmclean.noise import swap_where
from rmclean.score import ScoreConfig, training_groups, view_margins

RESULTS = Path(__file__).resolve().parent / "results"
LAYERS = (6, 10, 14, 18, 22, 26, 30)  # SmolLM2-135M has 30 layers; 30 is the final (normed) state
PANELS = ((14, 30), (18, 30), (14, 22, 30), (10, 18, 26), LAYERS)
PAIRED = ("rmclean on the final layer", "cleanlab on the final layer", "cleanlab on the same layers")
MLP_SETTINGS = ((1.0, 64), (10.0, 64), (30.0, 64), (10.0, 16))  # (weight decay, hidden units)


def layer_features(texts: list[str], layers: tuple[int, ...], max_length: int, path: Path) -> dict[int, np.ndarray]:
    """``{layer: (len(texts), 1152)}`` pooled hidden states of SmolLM2, read from ``path``
    when it was saved there before, else embedded (longest first, batches of 32) and saved."""
    if path.is_file():
        saved = np.load(path)
        if int(saved["texts"]) == len(texts) and all(f"L{layer}" in saved.files for layer in layers):
            return {layer: saved[f"L{layer}"] for layer in layers}
    import contextlib

    import torch
    from tqdm.auto import tqdm

    backbone = resolve_backbone("smollm2")
    tokenizer, model = load_model(backbone)
    precision = resolve_precision("auto", "cpu")
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")[::-1]
    features = {layer: np.zeros((len(texts), 2 * model.config.hidden_size), np.float32) for layer in layers}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bfloat16" else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        for start in tqdm(range(0, len(order), 32), desc="embedding layers", unit="batch"):
            index = order[start:start + 32]
            encoded = tokenizer([texts[i] for i in index], truncation=True, max_length=max_length, padding=True,
                                return_tensors="pt")
            hidden_states = model(**encoded, output_hidden_states=True).hidden_states
            for layer in layers:
                features[layer][index] = pool_hidden_states(hidden_states[layer], encoded["attention_mask"], "last+mean").numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, texts=len(texts), **{f"L{layer}": values for layer, values in features.items()})
    return features


def per_view(config: ScoreConfig, views) -> ScoreConfig:
    """``config`` with its ``members`` for every one of ``views`` (``ScoreConfig.members`` is the
    total over views)."""
    return replace(config, members=config.members * len(views))


def audit_row(name: str, views, groups, config: ScoreConfig) -> dict:
    config = per_view(config, views)
    margins = view_margins(views, groups, config.head_config())
    audited = audit_features(views, groups, config, AuditConfig(rates=(0.2,)))
    return {"panel": name, "accuracy": float((margins.mean(axis=1) > 0).mean()),
            "auroc_at_0.2": {row["detector"]: row["auroc"] for row in audited["rows"]}}


def paired_row(views, final_layer, groups, config: ScoreConfig) -> dict:
    """rmclean over several layers against rmclean and cleanlab on the final layer alone and
    cleanlab on the same layers, on the audit's planted flips, with paired bootstrap intervals
    of the differences."""
    flipped = AuditConfig().flips(final_layer[0].shape[0], 0.2)
    noisy = [swap_where(flipped, chosen, rejected) for chosen, rejected in views]
    noisy_final = swap_where(flipped, *final_layer)
    suspicion = {
        "layers": -view_margins(noisy, groups, per_view(config, noisy).head_config()).mean(axis=1),
        PAIRED[0]: -view_margins([noisy_final], groups, config.head_config()).mean(axis=1),
        PAIRED[1]: cleanlab_suspicion(*noisy_final, groups, config),
        PAIRED[2]: cleanlab_suspicion(np.hstack([c for c, _ in noisy]), np.hstack([r for _, r in noisy]), groups, config),
    }
    resampled = bootstrap_aurocs(flipped, suspicion)
    auroc = {name: detection_metrics(flipped, values)["auroc"] for name, values in suspicion.items()}
    return {name: {"difference": auroc["layers"] - auroc[name], "interval": interval(resampled["layers"] - resampled[name])}
            for name in PAIRED}


def mlp_rows(chosen, rejected, groups, config: ScoreConfig) -> list[dict]:
    """MLP members on one view at 20% planted flips (the audit's flips), alone and averaged
    (each on unit scale) with the linear members."""
    flipped = AuditConfig().flips(chosen.shape[0], 0.2)
    noisy = [swap_where(flipped, chosen, rejected)]
    linear = view_margins(noisy, groups, config.head_config()).mean(axis=1)
    rows = [{"panel": "linear members", "auroc": detection_metrics(flipped, -linear)["auroc"]}]
    for weight_decay, hidden in MLP_SETTINGS:
        heads = replace(config.head_config(), head="mlp", weight_decay=weight_decay, hidden=hidden, epochs=10,
                        min_steps=0)
        margins = view_margins(noisy, groups, heads)
        accuracy = float((view_margins([(chosen, rejected)], groups, heads).mean(axis=1) > 0).mean())
        both = margins.mean(axis=1) / margins.mean(axis=1).std() + linear / linear.std()
        rows.append({"panel": f"MLP members, weight decay {weight_decay:g}, {hidden} hidden", "accuracy": accuracy,
                     "auroc": detection_metrics(flipped, -margins.mean(axis=1))["auroc"],
                     "single member": detection_metrics(flipped, -margins[:, 0])["auroc"],
                     "with linear": detection_metrics(flipped, -both)["auroc"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subsets", default="harmless-base,helpful-base")
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--C", type=float, default=0.0001)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()

    config = ScoreConfig(members=args.members, C=args.C)
    fingerprint = resolve_backbone("smollm2").fingerprint()
    results = {}
    for subset in args.subsets.split(","):
        pairs, _ = rmclean.split_invalid(rmclean.load_pairs("hh-rlhf", subset=subset))
        chosen_texts, rejected_texts = scoring_texts(pairs)
        path = (default_cache_dir() / "experiments" / "smollm2_layers"
                / f"{subset}-{fingerprint}-L{args.max_length}-{resolve_precision('auto', 'cpu')}.npz")
        started = time.perf_counter()
        features = layer_features(chosen_texts + rejected_texts, LAYERS, args.max_length, path)
        n_pairs = len(pairs)
        views = {layer: (values[:n_pairs], values[n_pairs:]) for layer, values in features.items()}
        groups = training_groups(pairs, config)
        rows = [audit_row(f"layer {layer}", [views[layer]], groups, config) for layer in LAYERS]
        rows += [audit_row("layers " + " + ".join(map(str, panel)), [views[layer] for layer in panel], groups, config)
                 for panel in PANELS]
        best = PANELS[2]
        results[subset] = {"pairs": n_pairs, "layers": rows, "mlp": mlp_rows(*views[LAYERS[-1]], groups, config),
                           "paired": {"panel": list(best), **paired_row([views[layer] for layer in best],
                                                                        views[LAYERS[-1]], groups, config)},
                           "seconds": time.perf_counter() - started}
        print(subset, json.dumps(results[subset], indent=1), flush=True)

    columns = ("rmclean", "rmclean mean/std", "single member", "rmclean in-sample", "cleanlab", "oracle")
    lines = [f"SmolLM2 hidden layers as views; {args.members} members per view × 5 folds, C = {args.C:g}, audit at 20% "
             "planted flips; one run per subset", ""]
    for subset, result in results.items():
        lines += [f"**{subset}** ({result['pairs']:,} pairs)", "",
                  "| features | accuracy | " + " | ".join(f"AUROC {c}" for c in columns) + " |",
                  "|---|---:|" + "---:|" * len(columns)]
        for row in result["layers"]:
            cells = " | ".join(f"{row['auroc_at_0.2'].get(c, float('nan')):.3f}" for c in columns)
            lines.append(f"| {row['panel']} | {row['accuracy']:.3f} | {cells} |")
        paired = result["paired"]
        lines += ["", f"rmclean on layers {' + '.join(map(str, paired['panel']))} minus each of these, on the same "
                  "planted flips (paired bootstrap 95% interval):", ""]
        lines += [f"- {name}: {paired[name]['difference']:+.3f} [{paired[name]['interval'][0]:+.3f}, "
                  f"{paired[name]['interval'][1]:+.3f}]" for name in PAIRED]
        lines += ["", f"MLP members on layer {LAYERS[-1]} (AUROC at 20% flips):", "",
                  "| members | accuracy | AUROC | single member | averaged with linear |", "|---|---:|---:|---:|---:|"]
        for row in result["mlp"]:
            if "accuracy" in row:
                lines.append(f"| {row['panel']} | {row['accuracy']:.3f} | {row['auroc']:.3f} | "
                             f"{row['single member']:.3f} | {row['with linear']:.3f} |")
            else:
                lines.append(f"| {row['panel']} | | {row['auroc']:.3f} | | |")
        lines.append("")
    write_results(RESULTS / "smollm2_layers",
                  {"config": {"members": args.members, "C": args.C, "max_length": args.max_length, "layers": LAYERS},
                   "results": results}, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
