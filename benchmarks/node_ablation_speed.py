"""Speed of mean-ablating every node (each head's hook_z and each MLP, at every position).

Times `node_ablation(fast=True)` on the default 1-layer model (d_model 512,
4 heads, d_mlp 2048, 5 digits; 90 nodes), untrained unless a run folder is
given, over 10k random questions. With --brute N it also times the brute-force
path (one full hooked bridge forward per node) on the first N questions,
checks both paths agree there, and prints the ratio per question. Time it on
an otherwise idle machine: other busy processes on 2 cores slow every figure.

usage: python benchmarks/node_ablation_speed.py [--questions 10000] [--run RUN_DIR] [--brute 500]
"""

from __future__ import annotations

import argparse
import time

import torch

from arithlens.analysis.ablation import node_ablation
from arithlens.config import ModelConfig
from arithlens.model import build_model, model_config_of
from arithlens.task import AdditionTask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=10_000)
    parser.add_argument("--run", help="a run folder or bundled model name (default: an untrained default model)")
    parser.add_argument("--brute", type=int, default=0, help="also time brute force on this many questions")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.run:
        from arithlens.runs import load_model

        model = load_model(args.run)
    else:
        model = build_model(ModelConfig())
    config = model_config_of(model)
    batch = AdditionTask(config.n_digits).generate(args.questions, torch.Generator().manual_seed(args.seed))
    print(f"model: {config.n_layers} layer(s), d_model {config.d_model}, {config.n_heads} heads, d_mlp {config.d_mlp}, "
          f"{config.n_digits} digits; {torch.get_num_threads()} threads")

    start, cpu_start = time.perf_counter(), time.process_time()
    fast = node_ablation(model, batch)
    fast_seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    nodes = fast["node"].nunique()
    print(f"fast: {nodes} nodes x {len(batch):,} questions in {fast_seconds:.1f} s wall ({cpu_seconds:.1f} s CPU)")

    if args.brute:
        subset = batch.select(slice(0, args.brute))
        start = time.perf_counter()
        brute = node_ablation(model, subset, fast=False)
        brute_seconds = time.perf_counter() - start
        check = node_ablation(model, subset)
        gap = float((check["loss"] - brute["loss"]).abs().max())
        per_question = (brute_seconds / len(subset)) / (fast_seconds / len(batch))
        print(f"brute force: {nodes} nodes x {len(subset):,} questions in {brute_seconds:.1f} s "
              f"(~{brute_seconds * len(batch) / len(subset):.0f} s for {len(batch):,}); "
              f"fast is {per_question:.0f}x faster per question; max loss gap {gap:.1e}")


if __name__ == "__main__":
    main()
