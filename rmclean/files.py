"""Atomic file writes: a killed run never leaves a half-written file under the final name."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a sibling ``<name>.partial`` to write to; it replaces ``path`` only when the
    block finishes without an error."""
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    try:
        yield partial
        os.replace(partial, target)
    finally:
        if partial.exists():
            partial.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as partial:
        partial.write_text(text, encoding="utf-8")
    return Path(path)


def write_results(stem: str | os.PathLike, payload: object, markdown: str) -> list[Path]:
    """Write ``<stem>.json`` (``payload`` as indented JSON) and ``<stem>.md`` (``markdown`` as
    given), each atomically, creating the folder: how experiments save their numbers."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    return [write_text(stem.with_name(stem.name + ".json"), json.dumps(payload, indent=2, default=str) + "\n"),
            write_text(stem.with_name(stem.name + ".md"), markdown)]
