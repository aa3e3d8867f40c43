"""Nothing lost, nothing silently wrong (issue #14, storage side): unique temporary names and
fsync, output folders replaced as one unit and verified by readers, a feature cache shared by
concurrent processes, damaged shards set aside, content fingerprints, finite exports, and
features that do not depend on their batch neighbours."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import rmclean
from rmclean import files
from rmclean.features.backbones import BackboneError, resolve_backbone
from rmclean.features.cache import FeatureCache
from rmclean.features.embedding import embed_texts
from rmclean.files import OutputFolderError, atomic_path, output_folder, verify_folder
from rmclean.score import Scores, load_scored, write_report

TEXTS = [f"\n\nHuman: question {i}{'?' * (i % 5)}\n\nAssistant: {'an answer ' * (1 + i % 7)}{i}" for i in range(48)]


# --- single files --------------------------------------------------------------------------------


def test_two_writers_of_one_file_never_share_a_temporary_name(tmp_path):
    target = tmp_path / "summary.json"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second
        first.write_text("a" * 1000)
        second.write_text("b" * 10)  # with one shared name this would truncate the first writer's file
    assert target.read_text() == "a" * 1000  # the second writer renamed first; the first won, whole
    assert [path.name for path in tmp_path.iterdir()] == ["summary.json"]


def test_a_file_is_on_disk_before_it_gets_its_final_name(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(files.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(files.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    files.write_text(tmp_path / "shard.npy", "data")
    assert events[:2] == ["fsync", "replace"]  # the data, then the name (then the folder entry)
    assert events.count("fsync") == 2


def test_exports_hold_finite_numbers_only(tmp_path):
    written = files.write_json(tmp_path / "summary.json", {"auroc": float("nan"), "gap": [1.0, float("inf")],
                                                            "mean": np.float64("-inf"), "n": np.int64(3)})
    text = written.read_text()
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON {name}")) == {
        "auroc": None, "gap": [1.0, None], "mean": None, "n": 3}


# --- output folders ------------------------------------------------------------------------------


def _scores(n: int = 6, shift: float = 0.0) -> Scores:
    margins = np.linspace(-1, 1, n * 3).reshape(n, 3) + shift
    return Scores([f"p{i}" for i in range(n)], margins, "cross-fit", {"config": {}, "run": shift})


def test_an_output_folder_is_replaced_whole_and_a_failed_run_keeps_the_old_one(tmp_path):
    out = tmp_path / "scores"
    write_report(_scores(shift=0.0), out, source={"source": "a.jsonl"})
    first = {name: (out / name).read_bytes() for name in ("scores.parquet", "summary.json", "manifest.json")}
    with pytest.raises(RuntimeError, match="killed"), output_folder(out, owned=("scores.parquet",)) as staging:
        (staging / "scores.parquet").write_text("half")
        raise RuntimeError("killed")
    assert {name: (out / name).read_bytes() for name in first} == first
    assert sorted(path.name for path in tmp_path.iterdir()) == ["scores"]  # no staging folder left behind
    write_report(_scores(shift=1.0), out, source={"source": "b.jsonl"})
    assert json.loads((out / "summary.json").read_text())["source"] == {"source": "b.jsonl"}
    assert verify_folder(out, rerun="rerun")["produced_by"] == "rmclean score"


def test_a_folder_mixing_two_runs_is_refused_with_what_to_rerun(tmp_path):
    write_report(_scores(shift=0.0), tmp_path / "a", source={"source": "a.jsonl"})
    write_report(_scores(shift=1.0), tmp_path / "b", source={"source": "b.jsonl"})
    shutil.copy(tmp_path / "b" / "summary.json", tmp_path / "a" / "summary.json")  # new summary, old scores
    with pytest.raises(OutputFolderError, match=r"mixes runs: summary.json .*run `rmclean score` into it again"):
        load_scored(tmp_path / "a")
    (tmp_path / "b" / "plots" / "strength_hist.png").unlink()
    with pytest.raises(OutputFolderError, match="incomplete: plots/strength_hist.png"):
        verify_folder(tmp_path / "b", rerun="rerun")
    write_report(_scores(shift=1.0), tmp_path / "c", source={"source": "c.jsonl"})
    (tmp_path / "c" / "cleaned.parquet").write_text("from another command")
    (tmp_path / "c" / ".ipynb_checkpoints").mkdir()  # hidden files are not outputs
    (tmp_path / "c" / ".ipynb_checkpoints" / "x").write_text("")
    with pytest.raises(OutputFolderError, match="cleaned.parquet is not from run"):
        verify_folder(tmp_path / "c", rerun="rerun")


def test_a_folder_of_the_users_own_files_is_never_replaced(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputFolderError, match="is the current folder"):
        write_report(_scores(), ".")  # even when empty: it would move the current folder away
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(OutputFolderError, match=r"holds files rmclean did not write \(thesis.tex\)"):
        write_report(_scores(), tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    (tmp_path / "old").mkdir()  # what an older rmclean wrote (no manifest) is replaced
    (tmp_path / "old" / "summary.json").write_text("{}")
    write_report(_scores(), tmp_path / "old")
    assert verify_folder(tmp_path / "old", rerun="rerun") is not None


def test_staging_folders_of_killed_runs_are_cleaned_up(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".scores.staging-{dead.stdout.strip()}-deadbeef"
    stale.mkdir()
    (stale / "scores.parquet").write_text("half")
    mine = tmp_path / f".scores.staging-{os.getpid()}-cafecafe"  # a live process's: kept
    mine.mkdir()
    write_report(_scores(), tmp_path / "scores")
    assert not stale.exists() and mine.exists()


def test_a_folder_built_once_is_published_by_the_first_process_only(tmp_path):
    from rmclean.files import publish_folder

    first = publish_folder(lambda staging: (staging / "weights").write_text("first"), tmp_path / "model")
    second = publish_folder(lambda staging: (staging / "weights").write_text("second"), tmp_path / "model")
    assert first == second and (first / "weights").read_text() == "first"  # no mix, no error
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]  # no staging folder left


def test_a_head_reward_model_is_saved_as_one_unit(tiny_reward_model, tmp_path, monkeypatch):
    from rmclean.members import reward_models
    from rmclean.members.reward_models import load_reward_model

    model = load_reward_model(tiny_reward_model)
    model.save(tmp_path / "head")
    expected = model.reward(["q"], ["a good answer"])
    other = load_reward_model(tiny_reward_model)
    other.feature_mean = other.feature_mean + 1.0

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(reward_models, "write_json", killed)  # killed after head.pt, before reward_model.json
    with pytest.raises(KeyboardInterrupt):
        other.save(tmp_path / "head")
    monkeypatch.undo()
    np.testing.assert_array_equal(load_reward_model(tmp_path / "head").reward(["q"], ["a good answer"]), expected)
    other.save(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "reward_model.json", tmp_path / "head" / "reward_model.json")
    with pytest.raises(OutputFolderError, match="mixes runs: reward_model.json"):
        load_reward_model(tmp_path / "head")


def test_a_head_records_its_backbone_weights_and_refuses_other_ones(tiny_reward_model, tmp_path):
    from rmclean.members.reward_models import load_reward_model

    saved = json.loads((Path(tiny_reward_model) / "reward_model.json").read_text())
    model = load_reward_model(tiny_reward_model)
    assert saved["backbones"] == {model.features.backbone: resolve_backbone(model.features.backbone).fingerprint()}
    model.backbones = {model.features.backbone: "0" * 16}  # as if trained on other weights
    with pytest.raises(BackboneError, match="trained on features of .* weights 0000000000000000"):
        model.reward(["q"], ["a"])


# --- fingerprints --------------------------------------------------------------------------------


def test_a_local_model_retrained_in_place_gets_a_new_fingerprint(tiny_backbone, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_backbone, folder)
    before = resolve_backbone(str(folder)).fingerprint()
    weights = next(path for path in folder.iterdir() if path.suffix in (".safetensors", ".bin"))
    data = bytearray(weights.read_bytes())
    data[-100:] = bytes(255 - b for b in data[-100:])  # new weights, same file names and sizes
    weights.write_bytes(bytes(data))
    assert resolve_backbone(str(folder)).fingerprint() != before


def test_a_hub_model_is_fingerprinted_by_its_commit(tmp_path, monkeypatch, hermetic):
    import huggingface_hub.constants

    from rmclean.features import backbones

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--org--model"
    fingerprints = []
    for commit in ("a" * 40, "b" * 40):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        backbones.hub_commit.cache_clear()
        assert backbones.hub_commit("org/model") == commit
        fingerprints.append(backbones.Backbone("org/model", "org/model", is_decoder=False).fingerprint())
    assert fingerprints[0] != fingerprints[1]


# --- the feature cache ---------------------------------------------------------------------------


def test_features_do_not_depend_on_their_batch_neighbours(tmp_path):
    backbone = resolve_backbone("minilm")
    alone = np.stack([embed_texts(backbone, [text], 64, cache_dir=tmp_path / f"alone{i}", progress=False)[0]
                      for i, text in enumerate(TEXTS[:6])])
    together = embed_texts(backbone, TEXTS[:6] + ["a much longer neighbour " * 20], 64, batch_size=32,
                           cache_dir=tmp_path / "together", progress=False)[:6]
    np.testing.assert_array_equal(together, alone)  # the same bits, not merely close


CONCURRENT_WRITER = textwrap.dedent("""
    import sys, numpy as np
    from rmclean.features import backbones, cache, embedding
    cache.SHARD_SIZE = 4
    texts = sys.argv[3].split("|")
    vectors = embedding.embed_texts(backbones.resolve_backbone(sys.argv[1]), texts, 32, batch_size=4,
                                    cache_dir=sys.argv[2], progress=False, precision="float32")
    np.save(sys.argv[4], vectors)
