"""Does denoising give better reward models? The denoising-benefit experiment
(:mod:`rmclean.benefit`; the same as ``rmclean compare --stage rm CONFIG``).

    RMCLEAN_DATA_DIR=../shared/data python experiments/denoise_benefit.py [--seeds 3] [--config FILE]

Default: the pooled hh-rlhf test splits (cached features of the default views, 10 members per
view: ``members`` 20 in total, as experiments/benefit_hh.json), 70/30 split per source, random
and targeted flips at 0-40%, every default denoiser, 3 seeds. Writes
experiments/results/denoise_benefit.{json,md,png}.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from rmclean.benefit import (
    BenefitConfig,
    benefit_pairs,
    denoise_benefit,
    load_benefit_pairs,
    read_config,
    write_benefit,
)

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a JSON benefit config (see experiments/benefit_hh.json)")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--name", default="denoise_benefit", help="results file stem")
    args = parser.parse_args()
    config = read_config(args.config) if args.config else BenefitConfig()
    if not args.config:  # the README's run: 10 members per view (ScoreConfig.members is the total over views)
        config = replace(config, score=replace(config.score, members=10 * len(config.score.features.views)))
    if args.seeds is not None:
        config = replace(config, seeds=args.seeds)
    started = time.perf_counter()
    pairs = load_benefit_pairs(config)

    def report(record: dict) -> None:
        scored = [name for name in config.denoisers if "accuracy" in record[name]]
        best = max(scored, key=lambda name: record[name]["accuracy"]) if scored else "none"
        accuracy = record[best]["accuracy"] if scored else float("nan")
        print(f"seed {record['seed']} {record['noise']} {record['rate']:.1f}: oracle {record['oracle']['accuracy']:.3f} "
              f"none {record['none']['accuracy']:.3f} best {best} {accuracy:.3f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)

    records = denoise_benefit(pairs, config, progress=False, report=report)
    for path in write_benefit(records, config, RESULTS, len(benefit_pairs(pairs, config)), stem=args.name):
        print("wrote", path)
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
