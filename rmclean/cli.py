"""``rmclean`` command line: a thin layer over the library API.

Every command that reads a SOURCE takes the same options as :func:`rmclean.load_pairs`
(``--subset``, ``--split``, ``--data-dir``, ``--limit``, ``--on-error`` and the key
mapping). Commands that are not built yet say so and exit with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .denoise import METHODS, DenoiseConfig, apply_actions, denoise_summary
from .data.describe import TEXT_FIELDS, describe_pairs
from .export import FORMATS, write_denoised
from .audit import AuditConfig, audit, write_audit
from .audit import to_markdown as audit_markdown
from .features.backbones import PRECISIONS, BackboneError
from .check import CheckConfig, agreement_markdown, check as run_check_pipeline, plan, write_check
from .judge import BACKENDS as JUDGE_BACKENDS
from .judge import DEFAULT_LOCAL_MODEL
from .judge import DEFAULT_MODEL as DEFAULT_JUDGE_MODEL
from .judge import JudgeConfig, JudgeError, price_for, read_price_table
from .data.pairs import PairFormatError, load_pairs
from .benefit import benefit_markdown, benefit_pairs, denoise_benefit, load_benefit_pairs, write_benefit
from .benefit import read_config as read_benefit_config
from .score import VIEWS, ScoreConfig, load_scored, score, write_report
from .train.losses import LOSSES
from .train.reward import RewardTrainConfig, train_reward_model, write_training_report
from .data.sources import DATA_DIR_ENV, NAMED_SOURCES, SourceNotFoundError

EXIT_ERROR = 1

#: Commands of the full product that are not built yet, and the issue that builds them.
PLANNED: dict[str, int | None] = {
    "ppo": None,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        return args.run(args)
    except (PairFormatError, SourceNotFoundError, BackboneError, ValueError, TypeError) as exc:
        print(f"rmclean: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # `rmclean ... | head`
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rmclean",
        description="Find and fix noisy labels in reward-model preference data.",
    )
    parser.add_argument("--version", action="version", version=f"rmclean {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    source_options = _source_options()

    data = commands.add_parser("data", help="look at preference data")
    data_commands = data.add_subparsers(title="data commands", metavar="COMMAND")
    inspect = data_commands.add_parser(
        "inspect",
        parents=[source_options],
        help="counts, flags, length percentiles and examples of a SOURCE",
        description="Load SOURCE as canonical pairs and summarise it.",
    )
    inspect.add_argument("source", metavar="SOURCE", help=_SOURCE_HELP)
    inspect.add_argument("--examples", type=int, default=3, help="how many example pairs to show (default 3)")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.set_defaults(run=_run_inspect)

    score_options = _score_options()
    score = commands.add_parser(
        "score", parents=[source_options, score_options], help="preference strength of every pair",
        description="Train a seeded reward-model ensemble on SOURCE and write each pair's preference strength.",
    )
    score.add_argument("source", metavar="SOURCE", help=_SOURCE_HELP)
    score.add_argument("--out", metavar="DIR", default="scores", help="output folder (default: scores)")
    score.set_defaults(run=_run_score)

    audit = commands.add_parser(
        "audit", parents=[source_options, score_options], help="detection audit on planted label flips",
        description="Flip a known random subset of labels, score the corrupted data and report how well "
        "each detector finds the flips (AUROC, AUPRC, precision@k).",
    )
    audit.add_argument("source", metavar="SOURCE", help=_SOURCE_HELP)
    audit.add_argument("--inject", default="0.1,0.2,0.3", metavar="RATES", help="flip rates to plant (default 0.1,0.2,0.3)")
    audit.add_argument("--resamples", type=int, default=1000, metavar="N",
                       help="bootstrap resamples for the AUROC intervals and the paired differences (0: none)")
    audit.add_argument("--out", metavar="DIR", default="audit", help="output folder (default: audit)")
    audit.set_defaults(run=_run_audit)

    denoise = commands.add_parser(
        "denoise", help="apply a denoising method to scored pairs",
        description="Read a folder written by `rmclean score`, reload the pairs it scored, apply a "
        "denoising method and write the cleaned dataset (cleaned.jsonl, cleaned.parquet, cleaned/), "
        "dropped and invalid rows (dropped.jsonl) and summary.json.",
    )
    denoise.add_argument("scores", metavar="SCORES_DIR", help="a folder written by rmclean score")
    denoise.add_argument("--method", choices=METHODS, default="flip", help="denoising method (default flip)")
    denoise.add_argument("--select", metavar="RULE", default=None,
                         help="fraction:F, negative, zscore:Z or ambiguous:LO,HI (default fraction:0.1; "
                         "margin alone takes none)")
    denoise.add_argument("--alpha", default="0.1", metavar="A",
                         help="soft-label smoothing: a constant in [0, 1), or 'members' / 'normal' for a "
                         "per-pair value from the ensemble (default 0.1)")
    denoise.add_argument("--margin-scale", type=float, default=1.0, help="margin = clip(scale * strength_mean, 0, max)")
    denoise.add_argument("--margin-max", type=float, default=1.0, help="largest margin (default 1.0)")
    denoise.add_argument("--format", choices=FORMATS, default="input",
                         help="columns of the cleaned files (default input: as the input held them)")
    denoise.add_argument("--source", metavar="SOURCE",
                         help="load the pairs from SOURCE instead of the source the scores folder records")
    denoise.add_argument("--allow-missing", action="store_true",
                         help="accept scores that cover only part of the pairs; unmatched pairs are written "
                         "as invalid and reported")
    denoise.add_argument("--examples", type=int, default=0, metavar="N",
                         help="print N changed pairs (the lowest strength first)")
    denoise.add_argument("--out", metavar="DIR", default="denoised", help="output folder (default: denoised)")
    denoise.set_defaults(run=_run_denoise)

    check = commands.add_parser(
        "check", help="check labels against an LLM judge (GPT-4 or any OpenAI-compatible server)",
        description="Read a folder written by `rmclean score`, reload the pairs it scored, ask an LLM judge "
        "about every pair in both orders (answers cached, so nothing is paid twice) and write per-pair "
        "judgements (judgements.parquet), agreement with the dataset labels per strength bin "
        "(agreement.json, agreement.md, plots/agreement.png), three test sets for --eval "
        "(testsets/{original,judge,agreeing}.jsonl) and summary.json. The API key comes from "
        "$OPENAI_API_KEY (not needed for a server on this machine or --backend local).",
    )
    check.add_argument("scores", metavar="SCORES_DIR", help="a folder written by rmclean score")
    judge_options = check.add_argument_group("judge options")
    judge_options.add_argument("--backend", choices=JUDGE_BACKENDS, default="openai",
                               help="openai: any OpenAI-compatible chat server (default); local: a causal LM run here")
    judge_options.add_argument("--model", default=None,
                               help=f"judge model (default {DEFAULT_JUDGE_MODEL}; with --backend local: smollm2, "
                               "a model folder, a .gguf file or a Hub id)")
    judge_options.add_argument("--base-url", metavar="URL",
                               help="OpenAI-compatible server, e.g. http://localhost:8000/v1 for vLLM "
                               "(default $OPENAI_BASE_URL, else OpenAI)")
    judge_options.add_argument("--template", metavar="FILE",
                               help="judge prompt file with {question}, {answer_a}, {answer_b}; optionally a "
                               "[system] section then a [user] section")
    judge_options.add_argument("--temperature", type=float, default=None,
                               help="sampling temperature (default 0; 0.7 with --backend local)")
    judge_options.add_argument("--max-tokens", type=int, default=512, help="longest reply in tokens (default 512)")
    judge_options.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default 8)")
    judge_options.add_argument("--timeout", type=float, default=60.0, metavar="S", help="seconds per request (default 60)")
    judge_options.add_argument("--max-retries", type=int, default=6,
                               help="retries on 429, 5xx, timeouts and malformed replies (default 6)")
    judge_options.add_argument("--seed", type=int, default=0, help="pair order, --sample and local sampling")
    budget = check.add_argument_group("budget")
    budget.add_argument("--max-requests", type=int, metavar="N", help="send at most N HTTP requests (retries count)")
    budget.add_argument("--max-cost", type=float, metavar="USD", help="stop before the cost passes USD")
    budget.add_argument("--price", metavar="IN,OUT", help="USD per million input and output tokens for --model")
    budget.add_argument("--prices", metavar="FILE", help='price table JSON {"model": [in, out]} over the built-in one')
    budget.add_argument("--dry-run", action="store_true", help="print the requests and tokens a run needs; send nothing")
    check.add_argument("--bin-size", type=int, default=500, help="pairs per strength bin (paper: 500)")
    check.add_argument("--sample", type=int, metavar="N", help="judge N pairs drawn at random instead of all")
    check.add_argument("--cache", metavar="FILE",
                       help="answer cache (default judge.sqlite in $RMCLEAN_CACHE_DIR or ~/.cache/rmclean)")
    check.add_argument("--retry-invalid", action="store_true", help="ask again the requests cached as invalid")
    check.add_argument("--source", metavar="SOURCE",
                       help="load the pairs from SOURCE instead of the source the scores folder records")
    check.add_argument("--allow-missing", action="store_true", help="judge only the pairs that have a score")
    check.add_argument("--out", metavar="DIR", default="check", help="output folder (default: check)")
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    check.set_defaults(run=_run_check)

    train_defaults = RewardTrainConfig()
    train = commands.add_parser(
        "train-rm", parents=[source_options], help="train a reward model",
        description="Train one reward model on DATA (a folder written by `rmclean denoise`, whose margin and "
        "soft_label columns the loss reads, or any SOURCE) and evaluate it on named test sets. Writes "
        "model/ (rmclean score --reward-model reads it), metrics.json and plots/curves.png.",
    )
    train.add_argument("data", metavar="DATA", help="a denoise output folder or any SOURCE")
    train.add_argument("--loss", choices=LOSSES, default=train_defaults.loss, help="default bt (Bradley-Terry)")
    train.add_argument("--eval", action="append", metavar="NAME=SOURCE", default=[],
                       help="a named test set (repeatable), any SOURCE, e.g. clean=testsets/agreeing.jsonl")
    train.add_argument("--mode", choices=("heads", "finetune"), default=train_defaults.mode,
                       help="heads: a head on cached frozen features (CPU); finetune: the whole backbone (GPU)")
    train.add_argument("--backbone", default=train_defaults.backbone)
    train.add_argument("--views", default=",".join(train_defaults.views), metavar="VIEW[,VIEW]",
                       help="feature views for heads, as for rmclean score")
    train.add_argument("--head", choices=("linear", "mlp"), default=train_defaults.head)
    train.add_argument("--epochs", type=int, default=train_defaults.epochs)
    train.add_argument("--lr", type=float, default=train_defaults.learning_rate)
    train.add_argument("--weight-decay", type=float, default=train_defaults.weight_decay)
    train.add_argument("--batch-size", type=int, default=train_defaults.batch_size)
    train.add_argument("--max-length", type=int, default=train_defaults.max_length)
    train.add_argument("--eval-every", type=int, default=5, metavar="EPOCHS")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--cache-dir", metavar="DIR", help="feature cache (default $RMCLEAN_CACHE_DIR or ~/.cache/rmclean)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("--out", metavar="DIR", default="reward-model", help="output folder (default: reward-model)")
    train.set_defaults(run=_run_train_rm)

    ppo = commands.add_parser("ppo", help="PPO a policy against a reward model (planned)")
    ppo.add_argument("--reward-model", metavar="DIR")
    ppo.add_argument("--policy", default="smollm2")
    ppo.add_argument("--out", metavar="DIR")

    compare = commands.add_parser(
        "compare", help="end-to-end comparisons from a config file (the denoising-benefit experiment)",
        description="--stage rm: split the pairs into train and clean test parts, plant label flips in the "
        "train part, score it, apply every denoiser and train a reward model per denoiser (plus no "
        "denoising and an oracle); write the clean-test accuracies (denoise_benefit.json/.md/.png). "
        "CONFIG is a JSON file (see experiments/benefit_hh.json).",
    )
    compare.add_argument("config", metavar="CONFIG", help="a JSON benefit config")
    compare.add_argument("--stage", choices=("rm",), default="rm", help="what to compare (rm: reward models)")
    compare.add_argument("--seeds", type=int, default=None, help="override the config's seed count")
    compare.add_argument("--cache-dir", metavar="DIR", help="feature cache (default $RMCLEAN_CACHE_DIR or ~/.cache/rmclean)")
    compare.add_argument("--quiet", action="store_true", help="no progress lines")
    compare.add_argument("--out", metavar="DIR", default="compare", help="output folder (default: compare)")
    compare.set_defaults(run=_run_compare)

    for name, issue in PLANNED.items():
        commands.choices[name].set_defaults(run=_not_built(name, issue))
    return parser


_SOURCE_HELP = (
    f"a dataset name ({', '.join(NAMED_SOURCES)}), a file (.jsonl, .jsonl.gz, .json, .parquet, "
    ".csv, .zip), a folder (data files or a datasets save_to_disk folder) or a Hugging Face Hub id"
)


def _source_options() -> argparse.ArgumentParser:
    """Options shared by every command that reads a SOURCE (same names as load_pairs)."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("source options")
    group.add_argument(
        "--subset", action="append", metavar="NAME",
        help="subset(s) to read; repeat or separate with commas (hh-rlhf default: all four)",
    )
    group.add_argument("--split", help="split to read (hh-rlhf default: test)")
    group.add_argument("--data-dir", metavar="DIR", help="look here first (then $RMCLEAN_DATA_DIR, then the Hub)")
    group.add_argument("--limit", type=int, metavar="N", help="read at most N rows")
    group.add_argument(
        "--on-error", choices=("raise", "skip"), default="raise",
        help="stop at the first bad row (default), or keep going and report bad rows as invalid",
    )
    group.add_argument("--allow-empty", action="store_true", help="keep pairs with an empty response (flagged)")
    group.add_argument("--prompt-key", metavar="FIELD")
    group.add_argument("--chosen-key", metavar="FIELD")
    group.add_argument("--rejected-key", metavar="FIELD")
    group.add_argument("--label-key", metavar="FIELD", help="label field of two-response judgement files")
    group.add_argument("--response-keys", metavar="FIRST,SECOND", help="the two response fields of judgement files")
    group.add_argument("--chat-template", metavar="TOKENIZER", help="render message lists with this tokenizer's template")
    return options


