"""Path-patched edges (`arithlens.analysis.edges`) against a brute-force path patching on the bridge with hooks."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import pandas as pd
import pytest
import torch

from arithlens.analysis.circuit import logit_margins
from arithlens.analysis.edges import EDGE_COLUMNS, path_patching_edges, top_edges
from arithlens.analysis.naming import parse_node_name
from arithlens.analysis.question_sets import make_question_set
from arithlens.analysis.reference import default_reference
from arithlens.config import ModelConfig
from arithlens.errors import ArithlensError
from arithlens.model import build_model
from arithlens.task import AdditionBatch, task_for

Site = tuple[str, tuple]


def tiny(n_layers: int = 2, normalization: str | None = "LN"):
    return build_model(ModelConfig(n_digits=2, n_layers=n_layers, d_model=32, n_heads=2, d_mlp=64,
                                   normalization=normalization))


def questions(model, count: int = 64, seed: int = 3) -> AdditionBatch:
    return make_question_set(task_for(model.arithlens_config), "random", count, seed).batch


def site(name: str) -> Site:
    """A node's hook name and its index into that hook's activation."""
    position, layer, head = parse_node_name(name)
    if head is None:
        return f"blocks.{layer}.hook_mlp_out", (slice(None), position)
    return f"blocks.{layer}.attn.hook_z", (slice(None), position, head)  # [batch, pos, head, d_head]


@contextmanager
def one_thread() -> Iterator[None]:
    """The bridge passes on one thread: on a busy 2-core machine these tiny ops took 20x as long on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class BruteForce:
    """Path patching written out with bridge hooks, independent of the module's engine.

    Step 1: a forward pass in which every head and MLP of layers <= R's is frozen at its clean value, except S,
    which takes its mean over the reference; R's output there is recorded (its input then differs from the clean
    one by exactly S's swap, on S's direct path). Step 2: a clean forward pass with only R's output overwritten.
    """

    def __init__(self, model, batch: AdditionBatch) -> None:
        self.model, self.tokens = model, batch.tokens
        config = model.arithlens_config
        self.n_layers, n = config.n_layers, config.n_digits
        self.rows = slice(2 * n + 1, self.tokens.shape[1] - 1)  # the answer-predicting positions
        self.answers = self.tokens[:, 2 * n + 2 :]
        self.allowed = task_for(config).answer_allowed()
        names = [f"blocks.{layer}.{hook}" for layer in range(self.n_layers) for hook in ("attn.hook_z", "hook_mlp_out")]
        with torch.no_grad(), one_thread():
            logits, self.clean = self.model.run_with_cache(self.tokens, names_filter=lambda name: name in names)
            _, self.reference = self.model.run_with_cache(default_reference(n).batch.tokens,
                                                          names_filter=lambda name: name in names)
        self.clean_margin = self.margins(logits)

    def margins(self, logits: torch.Tensor) -> torch.Tensor:
        return logit_margins(logits[:, self.rows], self.answers, self.allowed)  # [batch, rows]

    def mean(self, node: str) -> torch.Tensor:
        name, index = site(node)
        return self.reference[name][index].mean(0)

    def written(self, node: str, value: torch.Tensor) -> torch.Tensor:
        """Mean margin change per answer row [rows] when only `node`'s output is overwritten with `value`."""
        name, index = site(node)

        def write(activation: torch.Tensor, hook: object) -> torch.Tensor:
            activation = activation.clone()
            activation[index] = value
            return activation

        with torch.no_grad(), one_thread():
            logits = self.model.run_with_hooks(self.tokens, fwd_hooks=[(name, write)])
        return (self.margins(logits) - self.clean_margin).mean(0)

    def edge(self, sender: str, receiver: str) -> torch.Tensor:
        s_name, s_index = site(sender)
        r_name, r_index = site(receiver)
        layers = range(parse_node_name(receiver)[1] + 1)
        recorded: dict[str, torch.Tensor] = {}

        def freeze(name: str):
            def hook(activation: torch.Tensor, hook: object) -> torch.Tensor:
                if name == r_name:
                    recorded["r"] = activation[r_index].clone()  # before this layer is frozen
                frozen = self.clean[name].clone()
                if name == s_name:
                    frozen[s_index] = self.mean(sender)
                return frozen
            return hook

        hooks = [(name, freeze(name)) for layer in layers for name in (f"blocks.{layer}.attn.hook_z",
                                                                         f"blocks.{layer}.hook_mlp_out")]
        with torch.no_grad(), one_thread():
            self.model.run_with_hooks(self.tokens, fwd_hooks=hooks)
        return self.written(receiver, recorded["r"])

    def receiver(self, receiver: str) -> torch.Tensor:
        return self.written(receiver, self.mean(receiver))


def check_against_brute_force(model, receivers: list[str], senders: list[str], expected_rows: int) -> None:
    batch = questions(model)
    # chunks of 24: the sums run over several chunks, one per worker where there are two threads
    edges = path_patching_edges(model, batch, receivers=receivers, senders=senders, chunk_size=24)
    assert list(edges.columns) == EDGE_COLUMNS and len(edges) == expected_rows
    brute = BruteForce(model, batch)
    labels = task_for(model.arithlens_config).answer_token_names()
    edge_effects, receiver_effects = {}, {}  # every digit of a pair or receiver from one brute-force run
    for row in edges.itertuples(index=False):
        r = labels.index(row.answer_digit)
        if (row.sender, row.receiver) not in edge_effects:
            edge_effects[row.sender, row.receiver] = brute.edge(row.sender, row.receiver)
        if row.receiver not in receiver_effects:
            receiver_effects[row.receiver] = brute.receiver(row.receiver)
        assert row.effect == pytest.approx(float(edge_effects[row.sender, row.receiver][r]), abs=1e-5), row
        assert row.receiver_effect == pytest.approx(float(receiver_effects[row.receiver][r]), abs=1e-5), row
        assert row.effect_abs == abs(row.effect) and row.questions == len(batch)
        assert row.share == pytest.approx(row.effect / row.receiver_effect) if row.receiver_effect else math.isnan(row.share)
    assert edges["effect"].abs().max() > 1e-4  # the edges tested do something, so agreement means something


