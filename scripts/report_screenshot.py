"""Screenshot a run's report for the README: python scripts/report_screenshot.py RUN_DIR docs/report.png

Builds RUN_DIR/report.html first unless it exists (or with --rebuild), then
opens it in headless Chromium through tests/chromium.py, the same path the
report test uses, and refuses to write a picture of a page whose figures did
not all draw or that logged an error.

Options: --rebuild, --width 1280, --height 1600, --section training (show the
header, then the page from that section on: run, training, algorithm,
accuracy, attention, ablation, attribution, patching, pca, dynamics; the
sections before it are hidden in the copy that is photographed, because
headless Chromium cannot photograph a scrolled page).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from chromium import content_share, find_chromium, load_page, read_png  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder")
    parser.add_argument("out", type=Path, help="where to write the PNG, e.g. docs/report.png")
    parser.add_argument("--rebuild", action="store_true", help="rebuild report.html even if it exists")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1600)
    parser.add_argument("--section", default=None, help="section id to start the picture at, e.g. training")
    args = parser.parse_args(argv)

    if find_chromium() is None:
        print("error: no chromium found (Debian: apt-get install chromium, or set ARITHLENS_CHROMIUM)", file=sys.stderr)
        return 2
    report = args.run_dir / "report.html"
    if args.rebuild or not report.is_file():
        from arithlens.report import build_report

        report = build_report(args.run_dir)
    page = report.read_text(encoding="utf-8")
    expected = int(re.search(r'<meta name="arithlens-figure-count" content="(\d+)">', page).group(1))

    with tempfile.TemporaryDirectory() as tmp:
        shown = Path(tmp) / "report.html"
        if args.section:
            if f'<section id="{args.section}">' not in page:
                print(f"error: the report has no section {args.section!r}", file=sys.stderr)
                return 2
            hide = f"main > section#{args.section} ~ section, main > section#{args.section} {{display: block}}"
            style = f"<style>main > section, main > .notice {{display: none}} {hide}</style>"
            page = page.replace("</head>", style + "</head>", 1)
        shown.write_text(page, encoding="utf-8")
        shot = Path(tmp) / "shot.png"
        result = load_page(shown, screenshot=shot, window=(args.width, args.height), budget_ms=60000)
        if result.errors or result.drawn_figures != expected:
            print(f"error: {result.drawn_figures} of {expected} figures drawn; page errors: {result.errors}",
                  file=sys.stderr)
            return 1
        share, colours = content_share(read_png(shot))
        if share < 0.05 or colours < 20:
            print(f"error: the screenshot looks blank ({share:.1%} non-background, {colours} colours)", file=sys.stderr)
            return 1
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, args.out)
    print(f"{args.out}: {args.width}x{args.height}, {expected} figures drawn, {share:.0%} of it non-background")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
