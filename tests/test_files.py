"""Atomic writes: an interrupted write leaves neither a partial file nor a half-written target."""

from __future__ import annotations

import pytest

from rmclean.files import atomic_path, write_text


def test_write_text_replaces_the_target(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")
    assert write_text(target, "new") == target
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_an_interrupted_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "scores.parquet"
    target.write_text("complete old result")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as partial:
            partial.write_text("half of the new")
            raise RuntimeError("killed")
    assert target.read_text() == "complete old result"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.parquet"]


def test_write_results_writes_json_and_markdown_side_by_side(tmp_path):
    import json

    from rmclean.files import write_results

    written = write_results(tmp_path / "new" / "bench_v1.2", {"ratio": 1.5, "rows": [1, 2]}, "| a |\n")
    assert [path.name for path in written] == ["bench_v1.2.json", "bench_v1.2.md"]  # dots in the stem are kept
    assert json.loads(written[0].read_text()) == {"ratio": 1.5, "rows": [1, 2]}
    assert written[1].read_text() == "| a |\n" and not list((tmp_path / "new").glob("*.partial"))
