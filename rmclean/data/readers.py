"""File readers: turn a data file into a stream of raw records with exact locations.

Readers know nothing about preference formats: they yield one :class:`Record` per JSON
object / table row, or a record with ``error`` set when the bytes could not be read
(malformed JSON, invalid UTF-8, a row over the size cap, a gzip stream that was cut off).
Locations are what a person needs to find the row: the 1-based line for text formats, the
0-based row index for tables.

Text formats are streamed, never read whole: at most one row (:attr:`ReadLimits.max_row_bytes`)
is held in memory, and a compressed file may expand to at most
:attr:`ReadLimits.max_decompressed_bytes`, so a zip or gzip bomb or a line without end becomes
a reason in the output instead of exhausting memory.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .csv_lines import CsvLines, RecordTooLong
from .json_scan import JsonScanner
from .limits import MIB, ROW_BYTES_ENV, Budget, OverBudget, ReadLimits, capped, format_size

#: File endings the loader reads, longest first so ``.jsonl.gz`` wins over ``.gz``.
SUPPORTED_SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".parquet", ".csv", ".zip")
_ZIP_MEMBER_SUFFIXES = (".jsonl", ".json", ".csv", ".jsonl.gz", ".json.gz")

_CHUNK = MIB  # bytes read at a time when a row or a file is skipped or checked


@dataclass(frozen=True)
class Record:
    """One raw input row.

    ``data`` is the parsed object, or ``None`` when ``error`` says why the row could not
    be read (``field``: the field at fault, when one is). ``index`` is the 0-based position
    among the file's records; ``line`` is the 1-based line the record starts on (text formats
    only). ``whole_file``: the error is about the file (or archive member), not one row.
    """

    file: str
    index: int
    data: dict[str, Any] | None = None
    line: int | None = None
    error: str | None = None
    field: str | None = None
    whole_file: bool = False

    @property
    def location(self) -> str:
        """Human-readable place of the row, e.g. ``data.jsonl, line 7``."""
        if self.whole_file:
            return self.file
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


def read_file(path: Path, display: str | None = None, limits: ReadLimits | None = None) -> Iterator[Record]:
    """Yield the records of one data file, chosen by its suffix (``limits``: those of the
    environment, see :meth:`ReadLimits.resolve`)."""
    display = display or str(path)
    limits = limits or ReadLimits.resolve()
    suffix = suffix_of(path)
    if suffix == ".parquet":
        yield from _read_parquet(path, display)
    elif suffix == ".zip":
        yield from _read_zip(path, display, limits)
    elif suffix:
        with open(path, "rb") as handle:
            if suffix.endswith(".gz"):
                handle = capped(gzip.GzipFile(fileobj=handle, mode="rb"), Budget(limits.max_decompressed_bytes))
            yield from _read_text(handle, display, suffix, limits)
    else:
        raise ReadError(display, f"unsupported file type; expected one of {', '.join(SUPPORTED_SUFFIXES)}")


def read_json_bytes(raw: bytes, display: str, limits: ReadLimits | None = None) -> Iterator[Record]:
    """Records of JSON text held in memory (see :func:`_read_json_handle`)."""
    yield from _read_json_handle(io.BufferedReader(io.BytesIO(raw)), display, limits or ReadLimits.resolve())


def iter_rows(rows: Iterable[dict[str, Any]], display: str) -> Iterator[Record]:
    """Records from in-memory rows (a ``datasets.Dataset``, a list of dicts, ...)."""
    for index, row in enumerate(rows):
        if isinstance(row, dict):
            yield Record(display, index, data=row)
        else:
            yield Record(display, index, error=f"expected a mapping of fields, got {type(row).__name__}")


def _read_text(handle: io.BufferedIOBase, display: str, suffix: str, limits: ReadLimits) -> Iterator[Record]:
    if suffix == ".csv":
        yield from _read_csv(handle, display, limits)
    else:
        yield from _read_json_handle(handle, display, limits)


# --- compressed input: a budget on decompressed bytes ------------------------------------


#: What reading a damaged compressed stream raises part-way through.
_STREAM_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, zipfile.BadZipFile)


def _stopped(exc: Exception, display: str, index: int, lines_read: int) -> Record:
    """The record that ends a file whose bytes stop making sense after ``lines_read`` lines."""
    if isinstance(exc, OverBudget):
        reason = f"{exc}; stopped after line {lines_read}: rows after it were not read"
    else:
        damage = "" if isinstance(exc, EOFError) else ", and rows before it may be damaged too"
        reason = (f"the compressed file is cut off or corrupt after line {lines_read} ({exc}); "
                  f"rows after this point could not be read{damage}: download the file again")
    return Record(display, index, line=lines_read + 1, error=reason)


def _too_long(size: int, limits: ReadLimits) -> str:
    return (f"the row takes {format_size(size)} ({size:,} bytes), over the {format_size(limits.max_row_bytes)} "
            f"row cap: raise max_row_bytes= (or ${ROW_BYTES_ENV}) to read it")


# --- JSON Lines and JSON arrays --------------------------------------------------------


def _read_json_handle(handle: Any, display: str, limits: ReadLimits) -> Iterator[Record]:
    """JSON Lines or a JSON array, decided by the first non-blank character: files named
    ``.json`` often hold JSON Lines (LLMEval² among them), and the reverse."""
    try:
        head = handle.peek(4096)[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")
    except OverBudget as exc:
        raise ReadError(display, str(exc)) from None
    except _STREAM_ERRORS as exc:
        raise ReadError(display, f"the compressed file is cut off or corrupt ({exc}): download it again") from None
    if head.startswith(b"["):
        yield from _read_json_array(handle, display, limits)
    else:
        yield from _read_jsonl_lines(handle, display, limits)


def _read_jsonl_lines(handle: Any, display: str, limits: ReadLimits) -> Iterator[Record]:
    index = lines_read = 0
    cap = limits.max_row_bytes
    try:
        while raw := handle.readline(cap + 1):
            line_no = lines_read + 1
            if line_no == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if len(raw) > cap and not raw.endswith(b"\n"):
                size = len(raw) + _rest_of_line(handle)
                yield Record(display, index, line=line_no, error=_too_long(size, limits))
                index += 1
            elif raw.strip():
                yield _json_record(raw.rstrip(b"\r\n"), display, index, line_no)
                index += 1
            lines_read = line_no
    except (*_STREAM_ERRORS, OverBudget) as exc:
        yield _stopped(exc, display, index, lines_read)


def _rest_of_line(handle: Any) -> int:
    """Skip to the end of the current line; the bytes skipped, without the line break."""
    size = 0
    while piece := handle.readline(_CHUNK):
        if piece.endswith(b"\n"):
            return size + len(piece.rstrip(b"\r\n"))
        size += len(piece)
    return size


def _json_record(raw: bytes, display: str, index: int, line: int) -> Record:
    """The record of one JSON line (without its line break)."""
    try:
        return _json_object(raw, display, index, line)
    except json.JSONDecodeError as exc:
        return Record(display, index, line=line, error=f"malformed JSON: {exc.msg} at column {exc.colno}")


def _json_object(raw: bytes, display: str, index: int, line: int, what: str = "line") -> Record:
    """The record of one JSON value's bytes (a line, or an array element) starting on ``line``: an
    object, or why it is not one. Malformed JSON raises ``json.JSONDecodeError`` (positions within
    ``raw``)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Record(display, index, line=line,
                      error=f"invalid UTF-8 at byte {exc.start + 1} of the {what} ({raw[exc.start:exc.start + 4]!r})")
    try:
        data = json.loads(text)
    except RecursionError:
        return Record(display, index, line=line,
                      error="JSON nested too deeply: more levels of [ ] and { } than Python's JSON parser can follow")
    if not isinstance(data, dict):
        return Record(display, index, line=line, error=f"expected a JSON object, got a JSON {_json_type(data)}")
    if _SURROGATE_ESCAPE.search(raw) and (where := _unpaired_surrogate(data)) is not None:
        where = where.encode("utf-8", "backslashreplace").decode("utf-8")  # a key may hold the surrogate
        return Record(display, index, line=line, field=where,
                      error=f"field '{where}' holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff), "
                            "which is not text")
    return Record(display, index, data=data, line=line)


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _unpaired_surrogate(data: dict[str, Any]) -> str | None:
    """The field (``a.b[2]``) of the first text in ``data`` holding an unpaired surrogate, which
    ``json`` accepts as ``"\\ud800"`` and no UTF-8 writer can store; walked without recursion."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return where
        elif isinstance(value, dict):
            for key, item in value.items():
                child = f"{where}.{key}" if where else key
                if _SURROGATE.search(key):
                    return child
                stack.append((child, item))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))
    return None


def _read_json_array(handle: Any, display: str, limits: ReadLimits) -> Iterator[Record]:
    """Elements of a top-level JSON array, one at a time, each with the line it starts on.
    Past a syntax error the array cannot be split reliably: the last record says so."""
    scanner = JsonScanner(handle)
    index = 0
    try:
        scanner.skip_bom()
        scanner.next_byte()
        scanner.skip_byte()  # "["
        if scanner.next_byte() == ord("]"):
            return
        while True:
            if scanner.next_byte() is None:
                yield Record(display, index, line=scanner.line,
                             error="malformed JSON: the file ends inside the array; the rest could not be read")
                return
            line, column = scanner.line, scanner.column
            raw, size = scanner.value(limits.max_row_bytes)
            if raw is None:
                yield Record(display, index, line=line, error=_too_long(size, limits))
            else:
                try:
                    yield _json_object(raw, display, index, line, "array element")
                except json.JSONDecodeError as exc:  # positions in the element, made positions in the file
                    at = exc.colno + (column - 1 if exc.lineno == 1 else 0)
                    yield Record(display, index, line=line + exc.lineno - 1, error=(
                        f"malformed JSON: {exc.msg} at column {at}; the rest of the array could not be read"))
                    return
            index += 1
            following = scanner.next_byte()
            if following == ord(","):
                scanner.skip_byte()
            elif following == ord("]"):
                return
            else:
                problem = "the file ends inside the array" if following is None else (
                    "expected ',' or ']' between array elements")
                yield Record(display, index, line=scanner.line,
                             error=f"malformed JSON: {problem}; the rest could not be read")
                return
    except (*_STREAM_ERRORS, OverBudget) as exc:
        yield _stopped(exc, display, index, scanner.line - 1)


# --- CSV -------------------------------------------------------------------------------------

#: The characters ``errors="surrogateescape"`` decodes invalid UTF-8 bytes to.
_BAD_BYTE = re.compile("[\udc80-\udcff]")
_C_LONG_MAX = (1 << 31) - 1  # the largest csv.field_size_limit every platform accepts


def _read_csv(handle: Any, display: str, limits: ReadLimits) -> Iterator[Record]:
    # csv refuses a cell over 131,072 characters by default. Its limit is process-wide, so it is only
    # ever raised, to the row cap: a cell is then refused only by the row cap, which counts bytes
    # (never fewer than characters) and is checked first, with the reason and the rest of the file.
    csv.field_size_limit(max(csv.field_size_limit(), min(limits.max_row_bytes, _C_LONG_MAX)))
    text = io.TextIOWrapper(handle, encoding="utf-8-sig", errors="surrogateescape", newline="")
    try:
        yield from _csv_records(text, display, limits)
    finally:
        text.detach()  # the caller closes the file


def _csv_records(text: io.TextIOWrapper, display: str, limits: ReadLimits) -> Iterator[Record]:
    lines = CsvLines(text, limits.max_row_bytes)
    reader = csv.reader(lines)
    index = 0
    try:
        header = _csv_header(reader, display, limits)
        if header is None:
            return
        while True:
            lines.start_record()
            try:
                cells = next(reader)
            except StopIteration:
                return
            except RecordTooLong as exc:
                yield Record(display, index, line=exc.line, error=_too_long(exc.size, limits))
            except csv.Error as exc:
                yield Record(display, index, line=lines.first_line, error=f"malformed CSV: {exc}")
            else:
                if not cells:  # csv yields [] for a blank line: skip it, but count it
                    continue
                yield _csv_record(header, cells, display, index, lines)
            index += 1
    except (*_STREAM_ERRORS, OverBudget) as exc:
        yield _stopped(exc, display, index, lines.line)


def _csv_header(reader: Any, display: str, limits: ReadLimits) -> list[str] | None:
    try:
        header = next(reader, None)
    except RecordTooLong as exc:
        raise ReadError(display, f"the header {_too_long(exc.size, limits).removeprefix('the ')}", 1) from None
    except csv.Error as exc:
        raise ReadError(display, f"malformed CSV header: {exc}", 1) from None
    if header is not None and any(_BAD_BYTE.search(name) for name in header):
        raise ReadError(display, "invalid UTF-8 in the header row", 1)
    return header


def _csv_record(header: list[str], cells: list[str], display: str, index: int, lines: CsvLines) -> Record:
    line = lines.first_line
    if lines.ran_out:  # csv ended the record at the end of the input, inside a quoted cell
        return Record(display, index, line=line, error=(
            f"unterminated quoted cell: a quote opened on line {line} is never closed, so the rest of the "
            "file was read as one cell"))
    if len(cells) > len(header):
        return Record(display, index, line=line, error="more cells than header columns")
    for name, cell in zip(header, cells):
        if bad := _BAD_BYTE.search(cell):
            found = cell[bad.start():bad.start() + 4].encode("utf-8", "surrogateescape")
            return Record(display, index, line=line, field=name,
                          error=f"field '{name}' holds invalid UTF-8 ({found!r})")
    return Record(display, index, data=dict(zip(header, cells + [None] * (len(header) - len(cells)))), line=line)


# --- Parquet and zip -------------------------------------------------------------------------


def _read_parquet(path: Path, display: str) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:  # what pyarrow raises for a damaged file
        raise ReadError(display, f"not a readable Parquet file ({_one_line(exc)})") from None
    index = 0
    try:
        for batch in parquet.iter_batches(batch_size=4096):
            for record in _parquet_records(batch, display, index):
                yield record
                index += 1
    except (pa.ArrowException, OSError) as exc:
        yield Record(display, index, error=(
            f"the Parquet file is damaged at row {index} ({_one_line(exc)}); rows from here on could not be read"))


def _parquet_records(batch: Any, display: str, start: int) -> Iterator[Record]:
    """The rows of one record batch; when a batch will not convert (Parquet does not check that
    text is UTF-8, so damaged bytes show up here), row by row, naming the field at fault."""
    try:
        rows = batch.to_pylist()
    except UnicodeDecodeError:
        rows = None
    if rows is not None:
        yield from (Record(display, start + i, data=row) for i, row in enumerate(rows))
        return
    for i in range(batch.num_rows):
        row, bad = {}, None
        for name, column in zip(batch.schema.names, batch.columns):
            try:
                row[name] = column[i].as_py()
            except UnicodeDecodeError as exc:
                bad = Record(display, start + i, field=name,
                             error=f"field '{name}' holds invalid UTF-8 ({exc.object[exc.start:exc.start + 4]!r})")
                break
        yield bad or Record(display, start + i, data=row)


def _read_zip(path: Path, display: str, limits: ReadLimits) -> Iterator[Record]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise ReadError(display, f"not a readable zip archive ({exc})") from None
    with archive:
        members = sorted(
            (info for info in archive.infolist()
             if not info.is_dir()
             and not info.filename.startswith("__MACOSX/")
             and not Path(info.filename).name.startswith(".")
             and suffix_of(info.filename) in _ZIP_MEMBER_SUFFIXES),
            key=lambda info: info.filename,
        )
        if not members:
            raise ReadError(display, "the archive holds no .json/.jsonl/.csv file")
        budget = Budget(limits.max_decompressed_bytes)
        for info in members:
            inner = f"{display}/{info.filename}"
            problem = _check_member(archive, info, budget)
            if problem is not None:
                yield Record(inner, 0, error=problem, whole_file=True)
                if budget.exceeded:
                    return
                continue
            with archive.open(info) as stream:
                handle = stream
                if suffix_of(info.filename).endswith(".gz"):
                    handle = capped(gzip.GzipFile(fileobj=stream, mode="rb"), budget)
                yield from _read_text(handle, inner, suffix_of(info.filename.removesuffix(".gz")), limits)
            if budget.exceeded:
                return


def _check_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: Budget) -> str | None:
    """Read one archive member through once: ``None`` when it is whole (its CRC matches), else
    why not. Its bytes count against the archive's budget, so a zip bomb stops at the cap
    (at once when its header admits the size) without being held in memory."""
    later = "; members after it were not read"
    if budget.used + info.file_size > budget.limit:
        budget.exceeded = True
        return f"{OverBudget(budget.limit)} (the header says {format_size(info.file_size)}){later}"
    try:
        with archive.open(info) as stream:
            while chunk := stream.read(_CHUNK):
                budget.spend(len(chunk))
    except OverBudget as exc:
        return f"{exc}{later}"
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        return f"damaged archive member ({exc}): download the archive again"
    except (NotImplementedError, RuntimeError) as exc:  # an unknown compression method, an encrypted member
        return f"cannot read this archive member ({exc})"
    return None


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )
