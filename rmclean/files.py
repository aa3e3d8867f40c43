"""Safe writes: a killed or concurrent run never leaves a half-written file, or a folder that
mixes two runs, under the final name.

- :func:`atomic_path` writes one file: to a temporary sibling with a name no other writer
  uses, synced to disk, then renamed over the target.
- :func:`output_folder` writes a command's whole output folder: into a staging folder, which
  gets a ``manifest.json`` (run id and the SHA-256 of every file) and is then swapped in
  place of the old folder. :func:`verify_folder` is what readers call: a folder whose files
  do not match its manifest is refused with a message saying what to rerun.
- :func:`write_json` writes JSON with finite numbers only (``NaN`` and infinities become
  ``null``), so every export is standard JSON.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "rmclean-output"


class OutputFolderError(RuntimeError):
    """An output folder that cannot be written or trusted; the message says what to do."""


def _unique_suffix() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's data (or a folder's entries) to disk."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0)
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(descriptor)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling ``<name>.<pid>-<random>.partial`` to write to; when the block
    finishes without an error it is synced to disk and renamed over ``path`` (and the folder
    synced), so readers see the old file or the whole new one, never a mix or a 0-byte file."""
    target = Path(path)
    partial = target.with_name(f"{target.name}.{_unique_suffix()}.partial")
    try:
        yield partial
        fsync_path(partial)
        os.replace(partial, target)
        fsync_path(target.parent)
    except OSError as exc:
        if exc.errno is None or exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror, str(target)) from exc  # a full disk names no file by itself
    finally:
        if partial.exists():
            partial.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as partial:
        partial.write_text(text, encoding="utf-8")
    return Path(path)


