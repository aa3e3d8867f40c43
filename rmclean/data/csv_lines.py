"""The physical lines of a CSV text, counted and capped: :class:`CsvLines` feeds ``csv.reader``
one record at a time, so a record longer than the row cap is skipped (and reported with
:class:`RecordTooLong`) instead of being read into memory."""

from __future__ import annotations

import io

from .limits import MIB


class RecordTooLong(Exception):
    def __init__(self, line: int, size: int):
        super().__init__(line, size)
        self.line, self.size = line, size


class CsvLines:
    """The physical lines of a CSV text for ``csv.reader``, counted, with each record held to
    ``cap`` bytes: a longer record is skipped to its end (line breaks inside quotes included)
    and reported with :class:`RecordTooLong` instead of being read into memory."""

    def __init__(self, text: io.TextIOBase, cap: int):
        self.text, self.cap = text, cap
        self.line = 0
        self.start_record()

    def start_record(self) -> None:
        self.first_line, self.size, self.quotes, self.ran_out = self.line + 1, 0, 0, False

    def __iter__(self) -> CsvLines:
        return self

    def __next__(self) -> str:
        piece = self.text.readline(self.cap + 1)
        if not piece:
            self.ran_out = True
            raise StopIteration
        self.line += 1
        self._count(piece)
        if self.size > self.cap:
            self._skip_record(piece)
            raise RecordTooLong(self.first_line, self.size)
        return piece

    def _count(self, piece: str) -> None:
        self.size += len(piece.encode("utf-8", "surrogateescape"))
        self.quotes += piece.count('"')

    def _skip_record(self, piece: str) -> None:
        """Read on to the end of the record: the end of the line, and further while a quote is
        open (an odd number of quote characters, as standard CSV doubles quotes inside cells)."""
        while True:
            while not piece.endswith(("\n", "\r")):
                piece = self.text.readline(MIB)
                if not piece:
                    return
                self._count(piece)
            if self.quotes % 2 == 0:
                return
            piece = self.text.readline(MIB)
            if not piece:
                return
            self.line += 1
            self._count(piece)


__all__ = ["CsvLines", "RecordTooLong"]
