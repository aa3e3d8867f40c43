"""How the head stage of ``rmclean score`` grows with pairs (issue #15, item 4, "How cost grows").

    python experiments/bench_heads_scale.py [--sizes 8552,34208,160800] [--layouts smollm2,minilm] [--threads 1,2] [--force]

The head stage is what ``rmclean.score`` does once the features are in hand: ``training_groups``
then ``view_margins`` (every seeded member of every fold, per source and view, trained and
scored). This runs exactly those two functions with the default ``ScoreConfig`` (10 linear
members, split over the views as ``view_margins`` splits them, x 5 folds, C = 0.0003, bootstrap,
group_by source) on synthetic float32 features:

- ``smollm2``: one view of 1,152 features (SmolLM2 last token + mean, ``--views transcript``);
- ``minilm``: the default's two views, 384 (transcript) and 768 (response+prompt) features.

Features have a low-rank correlated part (real embeddings are far from isotropic, which is what
makes L-BFGS work) and a planted linear preference: chosen is the response a hidden direction
prefers, up to logistic noise, so the heads have something to learn. Pairs split over four
sources in the proportions of hh-rlhf's test splits. Sizes: the pooled test splits (8,552), four
times that (34,208) and hh-rlhf's full train split (160,800).

Each (layout, size, torch threads) runs in a fresh child process, which records wall and CPU time
of the head stage, the L-BFGS iterations, the features' bytes, resident memory before the stage and its peak
during it (VmHWM, reset before the stage through /proc/self/clear_refs). Results are written after
every size to experiments/results/bench_heads_scale.{json,md}; a rerun skips the sizes already
there (resumable), ``--force`` measures them again.

Threads: torch's default here is one per core (2). On a machine shared with other work, every
parallel region of a 2-thread run waits for a sibling thread that another process has pushed off
its core (about 15 ms each, measured on this machine at load 3-4: a 50 x 2,749 multiply-and-sum
took 0.06 ms on one thread and 16 ms on two), so 2-thread times there measure the neighbours as
much as the work. One thread is the stable measure of how cost grows; both are recorded. Thread
count changes summation order, so the two runs' L-BFGS paths (and margins) differ in the last
digits of the solver's tolerance.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine  # experiments/machine.py

RESULTS = Path(__file__).resolve().parent / "results" / "bench_heads_scale"
SIZES = (8552, 34208, 160800)
HH_TRAIN_PAIRS = 160800
LAYOUTS = {  # name: (backbone, views, feature dimension of each view)
    "smollm2": ("smollm2", ("transcript",), (1152,)),
    "minilm": ("minilm", ("transcript", "response+prompt"), (384, 768)),
}
# hh-rlhf's test splits: pairs per source (the full train split has nearly the same shares)
SOURCES = {"hh-rlhf/harmless-base": 2312, "hh-rlhf/helpful-base": 2354, "hh-rlhf/helpful-online": 1137,
           "hh-rlhf/helpful-rejection-sampled": 2749}
RECORD_VERSION = 4  # runs recorded by an older version of this script are measured again
RANK_SHARE, DECAY, TOP, NOISE, LABEL_NOISE = 2 / 3, 0.3, 2.2, 0.4, 1.0
CHUNK = 8192


def source_counts(n_pairs: int) -> dict[str, int]:
    """``n_pairs`` split over the four sources in hh-rlhf's test proportions (largest remainder)."""
    total = sum(SOURCES.values())
    exact = {name: n_pairs * count / total for name, count in SOURCES.items()}
    counts = {name: int(value) for name, value in exact.items()}
    for name in sorted(exact, key=lambda name: counts[name] - exact[name])[: n_pairs - sum(counts.values())]:
        counts[name] += 1
    return counts