def _score_options() -> argparse.ArgumentParser:
    """Options that decide the ensemble (same names as ScoreConfig)."""
    defaults = ScoreConfig()
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("ensemble options")
    group.add_argument("--members", type=int, default=defaults.members, help="ensemble members per fold (paper: 10)")
    group.add_argument("--folds", type=int, default=defaults.folds, help="cross-fitting folds; 1 = in-sample as in the paper")
    group.add_argument("--backbone", default=defaults.backbone, help="minilm, smollm2, a model folder or a Hub id")
    group.add_argument("--member-type", choices=("heads", "finetune"), default=defaults.member_type,
                       help="heads on cached frozen features (CPU default) or full fine-tunes (GPU path)")
    group.add_argument("--head", choices=("linear", "mlp"), default=defaults.head)
    group.add_argument("--views", default=",".join(defaults.views), metavar="VIEW[,VIEW]",
                       help=f"feature views, each with its own members: {', '.join(VIEWS)}, each optionally "
                       f"BACKBONE:VIEW to mix backbones, e.g. transcript,smollm2:transcript "
                       f"(default: {','.join(defaults.views)})")
    group.add_argument("--max-length", type=int, default=defaults.max_length, help="tokens per text (left-truncated)")
    group.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                       help="backbone precision: auto = bfloat16 where the hardware has it natively, else float32")
    group.add_argument("--C", type=float, default=defaults.C, dest="C", help="inverse L2 strength of linear heads")
    group.add_argument("--no-bootstrap", action="store_true", help="train every member on all its fold's pairs")
    group.add_argument("--group-by", default=defaults.group_by, help="column whose values get their own members ('none': one pool)")
    group.add_argument("--seed", type=int, default=defaults.seed)
    group.add_argument("--reward-model", action="append", default=[], metavar="ID_OR_PATH",
                       help="a trained reward model as an extra member (repeatable); --members 0 uses only these")
    group.add_argument("--finetune-epochs", type=int, default=defaults.finetune_epochs)
    group.add_argument("--finetune-lr", type=float, default=defaults.finetune_learning_rate)
    group.add_argument("--finetune-max-steps", type=int, default=defaults.finetune_max_steps, metavar="N")
    group.add_argument("--cache-dir", metavar="DIR", help="feature cache (default $RMCLEAN_CACHE_DIR or ~/.cache/rmclean)")
    group.add_argument("--quiet", action="store_true", help="no progress bars")
    return options


