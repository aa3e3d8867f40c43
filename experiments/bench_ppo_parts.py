"""The three choices that made a PPO update cheaper on CPU, each measured against what it replaced,
in one run with the two variants interleaved (this machine's speed moves between runs, so only
ratios within a run are reported):

1. **sampler**: rmclean's sampling loop (``rollout.sample``: trunk KV cache, output layer as
   W·hᵀ, one uniform number a token) against ``model.generate`` with the same settings (T 1, no
   top-k / top-p), on ``--rounds`` batches of ``--batch`` hh prompts × ``--max-new-tokens``;
   compared per decoding step, since the two draw different tokens and may stop at other steps;
2. **output layer**: W·hᵀ (``rollout._last_logits``) against ``head(hidden)`` for ``--batch``
   rows against SmolLM2's vocabulary;
3. **optimiser step**: fused AdamW against the foreach AdamW (PyTorch's default) over SmolLM2's
   parameters.

    RMCLEAN_DATA_DIR=../shared/data python experiments/bench_ppo_parts.py

Writes ``experiments/results/bench_ppo_parts.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from machine import machine  # experiments/machine.py

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"


def timed(function, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``function`` after one untimed call."""
    function()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - started)
    return seconds


def sampler_ab(tokenizer, model, prompt_batches: list[list[str]], max_new_tokens: int) -> dict:
    """Seconds per decoding step of rmclean's loop and of ``generate``, interleaved batch by batch
    (the order alternates), each batch drawn by both from the same seed."""
    import torch
    from transformers import GenerationConfig

    from rmclean.train.rollout import sample

    settings = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)

    def ours(texts) -> int:
        """Decoding steps taken."""
        rollout = sample(tokenizer, model, texts, max_new_tokens=max_new_tokens, max_prompt_tokens=256)
        return rollout.input_ids.shape[1] - rollout.prompt_length

    def theirs(texts) -> int:
        encoded = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=256,
                            add_special_tokens=False)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return model.generate(**encoded, generation_config=settings).shape[1] - encoded["input_ids"].shape[1]

    per_step = {"rmclean": [], "generate": []}
    ours(prompt_batches[0])  # warm-up
    for index, texts in enumerate(prompt_batches):
        order = (("rmclean", ours), ("generate", theirs))
        for name, function in order if index % 2 == 0 else order[::-1]:
            torch.manual_seed(index)
            started = time.perf_counter()
            steps = function(texts)
            per_step[name].append((time.perf_counter() - started) / steps)
    ratios = np.array(per_step["generate"]) / np.array(per_step["rmclean"])
    return {"seconds_per_step": per_step, "generate_over_rmclean": ratios.tolist(),
            "median_ratio": float(np.median(ratios))}


def output_layer_ab(model, rows: int, repeats: int) -> dict:
    """Seconds of ``head(hidden)`` and of W·hᵀ for ``rows`` hidden states, interleaved."""
    import torch

    from rmclean.train.rollout import _last_logits

    head = model.get_output_embeddings()
    hidden = torch.randn(rows, head.weight.shape[1], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(_last_logits(head, hidden), head(hidden), rtol=1e-4, atol=1e-4)
        linear, ours = [], []
        for _ in range(repeats):
            linear += timed(lambda: head(hidden), 5)
            ours += timed(lambda: _last_logits(head, hidden), 5)
    return {"head_seconds_median": float(np.median(linear)), "w_ht_seconds_median": float(np.median(ours)),
            "ratio": float(np.median(linear) / np.median(ours)), "vocabulary": int(head.weight.shape[0])}


def optimiser_ab(model, repeats: int) -> dict:
    """Seconds of one AdamW step over ``model``'s parameters (random gradients), foreach and fused,
    interleaved; the settings are the PPO trainer's."""
    import torch

    generator = torch.Generator().manual_seed(0)
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    for parameter in parameters:
        parameter.grad = torch.randn(parameter.shape, generator=generator) * 1e-3
    optimisers = {variant: torch.optim.AdamW(parameters, lr=1e-5, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.0,
                                             **{variant: True}) for variant in ("foreach", "fused")}
    seconds = {variant: [] for variant in optimisers}
    for _ in range(repeats):
        for variant, optimiser in optimisers.items():
            seconds[variant] += timed(optimiser.step, 2)
    return {"foreach_seconds_median": float(np.median(seconds["foreach"])),
            "fused_seconds_median": float(np.median(seconds["fused"])),
            "ratio": float(np.median(seconds["foreach"]) / np.median(seconds["fused"])),
            "parameters": int(sum(parameter.numel() for parameter in parameters))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset", default="helpful-base")
    parser.add_argument("--rounds", type=int, default=6, help="prompt batches sampled by both samplers")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import rmclean
    from rmclean.data.chat import first_turn
    from rmclean.files import write_results
    from rmclean.train.rollout import load_policy, render_prompts

    tokenizer, model = load_policy("smollm2")
    pairs, _ = rmclean.split_invalid(rmclean.load_pairs("hh-rlhf", subset=args.subset))
    prompts = [first_turn(prompt) for prompt in pairs["prompt"][: args.rounds * args.batch]]
    batches = [render_prompts(tokenizer, prompts[start:start + args.batch])[0]
               for start in range(0, len(prompts), args.batch)]
    report = {"machine": machine(), "settings": vars(args),
              "sampler": sampler_ab(tokenizer, model, batches, args.max_new_tokens),
              "output_layer": output_layer_ab(model, args.batch, repeats=10),
              "optimiser": optimiser_ab(model, repeats=3)}
    sampler, layer, optimiser = report["sampler"], report["output_layer"], report["optimiser"]
    markdown = "\n".join([
        f"SmolLM2-135M-Instruct, {args.batch} hh-rlhf {args.subset} prompts a batch; machine: {report['machine']}.", "",
        "| what | replaced | ratio (old / new seconds), median |", "|---|---|---:|",
        f"| rmclean's sampling loop, per decoding step ({args.rounds} batches × up to {args.max_new_tokens} tokens, "
        f"interleaved) | `model.generate` | {sampler['median_ratio']:.2f}× |",
        f"| output layer as W·hᵀ ({args.batch} rows × {layer['vocabulary']:,} tokens) | `head(hidden)` | "
        f"{layer['ratio']:.2f}× |",
        f"| fused AdamW ({optimiser['parameters'] / 1e6:.0f} M parameters) | foreach AdamW | {optimiser['ratio']:.2f}× |",
        "", "Per-batch sampler ratios: " + ", ".join(f"{ratio:.2f}" for ratio in sampler["generate_over_rmclean"]) + ".",
        f"Optimiser step: {optimiser['foreach_seconds_median']:.3f} s foreach, {optimiser['fused_seconds_median']:.3f} s "
        "fused.", ""])
    write_results(RESULTS / "bench_ppo_parts", report, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
