"""Time to accuracy, side by side: the seed recipe against the fast recipe on one architecture.

Both recipes train the same model (same seed, same machine, one process) and
are scored on the same held-out set of random questions (10K by default, drawn
from the held-out seed, never trained on) every `--eval-every` steps. For each
recipe it reports the first evaluated step, and the training wall seconds up to
it, at which held-out accuracy reaches each target (90%, 99%, and 99.99% for
models of 2+ layers). Evaluation time is left out of the wall seconds and
reported apart. A target not reached within the run's steps is `null`.

It prints one line per recipe and then one JSON line with everything. Time it
on an otherwise idle machine: a second busy process on 2 cores slows every figure.

usage: python benchmarks/time_to_accuracy.py [--layers 1] [--fast-steps 2000] [--seed-steps 3000]
       python benchmarks/time_to_accuracy.py --layers 2 --d-model 256 --heads 4 --d-mlp 1024 --norm LN \\
           --fast-steps 6000 --seed-steps 6000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from arithlens.config import ModelConfig, RunConfig, TrainConfig
from arithlens.training import Trainer


def time_recipe(model: ModelConfig, train: TrainConfig, targets: list[float]) -> dict:
    """Train until every target is reached or the steps run out; the step and seconds of each first hit."""
    reached: dict[str, dict | None] = {f"{t:g}": None for t in targets}
    train_seconds = eval_seconds = 0.0
    accuracy = 0.0
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(RunConfig(model, train), Path(folder), {})
        while trainer.step < train.steps and any(v is None for v in reached.values()):
            started = time.perf_counter()
            trainer.train_step()
            if trainer.heldout_due():
                float(trainer.history[trainer.step - 1, 1])  # wait for the step itself before the clock stops
                train_seconds += time.perf_counter() - started
                started = time.perf_counter()
                accuracy = trainer.evaluate_heldout()
                eval_seconds += time.perf_counter() - started
                for target in targets:
                    if reached[f"{target:g}"] is None and accuracy >= target:
                        reached[f"{target:g}"] = {"step": trainer.step, "seconds": round(train_seconds, 1)}
            else:
                train_seconds += time.perf_counter() - started
        steps_done = trainer.step
        loss = float(trainer.history[max(0, steps_done - 100) : steps_done, 1].mean())
    return {"recipe": train.recipe, "train": train.to_dict(), "steps_done": steps_done,
            "train_seconds": round(train_seconds, 1), "eval_seconds": round(eval_seconds, 1),
            "final_heldout_accuracy": accuracy, "final_loss": loss, "reached": reached}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", type=int, default=5)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--d-mlp", type=int, default=2048)
    parser.add_argument("--norm", default=None)
    parser.add_argument("--enrich", type=float, default=None,
                        help="Sum9 enrichment for both recipes (default: each recipe's own: 0 seed, 0.4 fast).")
    parser.add_argument("--lr", type=float, default=None, help="The seed recipe's lr (default 1e-4, the seed's).")
    parser.add_argument("--fast-steps", type=int, default=2000, help="The fast recipe's run length (its schedule).")
    parser.add_argument("--seed-steps", type=int, default=3000, help="At most this many seed-recipe steps.")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--eval-count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=129000)
    args = parser.parse_args()

    model = ModelConfig(n_digits=args.digits, n_layers=args.layers, d_model=args.d_model, n_heads=args.heads,
                        d_mlp=args.d_mlp, normalization=args.norm, seed=args.seed)
    targets = [0.9, 0.99] + ([0.9999] if args.layers >= 2 else [])
    common = dict(seed=args.seed, enrich_fraction=args.enrich, eval_every=args.eval_every,
                  eval_count=args.eval_count, checkpoint_every=10**9)
    results = []
    for recipe, steps, extra in (("seed", args.seed_steps, {"lr": args.lr}), ("fast", args.fast_steps, {})):
        train = TrainConfig.from_recipe(recipe, steps=steps, **common, **extra)
        result = time_recipe(model, train, targets)
        results.append(result)
        hits = ", ".join(f"{float(t):.2%}: " + (f"step {v['step']} ({v['seconds']} s)" if v else f"not in {steps} steps")
                         for t, v in result["reached"].items())
        print(f"{recipe:>5}: {hits}; held-out {result['final_heldout_accuracy']:.4%} after {result['steps_done']} "
              f"steps, {result['train_seconds']} s training + {result['eval_seconds']} s evaluation", flush=True)
    ratios = {}
    for target in results[0]["reached"]:
        seed_hit, fast_hit = results[0]["reached"][target], results[1]["reached"][target]
        if fast_hit:
            ratios[target] = {
                "steps": round(seed_hit["step"] / fast_hit["step"], 2) if seed_hit else f">{args.seed_steps / fast_hit['step']:.1f}",
                "seconds": round(seed_hit["seconds"] / fast_hit["seconds"], 2) if seed_hit else None,
            }
    print(json.dumps({"benchmark": "time_to_accuracy", "model": model.to_dict(), "threads": torch.get_num_threads(),
                      "results": results, "ratio_seed_over_fast": ratios}))


if __name__ == "__main__":
    main()