def score_config(args: argparse.Namespace) -> ScoreConfig:
    """The ScoreConfig the ensemble options describe."""
    return ScoreConfig(
        backbone=args.backbone, max_length=args.max_length, precision=args.precision,
        members=args.members, folds=args.folds,
        member_type=args.member_type, head=args.head, C=args.C, bootstrap=not args.no_bootstrap,
        group_by=None if str(args.group_by).lower() == "none" else args.group_by, seed=args.seed,
        reward_models=tuple(args.reward_model), views=tuple(v for v in args.views.split(",") if v),
        finetune_epochs=args.finetune_epochs,
        finetune_learning_rate=args.finetune_lr, finetune_max_steps=args.finetune_max_steps,
    )


def source_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """``load_pairs`` keyword arguments from the shared source options."""
    subsets = [part for value in args.subset or [] for part in value.split(",") if part] or None
    response_keys = tuple(args.response_keys.split(",")) if args.response_keys else None
    if response_keys is not None and len(response_keys) != 2:
        raise ValueError("--response-keys takes two field names separated by a comma")
    keys = {
        "prompt_key": args.prompt_key,
        "chosen_key": args.chosen_key,
        "rejected_key": args.rejected_key,
        "label_key": args.label_key,
        "response_keys": response_keys,
    }
    return {
        "subset": subsets,
        "split": args.split,
        "data_dir": args.data_dir,
        "limit": args.limit,
        "on_error": args.on_error,
        "allow_empty": args.allow_empty,
        "chat_template": args.chat_template,
        **{k: v for k, v in keys.items() if v is not None},
    }


