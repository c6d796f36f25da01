"""Copy a finished run folder into the package as a bundled model, with a model card.

usage: python scripts/bundle_model.py RUN_DIR NAME [--eval-count 100000] [--eval-seed 2024]

The bundled folder (src/arithlens/models/NAME/) holds config.json (its "run"
section gains a "card": parameter count, steps, final loss, and accuracy on
--eval-count random questions, recipe, steps, training wall seconds and thread count), model.safetensors, metrics.parquet, and the
run's analysis/ and report.html when present. Checkpoints stay behind: all
bundled weights together must stay under 64 MiB.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from arithlens.analysis.accuracy import random_accuracy
from arithlens.runs import ANALYSIS_DIR, CONFIG_FILE, METRICS_FILE, MODEL_FILE, REPORT_FILE, load_run, write_json

PACKAGE_MODELS = Path(__file__).resolve().parents[1] / "src" / "arithlens" / "models"
WEIGHT_BUDGET_BYTES = 64 * 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("name")
    parser.add_argument("--eval-count", type=int, default=100_000)
    parser.add_argument("--eval-seed", type=int, default=2024)
    args = parser.parse_args()

    run = load_run(args.run_dir)
    model = run.model()
    result = random_accuracy(model, args.eval_count, seed=args.eval_seed, progress=True)
    metrics = run.metrics
    card = {
        "params": int(sum(t.numel() for t in model.state_dict().values())),
        "recipe": run.config.train.recipe,
        "steps": int(run.info.get("steps_done", 0)),
        "train_seconds": run.info.get("seconds"),
        "threads": run.info.get("threads"),
        "final_loss": float(metrics["loss"].tail(100).mean()),
        "accuracy": round(result.accuracy, 6),
        "accuracy_questions": args.eval_count,
        "accuracy_seed": args.eval_seed,
    }
    target = PACKAGE_MODELS / args.name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in (MODEL_FILE, METRICS_FILE, REPORT_FILE):
        if (run.path / name).is_file():
            shutil.copy2(run.path / name, target / name)
    if (run.path / ANALYSIS_DIR).is_dir():
        shutil.copytree(run.path / ANALYSIS_DIR, target / ANALYSIS_DIR)
    data = json.loads((run.path / CONFIG_FILE).read_text())
    data["run"]["card"] = card
    write_json(target / CONFIG_FILE, data)

    weights = sum(p.stat().st_size for p in PACKAGE_MODELS.glob(f"*/{MODEL_FILE}"))
    print(json.dumps({"bundled": str(target), **card, "all_bundled_weights_mib": round(weights / 2**20, 2)}))
    if weights > WEIGHT_BUDGET_BYTES:
        raise SystemExit(f"bundled weights are {weights / 2**20:.1f} MiB, over the 64 MiB budget")


if __name__ == "__main__":
    main()
