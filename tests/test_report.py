"""Tests for arithlens.report: the offline HTML report of a run folder, checked in real headless Chromium.

The run folder is made here: a tiny model from `build_model` saved with
safetensors, a realistic metrics table (test_plots.synthetic_metrics, built by
the training code's own metrics functions), config.json, and, for the full
report, the analysis written by the real `analyze_run` with small counts.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import arithlens
from arithlens.config import ModelConfig, RunConfig, TrainConfig
from arithlens.model import build_model
from arithlens.plots.training import training_figures
from arithlens.report import build_report
from arithlens.runs import run_config_dict, save_model, write_json
from chromium import content_share, find_chromium, load_page, read_png
from test_plots import synthetic_metrics

N_DIGITS = 3
STEPS = 150
COMMAND = "arithlens run --digits 3 --d-model 32 --d-mlp 64 --steps 150"


def make_run(path: Path, *, status: str = "complete", steps_done: int = STEPS, metrics: bool = True,
             finite: bool = False) -> Path:
    """A run folder with a tiny untrained model, synthetic metrics for `steps_done` steps and config.json."""
    config = RunConfig(ModelConfig(n_digits=N_DIGITS, d_model=32, d_mlp=64, n_heads=4),
                       TrainConfig(steps=STEPS, seed=1234, finite=200 if finite else None))
    path.mkdir(parents=True, exist_ok=True)
    save_model(build_model(config.model), path / "model.safetensors")
    if metrics:
        synthetic_metrics(N_DIGITS, steps_done, finite=finite).to_parquet(path / "metrics.parquet", index=False)
    info = {"command": COMMAND, "started": "2025-01-01T10:00:00+00:00", "device": "cpu", "seconds": 75.5,
            "steps_done": steps_done, "status": status}
    if status == "complete":
        info["finished"] = "2025-01-01T10:01:15+00:00"
    write_json(path / "config.json", run_config_dict(config, info))
    return path


def figure_specs(page: str) -> list[dict]:
    """Every figure's JSON as embedded in the report."""
    blobs = re.findall(r'<script type="application/json" id="fig-\d+-data">(.*?)</script>', page, flags=re.DOTALL)
    return [json.loads(blob) for blob in blobs]


def declared_figures(page: str) -> int:
    return int(re.search(r'<meta name="arithlens-figure-count" content="(\d+)">', page).group(1))


def notices(page: str) -> str:
    match = re.search(r"<div class='notice'>(.*?)</div>", page, flags=re.DOTALL)
    return match.group(1) if match else ""


class _Sources(HTMLParser):
    """Collects every URL a page would load: src/href/data attributes and CSS url()/@import."""

    LOADING = {"script": "src", "img": "src", "iframe": "src", "source": "src", "video": "src", "audio": "src",
               "embed": "src", "object": "data", "link": "href", "input": "src", "track": "src"}

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.in_style = False
        self.inline_scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag in self.LOADING and values.get(self.LOADING[tag]):
            self.urls.append(str(values[self.LOADING[tag]]))
        if tag == "script" and not values.get("src"):
            self.inline_scripts += 1
        if values.get("style"):
            self.urls += re.findall(r"url\(([^)]*)\)", str(values["style"]))
        self.in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self.in_style = False if tag == "style" else self.in_style

    def handle_data(self, data: str) -> None:
        if self.in_style:
            self.urls += re.findall(r"url\(([^)]*)\)", data) + re.findall(r"@import\s+['\"]?([^'\";]+)", data)


def network_sources(page: str) -> list[str]:
    parser = _Sources()
    parser.feed(page)
    return [u for u in parser.urls if re.match(r"\s*['\"]?\s*(https?:)?//", u)]


# ----- fast: partial reports ------------------------------------------------------------------


