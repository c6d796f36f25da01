"""`patch_pair`: one clean/corrupted question pair, one node patched, three greedy answers."""

from __future__ import annotations

import pytest
import torch

from analysis_fixtures import tiny_model
from arithlens.analysis.pairs import PairPatch, patch_pair
from arithlens.errors import ArithlensError
from arithlens.inference import predict

CLEAN = "12+34="


def _with_dominant(model, node: str, scale: float = 1e4):
    """Scale one layer-0 head's (or the MLP's) output up until it alone decides every prediction it reaches."""
    weights = model.state_dict()
    with torch.no_grad():
        if node.endswith("M"):
            weights["blocks.0.mlp.out.weight"].mul_(scale)
            weights["blocks.0.mlp.out.bias"].mul_(scale)
        else:
            head, d_head = int(node.split("H")[1]), model.cfg.d_head
            weights["blocks.0.attn.o.weight"][:, head * d_head : (head + 1) * d_head].mul_(scale)
    model.load_state_dict(weights)
    return model


@pytest.mark.parametrize("node", ["P5L0H1", "P6L0M", "P0L0H3", "P7L0H0"])
def test_patching_a_run_with_itself_gives_the_clean_answer(node: str) -> None:
    model = tiny_model(n_digits=2)
    result = patch_pair(model, CLEAN, CLEAN, node)
    assert result.patched_answer == result.clean_answer == result.corrupt_answer == predict(model, [CLEAN])[0][6:]
    assert result.restores_clean


def test_a_node_without_effect_leaves_the_corrupted_answer() -> None:
    model = tiny_model(n_digits=2)
    # find a pair whose answers differ, so "unchanged" is not the clean answer by chance
    corrupt = next(q for q in (f"1{x}+{y:02d}=" for x in range(10) for y in range(100))
                   if predict(model, [q])[0][6:] != predict(model, [CLEAN])[0][6:])
    # position 0 holds the same token in both questions, and layer 0 at position 0 reads nothing else
    same_token = patch_pair(model, CLEAN, corrupt, "P0L0H2")
    assert same_token.patched_answer == same_token.corrupt_answer != same_token.clean_answer
    # a head whose output weights are zero writes nothing, whatever is patched into it
    weights = model.state_dict()
    weights["blocks.0.attn.o.weight"][:, 2 * model.cfg.d_head : 3 * model.cfg.d_head] = 0.0
    model.load_state_dict(weights)
    silenced = patch_pair(model, CLEAN, corrupt, "P6L0H2")
    assert silenced.patched_answer == silenced.corrupt_answer
    assert not silenced.restores_clean


@pytest.mark.parametrize("node", ["P7L0M", "P7L0H1"])
def test_a_dominant_node_carries_the_clean_digit_it_predicts(node: str) -> None:
    # P7 predicts A0, the last answer digit: patching a node there that decides the prediction gives
    # the corrupted run's A2, A1 and the clean run's A0
    model = _with_dominant(tiny_model(n_digits=2), node)
    pairs = ((CLEAN, f"{x:02d}+{y:02d}=") for x in range(100) for y in range(0, 100, 3))
    clean, corrupt = next((c, q) for c, q in pairs if predict(model, [c])[0][-1] != predict(model, [q])[0][-1])
    result = patch_pair(model, clean, corrupt, node)
    assert result.patched_answer == result.corrupt_answer[:-1] + result.clean_answer[-1]
    assert result.patched_answer != result.corrupt_answer


def test_tokens_or_strings_and_a_readable_repr() -> None:
    model = tiny_model(n_digits=2)
    from arithlens.task import AdditionTask

    task = AdditionTask(2)
    by_text = patch_pair(model, CLEAN, "19+34=", "P5L0H0")
    by_tokens = patch_pair(model, task.encode(CLEAN)[0], task.encode("19+34=")[:, :6], "P5L0H0")
    assert by_text == by_tokens
    assert isinstance(by_text, PairPatch)
    text = repr(by_text)
    assert "P5L0H0" in text and "12+34=" in text and "19+34=" in text and "tensor" not in text
    assert by_text.clean_question == CLEAN and by_text.corrupt_question == "19+34="
    assert by_text.clean_expected == "046" and by_text.corrupt_expected == "053"


@pytest.mark.parametrize(("node", "message"), [("P5L1H0", "layer"), ("P5L0H4", "head"), ("P9L0M", "position"),
                                                ("X5", "node name")])
def test_bad_nodes_are_named(node: str, message: str) -> None:
    with pytest.raises(ArithlensError, match=message):
        patch_pair(tiny_model(n_digits=2), CLEAN, "19+34=", node)


def test_bad_questions_are_named() -> None:
    with pytest.raises(ArithlensError, match="malformed"):
        patch_pair(tiny_model(n_digits=2), "123+456=", CLEAN, "P5L0H0")
