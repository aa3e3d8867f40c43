"""``rmclean.check``: the judge agreement check (SPEC 2.4) over scored pairs.

Every pair is shown to the judge in both orders: ``ab`` with the dataset's chosen response as
Assistant A, ``ba`` with it as Assistant B. The pair's ``judge_verdict`` is ``chosen`` or
``rejected`` when both orders agree, ``tie`` when both say tie or they disagree (an
order-inconsistent verdict counts as a tie), ``invalid`` when an order gave no verdict after
the reminder, ``error`` when a request failed after its retries and ``pending`` when the budget
stopped the run before it. ``judge_label`` is MOSS-RLHF's ``GPT4 label``: 1 the judge prefers
chosen, 0 it prefers rejected, -1 no preference (tie, invalid, error, pending).

Agreement with the dataset label is reported per bin of pairs sorted by strength_mean (about
``bin_size`` pairs each; the paper: 500): the share of judged pairs (verdict chosen, rejected
or tie) whose verdict is the dataset's (chosen; tie for pairs the dataset marks as a tie).
Three test sets come out for the trainer's ``--eval``: ``original`` (the judged pairs as the
dataset labels them), ``judge`` (the pairs the judge decided, relabelled by it) and
``agreeing`` (the pairs where judge and dataset agree).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .judge import (
    INVALID,
    JudgeCache,
    JudgeConfig,
    JudgeError,
    RunStats,
    cost_usd,
    default_cache_path,
    estimate_tokens,
    load_template,
    make_request,
    max_prompt_tokens,
    model_identity,
    public_url,
    question_text,
    resolve_api_key,
    run_requests,
)
from .score import Scores

#: The paper's three test sets, as ``testsets/<name>.jsonl``. ``judge`` (the pairs the judge
#: decided, relabelled by it) is the set :mod:`rmclean.benefit` calls ``independent``, since gold
#: labels may stand in for a judge there; both names are in files users read, so both stay.
TESTSETS = ("original", "judge", "agreeing")
JUDGED = ("chosen", "rejected", "tie")
LABELS = {"chosen": 1, "rejected": 0}  # anything else: -1
_FROM_AB = {"A": "chosen", "B": "rejected", "C": "tie"}  # chosen shown as Assistant A
_FROM_BA = {"A": "rejected", "B": "chosen", "C": "tie"}  # chosen shown as Assistant B


@dataclass(frozen=True)
class CheckConfig:
    """Which pairs are judged and how agreement is binned: ``bin_size`` pairs per strength
    bin (paper: 500), ``sample`` pairs drawn at random (seeded) instead of all of them."""

    bin_size: int = field(default=500, metadata={"help": "pairs per strength bin (paper: 500)"})
    sample: int | None = field(default=None, metadata={"help": "judge N pairs drawn at random instead of all",
                                                        "metavar": "N"})
    seed: int = field(default=0, metadata={"help": "pair order, --sample and local sampling"})

    def __post_init__(self) -> None:
        if self.bin_size < 1:
            raise ValueError(f"bin_size must be at least 1, not {self.bin_size}")
        if self.sample is not None and self.sample < 1:
            raise ValueError(f"sample must be at least 1, not {self.sample}")


@dataclass
class CheckResult:
    """What :func:`check` found: one row per judged pair (``judgements``, in strength order),
    the agreement bins, the three test sets and the summary (requests, cache hits, tokens,
    cost, budget); :func:`write_check` writes them."""

    judgements: Any
    agreement: dict[str, Any]
    testsets: dict[str, Any]
    summary: dict[str, Any]
    stats: RunStats = field(default_factory=RunStats)

    @property
    def stopped(self) -> str | None:
        return self.stats.stopped


def select_pairs(pairs, scores: Scores, config: CheckConfig = CheckConfig(), allow_missing: bool = False):
    """The pairs to judge as a ``pandas.DataFrame`` in the order they are asked (seeded
    random, so a run the budget stops still covers every strength bin), with their
    strength_mean / strength_std and the dataset label (``chosen``, or ``tie`` when flagged)."""
    from .denoise import match_scores

    rows, _ = match_scores(pairs, scores, allow_missing=allow_missing)
    keep = np.flatnonzero(rows >= 0)
    if keep.size == 0:
        raise ValueError("no valid scored pairs to judge")
    rng = np.random.default_rng(config.seed)
    if config.sample is not None and config.sample < keep.size:
        keep = np.sort(rng.choice(keep, size=config.sample, replace=False))
    frame = pairs.select(keep.tolist()).to_pandas()[["pair_id", "prompt", "chosen", "rejected", "source", "row", "flags"]]
    strength_mean, strength_std = scores.strength_mean, scores.strength_std
    frame["strength_mean"] = strength_mean[rows[keep]]
    frame["strength_std"] = strength_std[rows[keep]]
    frame["dataset_label"] = ["tie" if "tie" in list(flags) else "chosen" for flags in frame["flags"]]
    return frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)


def build_requests(frame, judge: JudgeConfig, model: str) -> tuple[list, list]:
    """The ``ab`` and ``ba`` :class:`~rmclean.judge.Request` of every row of ``frame``."""
    template = load_template(judge.template)
    ab, ba = [], []
    for prompt, chosen, rejected in zip(frame["prompt"], frame["chosen"], frame["rejected"]):
        question = question_text(prompt)
        ab.append(make_request(template, judge, model, question, chosen.strip(), rejected.strip()))
        ba.append(make_request(template, judge, model, question, rejected.strip(), chosen.strip()))
    return ab, ba


def estimate(pairs, scores: Scores, judge: JudgeConfig = JudgeConfig(), config: CheckConfig = CheckConfig(), *,
             cache: str | os.PathLike | None = None, allow_missing: bool = False) -> dict[str, Any]:
    """What a check would need (a dry run: nothing is sent): requests, how many the cache
    already answers, prompt tokens (typically 4 characters a token; at most one per UTF-8 byte,
    the bound ``--max-cost`` reserves) and completion tokens (at most ``max_tokens`` each;
    typical from the cached answers of this model when it has some), and the cost at the
    model's price. Reminders after unparseable replies come on top."""
    frame = select_pairs(pairs, scores, config, allow_missing)
    model = model_identity(judge)
    ab, ba = build_requests(frame, judge, model)
    unique = list({request.key: request for request in ab + ba}.values())
    store = JudgeCache(cache or default_cache_path())
    try:
        cached = store.get(request.key for request in unique)
        if judge.retry_invalid:
            cached = {key: answer for key, answer in cached.items() if answer.verdict != INVALID}
        typical = store.mean_completion_tokens(model)
    finally:
        store.close()
    todo = [request for request in unique if request.key not in cached]
    prompt_tokens = sum(estimate_tokens(request.messages) for request in todo)
    prompt_most = sum(max_prompt_tokens(request.messages) for request in todo)
    price = judge.unit_price()
    most = len(todo) * judge.max_tokens
    likely = None if typical is None else int(round(len(todo) * typical))
    return {
        "pairs": int(len(frame)),
        "requests": len(unique),
        "cached": len(cached),
        "to_send": len(todo),
        "max_requests": judge.max_requests,
        "would_stop_after": judge.max_requests if judge.max_requests is not None and judge.max_requests < len(todo) else None,
        "prompt_tokens": prompt_tokens,
        "prompt_tokens_at_most": prompt_most,
        "completion_tokens_at_most": most,
        "completion_tokens_typical": likely,
        "price_per_million": list(price) if price else None,
        "cost_usd_at_most": cost_usd(prompt_most, most, price),
        "cost_usd_typical": None if likely is None else cost_usd(prompt_tokens, likely, price),
        "model": judge.model_name,
        "cache": str(Path(cache or default_cache_path())),
    }


