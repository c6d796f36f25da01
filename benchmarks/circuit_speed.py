"""Speed of scoring the algorithm map as a circuit (`map_circuit`), and the scores it gives.

Times `map_circuit` on a bundled model (or a run folder with an analysis) over
the first N random questions of seed 0, as `arithlens analyze` does
(2,000 by default), and prints f, completeness, CPR, CMD and the redundant
nodes per answer digit. --threads sets torch's thread count (on a busy
machine one thread is often faster than two: every op's thread barrier
waits for a preempted thread). Time it on an otherwise idle machine.

usage: python benchmarks/circuit_speed.py [--run add_d5_l1] [--questions 2000] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from arithlens.analysis.circuit import map_circuit
from arithlens.analysis.question_sets import make_question_set
from arithlens.runs import ANALYSIS_DIR, load_run
from arithlens.task import AdditionTask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="add_d5_l1", help="a bundled model name or a run folder with an analysis")
    parser.add_argument("--questions", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    run = load_run(args.run)
    model = run.model()
    the_map = pd.read_parquet(run.path / ANALYSIS_DIR / "algorithm_map.parquet")
    batch = make_question_set(AdditionTask(run.config.model.n_digits), "random", args.questions, 0).batch
    start, cpu_start = time.perf_counter(), time.process_time()
    tables = map_circuit(model, batch, the_map)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    config = run.config.model
    print(f"{args.run}: {config.n_layers} layer(s), d_model {config.d_model}; {args.questions:,} questions, "
          f"{args.threads} thread(s): {seconds:.1f} s wall ({cpu_seconds:.1f} s CPU)")
    columns = ["answer_digit", "node_count", "faithfulness", "completeness", "accuracy_full", "accuracy_kept",
               "accuracy_ablated", "cpr", "cmd", "redundant_nodes"]
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(tables["circuit"][columns].round(3).to_string(index=False))


if __name__ == "__main__":
    main()
