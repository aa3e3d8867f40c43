"""Stress run of the feature cache and output folders: concurrent `rmclean score` processes,
killed at random moments and restarted (issue #14).

Each round starts four `rmclean score` processes at once on overlapping subsets of hh-rlhf
harmless-base, all sharing one fresh feature cache; two pairs of them also share an output
folder. A killer sends SIGKILL to random running processes at random moments; every killed
process is started again until all four have finished. Then every output folder must pass
its manifest check and hold exactly the scores (bit for bit) of a clean single-process run of
the subset its summary names, every cached vector must equal the clean run's, and no staging
folder may be left behind.

    python experiments/reliability_cache.py                # 20 rounds (about 20 min on 2 cores)
    python experiments/reliability_cache.py --rounds 2     # a quick look

Writes ``experiments/results/reliability_cache.{json,md}``. Rounds already done are kept in
the work folder (``--work``), so a killed run resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine  # noqa: E402

import rmclean  # noqa: E402
from rmclean.features.backbones import resolve_backbone  # noqa: E402
from rmclean.features.cache import FeatureCache  # noqa: E402
from rmclean.features.views import scoring_text  # noqa: E402
from rmclean.files import OutputFolderError, verify_folder, write_results  # noqa: E402
from rmclean.score import Scores  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "reliability_cache"
SCORE_FLAGS = ["--views", "transcript", "--members", "3", "--folds", "2", "--max-length", "128",
               "--precision", "float32", "--quiet"]
SUBSETS = 4
PAIRS_PER_SUBSET = 24
STEP = 12  # subsets overlap by half
OUT_OF = {0: "A", 1: "A", 2: "B", 3: "B"}  # processes 0 and 1 write one folder, 2 and 3 another


def write_subsets(work: Path, data_dir: Path | None) -> list[Path]:
    pairs = rmclean.load_pairs("hh-rlhf", subset="harmless-base", limit=2 * (STEP * (SUBSETS - 1) + PAIRS_PER_SUBSET),
                               data_dir=data_dir)
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"])
            if c.strip() and r.strip()]  # hh's empty final turns would need --allow-empty
    files = []
    for index in range(SUBSETS):
        path = work / f"subset{index}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows[index * STEP:index * STEP + PAIRS_PER_SUBSET]))
        files.append(path)
    return files


def score_command(subset: Path, out: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "rmclean", "score", str(subset), "--out", str(out), "--cache-dir", str(cache),
            *SCORE_FLAGS]


def reference_scores(work: Path, subsets: list[Path]) -> list[Scores]:
    """A clean run per subset: one process, its own cache, nothing else running."""
    references = []
    for index, subset in enumerate(subsets):
        out = work / "reference" / f"subset{index}"
        if not (out / "scores.parquet").is_file():
            subprocess.run(score_command(subset, out, work / "reference" / f"cache{index}"), check=True,
                           stdout=subprocess.DEVNULL)
        references.append(Scores.load(out))
    return references


def run_round(work: Path, subsets: list[Path], rng: random.Random, kills: int) -> dict:
    """Four concurrent processes, ``kills`` SIGKILLs at random moments, restarts until all finish."""
    cache, outs = work / "cache", {name: work / f"out{name}" for name in "AB"}
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    commands = {i: score_command(subsets[i], outs[OUT_OF[i]], cache) for i in range(SUBSETS)}
    running = {i: subprocess.Popen(commands[i], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for i in commands}
    starts, killed, failures = dict.fromkeys(commands, 1), 0, []
    kill_times = sorted(rng.uniform(2.0, 60.0) for _ in range(kills))
    began = time.monotonic()
    while running:
        time.sleep(0.05)
        if kill_times and time.monotonic() - began >= kill_times[0]:
            kill_times.pop(0)
            victim = rng.choice(sorted(running))
            running[victim].send_signal(signal.SIGKILL)
        for index, process in list(running.items()):
            code = process.poll()
            if code is None:
                continue
            stderr = process.stderr.read()
            del running[index]
            if code == -signal.SIGKILL:
                killed += 1
                running[index] = subprocess.Popen(commands[index], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                                  text=True)
                starts[index] += 1
            elif code != 0:
                failures.append({"process": index, "exit": code, "stderr": stderr.strip().splitlines()[-3:]})
    return {"seconds": round(time.monotonic() - began, 1), "killed": killed, "starts": sum(starts.values()),
            "failures": failures}


def check_round(work: Path, references: list[Scores], reference_vectors: dict[str, np.ndarray]) -> dict:
    """Every output folder verified and equal to the clean run of the subset it names; every
    cached vector equal to the clean run's; nothing left half-written."""
    problems = []
    for name in "AB":
        folder = work / f"out{name}"
        try:
            verify_folder(folder, rerun="rerun")
            scores = Scores.load(folder)
            source = json.loads((folder / "summary.json").read_text())["source"]["source"]
        except (OutputFolderError, OSError, ValueError, KeyError) as exc:
            problems.append(f"out{name}: {type(exc).__name__}: {exc}")
            continue
        index = int(Path(source).stem.removeprefix("subset"))
        reference = references[index]
        if scores.pair_id != reference.pair_id or not np.array_equal(scores.member_margins, reference.member_margins):
            problems.append(f"out{name}: scores differ from the clean run of subset {index}")
    cache = FeatureCache(resolve_backbone("minilm"), 128, work / "cache", "float32")
    texts = list(reference_vectors)
    if not np.array_equal(cache.get(texts), np.stack([reference_vectors[t] for t in texts])):
        problems.append("cached vectors differ from the clean runs'")
    leftovers = [str(path.relative_to(work)) for path in work.rglob("*") if ".staging-" in path.name
                 or path.name.endswith(".partial") or ".old-" in path.name]
    corrupt = sorted(path.name for path in (cache.folder / "corrupt").glob("*")) if (cache.folder / "corrupt").is_dir() else []
    return {"problems": problems, "leftovers": leftovers, "shards": len(list(cache.folder.glob("shard-*.npz"))),
            "shards_set_aside": corrupt}