@pytest.mark.parametrize("normalization", ["LN", None])
def test_edges_match_brute_force_path_patching(normalization: str | None) -> None:
    model = tiny(normalization=normalization)
    # heads from earlier positions and their own (query too), an MLP from its own position; digits A2 A1 A0 at P5-P7
    receivers = ["P6L1H0", "P5L1H1", "P7L1M", "P6L1M"]
    senders = ["P6L0H1", "P6L0M", "P3L0M", "P2L0H0", "P5L0H0", "P7L0M"]
    # P6L1H0: P6L0H1 P6L0M P3L0M P2L0H0 P5L0H0; P5L1H1: P3L0M P2L0H0 P5L0H0; P7L1M: P7L0M; P6L1M: P6L0H1 P6L0M
    check_against_brute_force(model, receivers, senders, expected_rows=11)


def test_three_layers_skip_and_middle_receivers_match_brute_force() -> None:
    model = tiny(n_layers=3)
    # P5L1H0 (below the last layer) is scored on A2, A1 and A0; P6L2M from layer 0 skips layer 1, which stays clean
    receivers = ["P5L1H0", "P6L2M", "P7L2H1"]
    senders = ["P5L0M", "P1L0H1", "P6L0H0", "P6L1M", "P4L1H0"]
    # P5L1H0: P5L0M P1L0H1 x 3 digits; P6L2M: P6L0H0 P6L1M; P7L2H1: all five
    check_against_brute_force(model, receivers, senders, expected_rows=6 + 2 + 5)


def test_defaults_hold_only_edges_and_each_receivers_own_digit() -> None:
    model = tiny()
    edges = path_patching_edges(model, questions(model, 32))
    # head receivers P5-P7 x 2 heads, each from every layer-0 node at or before it (3 per position); MLPs from their own
    assert len(edges) == sum((p + 1) * 3 * 2 for p in (5, 6, 7)) + 3 * 3
    assert (edges["sender_layer"] == 0).all() and (edges["receiver_layer"] == 1).all()
    assert (edges["sender_position"] <= edges["receiver_position"]).all()
    mlp = edges["receiver"].str.endswith("M")
    assert (edges.loc[mlp, "sender_position"] == edges.loc[mlp, "receiver_position"]).all()
    predicted = {5: "A2", 6: "A1", 7: "A0"}
    assert (edges["answer_digit"] == edges["receiver_position"].map(predicted)).all()
    assert not edges.duplicated(["sender", "receiver", "answer_digit"]).any()
    only = path_patching_edges(model, questions(model, 32), answer_digits=[0])
    assert set(only["answer_digit"]) == {"A0"} and len(only) == 8 * 3 * 2 + 3


def test_pairs_that_are_not_edges_are_absent() -> None:
    model = tiny()
    batch = questions(model, 16)
    # same layer, a later position, an MLP fed from another position, a layer-0 receiver, a P1 head (no digit)
    for receivers, senders in [(["P6L1H0"], ["P6L1H1", "P6L1M"]), (["P6L1H0"], ["P7L0H0", "P7L0M"]),
                               (["P6L1M"], ["P5L0H0", "P2L0M"]), (["P6L0H0"], ["P6L0H1", "P3L0M"]),
                               (["P1L1H0"], ["P1L0M"])]:
        edges = path_patching_edges(model, batch, receivers=receivers, senders=senders)
        assert edges.empty and list(edges.columns) == EDGE_COLUMNS
    mixed = path_patching_edges(model, batch, receivers=["P6L1H0"], senders=["P7L0H0", "P6L1H1", "P4L0M"])
    assert list(mixed["sender"]) == ["P4L0M"]


def test_one_layer_model_has_no_edges() -> None:
    model = tiny(n_layers=1)
    edges = path_patching_edges(model, questions(model, 16))
    assert edges.empty and list(edges.columns) == EDGE_COLUMNS


@pytest.mark.parametrize("argument", [{"receivers": ["P6L1X"]}, {"receivers": ["P6L2H0"]}, {"receivers": ["P6L1H2"]},
                                      {"senders": ["P99L0M"]}, {"senders": ["bad"]}, {"answer_digits": [3]}])
def test_bad_nodes_and_digits_are_refused(argument: dict) -> None:
    model = tiny()
    with pytest.raises(ArithlensError) as error:
        path_patching_edges(model, questions(model, 8), **argument)
    assert "\n" not in str(error.value)


def test_top_edges_orders_by_absolute_effect() -> None:
    edges = pd.DataFrame({"sender": list("abcd"), "effect": [0.1, -0.5, 0.3, -0.05]})
    assert list(top_edges(edges, k=3)["sender"]) == ["b", "c", "a"]
    assert list(top_edges(edges)["sender"]) == ["b", "c", "a", "d"]
    repeated = pd.concat([edges, edges.assign(sender=list("efgh"), effect=[0.6, 0.0, 0.0, 0.0])])  # labels 0-3 twice
    assert list(top_edges(repeated, k=2)["sender"]) == ["e", "b"]
    with pytest.raises(ArithlensError):
        top_edges(edges, k=-1)
    with pytest.raises(ArithlensError):
        top_edges(pd.DataFrame({"x": [1]}))
