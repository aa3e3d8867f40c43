"""The on-disk embedding cache: features of texts, keyed by backbone, its weights'
fingerprint, max length, pooling, precision, layer and the text's hash.

Features are cached under ``$RMCLEAN_CACHE_DIR`` (default ``~/.cache/rmclean``); each distinct
text is embedded once, and a killed run resumes from the shards already written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
import warnings
import zipfile
from pathlib import Path

import numpy as np

from ..files import atomic_path, write_json
from .backbones import Backbone, BackboneError, _safe, default_cache_dir, resolve_precision

FEATURE_VERSION = 2  # bump when features or the shard format change: old caches are not reused
# (2: one file per shard; on a CPU each text embedded alone, so its features never depend on neighbours)
SHARD_SIZE = 512  # texts per cache shard (written atomically as embedding goes)
SHARD_SECONDS = 120.0  # a shard is written after this long too: a killed slow run loses at most this much work


class FeatureCache:
    """Embeddings of texts on disk, one folder per (backbone, weights, max length, pooling,
    precision, layer, variant).

    Each shard is one file ``shard-<pid>-<random>.npz`` holding the texts' keys (hex text
    hashes) and their vectors (float32) together, written atomically under a name no other
    process uses: concurrent runs sharing the cache each add their own shards and never
    overwrite another's, a killed run keeps every finished shard, and keys and vectors cannot
    come from different runs. A damaged shard (truncated, zero bytes, bad checksum, keys and
    vectors of different lengths) is moved to ``corrupt/``, named in a warning, and its texts
    are embedded again.
    """

    def __init__(self, backbone: Backbone, max_length: int, cache_dir: Path | None = None,
                 precision: str = "auto", layer: int | None = None, variant: str = ""):
        precision = resolve_precision(precision)  # each resolved precision has its own folder
        self.backbone = backbone
        self.max_length = max_length
        self.precision = precision
        self.layer = layer
        self.variant = variant  # "pairs": pair-planned features (rmclean.features.prefix), never mixed with others
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        suffix = {"float32": "", "bfloat16": "-bf16"}.get(precision, f"-{precision}")
        suffix += (f"-layer{layer}" if layer is not None else "") + (f"-{variant}" if variant else "")
        self.folder = (
            root / "features" / f"{_safe(backbone.name)}-{backbone.fingerprint()}"
            / f"L{max_length}-{backbone.pooling}{suffix}-v{FEATURE_VERSION}"
        )
        self._index: dict[str, tuple[str, int]] | None = None
        self._shards_seen: set[str] = set()

    @staticmethod
    def text_key(text: str) -> str:
        """32 hex digits identifying a text (stored as text: numpy's bytes dtype drops
        trailing zero bytes)."""
        return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()

    def _load_index(self, refresh: bool = False) -> dict[str, tuple[str, int]]:
        """Key -> (shard file name, row), reading the shards not read yet (all of them the
        first time; with ``refresh``, also those other processes wrote since)."""
        if self._index is None:
            self._check_meta()
            self._index = {}
        elif not refresh:
            return self._index
        for shard_file in sorted(self.folder.glob("shard-*.npz")):
            if shard_file.name in self._shards_seen:
                continue
            shard = self._read_shard(shard_file)
            if shard is None:
                continue
            self._shards_seen.add(shard_file.name)
            for row, key in enumerate(shard[0]):
                self._index.setdefault(str(key), (shard_file.name, row))
        return self._index

    def _read_shard(self, shard_file: Path) -> tuple[np.ndarray, np.ndarray] | None:
        """``(keys, vectors)`` of a shard, checked; ``None`` (and the file set aside) when damaged."""
        try:
            with np.load(shard_file, allow_pickle=False) as shard:
                keys, vectors = shard["keys"], shard["vectors"]  # reading a member checks its CRC
            if keys.ndim != 1 or vectors.ndim != 2 or len(keys) != len(vectors):
                raise ValueError(f"{len(keys)} keys but {len(vectors)} vectors")
            return keys, vectors
        except FileNotFoundError:  # set aside by another process meanwhile
            return None
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:  # damaged
            corrupt = self.folder / "corrupt"
            corrupt.mkdir(exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.replace(shard_file, corrupt / shard_file.name)
            warnings.warn(f"feature cache shard {shard_file} is damaged ({type(exc).__name__}: {exc}); "
                          f"moved to {corrupt}/ and its texts will be embedded again", stacklevel=3)
            return None

    def _check_meta(self) -> None:
        meta_file = self.folder / "meta.json"
        expected = {
            "backbone": self.backbone.name,
            "fingerprint": self.backbone.fingerprint(),
            "max_length": self.max_length,
            "pooling": self.backbone.pooling,
            "feature_version": FEATURE_VERSION,
            "precision": self.precision,
            "layer": self.layer,
            "variant": self.variant or None,
        }
        found = None
        if meta_file.is_file():
            try:
                found = json.loads(meta_file.read_text())
            except ValueError:  # a cut file: the folder's name holds the same identity, so rewrite it
                warnings.warn(f"feature cache metadata {meta_file} is damaged; written again", stacklevel=3)
        if found is not None:
            if {k: found.get(k) for k in expected} != expected:
                raise BackboneError(
                    f"the feature cache {self.folder} was written for {found}, not {expected}; "
                    "delete that folder or set RMCLEAN_CACHE_DIR elsewhere"
                )
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json(meta_file, expected)

    def missing(self, texts: list[str]) -> list[str]:
        """The distinct texts not in the cache yet, in first-seen order."""
        index = self._load_index(refresh=True)
        seen: set[str] = set()
        result = []
        for text in texts:
            key = self.text_key(text)
            if key not in index and key not in seen:
                seen.add(key)
                result.append(text)
        return result

    def add(self, texts: list[str], vectors: np.ndarray) -> None:
        """Store one shard of embeddings, ``vectors`` of shape ``(len(texts), dim)`` (atomically,
        in a file of its own)."""
        index = self._load_index()
        if len(texts) != len(vectors):
            raise ValueError(f"{len(texts)} texts but {len(vectors)} vectors")
        keys = np.array([self.text_key(t) for t in texts], dtype="U32")
        name = f"shard-{os.getpid()}-{uuid.uuid4().hex[:12]}.npz"
        with atomic_path(self.folder / name) as partial, open(partial, "wb") as handle:
            np.savez(handle, keys=keys, vectors=np.asarray(vectors, dtype=np.float32))
        self._shards_seen.add(name)
        for row, key in enumerate(keys):
            index.setdefault(str(key), (name, row))

    def get(self, texts: list[str]) -> np.ndarray:
        """Vectors of ``texts`` (all must be cached), shape ``(len(texts), dim)``."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        index = self._load_index()
        keys = [self.text_key(t) for t in texts]
        if any(key not in index for key in keys):
            index = self._load_index(refresh=True)
        absent = [text for text, key in zip(texts, keys) if key not in index]
        if absent:
            raise KeyError(f"{len(absent)} texts are not in the feature cache {self.folder}, such as {absent[0][:80]!r}")
        locations = [index[key] for key in keys]
        vectors = {}
        for name in {shard for shard, _ in locations}:
            shard = self._read_shard(self.folder / name)
            if shard is None:
                self._index = None
                self._shards_seen.clear()
                raise BackboneError(f"the feature cache shard {self.folder / name} was damaged or removed while "
                                    "in use: run the command again (its texts will be embedded again)")
            vectors[name] = shard[1]
        return np.stack([vectors[name][row] for name, row in locations]).astype(np.float32)


class ShardBuffer:
    """Features waiting to be written to ``cache`` as one shard: written once ``SHARD_SIZE`` keys
    wait or ``SHARD_SECONDS`` have passed since the last write (so a killed run loses at most
    that much work), and by :meth:`flush` at the end."""

    def __init__(self, cache: FeatureCache):
        self.cache = cache
        self.keys: list[str] = []
        self.vectors: list[np.ndarray] = []
        self.flushed = time.monotonic()

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        """Queue ``vectors`` of shape ``(len(keys), dim)``; write the shard when it is due."""
        self.keys.extend(keys)
        self.vectors.append(vectors)
        if len(self.keys) >= SHARD_SIZE or time.monotonic() - self.flushed > SHARD_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write what waits (nothing when nothing does)."""
        if self.keys:
            self.cache.add(self.keys, np.concatenate(self.vectors))
        self.keys, self.vectors, self.flushed = [], [], time.monotonic()