def check(pairs, scores: Scores, judge: JudgeConfig = JudgeConfig(), config: CheckConfig = CheckConfig(), *,
          api_key: str | None = None, cache: str | os.PathLike | None = None, allow_missing: bool = False,
          progress: bool = False) -> CheckResult:
    """Judge ``pairs`` (from :func:`rmclean.load_pairs`) in both orders and compare the
    verdicts with the dataset labels per strength bin of ``scores``.

    ``api_key`` defaults to the variable ``judge.api_key_env`` names (``$OPENAI_API_KEY``);
    ``cache`` (a SQLite file) to ``judge.sqlite`` in the user cache folder. Answers are cached
    as they arrive; when the budget (``judge.max_requests`` / ``judge.max_cost``) is reached
    the run stops, and the result covers what was judged (``result.stopped`` says why). Raises
    :class:`~rmclean.judge.JudgeError` before any work for a missing key or one that would go
    over plain http to another machine, and for what stops every request (unreachable server,
    refused key, unknown model) after caching the answers that came.
    """
    import pandas as pd

    started = time.perf_counter()
    if judge.max_cost is not None and judge.unit_price() is None:
        raise JudgeError(f"--max-cost needs the price of {judge.model_name!r}, which is not in the price table: "
                         "pass --price INPUT,OUTPUT (USD per million tokens) or --prices FILE.json")
    api_key = resolve_api_key(judge, api_key)
    frame = select_pairs(pairs, scores, config, allow_missing)
    template = load_template(judge.template)
    model = model_identity(judge)
    ab, ba = build_requests(frame, judge, model)
    ordered = [request for pair in zip(ab, ba) for request in pair]  # both orders of a pair together
    store = JudgeCache(cache or default_cache_path())
    try:
        answers, stats, errors = run_requests(ordered, judge, store, model=model, template=template,
                                              api_key=api_key, progress=progress)
    finally:
        store.close()

    def raw(requests) -> tuple[list, list, list]:
        verdicts, replies, reasons = [], [], []
        for request in requests:
            answer = answers.get(request.key)
            verdicts.append(answer.verdict if answer else ("error" if request.key in errors else None))
            replies.append(answer.reply if answer else errors.get(request.key))
            reasons.append(answer.reason if answer else errors.get(request.key))
        return verdicts, replies, reasons

    (verdicts_ab, replies_ab, reasons_ab), (verdicts_ba, replies_ba, reasons_ba) = raw(ab), raw(ba)
    combined = [combine(a, b) for a, b in zip(verdicts_ab, verdicts_ba)]
    frame["verdict_ab"], frame["reply_ab"] = pd.Series(verdicts_ab, dtype=object), pd.Series(replies_ab, dtype=object)
    frame["verdict_ba"], frame["reply_ba"] = pd.Series(verdicts_ba, dtype=object), pd.Series(replies_ba, dtype=object)
    frame["reason_ab"], frame["reason_ba"] = pd.Series(reasons_ab, dtype=object), pd.Series(reasons_ba, dtype=object)
    frame["judge_verdict"] = combined
    frame["judge_label"] = [LABELS.get(verdict, -1) for verdict in combined]
    frame["order_consistent"] = pd.Series([order_consistent(a, b) for a, b in zip(verdicts_ab, verdicts_ba)], dtype=object)
    frame["agrees"] = pd.Series([None if verdict not in JUDGED else verdict == label
                                 for verdict, label in zip(combined, frame["dataset_label"])], dtype=object)
    frame = frame.sort_values("strength_mean", kind="stable").reset_index(drop=True)
    agreement = agreement_bins(frame, config.bin_size)
    sets = testsets(frame)
    summary = check_summary(frame, agreement, sets, stats, judge, config, template.name, template.fingerprint,
                            cache or default_cache_path())
    summary["rows"] = {"input": int(len(pairs)), "judged_pairs": int(len(frame)),
                       "left_out": int(len(pairs) - len(frame)),
                       "why_left_out": "invalid rows, pairs without a score (allow_missing) and pairs outside --sample"}
    summary["timings"] = {"total_s": time.perf_counter() - started, "judging_s": stats.seconds}
    return CheckResult(frame, agreement, sets, summary, stats)


