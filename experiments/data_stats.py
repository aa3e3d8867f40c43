"""Counts and flags of every dataset rmclean reads by name, as loaded by load_pairs.

    RMCLEAN_DATA_DIR=../shared/data python experiments/data_stats.py

Writes experiments/results/data_stats.json and data_stats.md (quoted in the README).
Pairs with an empty response are kept (allow_empty=True) so every row is counted; the
"empty" column says how many there are (by default load_pairs stops at the first one).
"""

from __future__ import annotations

from pathlib import Path

import rmclean
from rmclean.files import write_results
from rmclean.data.sources import NAMED_SOURCES

RESULTS = Path(__file__).resolve().parent / "results"
FLAG_COLUMNS = ("identical_responses", "different_history", "empty_response", "tie", "score_reversed", "duplicate")


def collect() -> list[dict]:
    rows = []
    for source in NAMED_SOURCES.values():
        for split in source.splits:
            for subset in source.files:
                try:
                    pairs = rmclean.load_pairs(source.name, subset=subset, split=split, allow_empty=True)
                except rmclean.SourceNotFoundError:
                    continue  # not available locally (e.g. hh-rlhf train)
                summary = rmclean.data.describe.describe_pairs(pairs, examples=0)
                rows.append(
                    {
                        "dataset": source.name,
                        "subset": subset,
                        "split": split,
                        "pairs": summary["pairs"],
                        "flags": summary["flags"],
                        "median_chars": {
                            field: summary["lengths"][field]["characters"].get("p50")
                            for field in ("prompt", "chosen", "rejected")
                        },
                    }
                )
    return rows


def to_markdown(rows: list[dict]) -> str:
    header = "| dataset | subset | split | pairs | " + " | ".join(FLAG_COLUMNS) + " |"
    lines = [header, "|" + "---|" * 3 + "---:|" * (1 + len(FLAG_COLUMNS))]
    for row in rows:
        flags = " | ".join(str(row["flags"].get(flag, 0)) for flag in FLAG_COLUMNS)
        lines.append(f"| {row['dataset']} | {row['subset']} | {row['split']} | {row['pairs']:,} | {flags} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    rows = collect()
    if not rows:
        raise SystemExit("no dataset found: set RMCLEAN_DATA_DIR (see data/README.md)")
    write_results(RESULTS / "data_stats", rows, to_markdown(rows))
    print(to_markdown(rows))


if __name__ == "__main__":
    main()