def test_report_without_analysis_says_what_is_missing(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    path = build_report(run)
    assert path == run / "report.html"
    page = path.read_text()
    assert "No analysis/ folder" in notices(page)
    assert f"arithlens analyze {run}" in notices(page)
    # every seed loss graph, and nothing else, since there is no analysis
    assert declared_figures(page) == len(training_figures(synthetic_metrics(N_DIGITS, 20))) == 22
    assert len(figure_specs(page)) == 22
    assert 'id="training"' in page and 'id="algorithm"' not in page


def test_interrupted_run_is_flagged_at_the_top(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", status="interrupted", steps_done=60)
    page = build_report(run).read_text()
    first_notice = notices(page).split("<li>")[1]
    assert "not complete" in first_notice and "60 of 150 steps" in first_notice
    assert f"arithlens train --resume {run}" in first_notice
    assert page.index("class='notice'") < page.index('<section id="run">')


def test_run_without_metrics_still_gets_a_header(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", metrics=False, status="interrupted", steps_done=0)
    page = build_report(run).read_text()
    assert "No metrics.parquet" in notices(page)
    assert declared_figures(page) == 0
    assert COMMAND in page


def test_odd_or_missing_analysis_tables_are_named_not_fatal(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    (run / "analysis").mkdir()
    pd.DataFrame({"node": ["P7L0H0"], "answer_digit": ["A3"]}).to_parquet(run / "analysis" / "node_ablation.parquet")
    pd.DataFrame(columns=["answer_digit", "start_step", "end_step"]).to_parquet(run / "analysis" / "phases.parquet")
    page = build_report(run).read_text()
    told = notices(page)
    assert "Node ablation per answer digit could not be drawn from <code>node_ablation</code>" in told
    assert "Logit lens is left out (no analysis table <code>logit_lens</code>" in told
    assert "No phase change was found" in page  # an empty table is reported as empty, not as missing
    assert declared_figures(page) == 22


def test_finite_run_shows_training_and_testing_curves(tmp_path: Path) -> None:
    page = build_report(make_run(tmp_path / "run", finite=True)).read_text()
    titles = [spec["layout"]["title"]["text"] for spec in figure_specs(page)]
    assert "(Training) Loss Curves for 3 digit addition (Finite)" in titles
    assert "(Testing) Loss Curves for 3 digit addition (Finite)" in titles
    assert "finite (200 questions)" in page


def test_header_names_config_seed_device_version_and_command(tmp_path: Path) -> None:
    page = build_report(make_run(tmp_path / "run")).read_text()
    for text in (COMMAND, "<th>data seed</th><td>1234</td>", "<th>device</th><td>cpu</td>",
                 f"<th>report by arithlens</th><td>{arithlens.__version__}</td>", "<th>run time</th><td>1m 15.5s</td>",
                 "<th>d_model</th><td>32</td>"):
        assert text in page


def test_plotly_is_inlined_once_and_nothing_comes_from_the_network(tmp_path: Path) -> None:
    page = build_report(make_run(tmp_path / "run")).read_text()
    assert network_sources(page) == []
    assert "<script src" not in page.lower() and "<link" not in page.lower()
    assert len(re.findall(r"\* plotly\.js v\d", page)) == 1
    assert '"template"' not in "".join(json.dumps(spec["layout"]) for spec in figure_specs(page))


def test_source_check_catches_remote_assets() -> None:
    page = ('<html><head><script src="https://cdn.plot.ly/plotly.min.js"></script><link href="//x.org/a.css">'
            '<style>@import "http://fonts.example/f.css"; body{background:url(https://x.org/b.png)}</style></head>'
            '<body><img src="local.png"></body></html>')
    assert len(network_sources(page)) == 4


def _png(width: int, height: int, rows: list[bytes], filters: list[int]) -> bytes:
    """Encode RGB rows with the given PNG filter per row (the decoder's inverse)."""
    def paeth(a: int, b: int, c: int) -> int:
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        return a if pa <= pb and pa <= pc else (b if pb <= pc else c)

    raw, previous = b"", bytes(width * 3)
    for row, kind in zip(rows, filters):
        out = bytearray()
        for i, value in enumerate(row):
            left = row[i - 3] if i >= 3 else 0
            up_left = previous[i - 3] if i >= 3 else 0
            predictor = [0, left, previous[i], (left + previous[i]) // 2, paeth(left, previous[i], up_left)][kind]
            out.append((value - predictor) & 0xFF)
        raw += bytes([kind]) + bytes(out)
        previous = row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_png_decoder_undoes_every_filter(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [bytes(rng.integers(0, 256, 4 * 3, dtype=np.uint8)) for _ in range(5)]
    path = tmp_path / "x.png"
    path.write_bytes(_png(4, 5, rows, [0, 1, 2, 3, 4]))
    image = read_png(path)
    assert (image.width, image.height, image.channels) == (4, 5, 3)
    assert image.rows == rows
    share, colours = content_share(image, step=1)
    assert colours > 1 and share > 0


# ----- slow: the full report, with the real analysis, in real Chromium ------------------------


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from arithlens.analysis.runner import analyze_run

    run = make_run(tmp_path_factory.mktemp("report") / "run")
    analyze_run(run, count=256, progress=False, sample_count=128, set_count=16, patch_count=8, checkpoint_count=64)
    return build_report(run)


def _decode(values: object) -> np.ndarray:
    """A plotly array as written to JSON: a list, or {"dtype", "bdata", "shape"} typed-array base64."""
    if isinstance(values, dict):
        array = np.frombuffer(base64.b64decode(values["bdata"]), dtype=np.dtype(values["dtype"]))
        shape = values.get("shape")
        return array.reshape([int(s) for s in str(shape).split(",")]) if shape else array
    return np.asarray(values, dtype=float)


@pytest.mark.slow
def test_full_report_has_every_part_and_no_missing_notice(full_report: Path) -> None:
    page = full_report.read_text()
    for section in ("run", "training", "algorithm", "circuit", "accuracy", "attention", "ablation",
                    "attribution", "patching", "pca", "dynamics"):
        assert f'<section id="{section}">' in page
    assert notices(page) == ""  # nothing left out, nothing that could not be drawn
    for heading in ("Useful positions", "Useful nodes", "Node ablation per answer digit", "Logit lens",
                    "Direct logit attribution", "Patching grids", "Head outputs by tri-state", "Phase changes",
                    "Nodes per answer digit and sub-task (confidence in brackets)", "Failures",
                    "Hypothesis tests: the published algorithm, clause by clause",
                    "Faithfulness and completeness per answer digit", "Faithfulness as nodes are added by importance"):
        assert f"<h3>{heading}</h3>" in page
    assert "<th>nines</th>" in page
    # an untrained tiny model earns no algorithm-map claim; then the page must say so instead of a table
    assert "<th>evidence</th>" in page or "No node has causal evidence for any sub-task yet" in page
    assert full_report.stat().st_size < 20 * 2**20
    assert declared_figures(page) == len(figure_specs(page)) > 22


@pytest.mark.slow
def test_signed_heatmaps_are_centred_diverging_and_use_position_names(full_report: Path) -> None:
    page = full_report.read_text()
    checked = 0
    for spec in figure_specs(page):
        layout = spec["layout"]
        for trace in spec["data"]:
            if trace.get("type") != "heatmap":
                continue
            axis = layout[trace["coloraxis"]] if trace.get("coloraxis") else trace
            if np.nanmin(_decode(trace["z"]).astype(float), initial=0) < 0:
                assert _is_rdbu(axis["colorscale"]), layout["title"]
                assert axis.get("cmid", axis.get("zmid")) == 0, layout["title"]
                checked += 1
            labels = [str(v) for v in [*trace.get("x", []), *trace.get("y", [])]]
            assert labels and not any(label.isdigit() for label in labels), layout["title"]
    assert checked >= 5
    # P7 holds "=" and predicts A3 in a 3-digit model; plotly's JSON may escape the arrow
    assert "D'0" in page and ("P7 (→A3)" in page or "P7 (\\u2192A3)" in page)


def _is_rdbu(scale: object) -> bool:
    """True for plotly's RdBu or RdBu_r, written out as [[position, colour], ...]."""
    import plotly.express as px

    colours = {str(c).replace(" ", "") for _, c in scale} if isinstance(scale, list) else set()
    return bool(colours) and colours <= {c.replace(" ", "") for c in px.colors.diverging.RdBu}


@pytest.mark.slow
def test_full_report_draws_every_figure_in_chromium(full_report: Path, tmp_path: Path) -> None:
    if find_chromium() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); cannot render the report")
    page = full_report.read_text()
    shot = tmp_path / "report.png"
    result = load_page(full_report, screenshot=shot, window=(1280, 1600), budget_ms=60000)
    assert result.errors == []
    expected = declared_figures(page)
    assert result.plotly_divs == expected
    assert result.drawn_figures == expected
    assert result.dom.count('class="figure-error"') == 0
    image = read_png(shot)
    assert (image.width, image.height) == (1280, 1600)
    share, colours = content_share(image)
    assert share > 0.05 and colours > 20  # header, tables and a plot, not a blank page


@pytest.mark.slow
def test_full_report_fetches_nothing(full_report: Path) -> None:
    assert network_sources(full_report.read_text()) == []


@pytest.mark.slow
def test_chromium_check_catches_a_figure_that_fails(tmp_path: Path) -> None:
    if find_chromium() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); cannot render the report")
    page = build_report(make_run(tmp_path / "run")).read_text()
    broken = tmp_path / "broken.html"
    # a figure whose data is damaged: the loader cannot draw it and reports it
    broken.write_text(re.sub(r'(id="fig-1-data">).*?(</script>)', r'\1{"data": [}\2', page, count=1, flags=re.DOTALL))
    result = load_page(broken, budget_ms=60000)
    assert any("fig-1" in error for error in result.errors)
    assert result.drawn_figures == declared_figures(page) - 1