""")


def test_concurrent_processes_share_one_cache_without_mixing_vectors(tiny_backbone, tmp_path):
    subsets = [TEXTS[start:start + 24] for start in (0, 8, 16, 24)]  # overlapping
    processes = [subprocess.Popen([sys.executable, "-c", CONCURRENT_WRITER, tiny_backbone, str(tmp_path / "shared"),
                                   "|".join(subset), str(tmp_path / f"out{i}.npy")])
                 for i, subset in enumerate(subsets)]
    assert [process.wait(timeout=300) for process in processes] == [0, 0, 0, 0]
    backbone = resolve_backbone(tiny_backbone)
    reference = embed_texts(backbone, TEXTS, 32, cache_dir=tmp_path / "alone", progress=False, precision="float32")
    by_text = dict(zip(TEXTS, reference))
    for i, subset in enumerate(subsets):
        np.testing.assert_array_equal(np.load(tmp_path / f"out{i}.npy"), np.stack([by_text[t] for t in subset]))
    cache = FeatureCache(backbone, 32, tmp_path / "shared", "float32")
    np.testing.assert_array_equal(cache.get(TEXTS), reference)  # every shard's keys match its vectors


@pytest.mark.parametrize("damage", ["truncate", "empty", "flip-a-byte"])
def test_a_damaged_shard_is_set_aside_named_and_recomputed(tiny_backbone, tmp_path, damage):
    backbone = resolve_backbone(tiny_backbone)
    first = embed_texts(backbone, TEXTS[:8], 32, cache_dir=tmp_path, progress=False, precision="float32")
    cache = FeatureCache(backbone, 32, tmp_path, "float32")
    (shard,) = cache.folder.glob("shard-*.npz")
    data = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        shard.write_bytes(b"")
    else:  # one byte inside the vectors: only the zip checksum can tell
        middle = len(data) - 400
        shard.write_bytes(data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1:])
    with pytest.warns(UserWarning, match=rf"shard {shard} is damaged .*moved to .*corrupt"):
        again = embed_texts(backbone, TEXTS[:8], 32, cache_dir=tmp_path, progress=False, precision="float32")
    np.testing.assert_array_equal(again, first)
    assert (cache.folder / "corrupt" / shard.name).is_file()


def test_a_cut_cache_metadata_file_is_rewritten(tiny_backbone, tmp_path):
    backbone = resolve_backbone(tiny_backbone)
    first = embed_texts(backbone, TEXTS[:3], 32, cache_dir=tmp_path, progress=False, precision="float32")
    meta = FeatureCache(backbone, 32, tmp_path, "float32").folder / "meta.json"
    meta.write_text(meta.read_text()[:20])
    with pytest.warns(UserWarning, match="metadata .*meta.json is damaged"):
        again = embed_texts(backbone, TEXTS[:3], 32, cache_dir=tmp_path, progress=False, precision="float32")
    np.testing.assert_array_equal(again, first)
    assert json.loads(meta.read_text())["feature_version"] >= 2


def test_cleaned_exports_are_standard_json(tmp_path):
    from rmclean.export import write_denoised

    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(6)]
    pairs = rmclean.load_pairs(rows)
    margins = np.array([[3, 1.0], [-1.0, -2], [0.5, 0.5], [1, 2], [2, 3], [-2, -1]], dtype=float)
    scores = Scores(list(pairs["pair_id"]), margins, "cross-fit", {})
    summary = {"threshold": float("nan"), "upper": float("inf")}  # e.g. an interval without bounds
    written = write_denoised(rmclean.denoise(pairs, scores, method="flip"), summary, tmp_path / "d")
    strict = {"parse_constant": lambda name: pytest.fail(f"non-standard JSON {name}")}
    for name in ("cleaned.jsonl", "dropped.jsonl"):
        for line in written[name].read_text().splitlines():
            json.loads(line, **strict)
    json.loads(written["summary.json"].read_text(), **strict)
