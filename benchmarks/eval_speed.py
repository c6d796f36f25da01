"""Evaluation speed against this CPU's float32 matmul limit, in one run.

Measures the limit (the best of a few large square sgemms, as GFLOP/s), counts
the matmul FLOPs `AnswerForward` spends per question
(`arithlens.flops.answer_forward_flops`), then times `random_accuracy` on a
bundled model and prints questions/s, the GFLOP/s that makes and its share of
the limit: human lines, then one JSON line. Time it on an otherwise idle
machine: a second busy process on 2 cores cuts every figure, and the sgemm
limit and the evaluation are not cut alike.

usage: python benchmarks/eval_speed.py [--model add_d5_l2] [--count 100000] [--seed 0] [--size 2048]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def matmul_limit(size: int, repeats: int) -> float:
    """GFLOP/s of the fastest of `repeats` float32 [size, size] @ [size, size] products."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)  # warm-up: thread pool start, kernel selection
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def time_eval(model_name: str, count: int, seed: int) -> dict[str, str | int | float]:
    from arithlens.analysis.accuracy import random_accuracy
    from arithlens.scoring import default_chunk_size
    from arithlens.flops import answer_forward_flops
    from arithlens.model import model_config_of
    from arithlens.runs import load_model

    model = load_model(model_name)
    config = model_config_of(model)
    random_accuracy(model, min(count, 2000), seed=seed + 1)  # warm-up, other questions
    started = time.perf_counter()
    result = random_accuracy(model, count, seed=seed)
    seconds = time.perf_counter() - started
    flops = answer_forward_flops(config)
    return {"model": model_name, "questions": count, "seconds": round(seconds, 3),
            "questions_per_s": round(count / seconds, 1), "flops_per_question": flops,
            "gflops_per_s": round(count * flops / seconds / 1e9, 2), "accuracy": result.accuracy,
            "chunk_size": default_chunk_size(config, torch.device("cpu")), "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="add_d5_l2", help="a bundled model name, run folder or .safetensors file")
    parser.add_argument("--count", type=int, default=100_000, help="random questions to time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=2048, help="side of the square sgemm that measures the limit")
    parser.add_argument("--repeats", type=int, default=5, help="sgemms timed; the best counts")
    args = parser.parse_args()
    limit = matmul_limit(args.size, args.repeats)
    run = time_eval(args.model, args.count, args.seed)
    share = run["gflops_per_s"] / limit
    print(f"float32 matmul limit: {limit:.1f} GFLOP/s (best of {args.repeats} {args.size}^3 sgemms, "
          f"{run['threads']} threads)")
    print(f"{args.model}: {run['flops_per_question'] / 1e6:.2f} MFLOP per question (answer-only forward), "
          f"chunks of {run['chunk_size']}")
    print(f"evaluation: {run['questions']:,} questions in {run['seconds']:.1f} s = {run['questions_per_s']:,.0f} "
          f"questions/s = {run['gflops_per_s']:.1f} GFLOP/s = {100 * share:.0f}% of the limit "
          f"(1M questions in {1e6 / run['questions_per_s'] / 60:.1f} min)")
    print(json.dumps({**run, "matmul_limit_gflops_per_s": round(limit, 2), "share_of_limit": round(share, 4)}))


if __name__ == "__main__":
    main()
