"""What ``--mixed-precision bf16`` buys a PPO update on a CPU, and what it costs in fidelity.

1. **cost**: ``--rounds`` rounds, each one cost run in full precision (``no``) and one in
   ``bf16`` (accelerate's autocast), interleaved so both see the same machine; each run is
   ``--cost-updates`` updates of 8 episodes × 48 tokens with the default critic, its first
   update left out. Reported: each stage's median seconds per update and the ratio no / bf16.
2. **fidelity** (with ``--trained-policy DIR``, a finished ``rmclean ppo`` policy): the SFT
   policy samples ``--fidelity-prompts`` held-out prompts; the trained policy's and the
   reference's token log-probs are computed in full precision and under bf16 autocast. Reported:
   the mean absolute difference of a token log-prob, and the per-response KL k1 (the quantity
   PPO's penalty and the reports use) under each precision.

    rmclean train-rm hh-rlhf --subset helpful-base --views transcript --out rm-helpful
    RMCLEAN_DATA_DIR=../shared/data python experiments/bench_ppo_precision.py --reward-model rm-helpful \\
        --trained-policy ppo/policy

A CPU without native bfloat16 (no AVX512-BF16 / AMX) runs bf16 slower than float32: the
results name the machine. Writes ``experiments/results/<name>.{json,md}`` (default
``bench_ppo_precision``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

from bench_ppo import STAGES, child, update_seconds  # experiments/bench_ppo.py
from machine import machine  # experiments/machine.py

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
PRECISIONS = ("no", "bf16")


def fidelity(trained_policy: str, prompts: list[str], seed: int) -> dict:
    """Token log-prob differences and per-response KL k1 of ``trained_policy`` against the SFT
    policy, in float32 and under bf16 autocast, on the SFT policy's samples of ``prompts``."""
    import torch

    from rmclean.train.ppo_math import masked_mean
    from rmclean.train.rollout import EVAL_SAMPLING, load_policy, render_prompts, sample, token_logprobs

    tokenizer, reference = load_policy("smollm2")
    _, trained = load_policy(trained_policy)
    texts, templated = render_prompts(tokenizer, prompts)
    torch.manual_seed(seed)
    rollout = sample(tokenizer, reference, texts, max_new_tokens=48, max_prompt_tokens=256,
                     add_special_tokens=not templated, **EVAL_SAMPLING)
    mask = rollout.response_mask.float()
    logprobs = {}
    with torch.no_grad():
        for precision in PRECISIONS:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                logprobs[precision] = {name: token_logprobs(model, rollout).float()
                                       for name, model in (("trained", trained), ("reference", reference))}
    kl = {precision: ((values["trained"] - values["reference"]) * mask).sum(-1)
          for precision, values in logprobs.items()}
    return {"responses": int(mask.shape[0]), "tokens": int(mask.sum()),
            "mean_abs_logprob_difference": {
                name: float(masked_mean((logprobs["bf16"][name] - logprobs["no"][name]).abs(), mask))
                for name in ("trained", "reference")},
            "kl_k1_mean": {precision: float(values.mean()) for precision, values in kl.items()},
            "kl_k1_mean_abs_difference_per_response": float((kl["bf16"] - kl["no"]).abs().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reward-model", required=True)
    parser.add_argument("--subset", default="helpful-base")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cost-updates", type=int, default=4)
    parser.add_argument("--trained-policy", default=None, help="a finished rmclean ppo policy folder (fidelity)")
    parser.add_argument("--fidelity-prompts", type=int, default=64)
    parser.add_argument("--name", default="bench_ppo_precision")
    parser.add_argument("--work", type=Path, default=Path("ppo-bench"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import rmclean
    from rmclean.files import write_results

    base = {"subset": args.subset, "reward_model": str(args.reward_model), "progress": False}
    seconds: dict[str, list[dict]] = {precision: [] for precision in PRECISIONS}
    peaks: dict[str, list[float]] = {precision: [] for precision in PRECISIONS}
    for round_index in range(args.rounds):
        for precision in PRECISIONS:
            out = args.work / f"precision-{precision}"
            shutil.rmtree(out, ignore_errors=True)
            cost = child({**base, "out": str(out),
                          "config": {"first_turn": True, "updates": args.cost_updates, "critic_warmup": 0,
                                     "sample_every": 1000, "mixed_precision": precision}})
            seconds[precision] += cost["metrics"][1:]
            peaks[precision].append(cost["peak_rss_mb"])
            print(f"round {round_index + 1}, {precision}: median update "
                  f"{np.median([update_seconds(row) for row in cost['metrics'][1:]]):.1f} s", flush=True)
    medians = {precision: {**{stage: float(np.median([row.get(stage, 0.0) for row in rows])) for stage in STAGES[:4]},
                           "update_s": float(np.median([update_seconds(row) for row in rows]))}
               for precision, rows in seconds.items()}
    report = {"machine": machine(), "rounds": args.rounds, "cost_updates": args.cost_updates,
              "updates_timed": {precision: len(rows) for precision, rows in seconds.items()},
              "median_seconds": medians, "peak_rss_mb": {p: max(v) for p, v in peaks.items()},
              "speedup": {stage: medians["no"][stage] / medians["bf16"][stage] for stage in medians["no"]}}
    lines = [f"PPO update cost, full precision against `--mixed-precision bf16` (accelerate's autocast), SmolLM2-135M-"
             f"Instruct, 8 episodes × 48 tokens, default critic, `{args.reward_model}`; {args.rounds} interleaved "
             f"rounds of {args.cost_updates} updates each (the first of each run left out); machine: {report['machine']}.",
             "", "| stage | no (s) | bf16 (s) | no / bf16 |", "|---|---:|---:|---:|"]
    lines += [f"| {stage.removesuffix('_s')} | {medians['no'][stage]:.2f} | {medians['bf16'][stage]:.2f} | "
              f"{report['speedup'][stage]:.2f}× |" for stage in medians["no"]]
    lines += [f"| peak RSS (MB) | {report['peak_rss_mb']['no']:,.0f} | {report['peak_rss_mb']['bf16']:,.0f} | |", ""]
    if args.trained_policy:
        pairs, _ = rmclean.split_invalid(rmclean.load_pairs("hh-rlhf", subset=args.subset))
        prompts = list(dict.fromkeys(pairs["prompt"]))[-args.fidelity_prompts:]
        report["fidelity"] = {"trained_policy": args.trained_policy, **fidelity(args.trained_policy, prompts, 0)}
        found = report["fidelity"]
        lines += [f"**Fidelity** (`{args.trained_policy}` against the SFT policy on the SFT policy's answers to "
                  f"{found['responses']} {args.subset} prompts, {found['tokens']:,} tokens): a token log-prob differs "
                  f"between float32 and bf16 by {found['mean_abs_logprob_difference']['trained']:.4f} nats on average "
                  f"(reference: {found['mean_abs_logprob_difference']['reference']:.4f}); the mean KL k1 per response "
                  f"is {found['kl_k1_mean']['no']:.4f} in float32 and {found['kl_k1_mean']['bf16']:.4f} under bf16, "
                  f"and one response's k1 moves by {found['kl_k1_mean_abs_difference_per_response']:.4f} on average.", ""]
    markdown = "\n".join(lines)
    write_results(RESULTS / args.name, report, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
