"""Wall time of `arithlens analyze` on a bundled model, stage by stage, against a time budget.

Runs `analyze_run` on a bundled model (default add_d5_l2) with --count questions (default 10,000,
the CLI's default) into a temporary folder, and prints each stage's seconds (from summary.json), the
whole analysis's wall time and its ratio to --budget (default 180 s, issue 13's goal for add_d5_l2 at
10K). A bundled model ships without its checkpoints, so its "checkpoints" stage has nothing to compare;
--run RUN_DIR times a run folder that still has them. Time it on an otherwise idle machine.

usage: python benchmarks/analyze_time.py [--run add_d5_l2] [--count 10000] [--budget 180] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from arithlens.analysis.runner import SUMMARY_FILE, analyze_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="add_d5_l2", help="a bundled model name or a run folder")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--budget", type=float, default=180.0, help="seconds the whole analysis may take")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "analysis"
        started = time.perf_counter()
        analyze_run(args.run, out=out, count=args.count, progress=False)
        wall = time.perf_counter() - started
        seconds = json.loads((out / SUMMARY_FILE).read_text())["seconds"]
    for stage, value in sorted(seconds.items(), key=lambda item: -item[1]):
        print(f"{stage:>24}  {value:8.1f} s")
    print(f"analyze {args.run} --count {args.count:,} on {args.threads} thread(s): {wall:.1f} s, "
          f"{wall / args.budget:.2f} of the {args.budget:.0f} s budget "
          f"({'within' if wall <= args.budget else 'over'} it)")


if __name__ == "__main__":
    main()
