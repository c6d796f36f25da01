"""Configs: seed defaults, validation messages and JSON round trips."""

from __future__ import annotations

import pytest

from arithlens.config import ModelConfig, RunConfig, TrainConfig
from arithlens.errors import ConfigError


def test_defaults_are_the_seeds() -> None:
    model = ModelConfig()
    assert (model.n_layers, model.d_model, model.n_heads, model.d_head, model.d_mlp) == (1, 512, 4, 128, 2048)
    assert model.act_fn == "relu" and model.normalization is None and model.seed == 129000
    assert model.n_ctx == 18 and model.d_vocab == 12
    train = TrainConfig()
    assert (train.batch_size, train.lr, train.weight_decay, train.betas, train.steps) == (64, 1e-4, 0.1, (0.9, 0.98), 3000)
    assert train.finite is None and train.seed == 129000
    assert [train.lr_multiplier(s) for s in (0, 5, 10, 50)] == [0.0, 0.5, 1.0, 1.0]


def test_round_trip() -> None:
    config = RunConfig(ModelConfig(n_layers=2, normalization="LN"), TrainConfig(steps=10, finite=100))
    assert RunConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_digits": 0}, "n_digits"),
        ({"n_digits": -3}, "n_digits"),
        ({"d_model": 30, "n_heads": 4}, "divisible"),
        ({"n_heads": 0}, "n_heads"),
        ({"act_fn": "tanh"}, "act_fn"),
        ({"normalization": "batch"}, "normalization"),
    ],
)
def test_bad_model_config(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 0}, "steps"),
        ({"steps": -5}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0}, "lr"),
        ({"finite": 0}, "finite"),
        ({"enrich_fraction": 1.5}, "enrich_fraction"),
        ({"checkpoint_every": 0}, "checkpoint_every"),
    ],
)
def test_bad_train_config(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)


def test_unknown_field_in_file() -> None:
    with pytest.raises(ConfigError, match="unknown model config field"):
        RunConfig.from_dict({"model": {"n_digits": 5, "wings": 2}})