def judge_answers(prompts: list[str], first: list[str], second: list[str], judge: JudgeConfig = JudgeConfig(), *,
                  cache: str | os.PathLike | None = None, api_key: str | None = None,
                  progress: bool = False) -> tuple[list[str], RunStats]:
    """The judge's verdict on each (prompt, first answer, second answer), asked in both orders as
    :func:`check` asks: ``"chosen"`` (the first is better), ``"rejected"`` (the second is),
    ``"tie"``, or ``"invalid"`` / ``"error"`` / ``"pending"`` (budget); with the run's stats."""
    api_key = resolve_api_key(judge, api_key)  # no key, or one that would leak: fail before any work
    frame = {"prompt": list(prompts), "chosen": list(first), "rejected": list(second)}
    model = model_identity(judge)
    ab, ba = build_requests(frame, judge, model)
    store = JudgeCache(cache or default_cache_path())
    try:
        answers, stats, errors = run_requests([r for pair in zip(ab, ba) for r in pair], judge, store, model=model,
                                              template=load_template(judge.template), api_key=api_key,
                                              progress=progress)
    finally:
        store.close()

    def verdict(request) -> str | None:
        answer = answers.get(request.key)
        return answer.verdict if answer else ("error" if request.key in errors else None)

    return [combine(verdict(a), verdict(b)) for a, b in zip(ab, ba)], stats


