"""``rmclean`` command line: a thin layer over the library API.

Every library setting is a flag: the options of each command are built from the fields of
its config dataclasses (their ``metadata`` holds the help, see :mod:`rmclean.configs`), and
options several commands share (the source options of :func:`rmclean.load_pairs`,
``--cache-dir``, ``--quiet``, ``SCORES_DIR``) are declared once. The reports a command prints
live next to the results they describe. Commands that are not built yet say so and exit with
status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .audit import AuditConfig, audit, to_markdown as audit_markdown, write_audit
from .benefit import benefit_markdown, benefit_pairs, denoise_benefit, load_benefit_pairs, record_text, write_benefit
from .benefit import read_config as read_benefit_config
from .check import CheckConfig, check as run_check, estimate, estimate_text, summary_text as check_summary_text, write_check
from .configs import option_fields
from .data.describe import describe_pairs, summary_text as inspect_summary_text
from .data.pairs import PairFormatError, load_pairs, recorded_source
from .data.sources import NAMED_SOURCES, SourceNotFoundError
from .denoise import DenoiseConfig, apply_actions, denoise_summary, summary_text as denoise_summary_text
from .export import FORMATS, write_denoised
from .features.backbones import BackboneError
from .judge import JudgeConfig, JudgeError, price_for, read_price_table
from .score import ScoreConfig, load_scored, score, summary_text as score_summary_text, write_report
from .train.reward import RewardTrainConfig, metrics_text, train_reward_model, write_training_report

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


# --- options from config fields ---------------------------------------------------------
def add_config_options(parser: argparse.ArgumentParser, cls: type, title: str | None = None) -> dict[str | None, Any]:
    """One option per setting of the config class ``cls`` (see :mod:`rmclean.configs`), in a
    group called ``title`` (or the field's own ``group``); returns the groups by title. A flag
    the parser already has is shared: both configs read it (``--seed``)."""
    groups: dict[str | None, Any] = {}
    declared = {option for action in parser._actions for option in action.option_strings}
    for _, field, hint in option_fields(cls):
        meta, default = field.metadata, _default(field)
        flag = _flag(field, default)
        if flag in declared:
            continue
        declared.add(flag)
        group_title = meta.get("group", title)
        if group_title not in groups:
            groups[group_title] = parser.add_argument_group(group_title) if group_title else parser
        options: dict[str, Any] = {"dest": _dest(field, default), "help": _help(field, default)}
        if hint is bool:
            options["action"] = "store_false" if default else "store_true"
        elif meta.get("action") == "append":
            options.update(action="append", default=[], metavar=meta.get("metavar"))
        else:
            kind = None if "parse" in meta else _scalar(hint)
            if kind is None and "parse" not in meta:
                raise TypeError(f"{cls.__name__}.{field.name}: a {hint} setting needs a 'parse' in its metadata")
            options.update(type=kind, default=default, metavar=meta.get("metavar"))
            if "choices" in meta:
                options["choices"] = list(meta["choices"])
        groups[group_title].add_argument(flag, **options)
    return groups


def config_from_args(cls: type, args: argparse.Namespace):
    """The ``cls`` instance the options of :func:`add_config_options` describe: ``parse``
    applied to the values given as text, repeated options as tuples."""
    values: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.metadata.get("flatten"):
            values[field.name] = config_from_args(hints[field.name], args)
            continue
        value = getattr(args, _dest(field, _default(field)))
        if "parse" in field.metadata and isinstance(value, str):
            value = field.metadata["parse"](value)
        elif field.metadata.get("action") == "append":
            value = tuple(value)
        values[field.name] = value
    return cls(**values)


def _default(field: dataclasses.Field) -> Any:
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def _flag(field: dataclasses.Field, default: Any) -> str:
    if "flag" in field.metadata:
        return field.metadata["flag"]
    name = field.name.replace("_", "-")
    return f"--no-{name}" if default is True else f"--{name}"


def _dest(field: dataclasses.Field, default: Any) -> str:
    return field.name if default is True else _flag(field, default).lstrip("-").replace("-", "_")


def _help(field: dataclasses.Field, default: Any) -> str:
    text = field.metadata.get("help", "")
    if default is None or isinstance(default, bool) or default in ((), []):
        return text
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    return f"{text} (default: {shown})".strip()


def _scalar(hint: Any) -> type | None:
    """``int``, ``float`` or ``str`` for a hint that is one of them (or one of them or None)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        hint = options[0] if len(options) == 1 else None
    return hint if hint in (int, float, str) else None


# --- options several commands share, declared once ---------------------------------------
_SOURCE_HELP = (
    f"a dataset name ({', '.join(NAMED_SOURCES)}), a file (.jsonl, .jsonl.gz, .json, .parquet, "
    ".csv, .zip), a folder (data files or a datasets save_to_disk folder) or a Hugging Face Hub id"
)


def _source_options() -> argparse.ArgumentParser:
    """Options of every command that reads a SOURCE (the keywords of load_pairs)."""
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


def _scored_input() -> argparse.ArgumentParser:
    """SCORES_DIR and how its pairs are reloaded: the input of denoise and check."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("scores", metavar="SCORES_DIR", help="a folder written by rmclean score")
    options.add_argument("--source", metavar="SOURCE",
                         help="load the pairs from SOURCE instead of the source the scores folder records")
    options.add_argument("--allow-missing", action="store_true",
                         help="accept scores that cover only part of the pairs (denoise writes the unscored pairs "
                         "as invalid and reports them; check judges only the scored ones)")
    return options


def _flag_options(*names: str) -> argparse.ArgumentParser:
    """``--cache-dir`` and/or ``--quiet``."""
    options = argparse.ArgumentParser(add_help=False)
    if "cache-dir" in names:
        options.add_argument("--cache-dir", metavar="DIR",
                             help="feature cache (default $RMCLEAN_CACHE_DIR or ~/.cache/rmclean)")
    if "quiet" in names:
        options.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rmclean",
        description="Find and fix noisy labels in reward-model preference data.",
    )
    parser.add_argument("--version", action="version", version=f"rmclean {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    source, scored, cached = _source_options(), _scored_input(), _flag_options("cache-dir", "quiet")
    quiet = _flag_options("quiet")

    data = commands.add_parser("data", help="look at preference data")
    data_commands = data.add_subparsers(title="data commands", metavar="COMMAND")
    inspect = data_commands.add_parser(
        "inspect", parents=[source], help="counts, flags, length percentiles and examples of a SOURCE",
        description="Load SOURCE as canonical pairs and summarise it.",
    )
    inspect.add_argument("source", metavar="SOURCE", help=_SOURCE_HELP)
    inspect.add_argument("--examples", type=int, default=3, help="how many example pairs to show (default 3)")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.set_defaults(run=_run_inspect)

    score = commands.add_parser(
        "score", parents=[source, cached], help="preference strength of every pair",
        description="Train a seeded reward-model ensemble on SOURCE and write each pair's preference strength.",
    )
    score.add_argument("source", metavar="SOURCE", help=_SOURCE_HELP)
    add_config_options(score, ScoreConfig, "ensemble options")
    score.add_argument("--out", metavar="DIR", default="scores", help="output folder (default: scores)")
    score.set_defaults(run=_run_score)

    audit = commands.add_parser(
        "audit", parents=[source, cached], help="detection audit on planted label flips",
        description="Flip a known random subset of labels, score the corrupted data and report how well "
        "each detector finds the flips (AUROC, AUPRC, precision@k).",
    )
    audit.add_argument("source", metavar="SOURCE", help=_SOURCE_HELP)
    add_config_options(audit, ScoreConfig, "ensemble options")
    add_config_options(audit, AuditConfig, "audit options")
    audit.add_argument("--out", metavar="DIR", default="audit", help="output folder (default: audit)")
    audit.set_defaults(run=_run_audit)

    denoise = commands.add_parser(
        "denoise", parents=[scored], help="apply a denoising method to scored pairs",
        description="Read a folder written by `rmclean score`, reload the pairs it scored, apply a "
        "denoising method and write the cleaned dataset (cleaned.jsonl, cleaned.parquet, cleaned/), "
        "dropped and invalid rows (dropped.jsonl) and summary.json.",
    )
    add_config_options(denoise, DenoiseConfig)
    denoise.add_argument("--format", choices=FORMATS, default="input",
                         help="columns of the cleaned files (default input: as the input held them)")
    denoise.add_argument("--examples", type=int, default=0, metavar="N",
                         help="print N changed pairs (the lowest strength first)")
    denoise.add_argument("--out", metavar="DIR", default="denoised", help="output folder (default: denoised)")
    denoise.set_defaults(run=_run_denoise)

    check = commands.add_parser(
        "check", parents=[scored, quiet],
        help="check labels against an LLM judge (GPT-4 or any OpenAI-compatible server)",
        description="Read a folder written by `rmclean score`, reload the pairs it scored, ask an LLM judge "
        "about every pair in both orders (answers cached, so nothing is paid twice) and write per-pair "
        "judgements (judgements.parquet), agreement with the dataset labels per strength bin "
        "(agreement.json, agreement.md, plots/agreement.png), three test sets for --eval "
        "(testsets/{original,judge,agreeing}.jsonl) and summary.json. The API key comes from "
        "$OPENAI_API_KEY (not needed for a server on this machine or --backend local).",
    )
    budget = add_config_options(check, JudgeConfig, "judge options")["budget"]
    budget.add_argument("--prices", metavar="FILE", help='price table JSON {"model": [in, out]} over the built-in one')
    budget.add_argument("--dry-run", action="store_true", help="print the requests and tokens a run needs; send nothing")
    add_config_options(check, CheckConfig)
    check.add_argument("--cache", metavar="FILE",
                       help="answer cache (default judge.sqlite in $RMCLEAN_CACHE_DIR or ~/.cache/rmclean)")
    check.add_argument("--out", metavar="DIR", default="check", help="output folder (default: check)")
    check.set_defaults(run=_run_check)

    train = commands.add_parser(
        "train-rm", parents=[source, cached], help="train a reward model",
        description="Train one reward model on DATA (a folder written by `rmclean denoise`, whose margin and "
        "soft_label columns the loss reads, or any SOURCE) and evaluate it on named test sets. Writes "
        "model/ (rmclean score --reward-model reads it), metrics.json and plots/curves.png.",
    )
    train.add_argument("data", metavar="DATA", help="a denoise output folder or any SOURCE")
    add_config_options(train, RewardTrainConfig, "training options")
    train.add_argument("--eval", action="append", metavar="NAME=SOURCE", default=[],
                       help="a named test set (repeatable), any SOURCE, e.g. clean=testsets/agreeing.jsonl")
    train.add_argument("--eval-every", type=int, default=5, metavar="EPOCHS")
    train.add_argument("--out", metavar="DIR", default="reward-model", help="output folder (default: reward-model)")
    train.set_defaults(run=_run_train_rm)

    ppo = commands.add_parser("ppo", help="PPO a policy against a reward model (planned)")
    ppo.add_argument("--reward-model", metavar="DIR")
    ppo.add_argument("--policy", default="smollm2")
    ppo.add_argument("--out", metavar="DIR")

    compare = commands.add_parser(
        "compare", parents=[cached], help="end-to-end comparisons from a config file (the denoising-benefit experiment)",
        description="--stage rm: split the pairs into train and clean test parts, plant label flips in the "
        "train part, score it, apply every denoiser and train a reward model per denoiser (plus no "
        "denoising and an oracle); write the clean-test accuracies (denoise_benefit.json/.md/.png). "
        "CONFIG is a JSON file (see experiments/benefit_hh.json).",
    )
    compare.add_argument("config", metavar="CONFIG", help="a JSON benefit config")
    compare.add_argument("--stage", choices=("rm",), default="rm", help="what to compare (rm: reward models)")
    compare.add_argument("--seeds", type=int, default=None, help="override the config's seed count")
    compare.add_argument("--out", metavar="DIR", default="compare", help="output folder (default: compare)")
    compare.set_defaults(run=_run_compare)

    for name, issue in PLANNED.items():
        planned = commands.choices.get(name) or commands.add_parser(name, help="(planned)")
        planned.set_defaults(run=_not_built(name, issue))
    return parser


# --- commands ----------------------------------------------------------------------------
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


def _wrote(paths) -> str:
    return "wrote " + ", ".join(str(path) for path in paths)


def _run_inspect(args: argparse.Namespace) -> int:
    pairs = load_pairs(args.source, **source_arguments(args))
    summary = {"source": args.source, **describe_pairs(pairs, examples=args.examples)}
    print(json.dumps(summary, indent=2, ensure_ascii=False) if args.json else inspect_summary_text(summary))
    return 0


def _run_score(args: argparse.Namespace) -> int:
    loading = source_arguments(args)
    pairs = load_pairs(args.source, **loading)
    scores = score(pairs, config_from_args(ScoreConfig, args), cache_dir=args.cache_dir, progress=not args.quiet)
    written = write_report(scores, args.out, source=recorded_source(args.source, loading))
    print(score_summary_text(scores.metadata, written))
    return 0


def _run_audit(args: argparse.Namespace) -> int:
    config = config_from_args(AuditConfig, args)
    loading = source_arguments(args)
    pairs = load_pairs(args.source, **loading)
    result = audit(pairs, config_from_args(ScoreConfig, args), config, cache_dir=args.cache_dir,
                   progress=not args.quiet)
    result["source"] = recorded_source(args.source, loading)
    written = write_audit(result, args.out)
    print(audit_markdown(result))
    if not result["cleanlab"]:
        print("(cleanlab is not installed: pip install cleanlab, or rmclean[audit], to add its row)")
    print(_wrote(written))
    return 0


def _run_denoise(args: argparse.Namespace) -> int:
    folder = Path(args.scores)
    pairs, scores, _ = load_scored(folder, args.source)
    config = config_from_args(DenoiseConfig, args)
    result = apply_actions(pairs, scores, config, allow_missing=args.allow_missing)
    summary = denoise_summary(result, config, scores)
    summary["scores_dir"] = str(folder.resolve())
    written = write_denoised(result, summary, args.out, args.format)
    print(denoise_summary_text(result, summary, config, examples=args.examples))
    print(_wrote(written.values()))
    return 0


def _run_check(args: argparse.Namespace) -> int:
    try:
        config = judge_config(args)
        pairs, scores, recorded = load_scored(args.scores, args.source)
        check_config = config_from_args(CheckConfig, args)
        if args.dry_run:
            print(estimate_text(estimate(pairs, scores, config, check_config, cache=args.cache,
                                         allow_missing=args.allow_missing)))
            return 0
        result = run_check(pairs, scores, config, check_config, cache=args.cache,
                           allow_missing=args.allow_missing, progress=not args.quiet)
    except JudgeError as exc:
        print(f"rmclean check: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("rmclean check: interrupted; every answer received is in the judge cache: rerun the same "
              "command to continue (nothing is asked twice)", file=sys.stderr)
        return 130
    written = write_check(result, args.out, extra={"scores_dir": str(Path(args.scores).resolve()), "source": recorded})
    print(check_summary_text(result.summary, result.agreement))
    print(_wrote(written.values()))
    return 0


def judge_config(args: argparse.Namespace) -> JudgeConfig:
    """The JudgeConfig the check options describe; without ``--price``, the model's price
    from ``--prices FILE`` when given."""
    config = config_from_args(JudgeConfig, args)
    if config.price is None and args.prices:
        config = replace(config, price=price_for(config.model_name, read_price_table(args.prices)))
    return config


def _run_train_rm(args: argparse.Namespace) -> int:
    config = config_from_args(RewardTrainConfig, args)
    pairs = load_training_data(args.data, source_arguments(args))
    evals = {}
    for entry in args.eval:
        name, separator, source = entry.partition("=")
        if not separator or not name or not source:
            raise ValueError(f"--eval takes NAME=SOURCE, got {entry!r}")
        evals[name] = load_pairs(source, data_dir=args.data_dir, on_error="skip", allow_empty=True)
    model, metrics = train_reward_model(pairs, config, evals=evals, eval_every=args.eval_every,
                                        cache_dir=args.cache_dir, progress=not args.quiet)
    written = write_training_report(model, metrics, Path(args.out), data=str(args.data))
    print(metrics_text(config, metrics))
    print(_wrote(written))
    return 0


def load_training_data(data: str, loading: dict[str, Any]):
    """The pairs ``train-rm`` trains on: a denoise folder's ``cleaned.jsonl`` (with its
    margin and soft_label columns), else ``load_pairs(data, ...)``."""
    folder = Path(data)
    if folder.is_dir() and (folder / "cleaned.jsonl").is_file() and (folder / "summary.json").is_file():
        return load_pairs(folder / "cleaned.jsonl", allow_empty=True)  # rmclean denoise accepted these pairs
    return load_pairs(data, **loading)


def _run_compare(args: argparse.Namespace) -> int:
    config = read_benefit_config(args.config)
    if args.seeds is not None:
        config = replace(config, seeds=args.seeds)
    pairs = load_benefit_pairs(config)

    def report(record: dict[str, Any]) -> None:
        if not args.quiet:
            print(record_text(record), flush=True)

    records = denoise_benefit(pairs, config, cache_dir=args.cache_dir, progress=not args.quiet, report=report)
    n_pairs = len(benefit_pairs(pairs, config))
    written = write_benefit(records, config, args.out, n_pairs)
    print(benefit_markdown(records, config, n_pairs))
    print(_wrote(written))
    return 0


def _not_built(name: str, issue: int | None):
    plan = f"planned in issue #{issue}" if issue else "planned"

    def run(args: argparse.Namespace) -> int:
        print(f"rmclean {name}: not built yet ({plan}); see 'What works today' in the README", file=sys.stderr)
        return EXIT_ERROR

    return run


if __name__ == "__main__":
    sys.exit(main())
