"""Golden run: the same chain of commands on two versions of the code, compared output by output.

A refactor that promises "no change in behaviour" is checked here, not argued: ``run`` executes
the main commands as users type them (``score``, ``denoise``, ``train-rm``, ``score
--reward-model``, ``audit``, ``check`` against the local test judge, ``compare --stage rm``) with
the code found at ``--code`` on a 600-pair subset of hh-rlhf (300 harmless-base + 300
helpful-base test pairs, two sources), and ``compare`` says, output by output, whether two runs
agree: per-member margins, cleaned files, metrics, audit and benefit numbers, judgements, and the
printed text with timings masked. The second run shares the first one's feature cache (it must
embed nothing) and a copy of its judge cache (it must send no request).

    python experiments/golden_run.py run --code OLD_CHECKOUT --out /tmp/golden/old
    python experiments/golden_run.py run --code . --out /tmp/golden/new --reuse /tmp/golden/old
    python experiments/golden_run.py compare /tmp/golden/old /tmp/golden/new

``compare`` writes ``experiments/results/golden_run.{json,md}``. Needs the real data
(``$RMCLEAN_DATA_DIR`` or ``../shared/data``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBSETS = {"harmless-base": 300, "helpful-base": 300}
EVAL_PAIRS = 200
BENEFIT_CONFIG = {
    "source": "PAIRS", "seeds": 1, "rates": [0.0, 0.2], "noise": ["random", "targeted"], "test_fraction": 0.3,
    "score": {"members": 4, "folds": 3},
    "reward": {"epochs": 5},
    "denoisers": {"flip 10%": {"method": "flip", "select": "fraction:0.1"},
                  "soft-label+margin 10%": {"method": "soft-label+margin", "select": "fraction:0.1"}},
}


def commands(pairs: Path, eval_file: Path, judge_url: str) -> list[tuple[str, list[str]]]:
    """``(name, argv)`` of every command the golden run makes, in order."""
    return [
        ("score", ["score", str(pairs), "--out", "scores", "--quiet"]),
        ("denoise", ["denoise", "scores", "--method", "flip+margin", "--examples", "2", "--out", "denoised"]),
        ("train-rm", ["train-rm", "denoised", "--loss", "margin", "--eval", f"test={eval_file}", "--quiet",
                      "--out", "reward-model"]),
        ("score-rm", ["score", str(pairs), "--members", "2", "--reward-model", "reward-model/model", "--quiet",
                      "--out", "scores-rm"]),
        ("audit", ["audit", str(pairs), "--inject", "0.2", "--resamples", "50", "--members", "4", "--quiet",
                   "--out", "audit"]),
        ("check", ["check", "scores", "--base-url", judge_url, "--model", "judge-test", "--cache", "judge.sqlite",
                   "--sample", "40", "--bin-size", "10", "--quiet", "--out", "check"]),
        ("compare", ["compare", "--stage", "rm", "benefit.json", "--quiet", "--out", "compare"]),
    ]


def data_dir() -> Path:
    configured = os.environ.get("RMCLEAN_DATA_DIR")
    return Path(configured) if configured else ROOT.parent / "shared" / "data"


def write_subset(folder: Path) -> tuple[Path, Path]:
    """A folder of two JSONL files (the two subsets' first pairs) and an eval file of the next
    ``EVAL_PAIRS`` harmless-base pairs, all as hh transcripts."""
    pairs = folder / "pairs"
    pairs.mkdir(parents=True, exist_ok=True)
    eval_lines: list[str] = []
    for subset, count in SUBSETS.items():
        with gzip.open(data_dir() / "hh-rlhf" / subset / "test.jsonl.gz", "rt", encoding="utf-8") as handle:
            lines = [line for line in handle if line.strip()]
        (pairs / f"{subset}.jsonl").write_text("".join(lines[:count]), encoding="utf-8")
        if not eval_lines:
            eval_lines = lines[count:count + EVAL_PAIRS]
    eval_file = folder / "eval.jsonl"
    eval_file.write_text("".join(eval_lines), encoding="utf-8")
    return pairs, eval_file


def run(code: Path, out: Path, reuse: Path | None) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from judge_server import JudgeServer

    out.mkdir(parents=True, exist_ok=True)
    shared = (reuse or out).resolve()
    pairs, eval_file = write_subset(shared / "data") if reuse is None else (shared / "data" / "pairs",
                                                                           shared / "data" / "eval.jsonl")
    cache = shared / "cache"
    if reuse is not None:  # the other run's judge answers, in a copy so both runs stay comparable
        shutil.copy(reuse / "judge.sqlite", out / "judge.sqlite")
    (out / "benefit.json").write_text(json.dumps({**BENEFIT_CONFIG, "source": str(pairs)}, indent=2))
    env = {**os.environ, "PYTHONPATH": str(code.resolve()), "RMCLEAN_CACHE_DIR": str(cache),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cache_before = sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.exists() else []
    revision = subprocess.run(["git", "-C", str(code), "describe", "--always", "--dirty"], capture_output=True,
                              text=True).stdout.strip()
    record: dict = {"code": f"{code.resolve()} ({revision or 'not a git checkout'})", "commands": {}}
    with JudgeServer() as server:
        for name, argv in commands(pairs, eval_file, f"{server.url}"):
            started = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", "rmclean", *argv], cwd=out, env=env,
                                    capture_output=True, text=True)
            record["commands"][name] = {"argv": argv, "returncode": result.returncode,
                                        "seconds": time.perf_counter() - started}
            (out / f"{name}.stdout").write_text(result.stdout, encoding="utf-8")
            if result.returncode != 0:
                raise SystemExit(f"{name} failed ({result.returncode}):\n{result.stderr[-3000:]}")
            print(f"{name}: {record['commands'][name]['seconds']:.1f} s", flush=True)
        record["judge_requests"] = len(server.log)
    record["cache_files_added"] = sorted(set(str(p.relative_to(cache)) for p in cache.rglob("*")) - set(cache_before))
    (out / "run.json").write_text(json.dumps(record, indent=2))


#: What may differ between two runs' printed text: timings, and check's request counts (the
#: second run is answered by the first run's judge cache, by design).
_VOLATILE_TEXT = re.compile(r"\b\d+(\.\d+)?s\b|time: .*|requests sent .*")


def masked(text: str) -> str:
    return _VOLATILE_TEXT.sub("<masked>", text)


def without(value, keys: set[str]):
    """``value`` (parsed JSON) with every entry named in ``keys`` removed, at any depth."""
    if isinstance(value, dict):
        return {k: without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [without(v, keys) for v in value]
    return value


#: Keys whose values differ between runs by design: timings, versions, and the run's own folders.
VOLATILE = {"timings", "versions", "seconds", "total_s", "judging_s", "scores_dir", "cache"}


def compare(old: Path, new: Path) -> dict:
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    checks: dict[str, bool] = {}
    for name in ("scores", "scores-rm"):
        margins = [np.stack(pq.read_table(folder / name / "scores.parquet").to_pandas()["member_margins"])
                   for folder in (old, new)]
        checks[f"{name}/scores.parquet member_margins identical"] = bool(np.array_equal(*margins))
    for relative in ("denoised/cleaned.jsonl", "denoised/dropped.jsonl", "check/testsets/original.jsonl",
                     "check/testsets/judge.jsonl", "check/testsets/agreeing.jsonl", "check/agreement.md",
                     "audit/audit.md", "compare/denoise_benefit.md"):
        checks[f"{relative} identical"] = (old / relative).read_bytes() == (new / relative).read_bytes()
    for relative in ("scores/summary.json", "scores-rm/summary.json", "denoised/summary.json",
                     "reward-model/metrics.json", "reward-model/model/reward_model.json", "audit/audit.json",
                     "check/agreement.json", "compare/denoise_benefit.json"):
        raw = [json.loads((folder / relative).read_text()) for folder in (old, new)]
        volatile = sorted(VOLATILE & _keys(raw[0]))
        label = f"{relative} equal" + (f" apart from {', '.join(volatile)}" if volatile else "")
        checks[label] = without(raw[0], VOLATILE) == without(raw[1], VOLATILE)
    judged = [pd.read_parquet(folder / "check" / "judgements.parquet") for folder in (old, new)]
    checks["check/judgements.parquet identical"] = judged[0].equals(judged[1])
    for name in commands(Path(), Path(), ""):
        stdout = [masked((folder / f"{name[0]}.stdout").read_text()) for folder in (old, new)]
        checks[f"`{name[0]}` printed text identical (timings, and check's request counts, masked)"] = \
            stdout[0] == stdout[1]
    run_new = json.loads((new / "run.json").read_text())
    checks["second run embedded nothing (no file added to the feature cache)"] = not [
        f for f in run_new["cache_files_added"] if f.startswith("features")]
    checks["second run's check sent no request (the first run's judge cache answered all)"] = (
        run_new["judge_requests"] == 0 and json.loads((new / "check" / "summary.json").read_text())["requests"]["sent"] == 0)
    return {"old": json.loads((old / "run.json").read_text())["code"], "new": run_new["code"], "checks": checks}


def _keys(value) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands_ = parser.add_subparsers(dest="command", required=True)
    run_parser = commands_.add_parser("run")
    run_parser.add_argument("--code", type=Path, required=True, help="a checkout whose rmclean/ is run")
    run_parser.add_argument("--out", type=Path, required=True)
    run_parser.add_argument("--reuse", type=Path, help="a first run: its data, feature cache and judge cache")
    compare_parser = commands_.add_parser("compare")
    compare_parser.add_argument("old", type=Path)
    compare_parser.add_argument("new", type=Path)
    compare_parser.add_argument("--results", type=Path, default=ROOT / "experiments" / "results" / "golden_run")
    args = parser.parse_args()
    if args.command == "run":
        run(args.code, args.out, args.reuse)
        return
    sys.path.insert(0, str(ROOT))
    from rmclean.files import write_results

    result = compare(args.old, args.new)
    lines = [f"Golden run: `{result['old']}` (first) against `{result['new']}` (second), "
             "`python experiments/golden_run.py`.", "", "| check | result |", "|---|---|"]
    lines += [f"| {name} | {'yes' if ok else '**NO**'} |" for name, ok in result["checks"].items()]
    write_results(args.results, result, "\n".join(lines) + "\n")
    print("\n".join(lines))
    if not all(result["checks"].values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
