"""Matmul FLOPs and activation sizes of the answer-only forward (`model.AnswerForward`).

Counts follow the usual convention: an [m, k] @ [k, n] product costs 2*m*k*n
FLOPs. Only matmuls are counted (the one-hot embedding, projections, attention
scores, pattern @ values, MLP, unembedding); norms, softmax and activations are
a small share and bound by memory, not arithmetic. Masked keys are counted,
because the forward computes them before masking. A test holds the count equal
to torch's FlopCounterMode on the real forward, so a change there shows up.
"""

from __future__ import annotations

from arithlens.config import ModelConfig


def answer_forward_flops(config: ModelConfig) -> int:
    """Matmul FLOPs `AnswerForward` spends on one question.

    The embedding (a one-hot matmul), keys and values run over the 3n+2 kept
    positions in every layer; queries, scores, attention output and MLP run over
    those positions in earlier layers and only over the n+1 answer-predicting
    positions in the last layer; the unembedding runs over the n+1 answer positions.
    """
    kv_len = config.n_ctx - 1
    answers = kv_len - (2 * config.n_digits + 1)
    attn_width = config.n_heads * config.d_head  # d_head may differ from d_model // n_heads
    flops = 2 * kv_len * config.d_vocab * config.d_model  # the embedding, a one-hot matmul
    for layer in range(config.n_layers):
        queries = answers if layer == config.n_layers - 1 else kv_len
        flops += 2 * (2 * kv_len * config.d_model * attn_width)  # K and V projections
        flops += 2 * queries * config.d_model * attn_width  # Q projection
        flops += 2 * (2 * queries * kv_len * attn_width)  # scores, and pattern @ values (all heads)
        flops += 2 * queries * attn_width * config.d_model  # O projection
        flops += 2 * (2 * queries * config.d_model * config.d_mlp)  # MLP in and out
    flops += 2 * answers * config.d_model * config.d_vocab  # unembedding
    return flops


def widest_activation_floats(config: ModelConfig) -> int:
    """Floats in the largest single activation `AnswerForward` makes for one question.

    Evaluation sizes its chunks from this, so that a chunk's activations stay in cache.
    """
    kv_len = config.n_ctx - 1
    answers = kv_len - (2 * config.n_digits + 1)
    attn_width = config.n_heads * config.d_head
    widest = kv_len * max(config.d_model, attn_width)  # residual, K, V
    for layer in range(config.n_layers):
        queries = answers if layer == config.n_layers - 1 else kv_len
        widest = max(widest, queries * config.d_mlp, config.n_heads * queries * kv_len)  # MLP hidden, scores
    return widest
