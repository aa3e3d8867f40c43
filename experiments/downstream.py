"""Does denoising the preference data give a better policy? A policy stage of the downstream
comparison (``rmclean compare --stage bon|ppo``) on a config, with its wall time and the
machine, written where the README quotes it.

    RMCLEAN_DATA_DIR=../shared/data python experiments/downstream.py --stage bon experiments/downstream_hh.json
    RMCLEAN_DATA_DIR=../shared/data python experiments/downstream.py --stage ppo experiments/downstream_hh.json

The run folder (``--work``, default ``downstream-work``) keeps the samples and the PPO runs, so
a stopped run resumes and a rerun does no model work; features go through the feature cache.
Writes ``experiments/results/<name>.{json,md}`` and its plots (``<name>*.png``; ``--name``,
default ``downstream_<stage>``).

    RMCLEAN_DATA_DIR=../shared/data python experiments/downstream.py --stage ppo \
        experiments/downstream_hh_earlier_ppo_defaults.json --name downstream_ppo_earlier_defaults
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from machine import machine  # experiments/machine.py

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--stage", choices=("bon", "ppo"), required=True)
    parser.add_argument("--work", type=Path, default=Path("downstream-work"), help="run folder (resumable)")
    parser.add_argument("--name", default=None, help="stem of the result files (default: downstream_<stage>)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from rmclean.benefit import load_benefit_pairs
    from rmclean.downstream import (
        best_of_n,
        bon_markdown,
        policy_stage,
        ppo_markdown,
        read_downstream_config,
        write_bon,
        write_policy_stage,
    )
    from rmclean.files import write_results

    run, write, markdown = ((best_of_n, write_bon, bon_markdown) if args.stage == "bon" else
                            (policy_stage, write_policy_stage, ppo_markdown))
    config = read_downstream_config(args.config)
    started = time.perf_counter()
    record = run(load_benefit_pairs(config.benefit), config, out=args.work, report=print)
    record.update({"seconds": time.perf_counter() - started, "machine": machine(), "config_file": str(args.config)})
    written = write(record, args.work)
    text = (markdown(record) + f"\nMachine: {record['machine']}; {record['seconds'] / 60:.1f} min for this run "
            "(what the run folder or the feature cache already held was read, not redone). "
            f"Config: `{args.config}`.\n")
    stem = args.name or f"downstream_{args.stage}"
    write_results(RESULTS / stem, record, text)
    for plot in (path for path in written if path.suffix == ".png"):
        name = plot.stem.removeprefix(f"{args.stage}_")  # bon.png, ppo_curves.png -> downstream_bon.png, ..._curves.png
        shutil.copy(plot, RESULTS / f"{stem}{'' if name == args.stage else '_' + name}.png")
    print(text)


if __name__ == "__main__":
    main()
