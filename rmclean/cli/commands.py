"""What each ``rmclean`` command runs: load, call the library, write, print the report that lives
next to the results. Library errors (bad input, unknown backbones, ...) reach :func:`rmclean.cli.main`,
which prints them."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..audit import AuditConfig, audit, to_markdown as audit_markdown, write_audit
from ..benefit import benefit_markdown, benefit_pairs, denoise_benefit, load_benefit_pairs, record_text, write_benefit
from ..benefit import read_config as read_benefit_config
from ..check import CheckConfig, check as check_pairs, estimate
from ..check_report import estimate_text, summary_text as check_summary_text, write_check
from ..data.describe import describe_pairs, summary_text as inspect_summary_text
from ..data.pairs import load_pairs, recorded_source, split_invalid
from ..downstream import (best_of_n, bon_markdown, policy_stage, ppo_markdown, read_downstream_config, write_bon,
                          write_policy_stage)
from ..denoise import DenoiseConfig, apply_actions, denoise_summary, summary_text as denoise_summary_text
from ..export import write_denoised
from ..distributed import is_main_process
from ..files import verify_folder
from ..judge import JudgeConfig, JudgeError, price_for, read_price_table
from ..members.reward_models import load_reward_model
from ..score import ScoreConfig, load_scored, score, summary_text as score_summary_text, write_report
from ..serve import RewardServer
from ..train.ppo import PPOConfig, summary_text as ppo_summary_text, train_ppo, write_ppo
from ..train.reward import RewardTrainConfig, metrics_text, train_reward_model, write_training_report
from .options import config_from_args, source_arguments

EXIT_ERROR = 1


def _wrote(paths) -> str:
    return "wrote " + ", ".join(str(path) for path in paths)


def run_inspect(args: argparse.Namespace) -> int:
    pairs = load_pairs(args.source, **source_arguments(args))
    summary = {"source": args.source, **describe_pairs(pairs, examples=args.examples)}
    print(json.dumps(summary, indent=2, ensure_ascii=False) if args.json else inspect_summary_text(summary))
    return 0


def run_score(args: argparse.Namespace) -> int:
    loading = source_arguments(args)
    pairs = load_pairs(args.source, **loading)
    scores = score(pairs, config_from_args(ScoreConfig, args), cache_dir=args.cache_dir, progress=not args.quiet,
                   main_only=True)
    if scores is None or not is_main_process():
        return 0  # launched distributed: this process did its share, the main one writes the outputs
    written = write_report(scores, args.out, source=recorded_source(args.source, loading))
    print(score_summary_text(scores.metadata, written))
    return 0


def run_audit(args: argparse.Namespace) -> int:
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


def default_input(given: str | None, default: str, writer: str, usage: str) -> str:
    """The input folder a command reads: ``given``, else ``default`` (the folder the previous
    command of the chain writes by default), which must then exist; its absence is an error that
    names the command that writes it."""
    if given is not None:
        return given
    if not Path(default).is_dir():
        raise ValueError(f"no {default}/ folder in {Path.cwd()}: `{writer}` writes it there; run that first, "
                         f"or name the input: {usage}")
    return default


def scores_input(given: str | None, command: str) -> str:
    """SCORES_DIR of denoise and check: as given, else ``scores`` (``rmclean score``'s default output)."""
    return default_input(given, "scores", "rmclean score SOURCE", f"rmclean {command} SCORES_DIR")


def run_denoise(args: argparse.Namespace) -> int:
    folder = Path(scores_input(args.scores, "denoise"))
    pairs, scores, _ = load_scored(folder, args.source)
    config = config_from_args(DenoiseConfig, args)
    result = apply_actions(pairs, scores, config, allow_missing=args.allow_missing)
    summary = denoise_summary(result, config, scores)
    summary["scores_dir"] = str(folder.resolve())
    written = write_denoised(result, summary, args.out, args.format)
    print(denoise_summary_text(result, summary, config, examples=args.examples))
    print(_wrote(written.values()))
    return 0


def run_check(args: argparse.Namespace) -> int:
    try:
        config = judge_config(args)
        args.scores = scores_input(args.scores, "check")
        pairs, scores, recorded = load_scored(args.scores, args.source)
        check_config = config_from_args(CheckConfig, args)
        if args.dry_run:
            print(estimate_text(estimate(pairs, scores, config, check_config, cache=args.cache,
                                         allow_missing=args.allow_missing)))
            return 0
        result = check_pairs(pairs, scores, config, check_config, cache=args.cache,
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


def run_train_rm(args: argparse.Namespace) -> int:
    config = config_from_args(RewardTrainConfig, args)
    args.data = default_input(args.data, "denoised", "rmclean denoise [SCORES_DIR]", "rmclean train-rm DATA")
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
        verify_folder(folder, rerun="run `rmclean denoise` into it again")
        return load_pairs(folder / "cleaned.jsonl", allow_empty=True)  # rmclean denoise accepted these pairs
    return load_pairs(data, **loading)


def run_compare(args: argparse.Namespace) -> int:
    if args.stage in ("bon", "ppo"):
        return run_policy_stage(args)
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


def run_policy_stage(args: argparse.Namespace) -> int:
    config = read_downstream_config(args.config)
    if args.seeds is not None:
        config = replace(config, benefit=replace(config.benefit, seeds=args.seeds))
    pairs = load_benefit_pairs(config.benefit)
    run, write, markdown = ((best_of_n, write_bon, bon_markdown) if args.stage == "bon" else
                            (policy_stage, write_policy_stage, ppo_markdown))
    record = run(pairs, config, out=args.out, cache_dir=args.cache_dir, progress=not args.quiet,
                 report=None if args.quiet else lambda text: print(text, flush=True))
    written = write(record, args.out)
    print(markdown(record))
    print(_wrote(written))
    return 0


def run_ppo(args: argparse.Namespace) -> int:
    config = config_from_args(PPOConfig, args)
    reward_model = load_reward_model(default_input(args.reward_model, "reward-model", "rmclean train-rm [DATA]",
                                                   "rmclean ppo PROMPTS --reward-model RM"))
    valid, _ = split_invalid(load_pairs(args.prompts, **source_arguments(args)))
    result = train_ppo(list(valid["prompt"]), reward_model, config, out=args.out, cache_dir=args.cache_dir,
                       progress=not args.quiet)
    written = write_ppo(result, args.out)
    print(ppo_summary_text(result))
    print(_wrote(written))
    return 0


def run_serve(args: argparse.Namespace) -> int:
    server = RewardServer(args.reward_model, host=args.host, port=args.port, batch_size=args.batch_size)
    print(f"serving {args.reward_model} at {server.url}/get_reward (OpenRLHF remote reward protocol); Ctrl-C stops",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    print(f"served {server.requests:,} request(s)")
    return 0


__all__ = ["default_input", "judge_config", "load_training_data", "run_audit", "run_check", "run_compare", "run_denoise", "run_inspect", "run_policy_stage", "run_ppo", "run_score", "run_serve", "run_train_rm", "scores_input"]