def _run_inspect(args: argparse.Namespace) -> int:
    pairs = load_pairs(args.source, **source_arguments(args))
    summary = {"source": args.source, **describe_pairs(pairs, examples=args.examples)}
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print(format_summary(summary))
    return 0


def _run_score(args: argparse.Namespace) -> int:
    loading = source_arguments(args)
    pairs = load_pairs(args.source, **loading)
    scores = score(pairs, score_config(args), cache_dir=args.cache_dir, progress=not args.quiet)
    written = write_report(scores, args.out, source=recorded_source(args.source, loading))
    print(format_score_summary(scores.metadata, written))
    return 0


def _run_audit(args: argparse.Namespace) -> int:
    rates = tuple(float(rate) for rate in args.inject.split(",") if rate.strip())
    config = AuditConfig(rates=rates, seed=args.seed, resamples=args.resamples)
    pairs = load_pairs(args.source, **source_arguments(args))
    result = audit(pairs, score_config(args), config, cache_dir=args.cache_dir, progress=not args.quiet)
    result["source"] = recorded_source(args.source, source_arguments(args))
    written = write_audit(result, args.out)
    print(audit_markdown(result))
    if not result["cleanlab"]:
        print("(cleanlab is not installed: pip install cleanlab, or rmclean[audit], to add its row)")
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def _run_denoise(args: argparse.Namespace) -> int:
    folder = Path(args.scores)
    pairs, scores, _ = load_scored(folder, args.source)
    try:
        alpha: float | str = args.alpha if args.alpha in ("members", "normal") else float(args.alpha)
    except ValueError:
        raise ValueError(f"--alpha takes a number in [0, 1), 'members' or 'normal', not {args.alpha!r}") from None
    config = DenoiseConfig(method=args.method, select=args.select, alpha=alpha,
                           margin_scale=args.margin_scale, margin_max=args.margin_max)
    result = apply_actions(pairs, scores, config, allow_missing=args.allow_missing)
    summary = denoise_summary(result, config, scores)
    summary["scores_dir"] = str(folder.resolve())
    written = write_denoised(result, summary, args.out, args.format)
    counts = ", ".join(f"{name} {count:,}" for name, count in summary["counts"].items())
    print(f"{args.method} ({config.rule or 'every pair'}) on {summary['rows']:,} rows: {counts}")
    unmatched = sum(reason == "no score for this pair (allow_missing)" for reason in result["reason"])
    if unmatched:
        print(f"{unmatched:,} pair(s) had no score and were written as invalid (--allow-missing)")
    if args.examples > 0:
        print(format_denoise_examples(result, args.examples))
    print("wrote " + ", ".join(str(path) for path in written.values()))
    return 0


