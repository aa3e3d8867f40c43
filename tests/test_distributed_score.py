"""Scale out on an existing engine (issue #15, item 3): under ``accelerate launch`` every process
embeds its share of the uncached texts into the shared feature cache, then the main process alone
trains the heads and writes the output folder; without a launch nothing changes."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rmclean import distributed
from rmclean.cli import main
from rmclean.features.backbones import resolve_backbone
from rmclean.features.cache import FeatureCache
from rmclean.features.embedding import embed_texts
from rmclean.score import Scores

TEXTS = [f"\n\nHuman: question {i}\n\nAssistant: {'an answer ' * (1 + i % 5)}{i}" for i in range(10)]


class FakeState:
    """What :mod:`rmclean.distributed` reads of accelerate's ``PartialState``."""

    def __init__(self, index: int, processes: int):
        self.process_index, self.num_processes, self.barriers = index, processes, 0
        self.is_main_process = index == 0

    def wait_for_everyone(self) -> None:
        self.barriers += 1


@pytest.fixture
def launched(monkeypatch):
    """``launched(index, processes)`` makes this process look like one of a launched run."""
    monkeypatch.setattr(distributed, "_alone", False)

    def launch(index: int, processes: int) -> FakeState:
        state = FakeState(index, processes)
        monkeypatch.setenv("WORLD_SIZE", str(processes))
        monkeypatch.setenv("RANK", str(index))
        monkeypatch.setattr(distributed, "_state", lambda: None if distributed._alone else state)
        return state

    return launch


def test_without_a_launch_every_helper_is_the_identity_and_nothing_starts(monkeypatch):
    for name in distributed.WORLD_SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, "accelerate", None)  # importing it would fail
    monkeypatch.setattr(distributed, "_alone", False)
    items = ["a", "b", "c"]
    assert distributed.launched_processes() == 1
    assert distributed.process_share(items) == items
    assert distributed.wait_for_everyone() is None
    assert distributed.is_main_process() and distributed.process_label() == ""
    assert distributed.main_process_continues()
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun with one process: still plain
    assert distributed.process_share(items) == items and distributed.is_main_process()


def test_shares_are_strided_and_the_main_process_goes_on_alone(launched):
    state = launched(1, 3)
    assert distributed.process_share(list(range(7))) == [1, 4]
    assert not distributed.is_main_process() and distributed.process_label() == " (process 2 of 3)"
    assert not distributed.main_process_continues()  # this one stops
    state = launched(0, 3)
    assert distributed.process_share(list(range(7))) == [0, 3, 6]
    assert distributed.main_process_continues()
    assert distributed.process_share(list(range(7))) == list(range(7))  # alone now: everything, no barrier
    distributed.wait_for_everyone()
    assert state.barriers == 0 and distributed.is_main_process()


def test_each_process_embeds_its_share_of_the_distinct_texts_then_waits(tiny_backbone, tmp_path, launched):
    backbone = resolve_backbone(tiny_backbone)
    texts = TEXTS + TEXTS[:4]  # repeats are embedded once, by one process
    alone = embed_texts(backbone, texts, 32, cache_dir=tmp_path / "alone", progress=False, precision="float32")
    first = launched(0, 2)
    with pytest.raises(KeyError, match="texts are not in the feature cache"):
        embed_texts(backbone, texts, 32, cache_dir=tmp_path, progress=False, precision="float32")
    assert first.barriers == 1  # it waited for the other process, which has not run in this test
    second = launched(1, 2)
    shared = embed_texts(backbone, texts, 32, cache_dir=tmp_path, progress=False, precision="float32")
    assert second.barriers == 1
    sizes = sorted(np.load(shard)["keys"].size
                   for shard in FeatureCache(backbone, 32, tmp_path, "float32").folder.glob("shard-*.npz"))
    assert sizes == [5, 5]  # each of the 10 distinct texts embedded once, half by each process
    np.testing.assert_array_equal(shared, alone)
    fresh = launched(1, 2)  # texts not stored: each process embeds all of them and waits for no one
    np.testing.assert_array_equal(embed_texts(backbone, TEXTS, 32, cache_dir=tmp_path / "unstored", progress=False,
                                              precision="float32", store=False), alone[:len(TEXTS)])
    assert fresh.barriers == 0


def shards_by_pid(cache: Path) -> dict[str, set[str]]:
    """The texts' keys in each process's shards, by the pid in the shard's name."""
    keys: dict[str, set[str]] = collections.defaultdict(set)
    for shard in cache.glob("features/*/*/shard-*.npz"):
        keys[shard.name.split("-")[1]] |= set(np.load(shard)["keys"].tolist())
    return dict(keys)


def test_accelerate_launch_with_two_processes_scores_as_one_process_does(tiny_backbone, tmp_path, capsys,
                                                                         monkeypatch):
    """A real launch on CPU: ``accelerate launch --multi_gpu`` starts the processes through
    torchrun (``--cpu`` with ``--num_processes 2`` starts a single process: accelerate runs
    several CPU processes only through mpirun), and without a GPU they talk over gloo."""
    words = ["good", "bad", "helpful", "rude", "kind", "short", "long", "clear", "vague", "polite"]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"question {i} about {words[i % 10]}",
                                        "chosen": f"a {words[i % 7]} and helpful answer {i}",
                                        "rejected": f"a {words[i * 3 % 10]} reply {i % 9}"}) + "\n" for i in range(24)))
    options = [str(data), "--backbone", tiny_backbone, "--members", "4", "--folds", "2", "--max-length", "32",
               "--group-by", "none", "--precision", "float32", "--quiet"]  # two views: three embedding rounds
    # torchrun gives each process one thread, and a backbone's last bits depend on the thread
    # count: the one-process run here uses one thread too (with more, margins differ by ~1e-6)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RMCLEAN_CACHE_DIR": str(tmp_path / "shared-cache")}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    launch = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                             "--main_process_port", "0", "-m", "rmclean", "score", *options,
                             "--out", str(tmp_path / "launched")],
                            env=env, capture_output=True, text=True, timeout=300, check=False)
    assert launch.returncode == 0, launch.stderr[-3000:]
    assert launch.stdout.count("scored 24 pairs") == 1  # one summary, from the main process

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["score", *options, "--cache-dir", str(tmp_path / "own-cache"), "--out", str(tmp_path / "alone")]) == 0
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()

    launched, alone = Scores.load(tmp_path / "launched"), Scores.load(tmp_path / "alone")
    assert launched.pair_id == alone.pair_id
    np.testing.assert_array_equal(launched.member_margins, alone.member_margins)  # bit for bit
    # each process embedded its own part of the texts, and together all of them
    shares = shards_by_pid(tmp_path / "shared-cache")
    everything = set().union(*shards_by_pid(tmp_path / "own-cache").values())
    assert len(shares) == 2 and all(0 < len(keys) < len(everything) for keys in shares.values())
    first, second = shares.values()
    assert not first & second and first | second == everything
    # one output folder, written once, whole
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith((".launched", "launched"))) \
        == ["launched"]
    manifest = json.loads((tmp_path / "launched" / "manifest.json").read_text())
    assert manifest["produced_by"] == "rmclean score"
    assert sorted(manifest["files"]) == sorted(json.loads((tmp_path / "alone" / "manifest.json").read_text())["files"])
