"""What ``rmclean check`` writes and prints: its output folder (:func:`write_check`, read back by
:func:`read_check`) and its reports (the agreement table, the dry-run estimate, the summary)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .check import JUDGEMENT_COLUMNS, CheckResult
from .files import output_folder, verify_folder, write_json, write_text

CHECK_OUTPUTS = ("judgements.parquet", "agreement.json", "agreement.md", "testsets", "summary.json", "plots")


def write_check(result: CheckResult, folder: str | os.PathLike, *, extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``judgements.parquet``, ``agreement.{json,md}``, ``testsets/{original,judge,agreeing}.jsonl``,
    ``summary.json`` (``extra`` merged in) and ``plots/agreement.png`` into ``folder`` as one unit."""
    from . import plots
    from .export import write_jsonl

    folder = Path(folder)
    table = result.judgements[list(JUDGEMENT_COLUMNS)].copy()
    table["agrees"] = table["agrees"].astype("boolean")
    table["order_consistent"] = table["order_consistent"].astype("boolean")
    names = ["judgements.parquet", "agreement.json", "agreement.md",
             *(f"testsets/{name}.jsonl" for name in result.testsets), "summary.json", "plots/agreement.png"]
    with output_folder(folder, owned=CHECK_OUTPUTS, produced_by="rmclean check") as staging:
        table.to_parquet(staging / "judgements.parquet", index=False)
        write_json(staging / "agreement.json", result.agreement)
        write_text(staging / "agreement.md", agreement_markdown(result.agreement) + "\n")
        (staging / "testsets").mkdir()
        for name, frame in result.testsets.items():
            write_jsonl(frame, staging / "testsets" / f"{name}.jsonl")
        write_json(staging / "summary.json", {**(extra or {}), **result.summary})
        plots.save(plots.agreement_by_strength(result.agreement), staging / "plots" / "agreement.png")
    return {name: folder / name for name in names}


def read_check(folder: str | os.PathLike) -> CheckResult:
    """The :class:`CheckResult` a folder written by :func:`write_check` (``rmclean check``) holds:
    its judgements (weakest pair first), agreement bins and summary; the test sets stay in
    ``testsets/``. The judged pairs come back with ``load_recorded(result.summary["source"])``
    where the summary records their source."""
    import json

    import pandas as pd

    folder = Path(folder)
    if not (folder / "judgements.parquet").is_file():
        raise ValueError(f"{folder} holds no judgements.parquet: pass a folder written by `rmclean check`")
    verify_folder(folder, rerun="run `rmclean check` into it again")
    judgements = pd.read_parquet(folder / "judgements.parquet")
    for column in ("agrees", "order_consistent"):  # nullable booleans back to True / False / None
        judgements[column] = pd.Series([None if pd.isna(value) else bool(value) for value in judgements[column]],
                                       dtype=object)
    agreement = json.loads((folder / "agreement.json").read_text(encoding="utf-8"))
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    return CheckResult(judgements, agreement, {}, summary)


def agreement_markdown(agreement: dict[str, Any]) -> str:
    """The agreement bins as a Markdown table, weakest bin first, with the overall row."""
    def number(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lines = ["| bin | pairs | strength_mean range | judged | agreement | decisive agreement | ties | invalid/error/pending |",
             "|---:|---:|---|---:|---:|---:|---:|---:|"]
    for entry in agreement["bins"] + [{**agreement["overall"], "bin": "all"}]:
        lines.append(
            f"| {entry['bin']} | {entry['pairs']:,} | {number(entry['strength_min'])} … {number(entry['strength_max'])} "
            f"| {entry['judged']:,} | {number(entry['agreement'])} | {number(entry['agreement_decisive'])} "
            f"| {entry['ties']:,} | {entry['invalid']}/{entry['errors']}/{entry['pending']} |")
    if agreement.get("paper"):
        lines += ["", "The paper's GPT-4 agreement (hh-rlhf validation, bins of 500: the weakest bin, the one near zero strength, "
                  "the strongest) beside this check's bins at the same places:", "",
                  "| point | paper | this check's bin | agreement here | judged |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {row['point']} | {row['paper_agreement']:.3f} | {row['bin']} | {number(row['agreement'])} "
                  f"| {row['judged']:,} |" for row in agreement["paper"]]
    return "\n".join(lines)


def estimate_text(needs: dict[str, Any]) -> str:
    """The human report of ``rmclean check --dry-run`` (``needs`` from :func:`estimate`)."""
    def usd(value: float | None) -> str:
        return "unknown (no price for this model: --price IN,OUT)" if value is None else f"${value:,.2f}"

    lines = [
        f"dry run: {needs['pairs']:,} pairs, {needs['requests']:,} requests (both orders) to {needs['model']}; "
        f"{needs['cached']:,} answered by the cache, {needs['to_send']:,} to send",
        (f"  prompt tokens: about {needs['prompt_tokens']:,} (4 characters a token), at most "
         f"{needs['prompt_tokens_at_most']:,} (one per UTF-8 byte: what --max-cost reserves)"),
        f"  completion tokens: at most {needs['completion_tokens_at_most']:,} (--max-tokens each)"
        + (f", typically about {needs['completion_tokens_typical']:,} (cached answers of this model)"
           if needs["completion_tokens_typical"] is not None else ""),
        f"  cost: at most {usd(needs['cost_usd_at_most'])}"
        + (f", typically {usd(needs['cost_usd_typical'])}" if needs["completion_tokens_typical"] is not None else ""),
        "  (replies without a verdict are asked once more with a reminder, on top of this)",
    ]
    if needs["would_stop_after"] is not None:
        lines.append(f"  --max-requests {needs['max_requests']:,} would stop the run before it is done")
    lines.append(f"  cache: {needs['cache']}")
    return "\n".join(lines)


def summary_text(summary: dict[str, Any], agreement: dict[str, Any]) -> str:
    """The short human report of ``rmclean check``."""
    verdicts = summary["verdicts"]
    requests = summary["requests"]
    cost = summary["cost_usd"]
    lines = [
        f"judged {summary['pairs']:,} pairs in both orders with {summary['judge']['model']}: "
        + ", ".join(f"{name} {count:,}" for name, count in verdicts.items() if count)
        + f" ({summary['order_inconsistent']:,} order-inconsistent, counted as ties)",
        f"  requests sent {requests['sent']:,} ({requests['retries']:,} retries, {requests['reminders']:,} reminders), "
        f"cache hits {requests['cache_hits']:,}, tokens {summary['tokens']['prompt']:,} in / "
        f"{summary['tokens']['completion']:,} out, cost " + ("unknown" if cost is None else f"${cost:,.4f}"),
        "",
        agreement_markdown(agreement),
    ]
    if summary["errors"]:
        lines += ["", "failed requests (asked again on the next run): " + "; ".join(summary["errors"][:3])]
    if summary["continue"]:
        lines += ["", "stopped: " + summary["continue"] if summary["budget"]["stopped"] else summary["continue"]]
    return "\n".join(lines)


__all__ = ["CHECK_OUTPUTS", "agreement_markdown", "estimate_text", "read_check", "summary_text", "write_check"]