def synthetic_view(n_pairs: int, dim: int, seed: int):
    """``(chosen, rejected)`` float32 ``(n_pairs, dim)``: offset + correlated part + noise, with a
    planted preference along a hidden direction (built in chunks: no float64 or full temporaries).

    The correlated part has rank 2/3 of ``dim`` and singular values falling as k^-0.3, the first
    2.2x the second: on 1,200 real hh-rlhf pairs (MiniLM transcript features, 384 dims) the
    standardized differences have eigenvalues 40, 9.9, 9.0, 8.0, 7.3, ... with 103 above 1; these
    have 41, 9.6, 8.5, 7.5, 7.0, with 104 above 1 (the spectrum is what sets L-BFGS's iterations).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    rank = max(1, round(dim * RANK_SHARE))
    strength = np.arange(1, rank + 1, dtype=np.float64) ** -DECAY
    strength[0] = TOP * strength[1]
    basis = rng.standard_normal((rank, dim)) * (strength / np.sqrt((strength**2).sum()))[:, None]
    basis = basis.astype(np.float32)
    offset = rng.standard_normal(dim, dtype=np.float32)
    direction = rng.standard_normal(dim, dtype=np.float32)
    direction /= np.linalg.norm(direction)
    chosen = np.empty((n_pairs, dim), dtype=np.float32)
    rejected = np.empty((n_pairs, dim), dtype=np.float32)
    for start in range(0, n_pairs, CHUNK):
        rows = min(CHUNK, n_pairs - start)
        a, b = (offset + rng.standard_normal((rows, rank), dtype=np.float32) @ basis
                + np.float32(NOISE) * rng.standard_normal((rows, dim), dtype=np.float32) for _ in range(2))
        signal = (a - b) @ direction
        prefer_a = (signal / signal.std() + LABEL_NOISE * rng.logistic(size=rows) > 0)[:, None]
        chosen[start:start + rows] = np.where(prefer_a, a, b)
        rejected[start:start + rows] = np.where(prefer_a, b, a)
    return chosen, rejected


def memory_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def child(arguments: dict) -> dict:
    """One (layout, size) in this fresh process: build features, then time the head stage."""
    import datasets
    import numpy as np
    import torch

    torch.set_num_threads(arguments["threads"])

    from rmclean.features.views import FeatureConfig
    from rmclean.score import ScoreConfig, training_groups, view_margins

    lbfgs_runs: list[dict] = []
    original_step = torch.optim.LBFGS.step

    def counted_step(self, closure):  # records iterations and time; the optimisation itself is unchanged
        wall, cpu = time.perf_counter(), time.process_time()
        loss = original_step(self, closure)
        state = self.state[self._params[0]]
        lbfgs_runs.append({"models": int(self._params[0].shape[0]),  # members x folds, stacked
                           "iterations": int(state["n_iter"]), "evaluations": int(state["func_evals"]),
                           "s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu})
        return loss

    torch.optim.LBFGS.step = counted_step
    backbone, views_named, dims = LAYOUTS[arguments["layout"]]
    n_pairs = arguments["pairs"]
    rss_imports_mb = memory_kb("VmRSS") / 1024
    views = [synthetic_view(n_pairs, dim, seed=number) for number, dim in enumerate(dims)]
    counts = source_counts(n_pairs)
    labels = np.random.default_rng(7).permutation(np.repeat(list(counts), list(counts.values())))
    valid = datasets.Dataset.from_dict({"source": labels.tolist()})
    config = ScoreConfig(features=FeatureConfig(backbone=backbone, views=views_named))
    gc.collect()
    rss_before_mb = memory_kb("VmRSS") / 1024
    try:  # reset the high-water mark to the current RSS, so the peak is the head stage's
        Path("/proc/self/clear_refs").write_text("5")
        peak_reset = True
    except OSError:
        peak_reset = False
    wall, cpu = time.perf_counter(), time.process_time()
    groups = training_groups(valid, config)
    margins = view_margins(views, groups, config.head_config())
    heads_s, heads_cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    features_mb = sum(array.nbytes for view in views for array in view) / 2**20
    for number, fit in enumerate(lbfgs_runs):  # fits run view by view, group by group
        fit["view"], fit["group"] = views_named[number // len(groups)], list(groups)[number % len(groups)]
        fit["pairs"] = int(groups[fit["group"]].size)
    return {
        "layout": arguments["layout"], "threads": arguments["threads"], "pairs": n_pairs, "dims": list(dims), "views": list(views_named),
        "groups": {name: int(index.size) for name, index in groups.items()},
        "fits": len(lbfgs_runs),
        "heads_s": heads_s, "heads_cpu_s": heads_cpu_s, "us_per_pair": 1e6 * heads_s / n_pairs,
        "features_mb": features_mb, "rss_after_imports_mb": rss_imports_mb, "rss_before_heads_mb": rss_before_mb,
        "peak_rss_mb": memory_kb("VmHWM") / 1024, "peak_is_head_stage": peak_reset,
        "head_stage_extra_mb": memory_kb("VmHWM") / 1024 - rss_before_mb,
        "margins_dtype": str(margins.dtype), "ensemble_accuracy": float((margins.mean(axis=1) > 0).mean()),
        "lbfgs": lbfgs_runs, "torch_threads": torch.get_num_threads(),
    }


def run_child(arguments: dict, timeout: float) -> dict:
    completed = subprocess.run([sys.executable, __file__, "--child", json.dumps(arguments)],
                               capture_output=True, text=True, check=False, timeout=timeout)
    if completed.returncode != 0:
        raise SystemExit(f"{arguments} failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def derived(run: dict) -> dict:
    """Per-pair and per-evaluation figures of one run."""
    fits = run["lbfgs"]
    pair_evaluations = sum(fit["evaluations"] * fit["pairs"] for fit in fits)
    return {
        "ms_per_pair": 1e3 * run["heads_s"] / run["pairs"], "cpu_ms_per_pair": 1e3 * run["heads_cpu_s"] / run["pairs"],
        "models": "+".join(str(fit["models"]) for fit in fits[::len(run["groups"])]),
        "iterations": sum(fit["iterations"] for fit in fits) / len(fits),
        "evaluations": sum(fit["evaluations"] for fit in fits) / len(fits),
        "lbfgs_cpu_s": sum(fit["cpu_s"] for fit in fits),
        # all of a fit's models' losses and gradients over one pair, in L-BFGS, CPU time
        "cpu_ns_per_pair_evaluation": 1e9 * sum(fit["cpu_s"] for fit in fits) / pair_evaluations,
    }


def markdown(record: dict) -> str:
    rows = sorted(record["runs"].values(),
                  key=lambda run: (list(LAYOUTS).index(run["layout"]), run["threads"], run["pairs"]))
    lines = [
        ("Head stage of `rmclean score` (`training_groups` + `view_margins` with `ScoreConfig()`'s defaults: "
         "10 linear members in all, split over the views, x 5 folds, per source, C = 0.0003; 4 sources) on "
         "synthetic float32 features, each size in a fresh process (`python experiments/bench_heads_scale.py`). "
         "A fit trains one source's members of all folds in one view as one stacked model."), "",
        (f"Machine: {record['machine']}; {record['cores']} cores, shared with other work while this ran (load "
         "averages in the JSON), so CPU time is given next to wall time."), "",
        ("| features | models per fit | threads | pairs | wall s | CPU s | wall ms / pair | CPU ms / pair | L-BFGS iterations per fit | "
         "CPU ns / (pair x evaluation) | features GiB | RSS before GiB | peak RSS GiB | head stage extra GiB | accuracy |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in rows:
        figures = derived(run)
        lines.append(
            f"| {run['layout']} ({' + '.join(map(str, run['dims']))}) | {figures['models']} | {run['threads']} | "
            f"{run['pairs']:,} | {run['heads_s']:.1f} | "
            f"{run['heads_cpu_s']:.1f} | {figures['ms_per_pair']:.2f} | {figures['cpu_ms_per_pair']:.2f} | "
            f"{figures['iterations']:.1f} | {figures['cpu_ns_per_pair_evaluation']:,.0f} | "
            f"{run['features_mb'] / 1024:.2f} | {run['rss_before_heads_mb'] / 1024:.2f} | "
            f"{run['peak_rss_mb'] / 1024:.2f} | {run['head_stage_extra_mb'] / 1024:.2f} | "
            f"{run['ensemble_accuracy']:.3f} |")
    lines += ["", ("Peak RSS is the process's high-water mark during the head stage (reset just before it); "
                   "it includes the features and the ~0.3 GiB of Python, torch and datasets. An evaluation is "
                   "one loss and gradient of all the models of a fit over its pairs."), ""]
    if len({run["threads"] for run in rows}) > 1:
        lines += [("Thread counts: on this machine, shared with other work, every parallel region of a "
                   "multi-threaded run waits for a sibling thread pushed off its core, so the 1-thread rows are "
                   "the measure of how cost grows (see the script's docstring)."), ""]
    for layout, threads in dict.fromkeys((run["layout"], run["threads"]) for run in rows):
        runs = [run for run in rows if (run["layout"], run["threads"]) == (layout, threads)]
        if len(runs) >= 2:
            first, last = runs[0], runs[-1]
            small, large = derived(first), derived(last)
            lines.append(
                f"- {layout}, {threads} thread(s): {last['pairs'] / first['pairs']:.1f}x the pairs took "
                f"{last['heads_s'] / first['heads_s']:.1f}x the wall time and "
                f"{last['heads_cpu_s'] / first['heads_cpu_s']:.1f}x the CPU time: per pair "
                f"{large['ms_per_pair'] / small['ms_per_pair']:.2f}x (wall), "
                f"{large['cpu_ms_per_pair'] / small['cpu_ms_per_pair']:.2f}x (CPU). L-BFGS needs "
                f"{large['iterations'] / small['iterations']:.1f}x the iterations per fit "
                f"({small['iterations']:.0f} -> {large['iterations']:.0f}), while one evaluation costs "
                f"{large['cpu_ns_per_pair_evaluation'] / small['cpu_ns_per_pair_evaluation']:.2f}x as much CPU "
                "per pair; outside L-BFGS (bootstrap weights, copies, scoring, torch's first optimizer) "
                f"{first['heads_cpu_s'] - small['lbfgs_cpu_s']:.1f} -> {last['heads_cpu_s'] - large['lbfgs_cpu_s']:.1f} "
                "s CPU.")
    for threads in sorted({run["threads"] for run in rows}):
        measured = [run for run in rows if run["layout"] == "smollm2" and run["threads"] == threads]
        if not measured:
            continue
        largest = max(measured, key=lambda run: run["pairs"])
        if largest["pairs"] == HH_TRAIN_PAIRS:
            lines.append(f"- hh-rlhf's full train split ({HH_TRAIN_PAIRS:,} pairs), SmolLM2 features, {threads} "
                         f"thread(s): head stage measured at {largest['heads_s'] / 60:.1f} min wall "
                         f"({largest['heads_cpu_s'] / 60:.1f} min CPU) on this machine, peak RSS "
                         f"{largest['peak_rss_mb'] / 1024:.2f} GiB, of which the features "
                         f"{largest['features_mb'] / 1024:.2f} GiB.")
        else:
            lines.append(f"- hh-rlhf's full train split ({HH_TRAIN_PAIRS:,} pairs), SmolLM2 features, {threads} "
                         f"thread(s): head stage about {derived(largest)['ms_per_pair'] * HH_TRAIN_PAIRS / 6e4:.1f} "
                         f"min on this machine, extrapolated linearly from {largest['pairs']:,} pairs (not measured; "
                         "L-BFGS iterations grow with pairs, so likely more).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="pair counts, comma-separated")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="feature layouts: smollm2, minilm")
    parser.add_argument("--threads", default="1,2", help="torch thread counts, comma-separated (see above)")
    parser.add_argument("--force", action="store_true", help="measure sizes already in the results again")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds allowed per size")
    parser.add_argument("--results", type=Path, default=RESULTS, help="results stem (.json and .md are added)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    from rmclean.files import write_results

    results = args.results.with_name(args.results.name + ".json")
    record = json.loads(results.read_text()) if results.is_file() else {"runs": {}}
    record["runs"] = {key: run for key, run in record["runs"].items() if run.get("version") == RECORD_VERSION}
    record.update({"machine": machine(), "cores": os.cpu_count()})
    plan = [(threads, layout, pairs) for threads in map(int, args.threads.split(","))
            for layout in args.layouts.split(",") for pairs in map(int, args.sizes.split(","))]
    for threads, layout, pairs in plan:
        key = f"{layout}/{pairs}/{threads}-thread"
        if key in record["runs"] and not args.force:
            print(f"{key}: in the results already (--force to measure again)")
            continue
        run = run_child({"layout": layout, "pairs": pairs, "threads": threads}, args.timeout)
        run.update(version=RECORD_VERSION, load_average=os.getloadavg())
        record["runs"][key] = run
        write_results(args.results, record, markdown(record))
        print(f"{key}: {run['heads_s']:.1f} s, peak RSS {run['peak_rss_mb']:,.0f} MB", flush=True)
    write_results(args.results, record, markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
