"""The example notebooks: stored clean, in sync with their generator, and runnable top to bottom.

Execution runs every cell with nbclient on the CPU, in a kernel of this
interpreter, after injecting tiny parameters the way papermill does: a cell
tagged "injected-parameters" is added right after the cell tagged
"parameters", so the notebook's own defaults stay visible above it.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
KERNEL_MARKER = "KERNEL_PYTHON="

# Small enough for a shared CPU, large enough that training moves the loss and every analysis has cases.
TINY_MODEL = {"N_DIGITS": 3, "D_MODEL": 64, "N_HEADS": 4, "D_MLP": 256, "LR": 1e-3, "USE_BUNDLED": False}
OVERRIDES: dict[str, dict[str, Any]] = {
    "addition_walkthrough.ipynb": {
        **TINY_MODEL, "STEPS": 300, "QUESTIONS": 256, "EVAL_QUESTIONS": 2000, "PATCH_PAIRS": 16,
    },
    "your_own_experiment.ipynb": {
        **TINY_MODEL, "STEPS": 150, "COUNT": 128, "QUESTION_SET": "use_sum9", "HEAD": 1, "ANSWER_DIGIT": 1,
    },
}


def load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "scripts" / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


@pytest.fixture(scope="module")
def generator() -> Any:
    return load_generator()


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_notebook_is_stored_without_outputs(name: str) -> None:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name} has stored outputs"
    assert notebook.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_notebook_matches_its_generator(generator: Any, name: str) -> None:
    assert (NOTEBOOKS / name).read_text() == generator.render(name), \
        f"{name} differs from scripts/make_notebooks.py; run python scripts/make_notebooks.py"


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_overrides_replace_real_parameters(name: str) -> None:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    names = parameter_names(notebook.cells[parameters_cell(notebook)].source)
    wanted = {*OVERRIDES[name], "RUN_DIR"}
    assert wanted <= names, f"not in the parameters cell: {sorted(wanted - names)}"
    injected = inject(notebook, OVERRIDES[name])
    assert len(injected.cells) == len(notebook.cells) + 1
    assert injected.cells[parameters_cell(notebook) + 1].metadata["tags"] == ["injected-parameters"]


def test_generator_check_flags_a_stale_notebook(generator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generator, "NOTEBOOK_DIR", tmp_path)
    assert generator.main([]) == 0
    assert generator.main(["--check"]) == 0
    path = tmp_path / "your_own_experiment.ipynb"
    path.write_text(path.read_text().replace("use_sum9", "base_add", 1))
    assert generator.main(["--check"]) == 1


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