def format_denoise_examples(result, count: int) -> str:
    """The ``count`` changed pairs of lowest original strength, with their texts cut short."""
    changed = [i for i, action in enumerate(result["action"]) if action in ("flip", "drop", "soften")]
    original = {i: result[i]["strength_mean"] * (-1 if result[i]["action"] == "flip" else 1) for i in changed}
    lines = []
    for number, index in enumerate(sorted(changed, key=original.get)[:count], 1):
        row = result[index]
        lines.append(f"[{number}] {row['action']} {row['source']} row {row['row']}  id {row['pair_id']}  "
                     f"strength_mean {original[index]:.3f} (std {row['strength_std']:.3f})")
        was_chosen, was_rejected = ((row["rejected"], row["chosen"]) if row["action"] == "flip"
                                    else (row["chosen"], row["rejected"]))
        lines.append(f"    prompt:          {_clip(row['prompt'], tail=True)}")
        lines.append(f"    labelled better: {_clip(was_chosen)}")
        lines.append(f"    labelled worse:  {_clip(was_rejected)}")
    return "\n".join(lines)


def _run_check(args: argparse.Namespace) -> int:
    try:
        config = judge_config(args)
        pairs, scores, recorded = load_scored(args.scores, args.source)
        check_config = CheckConfig(bin_size=args.bin_size, sample=args.sample, seed=args.seed)
        if args.dry_run:
            print(format_check_plan(plan(pairs, scores, config, check_config, cache=args.cache,
                                         allow_missing=args.allow_missing)))
            return 0
        result = run_check_pipeline(pairs, scores, config, check_config, cache=args.cache,
                                    allow_missing=args.allow_missing, progress=not args.quiet)
    except JudgeError as exc:
        print(f"rmclean check: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("rmclean check: interrupted; every answer received is in the judge cache: rerun the same "
              "command to continue (nothing is asked twice)", file=sys.stderr)
        return 130
    written = write_check(result, args.out, extra={"scores_dir": str(Path(args.scores).resolve()), "source": recorded})
    print(format_check_summary(result.summary, result.agreement))
    print("wrote " + ", ".join(str(path) for path in written.values()))
    return 0


