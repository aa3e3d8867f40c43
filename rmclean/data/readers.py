"""File readers: turn a data file into a stream of raw records with exact locations.

Readers know nothing about preference formats: they yield one :class:`Record` per JSON
object / table row, or a record with ``error`` set when the bytes could not be read
(malformed JSON, invalid UTF-8, a gzip stream that was cut off). Locations are what a
person needs to find the row: the 1-based line for text formats, the 0-based row index
for tables.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: File endings the loader reads, longest first so ``.jsonl.gz`` wins over ``.gz``.
SUPPORTED_SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".parquet", ".csv", ".zip")


@dataclass(frozen=True)
class Record:
    """One raw input row.

    ``data`` is the parsed object, or ``None`` when ``error`` says why the row could not
    be read. ``index`` is the 0-based position among the file's records; ``line`` is
    the 1-based line the record starts on (text formats only).
    """

    file: str
    index: int
    data: dict[str, Any] | None = None
    line: int | None = None
    error: str | None = None

    @property
    def location(self) -> str:
        """Human-readable place of the row, e.g. ``data.jsonl, line 7``."""
        if self.line is not None:
            return f"{self.file}, line {self.line}"
        return f"{self.file}, row {self.index}"


class ReadError(ValueError):
    """A whole file (not a single row) could not be read."""

    def __init__(self, file: str, message: str, line: int | None = None):
        self.file, self.reason, self.line = file, message, line
        where = file if line is None else f"{file}, line {line}"
        super().__init__(f"{where}: {message}")


def suffix_of(path: str | Path) -> str:
    """The data-format suffix of ``path`` (``.jsonl.gz``, ``.json``, ...) or ``""``."""
    name = str(path).lower()
    for suffix in SUPPORTED_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ""


def read_file(path: Path, display: str | None = None) -> Iterator[Record]:
    """Yield the records of one data file, chosen by its suffix."""
    display = display or str(path)
    suffix = suffix_of(path)
    if suffix in (".jsonl.gz", ".json.gz"):
        with gzip.open(path, "rb") as handle:
            yield from _read_json_handle(handle, display)
    elif suffix in (".jsonl", ".json"):
        with open(path, "rb") as handle:
            yield from _read_json_handle(handle, display)
    elif suffix == ".parquet":
        yield from _read_parquet(path, display)
    elif suffix == ".csv":
        yield from _read_csv(path.read_bytes(), display)
    elif suffix == ".zip":
        yield from _read_zip(path, display)
    else:
        raise ReadError(display, f"unsupported file type; expected one of {', '.join(SUPPORTED_SUFFIXES)}")


def read_json_bytes(raw: bytes, display: str) -> Iterator[Record]:
    """Records of JSON text held in memory (see :func:`_read_json_handle`)."""
    yield from _read_json_handle(io.BytesIO(raw), display)


def _read_json_handle(handle: Any, display: str) -> Iterator[Record]:
    """JSON Lines (streamed) or a JSON array, decided by the first non-blank character:
    files named ``.json`` often hold JSON Lines (LLMEval² among them), and the reverse."""
    try:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        handle.seek(0)
        if head.startswith(b"["):
            raw = handle.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ReadError(display, f"the compressed file is cut off or corrupt ({exc}): download it again") from None
    if head.startswith(b"["):
        yield from _read_json_array(raw, display)
    else:
        yield from _read_jsonl_lines(handle, display)


def iter_rows(rows: Iterable[dict[str, Any]], display: str) -> Iterator[Record]:
    """Records from in-memory rows (a ``datasets.Dataset``, a list of dicts, ...)."""
    for index, row in enumerate(rows):
        if isinstance(row, dict):
            yield Record(display, index, data=row)
        else:
            yield Record(display, index, error=f"expected a mapping of fields, got {type(row).__name__}")


def _read_jsonl_lines(handle: io.BufferedIOBase | gzip.GzipFile, display: str) -> Iterator[Record]:
    index = 0
    line_no = 0
    try:
        for raw in handle:
            line_no += 1
            if line_no == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if not raw.strip():
                continue
            yield _parse_json_line(raw, display, index, line_no)
            index += 1
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        yield Record(
            display,
            index,
            line=line_no + 1,
            error=(
                f"the compressed file is cut off or corrupt after line {line_no} ({exc}); "
                "rows after this point could not be read: download the file again"
            ),
        )


def _parse_json_line(raw: bytes, display: str, index: int, line_no: int) -> Record:
    raw = raw.rstrip(b"\r\n")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Record(
            display, index, line=line_no,
            error=f"invalid UTF-8 at byte {exc.start + 1} of the line ({raw[exc.start:exc.start + 4]!r})",
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return Record(display, index, line=line_no, error=f"malformed JSON: {exc.msg} at column {exc.colno}")
    if not isinstance(data, dict):
        return Record(
            display, index, line=line_no,
            error=f"expected a JSON object, got a JSON {_json_type(data)}",
        )
    return Record(display, index, data=data, line=line_no)


def _read_json_array(raw: bytes, display: str) -> Iterator[Record]:
    """Elements of a top-level JSON array, each with the line it starts on."""
    text = _decode_whole(raw, display)
    decoder = json.JSONDecoder()
    position = _skip_space(text, 0) + 1  # past "["
    counted_to, line = 0, 1
    index = 0
    while True:
        position = _skip_space(text, position)
        if position < len(text) and text[position] == "]":
            return
        line += text.count("\n", counted_to, position)
        counted_to = position
        try:
            data, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            yield Record(
                display, index, line=exc.lineno,
                error=f"malformed JSON: {exc.msg} at column {exc.colno}; the rest of the array could not be read",
            )
            return
        if isinstance(data, dict):
            yield Record(display, index, data=data, line=line)
        else:
            yield Record(display, index, line=line, error=f"expected a JSON object, got a JSON {_json_type(data)}")
        index += 1
        position = _skip_space(text, end)
        if position < len(text) and text[position] == ",":
            position += 1
        elif position >= len(text) or text[position] != "]":
            bad_line = text.count("\n", 0, position) + 1
            yield Record(
                display, index, line=bad_line,
                error="malformed JSON: expected ',' or ']' between array elements; the rest could not be read",
            )
            return


def _decode_whole(raw: bytes, display: str) -> str:
    """A whole file's text; invalid UTF-8 is an error naming the line of the bad byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ReadError(display, f"invalid UTF-8 ({raw[exc.start:exc.start + 4]!r})", line) from None


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _read_csv(raw: bytes, display: str) -> Iterator[Record]:
    text = _decode_whole(raw, display)
    reader = csv.reader(io.StringIO(text, newline=""))
    index = 0
    try:
        header = next(reader, None)
        if header is None:
            return
        start_line = reader.line_num + 1
        for cells in reader:
            if cells:  # csv yields [] for a blank line: skip it, but count it
                if len(cells) > len(header):
                    yield Record(display, index, line=start_line, error="more cells than header columns")
                else:
                    row = dict(zip(header, cells + [None] * (len(header) - len(cells))))
                    yield Record(display, index, data=row, line=start_line)
                index += 1
            start_line = reader.line_num + 1
    except csv.Error as exc:
        yield Record(display, index, line=reader.line_num, error=f"malformed CSV: {exc}")


def _read_parquet(path: Path, display: str) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise ReadError(display, f"not a readable Parquet file ({exc})") from None
    index = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            yield Record(display, index, data=row)
            index += 1


def _read_zip(path: Path, display: str) -> Iterator[Record]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise ReadError(display, f"not a readable zip archive ({exc})") from None
    with archive:
        members = [
            name for name in archive.namelist()
            if not name.endswith("/")
            and not name.startswith("__MACOSX/")
            and not Path(name).name.startswith(".")
            and suffix_of(name) in (".jsonl", ".json", ".csv", ".jsonl.gz", ".json.gz")
        ]
        if not members:
            raise ReadError(display, "the archive holds no .json/.jsonl/.csv file")
        for name in sorted(members):
            inner = f"{display}/{name}"
            raw = archive.read(name)
            if suffix_of(name) in (".jsonl.gz", ".json.gz"):
                try:
                    raw = gzip.decompress(raw)
                except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
                    raise ReadError(inner, f"corrupt gzip member ({exc})") from None
            if suffix_of(name) == ".csv":
                yield from _read_csv(raw, inner)
            else:
                yield from read_json_bytes(raw, inner)


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )
