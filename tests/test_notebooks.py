"""The example notebooks: stored clean, in sync with their jupytext scripts, and runnable top to bottom.

Each notebook's source is a jupytext percent-format script, notebooks/NAME.py,
paired with notebooks/NAME.ipynb (`formats: ipynb,py:percent` in its header).
The .ipynb is kept in the repository, without outputs, for people who open it
directly; after editing the .py (or the .ipynb in Jupyter with jupytext) run

    .venv/bin/jupytext --sync notebooks/*.py

which rewrites the older of each pair from the newer and keeps the stored
cell ids, so writing twice gives the same bytes.

Cell tags (jupytext cell metadata, `# %% tags=["figure"]`): "parameters" marks
the one cell of settings, plain assignments of literals, that tests (and
papermill-style tools) override by adding a cell after it; "figure" cells must
display at least one plotly figure; "interpretation" cells print a sentence
computed from the numbers behind the figure before them.

Execution runs every cell with nbclient on the CPU, in a kernel of this
interpreter, after injecting tiny parameters the way papermill does: a cell
tagged "injected-parameters" is added right after the cell tagged
"parameters", so the notebook's own defaults stay visible above it.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
KERNEL_MARKER = "KERNEL_PYTHON="
SYNC_COMMAND = ".venv/bin/jupytext --sync notebooks/*.py"
PAIRING = "ipynb,py:percent"

# Small enough for a shared CPU, large enough that training moves the loss and every analysis has cases.
TINY_MODEL = {"N_DIGITS": 3, "D_MODEL": 64, "N_HEADS": 4, "D_MLP": 256, "LR": 1e-3, "USE_BUNDLED": False}
OVERRIDES: dict[str, dict[str, Any]] = {
    "addition_walkthrough.ipynb": {
        **TINY_MODEL, "STEPS": 300, "QUESTIONS": 256, "EVAL_QUESTIONS": 2000, "PATCH_PAIRS": 16, "SUB_STEPS": 100,
    },
    "your_own_experiment.ipynb": {
        # HEAD stays at its default, "auto": the notebook picks the head that matters most.
        **TINY_MODEL, "STEPS": 150, "COUNT": 128, "QUESTION_SET": "use_sum9", "ANSWER_DIGIT": 1,
    },
}


def cells_of(notebook: nbformat.NotebookNode) -> list[tuple[str, str, list[str]]]:
    """What pairing must keep equal: each cell's type, source and tags."""
    return [(cell.cell_type, cell.source, list(cell.metadata.get("tags", []))) for cell in notebook.cells]


def sync_differences(script: Path, stored: Path) -> list[str]:
    """How the stored .ipynb differs from what its jupytext script says; empty when in sync."""
    expected, found = cells_of(jupytext.read(script)), cells_of(nbformat.read(stored, as_version=4))
    differences = [f"cell {index}: the .py has {want!r:.120}, the .ipynb {got!r:.120}"
                   for index, (want, got) in enumerate(zip(expected, found)) if want != got]
    if len(expected) != len(found):
        differences.append(f"the .py has {len(expected)} cells, the .ipynb {len(found)}")
    return differences


def parameters_cell(notebook: nbformat.NotebookNode) -> int:
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected exactly one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def parameter_names(source: str) -> set[str]:
    """Names the parameters cell assigns; it must be plain assignments of literals."""
    names = set()
    for statement in ast.parse(source).body:
        assert isinstance(statement, ast.Assign), f"parameters cell line {statement.lineno} is not an assignment"
        ast.literal_eval(statement.value)  # a literal, so injected values replace it exactly
        names.update(target.id for target in statement.targets if isinstance(target, ast.Name))
    return names


def inject(notebook: nbformat.NotebookNode, overrides: dict[str, Any]) -> nbformat.NotebookNode:
    """A copy of the notebook with an injected-parameters cell after the parameters cell."""
    notebook = nbformat.from_dict(notebook)
    index = parameters_cell(notebook)
    lines = [f"{name} = {value!r}" for name, value in overrides.items()]
    lines.append(f'import sys; print("{KERNEL_MARKER}" + sys.executable)')
    # Tiny models gain nothing from threads, and on a busy shared CPU two threads run several times slower.
    lines.append("import torch; torch.set_num_threads(1)")
    cell = nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(index + 1, cell)
    return notebook