def judge_config(args: argparse.Namespace) -> JudgeConfig:
    """The JudgeConfig the check options describe (the price from --price or --prices)."""
    price = None
    if args.price:
        parts = args.price.split(",")
        if len(parts) != 2:
            raise ValueError("--price takes two numbers, USD per million input and output tokens: --price 2.5,10")
        price = (float(parts[0]), float(parts[1]))
    elif args.prices:
        model = args.model or (DEFAULT_LOCAL_MODEL if args.backend == "local" else DEFAULT_JUDGE_MODEL)
        price = price_for(model, read_price_table(args.prices))
    return JudgeConfig(
        backend=args.backend, model=args.model, base_url=args.base_url, template=args.template,
        temperature=args.temperature, max_tokens=args.max_tokens, timeout_s=args.timeout,
        concurrency=args.concurrency, max_retries=args.max_retries, max_requests=args.max_requests,
        max_cost=args.max_cost, price=price, seed=args.seed, retry_invalid=args.retry_invalid,
    )


def format_check_plan(needs: dict[str, Any]) -> str:
    """The human report of ``rmclean check --dry-run`` (``needs`` from :func:`rmclean.check.plan`)."""
    def usd(value: float | None) -> str:
        return "unknown (no price for this model: --price IN,OUT)" if value is None else f"${value:,.2f}"

    lines = [
        f"dry run: {needs['pairs']:,} pairs, {needs['requests']:,} requests (both orders) to {needs['model']}; "
        f"{needs['cached']:,} answered by the cache, {needs['to_send']:,} to send",
        f"  prompt tokens: about {needs['prompt_tokens']:,} (4 characters a token)",
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


def format_check_summary(summary: dict[str, Any], agreement: dict[str, Any]) -> str:
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


def _run_train_rm(args: argparse.Namespace) -> int:
    config = RewardTrainConfig(
        loss=args.loss, mode=args.mode, backbone=args.backbone, views=tuple(v for v in args.views.split(",") if v),
        head=args.head, epochs=args.epochs, learning_rate=args.lr, weight_decay=args.weight_decay,
        batch_size=args.batch_size, max_length=args.max_length, seed=args.seed,
    )
    pairs = load_training_data(args.data, source_arguments(args))
    evals = {}
    for entry in args.eval:
        name, separator, source = entry.partition("=")
        if not separator or not name or not source:
            raise ValueError(f"--eval takes NAME=SOURCE, got {entry!r}")
        evals[name] = load_pairs(source, data_dir=args.data_dir, on_error="skip", allow_empty=True)
    model, metrics = train_reward_model(pairs, config, evals=evals, eval_every=args.eval_every,
                                        cache_dir=args.cache_dir, progress=not args.quiet)
    out = Path(args.out)
    written = write_training_report(model, metrics, out, data=str(args.data))
    lines = [f"trained a {config.mode} reward model ({config.loss} loss) on {metrics['train']['pairs']:,} pairs: "
             f"train accuracy {metrics['train']['accuracy']:.3f}"]
    lines += [f"  {name}: accuracy {m['accuracy']:.3f}, mean margin {m['mean_margin']:.3f}, "
              f"calibration error {m['calibration_error']:.3f} ({m['pairs']:,} pairs)" for name, m in metrics["eval"].items()]
    lines.append("wrote " + ", ".join(str(path) for path in written))
    print("\n".join(lines))
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    config = read_benefit_config(args.config)
    if args.seeds is not None:
        config = replace(config, seeds=args.seeds)
    pairs = load_benefit_pairs(config)

    def report(record: dict[str, Any]) -> None:
        if not args.quiet:
            print(f"seed {record['seed']} {record['noise']} flips {record['rate']:.0%}: oracle "
                  f"{record['oracle']['accuracy']:.3f}, no denoising {record['none']['accuracy']:.3f}", flush=True)

    records = denoise_benefit(pairs, config, cache_dir=args.cache_dir, progress=not args.quiet, report=report)
    n_pairs = len(benefit_pairs(pairs, config))
    written = write_benefit(records, config, args.out, n_pairs)
    print(benefit_markdown(records, config, n_pairs))
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def load_training_data(data: str, loading: dict[str, Any]):
    """The pairs ``train-rm`` trains on: a denoise folder's ``cleaned.jsonl`` (with its
    margin and soft_label columns), else ``load_pairs(data, ...)``."""
    folder = Path(data)
    if folder.is_dir() and (folder / "cleaned.jsonl").is_file() and (folder / "summary.json").is_file():
        return load_pairs(folder / "cleaned.jsonl", allow_empty=True)  # rmclean denoise accepted these pairs
    return load_pairs(data, **loading)


def recorded_source(source: str, loading: dict[str, Any]) -> dict[str, Any]:
    """The ``load_pairs`` call that reproduces the pairs, with local paths made absolute (and
    the data folder a named source was found in through ``$RMCLEAN_DATA_DIR``) so the record
    works from any folder and shell."""
    def absolute(value: Any) -> Any:
        return str(Path(value).resolve()) if value is not None and Path(value).exists() else value

    data_dir = loading.get("data_dir") or (os.environ.get(DATA_DIR_ENV) if source in NAMED_SOURCES else None)
    return {"source": absolute(source), **loading, "data_dir": absolute(data_dir)}


def format_score_summary(metadata: dict[str, Any], written: dict[str, Path]) -> str:
    """The short human report of ``rmclean score``."""
    summary = metadata["summary"]
    config = metadata["config"]
    members = f"{config['members']} {config['head'] if config['member_type'] == 'heads' else 'fine-tuned'} members per fold"
    if config["reward_models"]:
        members += f" + {len(config['reward_models'])} reward model(s)"
    lines = [
        f"scored {metadata['scored']:,} pairs ({metadata['invalid']:,} invalid rows not scored) with "
        f"{members}, {metadata['mode']}, backbone {metadata['backbone']['name']}",
        f"  ensemble accuracy vs dataset labels: {summary['ensemble_accuracy']:.3f} "
        f"(members {min(summary['member_accuracy']):.3f}-{max(summary['member_accuracy']):.3f})",
        f"  pairs with strength_mean < 0: {summary['fraction_negative']:.1%}",
    ]
    if metadata["collapsed_pairs"] is not None:
        lines.append(
            f"  pairs whose two inputs are identical after truncation: {metadata['collapsed_pairs']:,} "
            f"({metadata['collapsed_beyond_identical_responses']:,} beyond identical responses)"
        )
    for name, entry in summary.get("by_source", {}).items():
        lines.append(f"  {name}: {entry['pairs']:,} pairs, accuracy {entry['ensemble_accuracy']:.3f}, "
                     f"below 0 {entry['fraction_negative']:.1%}")
    timings = metadata["timings"]
    lines.append("  time: " + ", ".join(f"{name.removesuffix('_s')} {seconds:.1f}s" for name, seconds in timings.items()))
    lines.append("wrote " + ", ".join(str(path) for path in written.values()))
    return "\n".join(lines)


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable report of ``rmclean data inspect``."""
    lines = [
        f"{summary['source']}: {summary['pairs']:,} pairs ({summary['valid']:,} valid, "
        f"{summary['invalid']:,} invalid) from {len(summary['sources'])} source(s)",
        "",
    ]
    width = max([len(name) for name in summary["sources"]] + [6])
    lines.append(f"{'source':<{width}}  {'pairs':>7}  flags")
    for name, entry in summary["sources"].items():
        flags = ", ".join(f"{flag} {count:,}" for flag, count in entry["flags"].items()) or "-"
        lines.append(f"{name:<{width}}  {entry['pairs']:>7,}  {flags}")
    lines += ["", "flags (pairs carrying each; flagged pairs are kept, not dropped)"]
    lines += [f"  {flag:<22} {count:>7,}" for flag, count in summary["flags"].items()] or ["  none"]
    for unit in ("characters", "words"):
        lines += ["", f"length in {unit:<11}" + "".join(f"{p:>9}" for p in ("p5", "p25", "p50", "p75", "p95", "max"))]
        for field in TEXT_FIELDS:
            stats = summary["lengths"][field][unit]
            cells = "".join(f"{stats[p]:>9,.0f}" for p in ("p5", "p25", "p50", "p75", "p95", "max")) if stats else ""
            lines.append(f"  {field:<20}{cells}")
    if summary["examples"]:
        lines += ["", "examples"]
        for number, example in enumerate(summary["examples"], 1):
            flags = ", ".join(example["flags"]) or "-"
            lines.append(f"  [{number}] {example['source']} row {example['row']}  id {example['pair_id']}  flags: {flags}")
            lines.append(f"      prompt:   {_clip(example['prompt'], tail=True)}")
            lines.append(f"      chosen:   {_clip(example['chosen'])}")
            lines.append(f"      rejected: {_clip(example['rejected'])}")
    if summary["errors"]:
        lines += ["", f"rejected rows (first {len(summary['errors'])} of {summary['invalid']:,})"]
        lines += [f"  {textwrap.shorten(error, 200)}" for error in summary["errors"]]
    return "\n".join(lines)


def _clip(text: str, width: int = 160, tail: bool = False) -> str:
    flat = " ".join(text.split())
    if len(flat) <= width:
        return repr(flat)
    return repr("…" + flat[-width:]) if tail else repr(flat[:width] + "…")


def _not_built(name: str, issue: int | None):
    plan = f"planned in issue #{issue}" if issue else "planned"

    def run(args: argparse.Namespace) -> int:
        print(f"rmclean {name}: not built yet ({plan}); see 'What works today' in the README", file=sys.stderr)
        return EXIT_ERROR

    return run


if __name__ == "__main__":
    sys.exit(main())
