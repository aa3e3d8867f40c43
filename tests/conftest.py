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


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """The tests never write to the user's cache (``$RMCLEAN_CACHE_DIR`` or ``~/.cache/rmclean``):
    the session gets a cache of its own, and tests that need a fresh one set theirs."""
    previous = os.environ.get("RMCLEAN_CACHE_DIR")
    folder = tmp_path_factory.mktemp("rmclean-cache")
    os.environ["RMCLEAN_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("RMCLEAN_CACHE_DIR", None)
    else:
        os.environ["RMCLEAN_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def minilm_cache(tmp_path_factory) -> Path:
    """One feature cache for the session's tests that need real features but do not test the
    cache itself: each real hh-rlhf text is embedded once, by whichever test asks first (the
    cache's own behaviour is tested on caches of its own)."""
    return tmp_path_factory.mktemp("minilm-cache")


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


def build_tiny_policy(folder: Path) -> str:
    """A randomly initialised two-layer Llama over a character-level vocabulary (about 100
    tokens, ChatML markers, a chat template), saved like any HF causal-LM folder: small enough
    that PPO visibly changes it within seconds."""
    import string

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
    characters = sorted(set(string.printable) - set("\x0b\x0c\r"))
    core = Tokenizer(models.WordLevel({token: i for i, token in enumerate(specials + characters)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                        bos_token="<|im_start|>", eos_token="<|im_end|>")
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                               "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory) -> str:
    """The folder of :func:`build_tiny_policy`."""
    return build_tiny_policy(tmp_path_factory.mktemp("tiny-policy"))


@pytest.fixture(scope="session")
def tiny_reward_model(tiny_backbone, tmp_path_factory) -> str:
    """A head reward model on tiny-BERT features that prefers answers with 'good' in them, saved
    as ``rmclean train-rm`` saves one (its ``model/`` folder)."""
    import rmclean
    from rmclean.features.views import FeatureConfig
    from rmclean.train.reward import RewardTrainConfig, train_reward_model

    rows = [{"prompt": f"question {i}", "chosen": f"a good answer {i}", "rejected": f"a bad answer {i}"}
            for i in range(40)]
    config = RewardTrainConfig(features=FeatureConfig(backbone=tiny_backbone, views=("transcript",), max_length=32),
                               epochs=30, learning_rate=3e-2, weight_decay=0.0)
    model, _ = train_reward_model(rmclean.load_pairs(rows), config, cache_dir=tmp_path_factory.mktemp("cache"),
                                  progress=False)
    return str(model.save(tmp_path_factory.mktemp("rm") / "model"))
