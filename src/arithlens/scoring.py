"""Scoring many questions fast: loss and predicted digits through `AnswerForward`, without grad.

Used by the analyses (`arithlens.analysis.accuracy`) and by held-out evaluation
during training (`arithlens.heldout`), so it sits below both. On a CPU it runs
cache-sized chunks on one single-threaded worker per core; a 5-digit model then
runs near the CPU's matmul limit (benchmarks/eval_speed.py measures it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from types import TracebackType

import torch
from transformer_lens.model_bridge import TransformerBridge

from arithlens.config import ModelConfig
from arithlens.flops import widest_activation_floats
from arithlens.model import AnswerForward, predicted_answer
from arithlens.task import task_for

# On a CPU a chunk's widest activation is kept near this size so that a chunk's working set stays
# in cache: with 8192-question chunks a 5-digit model's MLP hidden alone is ~570 MB, and time went
# to page faults and memory-bound passes (bias, relu, copies) instead of matmuls.
CPU_CHUNK_BYTES = 4 * 2**20
MAX_CHUNK_SIZE = 8192  # accelerators, and the cap for tiny models on a CPU


def score_logits(logits: torch.Tensor, targets: torch.Tensor,
                 allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, predicted token) for answer logits [..., answer_len, d_vocab] and target tokens [..., answer_len].

    The loss is float64 cross-entropy over all logits, as in training; the
    prediction is the argmax over the tokens each position may hold: digits only,
    or `+`/`-` at a sign (`allowed`, [answer_len, d_vocab]).
    """
    log_probs = logits.double().log_softmax(dim=-1)
    loss = -log_probs.gather(-1, targets[..., None]).squeeze(-1)
    return loss, predicted_answer(logits, allowed)


@contextmanager
def cpu_workers(workers: int, name: str = "arithlens-worker") -> Iterator[ThreadPoolExecutor | None]:
    """A pool of `workers` single-threaded workers, one chunk each at a time (None for one worker).

    torch ops release the GIL, so the workers run side by side with no thread
    barrier inside an op: small chunks under intra-op threading pay one per op,
    and on a busy machine a preempted thread stalls every barrier for a whole
    time slice. `torch.set_num_threads` is process-wide: it is set to 1 before
    the pool's threads start (each picks it up on its first op) and restored on exit.
    """
    if workers <= 1:
        yield None
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)


def default_chunk_size(config: ModelConfig, device: torch.device, dtype: torch.dtype = torch.float32) -> int:
    """Questions per forward call: cache-sized on a CPU, large on an accelerator."""
    if device.type != "cpu":
        return MAX_CHUNK_SIZE
    per_question = widest_activation_floats(config) * dtype.itemsize
    # A multiple of 8 keeps the matmul row counts friendly to the BLAS kernels.
    return max(8, min(MAX_CHUNK_SIZE, CPU_CHUNK_BYTES // per_question // 8 * 8))


class Scorer:
    """Loss and predicted digits for token chunks, through `AnswerForward`, without grad.

    On a CPU with several threads it runs one single-threaded worker per thread, each on
    its own cache-sized chunk (`cpu_workers`).
    """

    def __init__(self, model: TransformerBridge, chunk_size: int | None) -> None:
        self.forward = AnswerForward(model)
        self.task = task_for(self.forward.config)
        self.allowed = self.task.answer_allowed()
        weight = self.forward.params["embed.weight"]
        self.device = weight.device
        self.chunk_size = chunk_size or default_chunk_size(self.forward.config, self.device, weight.dtype)
        self.threads = torch.get_num_threads()
        self.workers = self.threads if self.device.type == "cpu" else 1
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> Scorer:
        self._stack = ExitStack()
        self._pool = self._stack.enter_context(cpu_workers(self.workers, "arithlens-eval"))
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stack.close()
        self._pool = None

    def _score_chunk(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Grad mode is per thread, so each worker enters inference mode itself.
        with torch.inference_mode():
            tokens = tokens.to(self.device)  # [chunk, seq_len]
            targets = tokens[:, self.task.question_len : self.task.seq_len]
            loss, predicted = score_logits(self.forward(tokens), targets, self.allowed)
            return loss.cpu(), predicted.cpu()  # [chunk, answer_len] each

    def score(self, tokens: torch.Tensor, advance: Callable[[int], None]) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss [batch, answer_len] float64, predicted [batch, answer_len] long) for tokens [batch, seq_len]."""
        chunks = tokens.split(self.chunk_size)
        results: Iterable[tuple[torch.Tensor, torch.Tensor]] = (
            self._pool.map(self._score_chunk, chunks) if self._pool is not None else map(self._score_chunk, chunks)
        )
        losses, predictions = [], []
        for loss, predicted in results:  # in chunk order
            losses.append(loss)
            predictions.append(predicted)
            advance(predicted.shape[0])
        return torch.cat(losses), torch.cat(predictions)
