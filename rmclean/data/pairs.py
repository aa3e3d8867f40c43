"""Canonical preference pairs: :func:`load_pairs` and the pair schema.

Every loader returns a ``datasets.Dataset`` with the canonical columns

========== ==============================================================================
pair_id    stable 16-hex id: SHA-256 of (prompt, chosen, rejected); a repeat of an
           earlier pair in the same load gets ``-2``, ``-3``, ... and the ``duplicate`` flag
prompt     shared context (for hh transcripts: up to and including the last shared
           ``"\\n\\nAssistant:"``)
chosen     the preferred response (text)
rejected   the other response (text)
source     where the pair came from: ``hh-rlhf/harmless-base/test``, a file path, ...
row        0-based index of the record in its file (or dataset)
flags      list of reasons the pair is suspicious by construction (see ``formats.FLAG_*``)
error      ``None``, or why the row could not become a pair (``on_error="skip"``)
input_format how the row held its pair (``formats.INPUT_FORMATS``): ``transcript``,
           ``prompt``, ``messages``, ``turns`` or ``judgement``; ``None`` for invalid rows
========== ==============================================================================

followed by any input fields the format did not consume (strength columns, labels,
metadata), so nothing the user had is lost.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from .formats import FLAG_DUPLICATE, FLAG_INVALID, KeyMap, RowError, convert_row, pair_id
from .limits import ReadLimits
from .readers import ReadError, Record, iter_rows, read_file, suffix_of
from .sources import DATA_DIR_ENV, NAMED_SOURCES, SourceNotFoundError, named_source, resolve

CANONICAL_COLUMNS = ("pair_id", "prompt", "chosen", "rejected", "source", "row", "flags", "error", "input_format")

_CANONICAL_TYPES = {
    "pair_id": pa.string(),
    "prompt": pa.string(),
    "chosen": pa.string(),
    "rejected": pa.string(),
    "source": pa.string(),
    "row": pa.int64(),
    "flags": pa.list_(pa.string()),
    "error": pa.string(),
    "input_format": pa.string(),
}

_KEY_ARGUMENTS = {"prompt_key", "chosen_key", "rejected_key", "label_key", "response_keys", "label_map"}


class PairFormatError(ValueError):
    """A row that cannot become a pair. The message names the file, line (or row) and field."""

    def __init__(self, location: str, field: str | None, message: str):
        self.location = location
        self.field = field
        self.reason = message
        super().__init__(
            f"{location}: {message} (pass on_error='skip', or --on-error skip on the command line, to keep "
            "going and get every rejected row with its reason)"
        )


@dataclass(frozen=True)
class _Stream:
    """Records of one input part, and the ``source`` label its pairs get."""

    label: str
    records: Iterator[Record]


def load_pairs(
    source: Any,
    *,
    subset: str | Sequence[str] | None = None,
    split: str | None = None,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    on_error: str = "raise",
    allow_empty: bool = False,
    chat_template: Any = None,
    max_row_bytes: int | str | None = None,
    max_decompressed_bytes: int | str | None = None,
    **keys: Any,
):
    """Load preference pairs from a named dataset, a file, a folder, a Hub id or rows.

    Parameters
    ----------
    source:
        ``"hh-rlhf"`` (or another name in ``rmclean.sources.NAMED_SOURCES``); a path to a
        ``.jsonl``, ``.jsonl.gz``, ``.json``, ``.parquet``, ``.csv`` or ``.zip`` file; a folder
        of such files or a ``save_to_disk`` folder; a Hugging Face Hub dataset id; or rows
        in memory (a ``datasets.Dataset``, ``pandas.DataFrame`` or list of dicts).
    subset, split:
        For named datasets and Hub ids (hh-rlhf: subsets default to all four, split to
        ``"test"``); for folders, a sub-folder and a file-name prefix.
    data_dir:
        Folder to look in first for named datasets (then ``$RMCLEAN_DATA_DIR``, then the Hub).
    limit:
        Read at most this many input rows in total (valid or not), in input order.
    on_error:
        ``"raise"`` (default): stop at the first bad row with an error naming file, line and
        field. ``"skip"``: keep going; bad rows are returned flagged ``invalid`` with the
        reason in ``error`` and empty texts, so every input row is accounted for.
    allow_empty:
        Keep pairs whose response field is empty, flagged ``empty_response``, instead of
        treating them as bad rows. (LLMEval², Auto-J and UltraFeedback have a few.)
    chat_template:
        A tokenizer (or its name/path) whose chat template renders message lists; default
        is the hh-style role template (``formats.ROLE_NAMES``).
    max_row_bytes, max_decompressed_bytes:
        Size caps on files (``limits.ReadLimits``; bytes, or text such as ``"64M"``): a row
        longer than ``max_row_bytes`` (default 16 MiB, or ``$RMCLEAN_MAX_ROW_BYTES``) is an
        invalid row; a compressed file expanding past ``max_decompressed_bytes`` (default 4 GiB,
        or ``$RMCLEAN_MAX_DECOMPRESSED_BYTES``) stops with an error row (a decompression bomb).
    **keys:
        Column mapping: ``prompt_key``, ``chosen_key``, ``rejected_key``, ``label_key``,
        ``response_keys=(first, second)`` and ``label_map={value: "first"|"second"|"tie"}``.

    Returns
    -------
    datasets.Dataset
        One row per input row, canonical columns first (see module docstring).
    """
    unknown = set(keys) - _KEY_ARGUMENTS
    if unknown:
        raise TypeError(f"load_pairs() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    limits = ReadLimits.resolve(max_row_bytes=max_row_bytes, max_decompressed_bytes=max_decompressed_bytes)
    key_map = KeyMap(**{k: (tuple(v) if k == "response_keys" else v) for k, v in keys.items() if v is not None})
    if isinstance(chat_template, (str, os.PathLike)):
        from transformers import AutoTokenizer

        chat_template = AutoTokenizer.from_pretrained(str(chat_template))
    subsets = [subset] if isinstance(subset, str) else (list(subset) if subset else None)
    streams = _streams(source, subsets, split, data_dir, limits)
    return _build(_convert(streams, key_map, chat_template, limit, on_error, allow_empty))


def split_invalid(pairs):
    """``(valid, invalid)``: the rows that are pairs, and those rejected with a reason."""
    errors = pairs["error"]
    valid = [i for i, error in enumerate(errors) if error is None]
    invalid = [i for i, error in enumerate(errors) if error is not None]
    return pairs.select(valid), pairs.select(invalid)


def sample_per_source(pairs, per_source: int | None, seed: int = 0):
    """A seeded sample of ``per_source`` pairs of each source (all of a smaller source), in input
    order; ``None`` keeps every pair. Nested: with one seed, the pairs drawn for a smaller
    ``per_source`` are among those drawn for a larger one (so their cached features serve it)."""
    if per_source is None:
        return pairs
    if per_source < 0:
        raise ValueError(f"per_source must be >= 0 or None, not {per_source}")
    import pandas as pd

    sources = pd.Series(pairs["source"], dtype=object)
    drawn = sources.groupby(sources, group_keys=False, sort=True).apply(
        lambda rows: rows.sample(min(len(rows), per_source), random_state=seed))
    return pairs.select(sorted(int(i) for i in drawn.index))


def recorded_source(source: str, loading: dict[str, Any]) -> dict[str, Any]:
    """The ``load_pairs`` call that reproduces the pairs, as a record (``summary.json``'s
    ``source``): local paths made absolute, and the data folder a named source was found in
    through ``$RMCLEAN_DATA_DIR`` written down, so the record works from any folder and shell."""
    def absolute(value: Any) -> Any:
        return str(Path(value).resolve()) if value is not None and Path(value).exists() else value

    data_dir = loading.get("data_dir") or (os.environ.get(DATA_DIR_ENV) if source in NAMED_SOURCES else None)
    return {"source": absolute(source), **loading, "data_dir": absolute(data_dir)}


def load_recorded(record: dict[str, Any]):
    """The pairs of a :func:`recorded_source` record: ``load_pairs(**record)``."""
    loading = dict(record)
    return load_pairs(loading.pop("source"), **loading)


# --- where rows come from -------------------------------------------------------------


def _streams(
    source: Any, subsets: list[str] | None, split: str | None, data_dir, limits: ReadLimits
) -> list[_Stream]:
    if not isinstance(source, (str, os.PathLike)):
        return [_in_memory(source, split)]
    text = str(source)
    named = named_source(text) if isinstance(source, str) else None
    if named is not None:
        return [_location_stream(location, limits) for location in resolve(named, subsets, split, data_dir)]
    path = Path(text).expanduser()
    if path.is_file():
        if subsets or split:
            raise ValueError(f"{text}: subset= and split= apply to named datasets, folders and Hub ids, not to a file")
        return [_Stream(text, _file_records(path, text, limits))]
    if path.is_dir():
        return _folder_streams(path, subsets, split, limits)
    if suffix_of(text) or not _looks_like_hub_id(text) and os.sep in text:
        raise SourceNotFoundError(f"{text}: no such file or folder")
    return _hub_streams(text, subsets, split)


def _in_memory(rows: Any, split: str | None) -> _Stream:
    import datasets

    if isinstance(rows, datasets.DatasetDict):
        if split is None:
            raise ValueError(f"a DatasetDict needs split=; choose from {', '.join(rows)}")
        return _Stream(f"<dataset:{split}>", iter_rows(rows[split], f"<dataset:{split}>"))
    if isinstance(rows, datasets.Dataset):
        return _Stream("<dataset>", iter_rows(rows, "<dataset>"))
    if type(rows).__name__ == "DataFrame" and hasattr(rows, "to_dict"):
        records = ({k: _none_if_missing(v) for k, v in r.items()} for r in rows.to_dict("records"))
        return _Stream("<dataframe>", iter_rows(records, "<dataframe>"))
    if isinstance(rows, Iterable) and not isinstance(rows, (bytes, dict)):
        return _Stream("<rows>", iter_rows(rows, "<rows>"))
    raise TypeError(
        f"source must be a dataset name, path, Hub id, Dataset, DataFrame or list of dicts, got {type(rows).__name__}"
    )


def _none_if_missing(value: Any) -> Any:
    """pandas stores a missing cell as NaN / NA / NaT; rows read from files have null."""
    import pandas

    if isinstance(value, (str, list, dict, tuple)) or hasattr(value, "__len__"):
        return value
    return None if pandas.isna(value) else value


def _location_stream(location, limits: ReadLimits) -> _Stream:
    if location.path is not None:
        return _Stream(location.label, _file_records(location.path, str(location.path), limits))
    import datasets

    rows = datasets.load_dataset(location.hub_id, data_dir=location.subset, split=location.split)
    display = f"{location.hub_id} ({location.subset}/{location.split})"
    return _Stream(location.label, iter_rows(rows, display))


def _folder_streams(path: Path, subsets: list[str] | None, split: str | None, limits: ReadLimits) -> list[_Stream]:
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        import datasets

        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            names = [split] if split else list(loaded)
            missing = [n for n in names if n not in loaded]
            if missing:
                raise ValueError(f"{path}: no split {missing[0]!r}; choose from {', '.join(loaded)}")
            return [_Stream(f"{path}:{n}", iter_rows(loaded[n], f"{path}:{n}")) for n in names]
        return [_Stream(str(path), iter_rows(loaded, str(path)))]
    roots = [path / s for s in subsets] if subsets else [path]
    for root in roots:
        if not root.is_dir():
            raise SourceNotFoundError(f"{path}: no subset folder {root.name!r}")
    files = sorted(
        f for root in roots for f in root.rglob("*")
        if f.is_file() and suffix_of(f) and not f.name.startswith(".")
        and (split is None or _split_matches(f, split))
    )
    if not files:
        what = f" for split {split!r}" if split else ""
        raise SourceNotFoundError(f"{path}: no data files{what} (looked for *{', *'.join(_SUFFIX_HELP)})")
    return [
        _Stream(f"{path.name}/{f.relative_to(path).as_posix()}", _file_records(f, str(f), limits)) for f in files
    ]


_SUFFIX_HELP = (".jsonl", ".jsonl.gz", ".json", ".parquet", ".csv", ".zip")


def _split_matches(path: Path, split: str) -> bool:
    stem = path.name[: -len(suffix_of(path))]
    return stem == split or stem.startswith((f"{split}_", f"{split}-", f"{split}."))


def _looks_like_hub_id(text: str) -> bool:
    return text.count("/") == 1 and not text.startswith((".", "/", "~"))


def _hub_streams(hub_id: str, subsets: list[str] | None, split: str | None) -> list[_Stream]:
    import datasets

    names = subsets or [None]
    streams = []
    for name in names:
        try:
            loaded = datasets.load_dataset(hub_id, name=name, split=split)
        except Exception as exc:  # offline, not found, no access: report where we looked
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            known = ", ".join(NAMED_SOURCES)
            raise SourceNotFoundError(
                f"{hub_id!r} is not a file or folder, not a dataset rmclean knows by name ({known}), "
                f"and could not be loaded from the Hugging Face Hub ({type(exc).__name__}: {reason})"
            ) from None
        parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(split, loaded)]
        for part_split, rows in parts:
            label = "/".join(p for p in (hub_id, name, part_split) if p)
            streams.append(_Stream(label, iter_rows(rows, label)))
    return streams


def _file_records(path: Path, display: str, limits: ReadLimits) -> Iterator[Record]:
    """Records of a file; a file that cannot be read (any further) becomes one error record."""
    index = 0
    try:
        for record in read_file(path, display, limits):
            index = record.index + 1
            yield record
    except ReadError as exc:
        yield Record(exc.file, index, line=exc.line, error=exc.reason, whole_file=exc.line is None)
    except OSError as exc:
        yield Record(display, index, error=f"cannot read the file ({exc.strerror or exc})", whole_file=True)


# --- rows to pairs -------------------------------------------------------------------


def _convert(
    streams: list[_Stream], key_map: KeyMap, chat_template: Any, limit: int | None, on_error: str,
    allow_empty: bool,
) -> Iterator[dict[str, Any]]:
    seen: dict[str, int] = {}
    read = 0
    for stream in streams:
        for record in stream.records:
            if limit is not None and read >= limit:
                return
            read += 1
            if record.error is not None:
                yield _invalid(stream, record, record.field, record.error, on_error)
                continue
            try:
                pair = convert_row(record.data, key_map, chat_template, allow_empty)
            except RowError as exc:
                yield _invalid(stream, record, exc.field, exc.message, on_error)
                continue
            base_id = pair_id(pair.prompt, pair.chosen, pair.rejected)
            seen[base_id] = seen.get(base_id, 0) + 1
            identifier = base_id
            if seen[base_id] > 1:
                identifier = f"{base_id}-{seen[base_id]}"
                pair.flags.append(FLAG_DUPLICATE)
            yield {
                "pair_id": identifier,
                "prompt": pair.prompt,
                "chosen": pair.chosen,
                "rejected": pair.rejected,
                "source": stream.label,
                "row": record.index,
                "flags": pair.flags,
                "error": None,
                "input_format": pair.input_format,
                "extras": pair.extras,
            }


def _invalid(stream: _Stream, record: Record, field: str | None, message: str, on_error: str) -> dict[str, Any]:
    if on_error == "raise":
        raise PairFormatError(record.location, field, message)
    return {
        "pair_id": "invalid-" + pair_id(stream.label, str(record.index), record.file),
        "prompt": "",
        "chosen": "",
        "rejected": "",
        "source": stream.label,
        "row": record.index,
        "flags": [FLAG_INVALID],
        "error": f"{record.location}: {message}",
        "input_format": None,
        "extras": {},
    }


def _build(rows: Iterator[dict[str, Any]]):
    """Assemble converted rows into a ``datasets.Dataset`` (canonical columns first)."""
    import datasets

    columns: dict[str, list[Any]] = {name: [] for name in CANONICAL_COLUMNS}
    extras: dict[str, list[Any]] = {}
    count = 0
    for row in rows:
        for name in CANONICAL_COLUMNS:
            columns[name].append(row[name])
        for key, value in row["extras"].items():
            name = f"input_{key}" if key in _CANONICAL_TYPES else key
            extras.setdefault(name, [None] * count).append(value)
        count += 1
        for values in extras.values():
            if len(values) < count:
                values.append(None)
    arrays = {name: pa.array(columns[name], type=_CANONICAL_TYPES[name]) for name in CANONICAL_COLUMNS}
    for name, values in extras.items():
        arrays[name] = _extra_array(values)
    return datasets.Dataset(pa.table(arrays))


#: Deepest nesting of lists and structs an input field keeps as Arrow types; deeper fields are kept as
#: JSON text (Arrow refuses a schema nested 64 levels deep, and ``datasets`` recurses once per level).
MAX_NESTING = 32


def _extra_array(values: list[Any]) -> pa.Array:
    """An Arrow column for an input field; mixed-type and deeply nested fields are kept as JSON text."""
    try:
        array = pa.array(values)
        if _nesting(array.type) <= MAX_NESTING:
            return array
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, RecursionError):
        pass
    return pa.array(
        [None if v is None else json.dumps(v, ensure_ascii=False, default=str) for v in values],
        type=pa.string(),
    )


def _nesting(dtype: pa.DataType) -> int:
    """Levels of lists and structs in an Arrow type (0 for a flat type), counted without recursion."""
    depth, level = 0, [dtype]
    while level:
        depth += 1
        level = [parent.field(i).type for parent in level for i in range(parent.num_fields)]
    return depth - 1


__all__ = ["CANONICAL_COLUMNS", "PairFormatError", "load_pairs", "load_recorded", "recorded_source", "sample_per_source", "split_invalid"]