def stdout_text(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream" and o.name == "stdout")


def has_plotly(cell: nbformat.NotebookNode) -> bool:
    return any(PLOTLY_MIME in o.get("data", {}) for o in cell.get("outputs", [])
               if o.output_type in ("display_data", "execute_result"))


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_notebook_is_stored_without_outputs(name: str) -> None:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name} has stored outputs"
    assert notebook.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_notebook_is_in_sync_with_its_script(name: str) -> None:
    script, stored = NOTEBOOKS / name.replace(".ipynb", ".py"), NOTEBOOKS / name
    assert script.is_file(), f"{script.name}, the jupytext source of {name}, is missing"
    differences = sync_differences(script, stored)
    assert not differences, (f"notebooks/{name} is out of sync with notebooks/{script.name}; run {SYNC_COMMAND}\n"
                             + "\n".join(differences[:5]))
    for paired in (jupytext.read(script), nbformat.read(stored, as_version=4)):
        assert paired.metadata.get("jupytext", {}).get("formats") == PAIRING, \
            f"{name} and {script.name} must be paired with formats: {PAIRING}"


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_syncing_rewrites_nothing(name: str, tmp_path: Path) -> None:
    """The stored .ipynb is byte for byte what jupytext writes from the .py (cell ids included),
    so syncing twice, or after a fresh checkout, changes nothing."""
    script = tmp_path / name.replace(".ipynb", ".py")
    stored = tmp_path / name
    shutil.copyfile(NOTEBOOKS / name, stored)
    shutil.copyfile(NOTEBOOKS / script.name, script)
    os.utime(stored, (1_000_000_000, 1_000_000_000))  # the script is the newer file: the source, as in a checkout
    env = {**os.environ, "JUPYTER_DATA_DIR": str(tmp_path / "jupyter")}  # jupytext's notary db goes here, not ~
    for _ in range(2):
        subprocess.run([sys.executable, "-m", "jupytext", "--sync", "--quiet", str(script)], check=True, env=env,
                       cwd=tmp_path, capture_output=True, timeout=120)
        assert stored.read_bytes() == (NOTEBOOKS / name).read_bytes(), \
            f"jupytext --sync rewrites notebooks/{name}; run {SYNC_COMMAND}"


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_overrides_replace_real_parameters(name: str) -> None:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    names = parameter_names(notebook.cells[parameters_cell(notebook)].source)
    wanted = {*OVERRIDES[name], "RUN_DIR"}
    assert wanted <= names, f"not in the parameters cell: {sorted(wanted - names)}"
    injected = inject(notebook, OVERRIDES[name])
    assert len(injected.cells) == len(notebook.cells) + 1
    assert injected.cells[parameters_cell(notebook) + 1].metadata["tags"] == ["injected-parameters"]


def test_sync_check_flags_a_stale_notebook(tmp_path: Path) -> None:
    script, stored = NOTEBOOKS / "your_own_experiment.py", tmp_path / "your_own_experiment.ipynb"
    notebook = nbformat.read(NOTEBOOKS / stored.name, as_version=4)
    assert sync_differences(script, NOTEBOOKS / stored.name) == []
    index = parameters_cell(notebook)
    notebook.cells[index].source = notebook.cells[index].source.replace("use_sum9", "base_add", 1)
    nbformat.write(notebook, stored)
    assert [f"cell {index}:" in line for line in sync_differences(script, stored)] == [True]
    notebook.cells[index].metadata["tags"] = []
    notebook.cells[index].source = jupytext.read(script).cells[index].source
    nbformat.write(notebook, stored)
    assert len(sync_differences(script, stored)) == 1  # a lost tag counts too
    del notebook.cells[-1]
    nbformat.write(notebook, stored)
    assert any("cells" in line for line in sync_differences(script, stored))


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_every_ablation_has_a_reference(name: str) -> None:
    """The mean over the tested questions is not neutral (over a narrow set it encodes the answer),
    so every `ablate(...)` in the notebooks takes its mean from an explicit reference set."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    calls = [node for cell in notebook.cells if cell.cell_type == "code" for node in ast.walk(ast.parse(cell.source))
             if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ablate"]
    assert calls, f"{name} calls ablate nowhere"
    for call in calls:
        assert "reference" in {keyword.arg for keyword in call.keywords}, \
            f"{name} line {call.lineno} of its cell calls ablate without reference="


def test_walkthrough_covers_the_seed_story() -> None:
    """The calls the issue asks the walkthrough to demonstrate are there, in the seed's order."""
    notebook = nbformat.read(NOTEBOOKS / "addition_walkthrough.ipynb", as_version=4)
    after_imports = notebook.cells[parameters_cell(notebook):]
    source = "\n".join(cell.source for cell in after_imports if cell.cell_type == "code")
    steps = ["arithlens.train(", "per_token_loss_curves", "subtask_digit_curves", 'cache["blocks.0.attn.hook_pattern"]',
             "run_with_hooks", "ablate(", "accumulated_resid", "stack_head_results", "useful_nodes(", "algorithm_map(",
             "cascade_depth_"]
    positions = [source.find(step) for step in steps]
    assert all(p >= 0 for p in positions), [s for s, p in zip(steps, positions) if p < 0]
    assert positions == sorted(positions)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_notebook_runs_top_to_bottom(name: str, tmp_path: Path) -> None:
    from nbclient import NotebookClient

    notebook = inject(nbformat.read(NOTEBOOKS / name, as_version=4),
                      {**OVERRIDES[name], "RUN_DIR": str(tmp_path / "run")})
    client = NotebookClient(notebook, kernel_name="python3", timeout=600,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError, with the cell and traceback, if any cell fails

    kernel_python = next(line for cell in notebook.cells for line in stdout_text(cell).splitlines()
                         if line.startswith(KERNEL_MARKER))
    assert Path(kernel_python[len(KERNEL_MARKER):]).resolve() == Path(sys.executable).resolve(), \
        "the notebook ran under another interpreter than the tests"
    assert (tmp_path / "run" / "model.safetensors").is_file(), "the notebook did not train into RUN_DIR"
    figures = [cell for cell in notebook.cells if "figure" in cell.metadata.get("tags", [])]
    sentences = [cell for cell in notebook.cells if "interpretation" in cell.metadata.get("tags", [])]
    assert figures and sentences
    for cell in figures:
        assert has_plotly(cell), f"figure cell shows no plotly figure:\n{cell.source[:200]}"
    for cell in sentences:
        assert stdout_text(cell).strip(), f"interpretation cell printed nothing:\n{cell.source[:200]}"
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output.output_type != "error"
            assert "Traceback" not in output.get("text", "")
