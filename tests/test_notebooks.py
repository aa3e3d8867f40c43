"""Every notebook's code cells run top to bottom (outputs are not stored in the repo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(notebook, real_data_env, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(notebook.parent)
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    code = [("".join(cell["source"])) for cell in cells if cell["cell_type"] == "code"]
    assert code, f"{notebook.name} has no code cells"
    namespace: dict = {}
    for number, source in enumerate(code, 1):
        try:
            exec(compile(source, f"{notebook.name}[cell {number}]", "exec"), namespace)
        except Exception as exc:  # name the failing cell
            raise AssertionError(f"{notebook.name}, code cell {number} failed: {exc!r}") from exc
    assert len(namespace["pairs"]) == 8552
    assert namespace["flag_table"].to_numpy().sum() == 17 + 11 + 36
    assert len(namespace["valid"]) == 1 and len(namespace["invalid"]) == 1


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb"
