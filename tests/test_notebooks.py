"""Every notebook runs top to bottom under a real Jupyter kernel (``nbclient`` + ``ipykernel``),
with small parameters, and is committed without outputs.

Each notebook has one code cell tagged ``parameters`` (the papermill convention): the test
inserts a cell after it that sets the small sizes below, and appends a cell of checks on what
the notebook computed, so a run that silently does nothing fails. A failing cell is named by
notebook and cell number, with the kernel's traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from judge_server import JudgeServer  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb"))
RESULTS_DIR = PROJECT_ROOT / "experiments" / "results"

#: What each notebook runs on in the tests (its own defaults are the full-size story).
SMALL = {
    "01_load_and_inspect.ipynb": {},
    "02_preference_strength.ipynb": {"PAIRS_PER_SOURCE": 25, "MEMBERS": 4, "FOLDS": 3},
    "03_denoise.ipynb": {"PAIRS_PER_SOURCE": 25, "MEMBERS": 4, "FOLDS": 3},
    # the judge: the scripted OpenAI-compatible server of the judge tests, over real HTTP (its
    # verdicts mean nothing on real pairs; the notebook's own default, SmolLM2 on the CPU, takes
    # minutes)
    "04_judge_agreement.ipynb": {"PAIRS_PER_SOURCE": 3, "MAX_TOKENS": 64},
    "05_downstream.ipynb": {"RESULTS_DIR": str(RESULTS_DIR)},
}

#: Checks run in the kernel after the last cell (names the notebook defines).
CHECKS = {
    "01_load_and_inspect.ipynb": [
        "assert len(pairs) == 8552",
        "assert flag_table.to_numpy().sum() == 17 + 11 + 36",
        "assert len(valid) == 1 and len(invalid) == 1",
    ],
    "02_preference_strength.ipynb": [
        "assert len(pairs) == 4 * PAIRS_PER_SOURCE",
        "assert strength_mean.shape == strength_std.shape == (len(pairs),)",
        "assert 0 < audit_result['rows'][0]['auroc'] < 1",
    ],
    "03_denoise.ipynb": [
        "assert set(counts.index) >= {'flip', 'drop', 'margin', 'soft-label', 'flip+margin', 'soft-label+margin'}",
        "assert (counts.sum(axis=1) == len(pairs)).all()",
        "assert len(trl_rows) == len(pairs) - counts.loc['flip', 'drop'] - counts.loc['flip', 'invalid']",
    ],
    "04_judge_agreement.ipynb": [
        "assert len(result.judgements) == len(pairs)",
        "assert [row['paper_agreement'] for row in result.agreement['paper']] == [0.164, 0.544, 0.956]",
    ],
    "05_downstream.ipynb": [
        "assert len(benefit) > 0 and len(bon['arms']) > 0",
    ],
}


#: Figures each notebook shows inline (rmclean.plots keeps a kernel's inline backend).
EXPECTED_FIGURES = {"01_load_and_inspect.ipynb": 1, "02_preference_strength.ipynb": 5, "03_denoise.ipynb": 1,
                    "04_judge_agreement.ipynb": 1, "05_downstream.ipynb": 4}


def code_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def with_parameters(notebook, parameters: dict, checks: list[str]):
    """A copy of ``notebook`` with a cell setting ``parameters`` after its ``parameters`` cell
    and a cell running ``checks`` at the end."""
    import nbformat

    copy = nbformat.from_dict(notebook)
    tagged = [index for index, cell in enumerate(copy.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, "a notebook has exactly one code cell tagged 'parameters'"
    lines = [f"{name} = {value!r}" for name, value in parameters.items()]
    copy.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell("# injected by the tests\n" + "\n".join(lines)))
    copy.cells.append(nbformat.v4.new_code_cell("# checks injected by the tests\n" + "\n".join(checks)))
    return copy


def test_there_are_five_notebooks():
    assert [path.name for path in NOTEBOOKS] == list(SMALL)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_is_committed_clean(path):
    """No outputs or execution counts in the repo, one parameters cell, markdown between code."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for number, cell in enumerate(code_cells(notebook), 1):
        assert not cell.outputs and cell.execution_count is None, (
            f"{path.name}, code cell {number} holds outputs: clear them before committing "
            "(jupyter nbconvert --clear-output --inplace notebooks/*.ipynb)")
    assert sum("parameters" in cell.metadata.get("tags", []) for cell in notebook.cells) == 1
    assert sum(cell.cell_type == "markdown" for cell in notebook.cells) >= 3
    assert "matplotlib" not in "".join(cell.source for cell in code_cells(notebook)), (
        f"{path.name} draws with matplotlib itself: figures come from rmclean.plots")


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One feature cache for every notebook (02 and 03 score the same pairs)."""
    return tmp_path_factory.mktemp("notebook-cache")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_runs_under_a_kernel(path, real_data_env, shared_cache, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    monkeypatch.setenv("RMCLEAN_CACHE_DIR", str(shared_cache))  # the kernel inherits the environment
    with JudgeServer() as server:
        parameters = dict(SMALL[path.name])
        if path.name.startswith("04_"):
            parameters["JUDGE"] = {"base_url": server.url, "model": "judge-test"}
        notebook = with_parameters(nbformat.read(path, as_version=4), parameters, CHECKS[path.name])
        client = NotebookClient(notebook, kernel_name="python3", timeout=600,
                                resources={"metadata": {"path": str(tmp_path)}})
        try:
            client.execute()
        except CellExecutionError as exc:
            failed = next((number for number, cell in enumerate(code_cells(notebook), 1)
                           if any(output.get("output_type") == "error" for output in cell.get("outputs", []))), "?")
            pytest.fail(f"{path.name}, code cell {failed} (counting the injected parameters cell) failed:\n{exc}")
    figures = [output for cell in code_cells(notebook) for output in cell.get("outputs", [])
               if "image/png" in output.get("data", {})]
    assert len(figures) >= EXPECTED_FIGURES[path.name], f"{path.name} showed {len(figures)} figures"
