"""Wall time of the main job, `arithlens run` on the built-in defaults (3000 steps, then every analysis and the report).

usage: python benchmarks/run_time.py [--out DIR] [-- extra arithlens run flags]

Prints the total wall time and its parts (training from config.json, analysis stages
from analysis/summary.json, the rest is start-up and the report). Time it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="keep the run here (default: a temporary folder)")
    parser.add_argument("extra", nargs="*", help="extra flags for arithlens run")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="arithlens-run-")) / "run"
    command = [sys.executable, "-m", "arithlens.cli", "run", "--out", str(out), "--no-progress", *args.extra]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    total = time.perf_counter() - started
    training = json.loads((out / "config.json").read_text())["run"]["seconds"]
    analysis = json.loads((out / "analysis" / "summary.json").read_text()).get("seconds", {})
    analysis_total = sum(v for v in analysis.values() if isinstance(v, (int, float)))
    print(json.dumps({"total_s": round(total, 1), "training_s": training, "analysis_s": round(analysis_total, 1),
                      "startup_and_report_s": round(total - training - analysis_total, 1), "run_dir": str(out)}))
    print(f"arithlens run (defaults): {total / 60:.2f} min in all; training {training:.0f} s, "
          f"analysis {analysis_total:.0f} s, start-up and report {total - training - analysis_total:.0f} s")


if __name__ == "__main__":
    main()
