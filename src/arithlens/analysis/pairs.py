"""`patch_pair`: patch one node between two questions and read the model's three greedy answers.

The TransformerLens convention (the one `transformer_lens.patching` and
`arithlens.analysis.patching` follow): the model runs on the *corrupted*
question, and the node's activation from the *clean* run is written in. If the
patched answer becomes the clean answer, the node carries what distinguishes
the two questions.

A node is a head or an MLP at one position (`P14L0H2`, `P14L0M`). A head is
patched at `blocks.{L}.attn.hook_z` (its own slice, before W_O), an MLP at
`blocks.{L}.hook_mlp_out`. The clean activation comes from one forward over the
clean question followed by the model's own clean answer, so positions in the
answer hold what the clean run computed there. Answers are generated greedily
(argmax over the digits 0-9, one digit at a time) with the patch in place at
every step, so a patch at the position predicting A_d can only change A_d and,
through the fed-back digit, the digits after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge import TransformerBridge

from arithlens.analysis.naming import node_name, parse_node_name
from arithlens.errors import ArithlensError
from arithlens.inference import greedy_answers
from arithlens.model import model_config_of
from arithlens.task import EQUALS_TOKEN, ArithmeticTask, task_for


@dataclass(frozen=True)
class PairPatch:
    """The three greedy answers of one patch; answers are the n+1 digits An .. A0 as a string."""

    node: str
    clean_question: str
    corrupt_question: str
    clean_answer: str  # the model's answer to the clean question
    corrupt_answer: str  # its answer to the corrupted question
    patched_answer: str  # its answer to the corrupted question with the node's clean activation written in
    clean_expected: str  # the true sums
    corrupt_expected: str

    @property
    def restores_clean(self) -> bool:
        """The patched run gives the clean run's answer."""
        return self.patched_answer == self.clean_answer

    @property
    def changed(self) -> bool:
        """The patch moved the corrupted run's answer."""
        return self.patched_answer != self.corrupt_answer

    @property
    def verdict(self) -> str:
        if self.clean_answer == self.corrupt_answer:
            return "clean and corrupted answers agree" + ("" if self.restores_clean else "; the patch changes it")
        if self.restores_clean:
            return "restores the clean answer"
        return "no change" if not self.changed else "differs from both"

    def __repr__(self) -> str:
        return (f"PairPatch({self.node}: clean {self.clean_question}{self.clean_answer}, "
                f"corrupted {self.corrupt_question}{self.corrupt_answer}, patched {self.patched_answer}: "
                f"{self.verdict})")


def _question_tokens(task: ArithmeticTask, question: str | torch.Tensor) -> torch.Tensor:
    """Question tokens [1, 2n+2] from "12345+67890=" or from tokens [pos] / [1, pos] (answers dropped)."""
    if isinstance(question, str):
        return task.encode([question])[:, : task.question_len]
    tokens = question if question.ndim == 2 else question[None]
    if tokens.ndim != 2 or tokens.shape[0] != 1 or tokens.shape[1] < task.question_len:
        raise ArithlensError(f"a question must be a string or tokens [{task.question_len}] or [1, >= "
                             f"{task.question_len}], got shape {tuple(question.shape)}")
    tokens = tokens[:, : task.question_len].long().cpu()
    n = task.n_digits
    if int(tokens[0, n]) not in {op.token for op in task.operations} or int(tokens[0, 2 * n + 1]) != EQUALS_TOKEN:
        raise ArithlensError(f"malformed question tokens {tokens[0].tolist()}: {task.describe_format()}")
    task.batch_from_tokens(tokens)  # a clear error for non-digit operands
    return tokens


def _check_node(node: str, model: TransformerBridge, task: ArithmeticTask) -> tuple[int, int, int | None]:
    position, layer, head = parse_node_name(node)
    config = model_config_of(model)
    if layer >= config.n_layers:
        raise ArithlensError(f"node {node}: layer {layer} does not exist (the model has {config.n_layers})")
    if head is not None and head >= config.n_heads:
        raise ArithlensError(f"node {node}: head {head} does not exist (the model has {config.n_heads} per layer)")
    if position >= task.seq_len:
        raise ArithlensError(f"node {node}: position {position} does not exist (positions run 0..{task.seq_len - 1})")
    return position, layer, head


def patch_pair(model: TransformerBridge, clean: str | torch.Tensor, corrupt: str | torch.Tensor,
               node: str) -> PairPatch:
    """Run `corrupt` with `node`'s activation from the `clean` run patched in; the three greedy answers.

    `clean` and `corrupt` are questions ("12345+67890=") or their tokens (answer tokens, if any,
    are ignored); `node` is like "P13L0H1" or "P14L0M". Patching direction as in TransformerLens:
    corrupted run, clean activation.
    """
    task = task_for(model_config_of(model))
    position, layer, head = _check_node(node, model, task)
    clean_tokens, corrupt_tokens = _question_tokens(task, clean), _question_tokens(task, corrupt)
    clean_answer = greedy_answers(model, clean_tokens)
    corrupt_answer = greedy_answers(model, corrupt_tokens)

    hook_name = f"blocks.{layer}.hook_mlp_out" if head is None else f"blocks.{layer}.attn.hook_z"
    device = next(model.parameters()).device
    clean_run = torch.cat([clean_tokens, clean_answer], dim=1).to(device)  # [1, seq_len]
    with torch.no_grad():
        _, cache = model.run_with_cache(clean_run, names_filter=hook_name)
    source = cache[hook_name][:, position]  # [1, d_model] for an MLP, [1, head, d_head] for heads

    def write_clean(activation: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        # Generation grows the sequence one digit at a time: the node exists once it reaches `position`.
        if activation.shape[1] > position:
            if head is None:
                activation[:, position] = source
            else:
                activation[:, position, head] = source[:, head]
        return activation

    with model.hooks(fwd_hooks=[(hook_name, write_clean)]):
        patched_answer = greedy_answers(model, corrupt_tokens)

    def digits(answer: torch.Tensor) -> str:  # the answer as written: "080235", or "-055545" with a sign
        return task.decode(answer)[0]

    clean_text, corrupt_text = task.decode(clean_tokens)[0], task.decode(corrupt_tokens)[0]
    return PairPatch(node=node_name(position, layer, head), clean_question=clean_text, corrupt_question=corrupt_text,
                     clean_answer=digits(clean_answer), corrupt_answer=digits(corrupt_answer),
                     patched_answer=digits(patched_answer),
                     clean_expected=task.answers(task.batch_from_tokens(clean_tokens))[0],
                     corrupt_expected=task.answers(task.batch_from_tokens(corrupt_tokens))[0])
