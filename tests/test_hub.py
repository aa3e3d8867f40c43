"""The Hub code paths, exercised through the real ``datasets.load_dataset`` on local folders
(the Hub itself cannot be reached from our machines)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

import rmclean
from rmclean.data import pairs as pairs_module
from rmclean.data import sources

HH_ROWS = [
    {"chosen": "\n\nHuman: hi\n\nAssistant: hello there", "rejected": "\n\nHuman: hi\n\nAssistant: go away"},
    {"chosen": "\n\nHuman: 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: 2+2?\n\nAssistant: 5"},
]


def _write_hh_layout(root: Path, subset: str) -> None:
    folder = root / subset
    folder.mkdir(parents=True)
    with gzip.open(folder / "test.jsonl.gz", "wt", encoding="utf-8") as handle:
        for row in HH_ROWS:
            handle.write(json.dumps(row) + "\n")


def test_hh_rlhf_falls_back_to_the_hub_loader(tmp_path, monkeypatch):
    """No local copy: the hh-rlhf rows come from datasets.load_dataset(hub_id, data_dir=subset)."""
    hub = tmp_path / "hub-mirror"
    _write_hh_layout(hub, "harmless-base")
    monkeypatch.delenv("RMCLEAN_DATA_DIR", raising=False)
    monkeypatch.setitem(
        sources.NAMED_SOURCES, "hh-rlhf",
        sources.NamedSource(**{**sources.NAMED_SOURCES["hh-rlhf"].__dict__, "hub_id": str(hub)}),
    )
    monkeypatch.setattr(sources, "_probe_hub", lambda hub_id, subset: None)
    pairs = rmclean.load_pairs("hh-rlhf", subset="harmless-base", data_dir=tmp_path / "empty")
    assert len(pairs) == 2
    assert pairs["prompt"] == ["\n\nHuman: hi\n\nAssistant:", "\n\nHuman: 2+2?\n\nAssistant:"]
    assert pairs["chosen"] == [" hello there", " 4"]
    assert set(pairs["source"]) == {"hh-rlhf/harmless-base/test"}


def test_hub_id_path_uses_load_dataset(tmp_path):
    """A Hub id goes through datasets.load_dataset; a local folder stands in for the Hub."""
    _write_hh_layout(tmp_path / "repo", "data")
    streams = pairs_module._hub_streams(str(tmp_path / "repo" / "data"), None, None)
    assert [stream.label for stream in streams] == [f"{tmp_path / 'repo' / 'data'}/test"]
    rows = [record.data for record in streams[0].records]
    assert rows == HH_ROWS


def test_unreachable_hub_id_says_where_it_looked(monkeypatch):
    with pytest.raises(rmclean.SourceNotFoundError) as caught:
        rmclean.load_pairs("no-such-owner/no-such-dataset")
    message = str(caught.value)
    assert "'no-such-owner/no-such-dataset' is not a file or folder" in message
    assert "hh-rlhf" in message and "Hugging Face Hub" in message
