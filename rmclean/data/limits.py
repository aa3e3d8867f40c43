"""Size caps on input files: :class:`ReadLimits`, and sizes written and read as people write them.

A zip or gzip bomb (kilobytes on disk, gigabytes decompressed) or a line without end must not
exhaust memory: the readers stream every text format and hold at most one row, and stop a
compressed file once it has expanded past its cap. The defaults are generous for real data and
each can be raised per call or through an environment variable.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
ROW_BYTES_ENV = "RMCLEAN_MAX_ROW_BYTES"
DECOMPRESSED_BYTES_ENV = "RMCLEAN_MAX_DECOMPRESSED_BYTES"


@dataclass(frozen=True)
class ReadLimits:
    """How much one input row and one compressed file may hold.

    Generous for real data (hh-rlhf rows are a few KB; the longest responses in public sets are
    some 100 KB) and small enough that a damaged or hostile file cannot exhaust memory. Raise them
    with ``load_pairs(max_row_bytes=..., max_decompressed_bytes=...)`` or the environment
    variables named in each field's metadata (sizes such as ``64M`` or ``8GiB`` are understood).
    """

    max_row_bytes: int = field(default=16 * MIB, metadata={
        "help": "the most bytes one row may take in its file (a JSON line, a JSON array element, a CSV "
                "record); a longer row becomes an invalid row with the reason",
        "env": ROW_BYTES_ENV,
    })
    max_decompressed_bytes: int = field(default=4 * GIB, metadata={
        "help": "the most bytes one compressed file (a .gz file, or all members of a .zip) may expand to; "
                "past it the file stops with an error (a decompression bomb, or a damaged file)",
        "env": DECOMPRESSED_BYTES_ENV,
    })

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{item.name} must be a positive whole number of bytes, got {value!r}")

    @classmethod
    def resolve(cls, **given: int | str | None) -> ReadLimits:
        """The limits given (``None``: not given), else those of the environment variables, else
        the defaults."""
        values = {}
        for item in fields(cls):
            value, name = given.pop(item.name, None), item.name
            if value is None:
                name = f"${item.metadata['env']}"
                value = os.environ.get(item.metadata["env"], "").strip() or None
            if value is not None:
                values[item.name] = parse_size(value, name)
        if given:
            raise TypeError(f"unknown read limit(s): {', '.join(sorted(given))}")
        return cls(**values)


_SIZE = re.compile(r"(\d+)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": KIB, "m": MIB, "g": GIB, "t": 1 << 40}


def parse_size(value: int | str, name: str) -> int:
    """A size in bytes from an int or a text such as ``"16777216"``, ``"16M"`` or ``"4GiB"``
    (binary units); ``name`` says where a bad value came from."""
    if not isinstance(value, str):
        return value
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{name} must be a number of bytes such as 16777216, 16M or 4GiB, got {value!r}")
    return int(match[1]) * _UNITS[match[2].lower()]


def format_size(size: int) -> str:
    """``16 MiB``, ``4 GiB``, ``17.5 MiB``, ``900 bytes``."""
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= scale:
            return f"{size / scale:.4g} {unit}"
    return f"{size} bytes"


# --- compressed input: a budget on decompressed bytes ------------------------------------


class OverBudget(Exception):
    """A compressed file expanded past ``ReadLimits.max_decompressed_bytes``."""

    def __init__(self, limit: int):
        super().__init__(
            f"the file expands past the {format_size(limit)} cap on decompressed bytes (max_decompressed_bytes=, "
            f"${DECOMPRESSED_BYTES_ENV}): a decompression bomb or a damaged file; if it is genuine, raise the cap"
        )


class Budget:
    """Decompressed bytes one input file may still produce (a zip's members share one)."""

    def __init__(self, limit: int):
        self.limit, self.used, self.exceeded = limit, 0, False

    def spend(self, size: int) -> None:
        self.used += size
        if self.used > self.limit:
            self.exceeded = True
            raise OverBudget(self.limit)


class Capped(io.RawIOBase):
    """A decompressing stream that stops with :class:`OverBudget` once it has produced more
    than its budget allows."""

    def __init__(self, stream: Any, budget: Budget):
        self.stream, self.budget = stream, budget

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        # read1: what one step of decompression gives, so the rows before a cut-off point are
        # delivered before the error (read(n) would drop them with the exception)
        data = self.stream.read1(len(buffer))
        self.budget.spend(len(data))
        buffer[: len(data)] = data
        return len(data)


def capped(stream: Any, budget: Budget) -> io.BufferedReader:
    return io.BufferedReader(Capped(stream, budget), buffer_size=MIB)