def finite(value: Any) -> Any:
    """A JSON-ready copy of ``value`` with every non-finite float (``NaN``, ``±inf``) as ``None``;
    numpy scalars and arrays become Python numbers and lists."""
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    if hasattr(value, "tolist") and type(value).__module__ == "numpy":  # numpy scalar or array
        return finite(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if type(value).__name__ in ("NAType", "NaTType"):  # pandas' missing values
        return None
    return value


def json_text(payload: Any, indent: int | None = 2) -> str:
    """``payload`` as standard JSON (non-finite numbers as ``null``; other objects by ``str``)
    with a final newline."""
    return json.dumps(finite(payload), indent=indent, default=str, allow_nan=False, ensure_ascii=False) + "\n"


def write_json(path: str | os.PathLike, payload: Any, indent: int | None = 2) -> Path:
    """Write ``payload`` as standard JSON (see :func:`json_text`) to ``path`` atomically."""
    return write_text(path, json_text(payload, indent))


def write_results(stem: str | os.PathLike, payload: object, markdown: str) -> list[Path]:
    """Write ``<stem>.json`` (``payload`` as indented JSON) and ``<stem>.md`` (``markdown`` as
    given), each atomically, creating the folder: how experiments save their numbers."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    return [write_json(stem.with_name(stem.name + ".json"), payload),
            write_text(stem.with_name(stem.name + ".md"), markdown)]


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine is running (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_siblings(target: Path) -> None:
    """Staging and set-aside folders of ``target`` left by runs that were killed."""
    for sibling in target.parent.glob(f".{glob.escape(target.name)}.*-*"):
        kind, _, owner = sibling.name[len(target.name) + 2:].partition("-")
        pid = owner.split("-")[0]
        if kind in ("staging", "old") and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(sibling, ignore_errors=True)


def _check_replaceable(target: Path, owned: Iterable[str]) -> None:
    if not target.exists():
        return
    if not target.is_dir():
        raise OutputFolderError(f"{target} is a file, not a folder: pass another --out")
    entries = {entry.name for entry in target.iterdir()}
    foreign = sorted(entries - set(owned) - {MANIFEST})
    if entries and MANIFEST not in entries and foreign:
        shown = ", ".join(foreign[:5]) + (", …" if len(foreign) > 5 else "")
        raise OutputFolderError(
            f"{target} holds files rmclean did not write ({shown}); it replaces its output folder as a "
            "whole, so pass a new or empty folder with --out"
        )


@contextmanager
def output_folder(folder: str | os.PathLike, *, owned: Iterable[str] = (),
                  produced_by: str = "") -> Iterator[Path]:
    """Yield an empty staging folder to write a command's outputs into; when the block finishes
    without an error, write ``manifest.json`` (a run id, ``produced_by`` and the SHA-256 of
    every file) into it and swap it in place of ``folder`` as one unit.

    ``folder`` may be absent, empty, an earlier output of rmclean (it has a manifest, or holds
    only the ``owned`` names that older versions wrote): anything else is refused before any
    work, so a user's own files are never deleted. A killed run leaves the old folder as it
    was (or, killed in the instant between two renames, no folder: readers then ask for a
    rerun); its staging folder is removed by the next run.
    """
    target = Path(os.path.realpath(folder))  # a symlinked --out: the folder it points to is replaced
    if target == Path.cwd() or target in Path.cwd().parents:
        raise OutputFolderError(f"{folder} is the current folder or holds it: pass a folder of its own with --out")
    _check_replaceable(target, owned)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(target)
    run_id = _unique_suffix()
    staging = target.with_name(f".{target.name}.staging-{run_id}")
    staging.mkdir()
    try:
        yield staging
        files = {name: file_digest(staging / name) for name in _files_under(staging) if name != MANIFEST}
        manifest = {"format": MANIFEST_FORMAT, "run_id": run_id, "produced_by": produced_by,
                    "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": files}
        write_json(staging / MANIFEST, manifest)
        for path in [*staging.rglob("*"), staging]:  # every file's data and every folder's entries on disk
            fsync_path(path)
        _check_replaceable(target, owned)  # another process may have filled it meanwhile
        _swap_in(staging, target, target.with_name(f".{target.name}.old-{run_id}"))
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def publish_folder(build: Callable[[Path], Any], folder: str | os.PathLike) -> Path:
    """Build a folder that never changes once made (a model rebuilt into the cache): ``build``
    fills a staging folder of this process's own, which is then renamed to ``folder``. When
    another process published it first, its copy is kept and this one discarded."""
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.staging-{_unique_suffix()}")
    staging.mkdir()
    try:
        build(staging)
        fsync_path(staging)
        try:
            os.rename(staging, target)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not target.is_dir():
                raise
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(staging: Path, target: Path, old: Path, attempts: int = 20) -> None:
    """Rename ``staging`` to ``target``, setting the current ``target`` aside first (as
    ``old``); retried when a concurrent run swaps its own folder in between the two renames."""
    set_aside = []
    try:
        for attempt in range(attempts):
            aside = old.with_name(f"{old.name}-{attempt}")
            with suppress(FileNotFoundError):
                os.replace(target, aside)
                set_aside.append(aside)
            try:
                os.replace(staging, target)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                continue
            fsync_path(target.parent)
            return
        raise OutputFolderError(f"{target} keeps being replaced by other runs: run one at a time")
    finally:
        for aside in set_aside:
            shutil.rmtree(aside, ignore_errors=True)


def verify_folder(folder: str | os.PathLike, rerun: str) -> dict[str, Any] | None:
    """Check an output folder against its ``manifest.json``: every listed file present with
    its recorded SHA-256, and no file the manifest does not list. Returns the manifest, or
    ``None`` for a folder from a version of rmclean that wrote none. Raises
    :class:`OutputFolderError` naming the first mismatch and ``rerun`` (the command that
    writes the folder again)."""
    folder = Path(folder)
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        return None
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        raise OutputFolderError(f"{manifest_file} is damaged: {rerun}") from None
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise OutputFolderError(f"{folder} is incomplete: {name} (listed in its manifest) is missing; {rerun}")
        if file_digest(path) != expected:
            raise OutputFolderError(
                f"{folder} mixes runs: {name} is not the file run {manifest.get('run_id')} wrote; {rerun}")
    extra = sorted(name for name in set(_files_under(folder)) - set(files) - {MANIFEST}
                   if not any(part.startswith(".") for part in Path(name).parts))  # .ipynb_checkpoints, .DS_Store
    if extra:
        raise OutputFolderError(f"{folder} mixes runs: {extra[0]} is not from run {manifest.get('run_id')}; {rerun}")
    return manifest