def combine(verdict_ab: str | None, verdict_ba: str | None) -> str:
    """The pair's verdict from its two raw verdicts (``ab``: chosen shown as A)."""
    if "error" in (verdict_ab, verdict_ba):
        return "error"
    if verdict_ab is None or verdict_ba is None:
        return "pending"
    if INVALID in (verdict_ab, verdict_ba):
        return INVALID
    first, second = _FROM_AB[verdict_ab], _FROM_BA[verdict_ba]
    return first if first == second else "tie"


def order_consistent(verdict_ab: str | None, verdict_ba: str | None) -> bool | None:
    """Whether the two orders name the same winner (or both a tie); None without two verdicts."""
    if verdict_ab not in _FROM_AB or verdict_ba not in _FROM_BA:
        return None
    return _FROM_AB[verdict_ab] == _FROM_BA[verdict_ba]


#: The paper's three published points (Wang et al. 2024, GPT-4 relabelling the hh-rlhf validation
#: pairs in bins of 500 sorted by preference strength): GPT-4's agreement with the dataset label.
PAPER_AGREEMENT = (("weakest", 0.164), ("near zero", 0.544), ("strongest", 0.956))


def agreement_bins(frame, bin_size: int = 500) -> dict[str, Any]:
    """Agreement per bin of ``frame`` (sorted by strength_mean): ``round(n / bin_size)`` bins
    (at least one) of nearly equal size, weakest first, the same numbers over all pairs, and
    ``paper``: the paper's three points next to this check's bins at the same places."""
    n = len(frame)
    count = max(1, int(round(n / bin_size)))
    bins = [_bin_stats(frame.iloc[index], number) for number, index in
            enumerate(np.array_split(np.arange(n), count), 1) if index.size]
    return {
        "bin_size": bin_size,
        "bins": bins,
        "overall": _bin_stats(frame, None),
        "paper": paper_comparison(bins),
        "definition": "agreement = share of judged pairs (judge verdict chosen, rejected or tie) whose verdict is "
                      "the dataset's label (chosen; tie for pairs the dataset marks as ties); an order-inconsistent "
                      "verdict counts as a tie. agreement_decisive = judge prefers chosen / (prefers chosen + prefers "
                      "rejected), over pairs the dataset does not mark as ties.",
    }


