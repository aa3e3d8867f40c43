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
import errno
import os
import sys
from typing import Sequence

from .. import __version__
from ..audit import AuditConfig
from ..check import CheckConfig
from ..data.pairs import PairFormatError
from ..data.sources import SourceNotFoundError
from ..denoise import DenoiseConfig
from ..export import FORMATS
from ..features.backbones import BackboneError
from ..files import OutputFolderError
from ..judge import JudgeConfig
from ..score import ScoreConfig
from ..train.ppo import PPOConfig
from ..train.reward import RewardTrainConfig
from . import commands as runners
from .commands import EXIT_ERROR
from .options import SOURCE_HELP, add_config_options, flag_options, scored_input, source_options

#: Commands of the full product that are not built yet, and the issue that builds them.
PLANNED: dict[str, int | None] = {}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        code = args.run(args)
        _flush_output()
        return code
    except (PairFormatError, SourceNotFoundError, BackboneError, OutputFolderError, ValueError, TypeError) as exc:
        print(f"rmclean: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # `rmclean ... | head`
        _discard_output()
        return 0
    except OSError as exc:  # a full disk, a file where a folder should be, no permission: one line, no traceback
        print(f"rmclean: error: {_os_error_text(exc)}", file=sys.stderr)
        _discard_output()
        return EXIT_ERROR


#: Errors that say a write did not fit, whatever the operation was.
_WRITE_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _os_error_text(exc: OSError) -> str:
    """``<what> <path>: <reason>`` of an operating-system error, e.g. ``cannot write out/x: No space
    left on device``; an error rmclean raised with its own message (no errno) as it is."""
    if exc.errno is None:
        return str(exc)
    what = "cannot write" if exc.errno in _WRITE_ERRORS else "cannot use"
    reason = exc.strerror or str(exc)
    paths = [_path_text(name) for name in (exc.filename, exc.filename2) if name is not None]
    return f"{what} {' -> '.join(paths)}: {reason}" if paths else f"{what}: {reason}"


def _path_text(name: object) -> str:
    return os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else str(name)


def _flush_output() -> None:
    """Flush standard output now, so a full disk is reported here (naming it) rather than by
    Python at exit."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, "<standard output>") from exc


def _discard_output() -> None:
    """After a failed write to standard output, point it at the null device, so Python's flush at
    exit does not fail again with a second message (the recipe of Python's signal docs)."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rmclean",
        description="Find and fix noisy labels in reward-model preference data.",
    )
    parser.add_argument("--version", action="version", version=f"rmclean {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    source, scored, cached = source_options(), scored_input(), flag_options("cache-dir", "quiet")
    quiet = flag_options("quiet")

    data = commands.add_parser("data", help="look at preference data")
    data_commands = data.add_subparsers(title="data commands", metavar="COMMAND")
    inspect = data_commands.add_parser(
        "inspect", parents=[source], help="counts, flags, length percentiles and examples of a SOURCE",
        description="Load SOURCE as canonical pairs and summarise it.",
    )
    inspect.add_argument("source", metavar="SOURCE", help=SOURCE_HELP)
    inspect.add_argument("--examples", type=int, default=3, help="how many example pairs to show (default 3)")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.set_defaults(run=runners.run_inspect)

    score = commands.add_parser(
        "score", parents=[source, cached], help="preference strength of every pair",
        description="Train a seeded reward-model ensemble on SOURCE and write each pair's preference strength.",
    )
    score.add_argument("source", metavar="SOURCE", help=SOURCE_HELP)
    add_config_options(score, ScoreConfig, "ensemble options")
    score.add_argument("--out", metavar="DIR", default="scores", help="output folder (default: scores)")
    score.set_defaults(run=runners.run_score)

    audit = commands.add_parser(
        "audit", parents=[source, cached], help="detection audit on planted label flips",
        description="Flip a known random subset of labels, score the corrupted data and report how well "
        "each detector finds the flips (AUROC, AUPRC, precision@k).",
    )
    audit.add_argument("source", metavar="SOURCE", help=SOURCE_HELP)
    add_config_options(audit, ScoreConfig, "ensemble options")
    add_config_options(audit, AuditConfig, "audit options")
    audit.add_argument("--out", metavar="DIR", default="audit", help="output folder (default: audit)")
    audit.set_defaults(run=runners.run_audit)

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
    denoise.set_defaults(run=runners.run_denoise)

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
    check.set_defaults(run=runners.run_check)

    train = commands.add_parser(
        "train-rm", parents=[source, cached], help="train a reward model",
        description="Train one reward model on DATA (a folder written by `rmclean denoise`, whose margin and "
        "soft_label columns the loss reads, or any SOURCE) and evaluate it on named test sets. Writes "
        "model/ (rmclean score --reward-model reads it), metrics.json and plots/curves.png.",
    )
    train.add_argument("data", metavar="DATA", nargs="?", default=None,
                       help="a denoise output folder or any SOURCE (default: denoised, where rmclean denoise writes)")
    add_config_options(train, RewardTrainConfig, "training options")
    train.add_argument("--eval", action="append", metavar="NAME=SOURCE", default=[],
                       help="a named test set (repeatable), any SOURCE, e.g. clean=testsets/agreeing.jsonl")
    train.add_argument("--eval-every", type=int, default=5, metavar="EPOCHS")
    train.add_argument("--out", metavar="DIR", default="reward-model", help="output folder (default: reward-model)")
    train.set_defaults(run=runners.run_train_rm)

    ppo = commands.add_parser(
        "ppo", parents=[source, cached], help="train a policy with PPO against a reward model",
        description="PPO (MOSS-RLHF's PPO-max) of a causal-LM policy on the prompts of PROMPTS (the pairs' prompts, "
        "deduplicated) against a reward model called on text in its own format. Writes policy/ (loadable by "
        "transformers), metrics.jsonl, samples.jsonl, summary.json and plots/curves.png; a killed run started "
        "again with the same arguments resumes from its last checkpoint.",
    )
    ppo.add_argument("prompts", metavar="PROMPTS", help=SOURCE_HELP)
    ppo.add_argument("--reward-model", metavar="RM",
                     help="a rmclean train-rm output folder (or its model/), any HF reward model folder or Hub id "
                     "(default: reward-model, where rmclean train-rm writes)")
    add_config_options(ppo, PPOConfig, "PPO options")
    ppo.add_argument("--out", metavar="DIR", default="ppo", help="output folder (default: ppo)")
    ppo.set_defaults(run=runners.run_ppo)

    serve = commands.add_parser(
        "serve-rm", help="serve a reward model over HTTP (OpenRLHF's remote reward protocol)",
        description="Serve RM at POST /get_reward: {\"query\": [...], \"prompts\": [...], \"labels\": [...]} -> "
        "{\"rewards\": [...]}, as OpenRLHF's --remote_rm_url asks; texts in any chat format are re-rendered "
        "in the reward model's own. GET /health answers when it is up. Ctrl-C stops it.",
    )
    serve.add_argument("reward_model", metavar="RM",
                       help="a rmclean train-rm output folder (or its model/), any HF reward model folder or Hub id")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=5000, help="port (default: 5000; 0 picks a free one)")
    serve.add_argument("--batch-size", type=int, default=64, help="texts per reward-model call (default: 64)")
    serve.set_defaults(run=runners.run_serve)

    compare = commands.add_parser(
        "compare", parents=[cached], help="end-to-end comparisons from a config file (the denoising-benefit experiment)",
        description="--stage rm: split the pairs into train and clean test parts, plant label flips in the "
        "train part, score it, apply every denoiser and train a reward model per denoiser (plus no "
        "denoising and an oracle); write the clean-test accuracies (denoise_benefit.json/.md/.png). "
        "--stage bon: hold out prompts, sample the SFT policy n times on each, train a gold reward model on "
        "the clean labels and proxies on planted flips (none, each denoiser, the oracle); each proxy picks its "
        "best of n and the gold model scores the pick (bon.json/.md, plots/bon.png). --stage ppo: the same "
        "proxies each train a policy with PPO from the SFT policy; the gold model scores each final policy's "
        "answers to the held-out prompts against the SFT policy's (ppo.json/.md, plots/ppo_*.png). "
        "CONFIG is a JSON file (see experiments/benefit_hh.json and experiments/downstream_smoke.json).",
    )
    compare.add_argument("config", metavar="CONFIG", help="a JSON experiment config")
    compare.add_argument("--stage", choices=("rm", "bon", "ppo"), default="rm",
                         help="what to compare (rm: reward models; bon: best-of-n policies and ppo: PPO policies, "
                              "each against a gold model)")
    compare.add_argument("--seeds", type=int, default=None, help="override the config's seed count")
    compare.add_argument("--out", metavar="DIR", default="compare", help="output folder (default: compare)")
    compare.set_defaults(run=runners.run_compare)

    for name, issue in PLANNED.items():
        planned = commands.choices.get(name) or commands.add_parser(name, help="(planned)")
        planned.set_defaults(run=_not_built(name, issue))
    return parser


def _not_built(name: str, issue: int | None):
    plan = f"planned in issue #{issue}" if issue else "planned"

    def run(args: argparse.Namespace) -> int:
        print(f"rmclean {name}: not built yet ({plan}); see 'What works today' in the README", file=sys.stderr)
        return EXIT_ERROR

    return run
