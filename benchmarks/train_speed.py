"""Training speed, side by side: the seed's own implementation against arithlens's trainer.

Runs ../shared/bench/seed_baseline.py (the seed notebook's einsum model, data
generator and per-step bookkeeping) and then arithlens's Trainer on the same
default config (1 layer, d_model 512, batch 64), in one process run each, and
prints steps/s for both and their ratio. Time it on an otherwise idle machine:
a second busy process on 2 cores cuts every figure several-fold.

usage: python benchmarks/train_speed.py [--steps 300] [--seed-script PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_SEED_SCRIPT = Path(__file__).resolve().parents[2] / "shared" / "bench" / "seed_baseline.py"


def time_seed(script: Path, steps: int) -> dict:
    out = subprocess.run([sys.executable, str(script), "--steps", str(steps)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_arithlens(steps: int) -> dict:
    from arithlens.config import RunConfig, TrainConfig
    from arithlens.training import Trainer

    config = RunConfig(train=TrainConfig(steps=steps, checkpoint_every=10**9))
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(config, Path(folder), {})
        started = time.perf_counter()
        while trainer.step < steps:
            trainer.train_step()
        loss = float(trainer.history[max(0, steps - 100) : steps, 1].mean())  # includes the final host sync
        seconds = time.perf_counter() - started
    return {"impl": "arithlens", "steps": steps, "seconds": round(seconds, 2),
            "steps_per_s": round(steps / seconds, 2), "final_loss": loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed-script", type=Path, default=DEFAULT_SEED_SCRIPT)
    args = parser.parse_args()
    seed = time_seed(args.seed_script, args.steps)
    ours = time_arithlens(args.steps)
    print(json.dumps(seed))
    print(json.dumps(ours))
    ratio = ours["steps_per_s"] / seed["steps_per_s"]
    print(f"seed {seed['steps_per_s']:.2f} steps/s | arithlens {ours['steps_per_s']:.2f} steps/s | ratio {ratio:.2f}x")


if __name__ == "__main__":
    main()