def paper_comparison(bins: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:data:`PAPER_AGREEMENT` beside the agreement of the matching bin of ``bins``: the first,
    the one whose strength_mean range holds 0 (else the one whose mean is nearest 0), the last."""
    if not bins:
        return []
    # every bin holds pairs (agreement_bins makes none empty), so each has a strength range
    holding_zero = [entry for entry in bins if entry["strength_min"] <= 0 <= entry["strength_max"]]
    near_zero = holding_zero[0] if holding_zero else min(bins, key=lambda entry: abs(entry["strength_mean"]))
    matched = (bins[0], near_zero, bins[-1])
    return [{"point": point, "paper_agreement": value, "bin": entry["bin"], "agreement": entry["agreement"],
             "judged": entry["judged"]} for (point, value), entry in zip(PAPER_AGREEMENT, matched)]


def _bin_stats(part, number: int | None) -> dict[str, Any]:
    verdicts = part["judge_verdict"]
    labelled = part["dataset_label"] == "chosen"
    judged = int(verdicts.isin(JUDGED).sum())
    agree = int(sum(bool(a) for a in part["agrees"] if a is not None))
    chosen = int(((verdicts == "chosen") & labelled).sum())
    rejected = int(((verdicts == "rejected") & labelled).sum())
    strength = part["strength_mean"].to_numpy(dtype=float)
    entry: dict[str, Any] = {"bin": number} if number is not None else {}
    entry.update({
        "pairs": int(len(part)),
        "strength_min": float(strength.min()) if len(part) else None,
        "strength_max": float(strength.max()) if len(part) else None,
        "strength_mean": float(strength.mean()) if len(part) else None,
        "judged": judged,
        "agreement": agree / judged if judged else None,
        "agreement_decisive": chosen / (chosen + rejected) if chosen + rejected else None,
        "judge_chosen": int((verdicts == "chosen").sum()),
        "judge_rejected": int((verdicts == "rejected").sum()),
        "ties": int((verdicts == "tie").sum()),
        "order_inconsistent": int((part["order_consistent"] == False).sum()),  # noqa: E712 (None stays out)
        "invalid": int((verdicts == INVALID).sum()),
        "errors": int((verdicts == "error").sum()),
        "pending": int((verdicts == "pending").sum()),
        "dataset_ties": int((~labelled).sum()),
    })
    return entry


def testsets(frame) -> dict[str, Any]:
    """``original`` / ``judge`` / ``agreeing`` as ``pandas.DataFrame``s of explicit
    ``prompt``, ``chosen``, ``rejected`` (plus ``pair_id``, ``source``, ``strength_mean`` in the
    written orientation, ``judge_label``), readable by :func:`rmclean.load_pairs`. Pairs the
    dataset marks as ties, and pairs without a judge verdict, are in none of them."""
    import pandas as pd

    base = frame[frame["judge_verdict"].isin(JUDGED) & (frame["dataset_label"] == "chosen")]

    def table(part, flip) -> Any:
        flip = np.asarray(flip, dtype=bool)
        chosen, rejected = part["chosen"].to_numpy(), part["rejected"].to_numpy()
        return pd.DataFrame({
            "prompt": part["prompt"].to_numpy(),
            "chosen": np.where(flip, rejected, chosen),
            "rejected": np.where(flip, chosen, rejected),
            "pair_id": part["pair_id"].to_numpy(),
            "source": part["source"].to_numpy(),
            "strength_mean": np.where(flip, -1, 1) * part["strength_mean"].to_numpy(dtype=float),
            "judge_label": part["judge_label"].to_numpy(),
            "relabelled": flip,
        })

    decided = base[base["judge_verdict"].isin(("chosen", "rejected"))]
    agreeing = base[base["judge_verdict"] == "chosen"]
    return {
        "original": table(base, np.zeros(len(base))),
        "judge": table(decided, decided["judge_verdict"] == "rejected"),
        "agreeing": table(agreeing, np.zeros(len(agreeing))),
    }


def check_summary(frame, agreement: dict[str, Any], sets: dict[str, Any], stats: RunStats, judge: JudgeConfig,
                  config: CheckConfig, template_name: str, template_fingerprint: str, cache) -> dict[str, Any]:
    """The machine-readable summary: pairs and verdicts, requests, cache hits, tokens, cost,
    budget and how to continue. Never holds the API key (only the server's public URL)."""
    verdicts = frame["judge_verdict"].value_counts().to_dict()
    pending = int(verdicts.get("pending", 0))
    failed = int(verdicts.get("error", 0))
    to_continue = None
    if stats.stopped or pending or failed:
        reason = {"max-requests": f"--max-requests {judge.max_requests} was reached",
                  "max-cost": f"--max-cost {judge.max_cost} was reached"}.get(stats.stopped or "", "")
        to_continue = ((reason + "; " if reason else "") +
                       f"{pending:,} pair(s) are pending and {failed:,} failed. Every answer received is in the cache "
                       f"({cache}): rerun the same command" + (" with a larger budget (or none)" if reason else "") +
                       " to continue; no request is sent twice.")
    judge_settings = {key: value for key, value in asdict(judge).items() if key not in ("base_url", "price")}
    reasons = [reason for verdicts, column in (("verdict_ab", "reason_ab"), ("verdict_ba", "reason_ba"))
               for verdict, reason in zip(frame[verdicts], frame[column]) if verdict == INVALID and reason]
    judge_settings.update(model=judge.model_name, base_url=public_url(judge.effective_base_url),
                          temperature=judge.sampling_temperature, price_per_million=judge.unit_price(),
                          template=template_name, template_fingerprint=template_fingerprint)
    return {
        "pairs": int(len(frame)),
        "verdicts": {name: int(verdicts.get(name, 0)) for name in (*JUDGED, INVALID, "error", "pending")},
        "invalid_reasons": {reason: count for reason, count in sorted(Counter(reasons).items())},
        "order_inconsistent": int((frame["order_consistent"] == False).sum()),  # noqa: E712
        "agreement": agreement["overall"]["agreement"],
        "agreement_decisive": agreement["overall"]["agreement_decisive"],
        "bins": len(agreement["bins"]),
        "testsets": {name: int(len(table)) for name, table in sets.items()},
        "requests": {"sent": stats.requests, "answered": stats.answered, "cache_hits": stats.cache_hits,
                     "from_other_runs": stats.from_other_runs, "retries": stats.retries,
                     "reminders": stats.reminders, "failed": stats.failed, "not_sent": stats.not_sent,
                     "failed_attempts_charged": stats.failed_attempts},
        "tokens": {"prompt": stats.prompt_tokens, "completion": stats.completion_tokens,
                   "estimated_usage": stats.estimated_usage},
        "cost_usd": stats.cost_usd,
        "cost_usd_of_failed_attempts": stats.failed_attempts_cost_usd,
        "cost_usd_saved_by_cache": stats.cached_cost_usd,
        "budget": {"max_requests": judge.max_requests, "max_cost": judge.max_cost, "stopped": stats.stopped},
        "continue": to_continue,
        "errors": stats.errors,
        "judge": judge_settings,
        "check": asdict(config),
        "cache": str(cache),
    }


JUDGEMENT_COLUMNS = ("pair_id", "judge_label", "judge_verdict", "verdict_ab", "verdict_ba", "order_consistent",
                     "dataset_label", "agrees", "strength_mean", "strength_std", "source", "row", "reply_ab", "reply_ba",
                     "reason_ab", "reason_ba")


__all__ = ["CheckConfig", "CheckResult", "TESTSETS", "agreement_bins", "build_requests", "check", "combine", "estimate",
           "select_pairs", "testsets"]
