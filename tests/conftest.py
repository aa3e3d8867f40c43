"""Shared test set-up: offline Hugging Face, and the real data folder (or a skip)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The Hub cannot be reached from our machines: fail fast instead of waiting on timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$RMCLEAN_DATA_DIR`` if set, else ``../shared/data`` next to the project."""
    configured = os.environ.get("RMCLEAN_DATA_DIR")
    return Path(configured) if configured else PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data folder. Where it is absent, tests that need it skip with the reason, except
    under CI (``$CI`` set, as ``.ci/run`` does), which has the data: there they fail."""
    folder = shared_data_dir()
    if not (folder / "hh-rlhf").is_dir():
        reason = (f"real data not found at {folder}: set RMCLEAN_DATA_DIR to a folder laid out as in "
                  "data/README.md (hh-rlhf/<subset>/<split>.jsonl.gz, ...)")
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"CI runs every test on the real data, but {reason}")
        pytest.skip(reason)
    return folder


@pytest.fixture
def real_data_env(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """RMCLEAN_DATA_DIR pointing at the real data, for code that reads it from the environment."""
    monkeypatch.setenv("RMCLEAN_DATA_DIR", str(data_dir))
    return data_dir


@pytest.fixture
def hermetic(monkeypatch: pytest.MonkeyPatch) -> None:
    """No data folder from the environment and no Hub: for tests on synthetic fixtures."""
    monkeypatch.delenv("RMCLEAN_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import huggingface_hub.constants

    # huggingface_hub reads HF_HUB_OFFLINE once, at import time; flip the constant it checks.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> str:
    """A one-layer BERT with MiniLM's tokenizer, saved like any HF model folder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from rmclean.features.backbones import resolve_backbone

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("minilm").path)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
