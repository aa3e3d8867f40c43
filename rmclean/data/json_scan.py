"""Where JSON values end, found without parsing them: :class:`JsonScanner` reads a top-level
JSON array one element at a time (brackets counted outside strings), so an array of any size is
streamed and an element longer than the row cap is skipped rather than held in memory."""

from __future__ import annotations

import re
from typing import Any

from .limits import MIB

_CHUNK = MIB  # bytes read at a time

_NOT_SPACE = re.compile(rb"[^ \t\r\n]")
_SCALAR_END = re.compile(rb"[,\]}\s]")
_STRUCTURE = re.compile(rb'[\[\]{}"]')
_IN_STRING = re.compile(rb'["\\]')
_CONTINUATION = bytes(range(0x80, 0xC0))
_BACKSLASH, _QUOTE, _OPENERS = ord("\\"), ord('"'), (ord("["), ord("{"))


class JsonScanner:
    """A cursor over JSON bytes that finds where a value ends without parsing it (brackets are
    counted outside strings), so a JSON array is read one element at a time, and an element
    longer than the row cap is skipped rather than held."""

    def __init__(self, handle: Any):
        self.handle = handle
        self.buffer, self.position = b"", 0
        self.line, self.column = 1, 1  # of self.position; the column in characters

    def _consume(self, end: int) -> None:
        segment = self.buffer[self.position:end]
        newline = segment.rfind(b"\n")
        if newline < 0:
            self.column += _characters(segment)
        else:
            self.line += segment.count(b"\n")
            self.column = 1 + _characters(segment[newline + 1:])
        self.position = end

    def _refill(self) -> bool:
        self._consume(len(self.buffer))
        self.buffer, self.position = self.handle.read(_CHUNK), 0
        return bool(self.buffer)

    def skip_bom(self) -> None:
        if self.next_byte() == 0xEF and self.buffer.startswith(b"\xef\xbb\xbf", self.position):
            self.position += 3

    def next_byte(self) -> int | None:
        """Skip white space; the next byte (not consumed), or ``None`` at the end of the input."""
        while True:
            match = _NOT_SPACE.search(self.buffer, self.position)
            if match is not None:
                self._consume(match.start())
                return self.buffer[self.position]
            if not self._refill():
                return None

    def skip_byte(self) -> None:
        self._consume(self.position + 1)

    def value(self, cap: int) -> tuple[bytes | None, int]:
        """Consume the JSON value at the cursor (up to the end of the input, if it never ends):
        ``(its bytes, or None when longer than cap; its size in bytes)``."""
        parts: list[bytes] = []
        size, keep = 0, True

        def add(piece: bytes) -> None:
            nonlocal size, keep
            size += len(piece)
            if size > cap:
                keep = False
                parts.clear()
            elif keep:
                parts.append(piece)

        buffer, start = self.buffer, self.position
        first = buffer[start]
        scalar, in_string, depth = first not in b'[{"', first == _QUOTE, 0
        index = start + 1 if in_string else start
        end = None
        while end is None:
            if scalar:
                match = _SCALAR_END.search(buffer, index)
                end, index = (match.start(), match.start()) if match else (None, len(buffer))
            elif in_string:
                match = _IN_STRING.search(buffer, index)
                if match is None:
                    index = len(buffer)
                elif buffer[match.start()] == _BACKSLASH:
                    index = match.start() + 2  # the escaped byte may be the first of the next chunk
                else:
                    in_string, index = False, match.end()
                    if depth == 0:
                        end = index
            else:
                match = _STRUCTURE.search(buffer, index)
                if match is None:
                    index = len(buffer)
                else:
                    byte, index = buffer[match.start()], match.end()
                    if byte == _QUOTE:
                        in_string = True
                    elif byte in _OPENERS:
                        depth += 1
                    else:
                        depth -= 1
                        if depth == 0:
                            end = index
            if end is None and index >= len(buffer):
                add(buffer[start:])
                carry = index - len(buffer)
                if not self._refill():
                    break
                buffer, start, index = self.buffer, 0, carry
        if end is not None:
            add(buffer[start:end])
            self._consume(end)
        return (b"".join(parts) if keep else None), size


def _characters(segment: bytes) -> int:
    """Characters in UTF-8 bytes: every byte but the continuation bytes 0x80-0xBF."""
    return len(segment.translate(None, delete=_CONTINUATION))


__all__ = ["JsonScanner"]