def reference_feature_vectors(work: Path, subsets: list[Path]) -> dict[str, np.ndarray]:
    vectors = {}
    for index, subset in enumerate(subsets):
        pairs = rmclean.load_pairs(str(subset))
        texts = [scoring_text(p, r) for p, r in zip(list(pairs["prompt"]) * 2, list(pairs["chosen"]) + list(pairs["rejected"]))]
        cache = FeatureCache(resolve_backbone("minilm"), 128, work / "reference" / f"cache{index}", "float32")
        vectors.update(zip(texts, cache.get(texts)))
    return vectors


def markdown(record: dict) -> str:
    rounds = record["rounds"]
    lines = [
        "# Reliability: concurrent `rmclean score` runs killed at random", "",
        f"Machine: {record['machine']}, {os.cpu_count()} cores. {len(rounds)} rounds; each starts "
        f"{SUBSETS} `rmclean score` processes at once on overlapping {PAIRS_PER_SUBSET}-pair subsets of hh-rlhf "
        "harmless-base, sharing one fresh feature cache (MiniLM, 128 tokens, float32); processes 0 and 1 write "
        "one output folder, 2 and 3 another. SIGKILLs land at random moments in the first 60 s; each killed "
        "process is started again until all have finished.", "",
        "| round | kills | process starts | crashes | wall s | shards | set aside | folders wrong | left behind |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for number, entry in enumerate(rounds, 1):
        lines.append(f"| {number} | {entry['killed']} | {entry['starts']} | {len(entry['failures'])} | {entry['seconds']} | "
                     f"{entry['shards']} | {len(entry['shards_set_aside'])} | {len(entry['problems'])} | "
                     f"{len(entry['leftovers'])} |")
    totals = record["totals"]
    lines += ["", f"In all: {totals['kills']} processes killed, {totals['starts']} started, {totals['crashes']} crashed; "
              f"{totals['folders_wrong']} output folders or caches differed from the clean runs (target 0); "
              f"{totals['left_behind']} half-written files or staging folders were left behind (target 0).", "",
              "\"Folders wrong\" counts an output folder that fails its manifest check, or passes it with scores "
              "that are not bit-for-bit the clean single-process run's of the subset its summary names, and a cache "
              "whose vectors differ from the clean runs'.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/rmclean-reliability-cache"))
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    subsets = write_subsets(args.work, args.data_dir)
    references = reference_scores(args.work, subsets)
    reference_vectors = reference_feature_vectors(args.work, subsets)
    done_file = args.work / "rounds.jsonl"
    rounds = [json.loads(line) for line in done_file.read_text().splitlines()] if done_file.is_file() else []
    for number in range(len(rounds), args.rounds):
        rng = random.Random(args.seed * 1000 + number)
        entry = run_round(args.work / "round", subsets, rng, args.kills)
        entry.update(check_round(args.work / "round", references, reference_vectors))
        rounds.append(entry)
        with done_file.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")
        print(f"round {number + 1}: {entry['killed']} killed, {len(entry['failures'])} crashed, "
              f"{len(entry['problems'])} wrong, {len(entry['leftovers'])} left behind", flush=True)
    totals = {"rounds": len(rounds), "kills": sum(r["killed"] for r in rounds), "starts": sum(r["starts"] for r in rounds),
              "crashes": sum(len(r["failures"]) for r in rounds), "folders_wrong": sum(len(r["problems"]) for r in rounds),
              "left_behind": sum(len(r["leftovers"]) for r in rounds),
              "shards_set_aside": sum(len(r["shards_set_aside"]) for r in rounds)}
    record = {"machine": machine(), "settings": {"score_flags": SCORE_FLAGS, "subsets": SUBSETS,
              "pairs_per_subset": PAIRS_PER_SUBSET, "kills_per_round": args.kills, "seed": args.seed},
              "totals": totals, "rounds": rounds}
    for path in write_results(args.out, record, markdown(record)):
        print(f"wrote {path}")
    if os.environ.get("RMCLEAN_KEEP_WORK") is None:
        shutil.rmtree(args.work / "round", ignore_errors=True)


if __name__ == "__main__":
    main()
