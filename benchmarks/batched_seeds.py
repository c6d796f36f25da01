"""Batched seeds: K same-shape models trained in one process with stacked weights, against K runs one after another.

The question (issue 15): would a sweep over seeds train faster by stacking the
K models' weights and running one vmapped step (`torch.func.vmap` over
arithlens's answer-only forward) than by training them one after another? Both
sides do the same work per model and step: a fresh batch from the model's own
data stream, the answer-only forward, the float64 answer loss, backward,
per-model gradient clipping, fused AdamW and the fast recipe's lr schedule; the
per-step metrics bookkeeping of the real Trainer is left out of both. AdamW is
elementwise, so one optimizer over stacked weights is K optimizers; clipping is
done per model. The script also checks that the two give the same weights (up
to float rounding: the summation order differs).

Run it on an otherwise idle machine (it uses torch's default thread count).

usage: python benchmarks/batched_seeds.py [--k 4] [--steps 100] [--configs tiny,medium]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace

import torch
from torch.func import vmap

from arithlens.config import ModelConfig, TrainConfig
from arithlens.metrics import token_losses
from arithlens.model import AnswerForward, build_model
from arithlens.task import AdditionTask

CONFIGS = {
    "tiny": ModelConfig(n_digits=3, n_layers=1, d_model=32, n_heads=4, d_mlp=128),
    "medium": ModelConfig(n_digits=5, n_layers=1, d_model=128, n_heads=4, d_mlp=512),
    "seed": ModelConfig(),  # the seed notebook's 1-layer, d_model 512 model
}


def _batches(task: AdditionTask, train: TrainConfig, generators: list[torch.Generator]) -> list[torch.Tensor]:
    return [task.generate(train.batch_size, g, enrich_fraction=train.enrich_fraction,
                          enrich_sum9_prob=train.enrich_sum9_prob).tokens for g in generators]


def sequential(model_config: ModelConfig, train: TrainConfig, seeds: list[int]) -> tuple[float, list[dict]]:
    """K models trained one after another; (seconds, final weights per model)."""
    task = AdditionTask(model_config.n_digits)
    n = model_config.n_digits
    weights = []
    started = time.perf_counter()
    for seed in seeds:
        model = build_model(replace(model_config, seed=seed))
        forward = AnswerForward(model)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay, betas=train.betas,
                                      fused=True)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, train.lr_multiplier)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(train.steps):
            [tokens] = _batches(task, train, [generator])
            token_losses(forward(tokens), tokens[:, 2 * n + 2 :]).mean().backward()
            torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
        weights.append({k: v.detach().clone() for k, v in forward.params.items()})
    return time.perf_counter() - started, weights


def batched(model_config: ModelConfig, train: TrainConfig, seeds: list[int]) -> tuple[float, list[dict]]:
    """K models as one set of stacked weights [K, ...], one vmapped step for all; (seconds, weights per model)."""
    task = AdditionTask(model_config.n_digits)
    n = model_config.n_digits
    started = time.perf_counter()
    models = [build_model(replace(model_config, seed=seed)) for seed in seeds]
    forwards = [AnswerForward(m) for m in models]
    names = [k for k, v in forwards[0].params.items() if v.requires_grad]
    stacked = {k: torch.stack([f.params[k].detach() for f in forwards]).requires_grad_() for k in names}
    template = forwards[0]

    def loss(params: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
        forward = copy.copy(template)
        forward.params = {**template.params, **params}
        return token_losses(forward(tokens), tokens[:, 2 * n + 2 :]).mean()

    all_losses = vmap(loss)
    optimizer = torch.optim.AdamW(list(stacked.values()), lr=train.lr, weight_decay=train.weight_decay,
                                  betas=train.betas, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, train.lr_multiplier)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    for _ in range(train.steps):
        tokens = torch.stack(_batches(task, train, generators))  # [K, batch, 3n+3]
        all_losses(stacked, tokens).sum().backward()  # the models are independent: each gets its own gradient
        norms = torch.stack([p.grad.flatten(1).pow(2).sum(1) for p in stacked.values()]).sum(0).sqrt()  # [K]
        scale = (train.grad_clip / (norms + 1e-6)).clamp(max=1.0)  # clip_grad_norm_'s rule, per model
        for p in stacked.values():
            p.grad.mul_(scale.view(-1, *[1] * (p.dim() - 1)))
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    return seconds, [{k: v[i].detach() for k, v in stacked.items()} for i in range(len(seeds))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--configs", default="tiny,medium")
    args = parser.parse_args()
    seeds = list(range(1, args.k + 1))
    for name in args.configs.split(","):
        model_config = CONFIGS[name]
        train = TrainConfig.from_recipe("fast", steps=args.steps)
        one_by_one, expected = sequential(model_config, train, seeds)
        together, got = batched(model_config, train, seeds)
        drift = max(float((a[k] - b[k]).abs().max()) for a, b in zip(expected, got) for k in b)
        print(json.dumps({"config": name, "model": model_config.to_dict(), "k": args.k, "steps": args.steps,
                          "threads": torch.get_num_threads(), "sequential_s": round(one_by_one, 2),
                          "batched_s": round(together, 2), "speedup": round(one_by_one / together, 2),
                          "max_weight_difference": drift}))
        print(f"{name}: {args.k} models x {args.steps} steps: one after another {one_by_one:.2f} s, "
              f"batched {together:.2f} s: batched is {one_by_one / together:.2f}x as fast "
              f"(weights agree to {drift:.1e})")


if __name__ == "__main__":
    main()
