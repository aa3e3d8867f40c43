"""The command line's options: one per setting of a config dataclass, built from its fields'
metadata (:mod:`rmclean.configs`), and the options several commands share, declared once."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from ..configs import option_fields
from ..data.sources import NAMED_SOURCES


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


SOURCE_HELP = (
    f"a dataset name ({', '.join(NAMED_SOURCES)}), a file (.jsonl, .jsonl.gz, .json, .parquet, "
    ".csv, .zip), a folder (data files or a datasets save_to_disk folder) or a Hugging Face Hub id"
)


def source_options() -> argparse.ArgumentParser:
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
    group.add_argument("--max-row-bytes", metavar="SIZE",
                       help="a longer row is invalid (default 16M, or $RMCLEAN_MAX_ROW_BYTES; e.g. 64M)")
    group.add_argument("--max-decompressed-bytes", metavar="SIZE",
                       help="a compressed file expanding past this stops with an error (default 4G, or "
                       "$RMCLEAN_MAX_DECOMPRESSED_BYTES)")
    return options


def scored_input() -> argparse.ArgumentParser:
    """SCORES_DIR and how its pairs are reloaded: the input of denoise and check."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("scores", metavar="SCORES_DIR", nargs="?", default=None,
                         help="a folder written by rmclean score (default: scores, where it writes)")
    options.add_argument("--source", metavar="SOURCE",
                         help="load the pairs from SOURCE instead of the source the scores folder records")
    options.add_argument("--allow-missing", action="store_true",
                         help="accept scores that cover only part of the pairs (denoise writes the unscored pairs "
                         "as invalid and reports them; check judges only the scored ones)")
    return options


def flag_options(*names: str) -> argparse.ArgumentParser:
    """``--cache-dir`` and/or ``--quiet``."""
    options = argparse.ArgumentParser(add_help=False)
    if "cache-dir" in names:
        options.add_argument("--cache-dir", metavar="DIR",
                             help="feature cache (default $RMCLEAN_CACHE_DIR or ~/.cache/rmclean)")
    if "quiet" in names:
        options.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")
    return options


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
        "max_row_bytes": args.max_row_bytes,
        "max_decompressed_bytes": args.max_decompressed_bytes,
        **{k: v for k, v in keys.items() if v is not None},
    }


__all__ = ["SOURCE_HELP", "add_config_options", "config_from_args", "flag_options", "scored_input", "source_arguments",
           "source_options"]
