"""The sweep's comparison on disk: SWEEP_DIR/comparison.parquet, universality.parquet and sweep_report.html.

`write_comparison(sweep_dir)` reads sweep.json and every finished cell's
analysis, writes the two tables (atomically) and one offline page drawn with
report.py's page machinery (plotly inlined once, figures as JSON, nothing
fetched), so it reads like a run's report.html. Cells that have not finished
are listed with their status and left out of the comparison.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import pandas as pd

from arithlens.errors import RunFolderError
from arithlens.plots import sweep as sweep_plots
from arithlens.report import Section, page_html
from arithlens.runs import atomic_write
from arithlens.sweep import compare

SWEEP_FILE = "sweep.json"
COMPARISON_FILE = "comparison.parquet"
UNIVERSALITY_FILE = "universality.parquet"
SWEEP_REPORT_FILE = "sweep_report.html"


def read_record(sweep_dir: Path) -> dict[str, Any]:
    """sweep.json, or one clear error if it is missing or damaged."""
    path = sweep_dir / SWEEP_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunFolderError(f"{sweep_dir} holds no {SWEEP_FILE}: it is not an arithlens sweep folder") from None
    except (OSError, ValueError) as error:
        raise RunFolderError(f"damaged {path}: {error}; remove it to start the sweep afresh") from None


def finished_cells(sweep_dir: Path, record: dict[str, Any]) -> list[compare.CellAnalysis]:
    """The analyses of the cells of `record` that are trained to the end and analysed, in grid order."""
    found = (compare.load_cell(sweep_dir / cell["folder"], cell["name"], cell["values"]) for cell in record["cells"])
    return [cell for cell in found if cell is not None]


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def write_comparison(sweep_dir: str | Path) -> Path:
    """comparison.parquet, universality.parquet and sweep_report.html for the finished cells; the page's path."""
    folder = Path(sweep_dir)
    record = read_record(folder)
    cells = finished_cells(folder, record)
    axes = list(record.get("grid", {}))
    table = compare.comparison(cells)
    components = compare.map_components(cells)
    groups = compare.cell_groups(cells, axes)
    shared = compare.universality(components, groups)
    _write_parquet(table, folder / COMPARISON_FILE)
    _write_parquet(shared, folder / UNIVERSALITY_FILE)
    sections = [_sweep_section(folder, record)]
    notices: list[str] = []
    if cells:
        sections += _comparison_sections(cells, table, components, shared, groups)
    else:
        notices.append("No cell has finished (trained to the end and analysed), so there is nothing to compare yet.")
    unfinished = [c["name"] for c in record["cells"] if c["name"] not in {cell.name for cell in cells}]
    if unfinished and cells:
        notices.append(f"{len(unfinished)} of {len(record['cells'])} cells have not finished and are left out of the "
                       f"comparison: {html.escape(', '.join(unfinished))}.")
    title = f"arithlens sweep: {folder.name}"
    subtitle = (f"{len(record['cells'])} cells over {', '.join(_flag(a) for a in axes)}; "
                f"{len(cells)} finished")
    page = page_html(title, subtitle, sections, notices)
    target = folder / SWEEP_REPORT_FILE
    atomic_write(target, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return target


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _sweep_section(folder: Path, record: dict[str, Any]) -> Section:
    section = Section("sweep", "Sweep", "Every cell is a run folder of its own, with its report.html.")
    grid = {_flag(k): ", ".join(map(str, v)) for k, v in record.get("grid", {}).items()}
    fixed = {_flag(k): v for k, v in record.get("fixed", {}).items()}
    facts = {"sweep folder": str(folder.resolve()), "command": record.get("command", ""),
             "ran on": record.get("backend", ""), "questions per analysis": record.get("count"),
             "started": record.get("created", ""), "updated": record.get("updated", ""),
             "status": record.get("status", "")}
    section.items.append(("", pd.DataFrame({"": list(facts), "value": [str(v) for v in facts.values()]})))
    section.items.append(("Grid (each combination is a cell)",
                          pd.DataFrame({"flag": list(grid), "values": list(grid.values())})))
    if fixed:
        section.items.append(("Fixed flags (every cell)",
                              pd.DataFrame({"flag": list(fixed), "value": list(fixed.values())})))
    cells = pd.DataFrame([{"cell": c["name"], **c["values"], "status": c["status"], "attempts": c.get("attempts", 0),
                           "seconds": c.get("seconds"), "error": c.get("error") or ""} for c in record["cells"]])
    section.items.append(("Cells", cells))
    reports = [f"<a href='{html.escape(c['folder'])}/report.html'>{html.escape(c['name'])}</a>"
               for c in record["cells"] if (folder / c["folder"] / "report.html").is_file()]
    if reports:  # relative links: the page and the cells' reports move together with the sweep folder
        section.items.append(("", f"<p class='intro'>Each cell's own report: {' · '.join(reports)}</p>"))
    return section


def _comparison_sections(cells: list[compare.CellAnalysis], table: pd.DataFrame, components: pd.DataFrame,
                         shared: pd.DataFrame, groups: dict[str, list[str]]) -> list[Section]:
    names = [cell.name for cell in cells]
    n_digits = max(int((cell.summary.get("model") or {}).get("n_digits", 1)) for cell in cells)
    value_columns = list(dict.fromkeys(k for cell in cells for k in cell.values))
    accuracy = Section("accuracy", "Accuracy", "Accuracy on random questions per cell, in per cent and in nines "
                       "(on 1M questions 0-1 failures is six nines).")
    accuracy.items.append(("Accuracy and nines", sweep_plots.accuracy_figure(table)))
    accuracy.items.append(("", table[["cell", *value_columns, "questions", "accuracy", "failures", "nines"]]))
    depth = Section("cascade", "Cascade depth", "Accuracy by the longest run of UseSum9 columns (a carry cascading "
                    "through digit pairs that sum to 9), the hardest case for these models.")
    by_depth = compare.cascade_accuracy(cells)
    depth.items.append(("Accuracy by cascade depth", sweep_plots.cascade_figure(by_depth, names)))
    phases = compare.phase_steps(cells)
    dynamics = Section("phases", "Phase changes", "Where each answer digit's loss falls fastest in each cell: do "
                       "the digits learn in the same order, at the same steps, across seeds?")
    dynamics.items += ([("Phase changes per answer digit", sweep_plots.phase_figure(phases, names, n_digits)),
                        ("", phases)] if len(phases) else
                       [("", "<p class='intro'>No cell's analysis found a phase change.</p>")])
    sections = [accuracy, depth, dynamics, _circuit_section(cells, names), _agreement_section(
        components, shared, groups, names)]
    everything = Section("comparison", "Comparison table", "comparison.parquet: one row per finished cell.")
    everything.items.append(("", table))
    return [*sections, everything]


def _circuit_section(cells: list[compare.CellAnalysis], names: list[str]) -> Section:
    section = Section("circuit", "Circuit scores", "How well each cell's algorithm map explains its model "
                      "(summary.json's <code>circuit</code> section, per answer digit and for all of them).")
    scores = compare.circuit_scores(cells)
    if len(scores):
        section.items.append(("Scores per cell", sweep_plots.circuit_figure(scores, names)))
        wide = scores.pivot(index="cell", columns="score", values="value").rename_axis(columns=None)
        section.items.append(("", wide.reset_index()))
    else:
        section.items.append(("", "<p class='intro'>No cell's summary.json has a <code>circuit</code> section "
                                  "(analyses made before arithlens scored circuits), so there are no scores to "
                                  "compare.</p>"))
    return section


def _agreement_section(components: pd.DataFrame, shared: pd.DataFrame, groups: dict[str, list[str]],
                       names: list[str]) -> Section:
    section = Section(
        "agreement", "Algorithm-map agreement",
        "Each cell's algorithm map (which node computes which sub-task for each answer digit), matched across "
        "cells by role, position and the positions a head reads, not by head index: H1 in one seed and H3 in "
        "another doing the same thing are one component. Share is the fraction of a group's cells that have it.")
    sentences = compare.universality_sentences(shared, groups)
    section.items.append(("What every cell shares, and what varies",
                          "".join(f"<p>{html.escape(s)}</p>" for s in sentences)))
    if len(components):
        section.items.append(("Components per cell", sweep_plots.agreement_figure(components, shared, names)))
        section.items.append(("Universality", shared))
    return section
