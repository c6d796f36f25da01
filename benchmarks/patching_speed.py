"""Speed of activation patching: the fast ablation engine against TransformerLens's patching on the bridge.

Patches, side by side in one run, what `arithlens analyze` patches on a
bundled model (default add_d5_l2): every pair kind with --pairs pairs each
(200, the analysis's default), at the nodes its shipped analysis patched (the
last layer's answer positions and the useful nodes: patching.parquet's
nodes). Prints each path's seconds, their ratio, and how far the
two tables differ (flips must agree exactly). Time it on an otherwise idle
machine.

usage: python benchmarks/patching_speed.py [--run add_d5_l2] [--pairs 200]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from arithlens.analysis.patching import DEFAULT_PAIRS, activation_patching
from arithlens.runs import ANALYSIS_DIR, load_run, resolve_run_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="add_d5_l2", help="a bundled model name or an analysed run folder")
    parser.add_argument("--pairs", type=int, default=DEFAULT_PAIRS)
    args = parser.parse_args()

    run = load_run(resolve_run_path(args.run))
    model = run.model()
    nodes = set(pd.read_parquet(run.path / ANALYSIS_DIR / "patching.parquet")["node"])
    timed: dict[bool, tuple[float, pd.DataFrame]] = {}
    for fast in (True, False):
        start = time.perf_counter()
        table = activation_patching(model, count=args.pairs, nodes=nodes, fast=fast)
        timed[fast] = (time.perf_counter() - start, table)
    (engine_seconds, engine), (bridge_seconds, bridge) = timed[True], timed[False]
    print(f"{args.run}: {len(engine)} patches of {args.pairs} pairs, {torch.get_num_threads()} threads")
    print(f"  engine {engine_seconds:.1f} s, TransformerLens on the bridge {bridge_seconds:.1f} s: "
          f"{bridge_seconds / engine_seconds:.1f}x")
    gap = (engine["patched_logit_diff"] - bridge["patched_logit_diff"]).abs().max()
    flips = (engine["flips"] - bridge["flips"]).abs().max()
    print(f"  largest difference: patched logit difference {gap:.1e}, flip rate {flips:.1e}")


if __name__ == "__main__":
    main()
