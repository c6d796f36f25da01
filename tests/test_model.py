"""The model: a real TransformerBridge with the classic hook names, and a fast path equal to it."""

from __future__ import annotations

import pytest
import torch
import transformer_lens.patching as patching
from transformer_lens.model_bridge import TransformerBridge

from arithlens.config import ModelConfig
from arithlens.errors import ConfigError
from arithlens.metrics import token_losses
from arithlens.model import (
    AdditionTokenizer,
    AnswerForward,
    answer_logits,
    bridge_config,
    build_model,
    predicted_digits,
    resolve_device,
)
from arithlens.task import AdditionTask

GOLDEN_HOOKS_1_LAYER = sorted([
    "blocks.0.attn.hook_attn_in", "blocks.0.attn.hook_attn_scores", "blocks.0.attn.hook_hidden_states",
    "blocks.0.attn.hook_in", "blocks.0.attn.hook_k", "blocks.0.attn.hook_k_input", "blocks.0.attn.hook_out",
    "blocks.0.attn.hook_pattern", "blocks.0.attn.hook_q", "blocks.0.attn.hook_q_input", "blocks.0.attn.hook_result",
    "blocks.0.attn.hook_v", "blocks.0.attn.hook_v_input", "blocks.0.attn.hook_z", "blocks.0.attn.k.hook_in",
    "blocks.0.attn.k.hook_out", "blocks.0.attn.o.hook_in", "blocks.0.attn.o.hook_out", "blocks.0.attn.q.hook_in",
    "blocks.0.attn.q.hook_out", "blocks.0.attn.v.hook_in", "blocks.0.attn.v.hook_out", "blocks.0.hook_attn_in",
    "blocks.0.hook_attn_out", "blocks.0.hook_in", "blocks.0.hook_k_input", "blocks.0.hook_mlp_in",
    "blocks.0.hook_mlp_out", "blocks.0.hook_out", "blocks.0.hook_q_input", "blocks.0.hook_resid_mid",
    "blocks.0.hook_resid_post", "blocks.0.hook_resid_pre", "blocks.0.hook_v_input", "blocks.0.ln1.hook_in",
    "blocks.0.ln1.hook_out", "blocks.0.ln2.hook_in", "blocks.0.ln2.hook_out", "blocks.0.mlp.hook_in",
    "blocks.0.mlp.hook_out", "blocks.0.mlp.hook_post", "blocks.0.mlp.hook_pre", "blocks.0.mlp.in.hook_in",
    "blocks.0.mlp.in.hook_out", "blocks.0.mlp.out.hook_in", "blocks.0.mlp.out.hook_out", "embed.hook_in",
    "embed.hook_out", "hook_embed", "hook_pos_embed", "hook_unembed", "ln_final.hook_in", "ln_final.hook_out",
    "pos_embed.hook_in", "pos_embed.hook_out", "unembed.hook_in", "unembed.hook_out",
])

TINY = dict(n_digits=3, d_model=32, d_mlp=64, n_heads=4)


def test_golden_hook_names() -> None:
    model = build_model(ModelConfig(**TINY))
    assert sorted(model.hook_dict.keys()) == GOLDEN_HOOKS_1_LAYER


def test_cache_holds_the_seed_hooks_with_tl_shapes() -> None:
    model = build_model(ModelConfig(**TINY))
    tokens = AdditionTask(3).generate(5, torch.Generator().manual_seed(0)).tokens
    logits, cache = model.run_with_cache(tokens)
    assert logits.shape == (5, 12, 12)
    assert cache["blocks.0.attn.hook_pattern"].shape == (5, 4, 12, 12)
    assert cache["blocks.0.attn.hook_z"].shape == (5, 12, 4, 8)
    assert cache["blocks.0.hook_resid_post"].shape == (5, 12, 32)
    assert cache["blocks.0.mlp.hook_post"].shape == (5, 12, 64)


def test_same_seed_same_weights() -> None:
    a = build_model(ModelConfig(**TINY)).state_dict()
    b = build_model(ModelConfig(**TINY)).state_dict()
    c = build_model(ModelConfig(**TINY, seed=1)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.q.weight"], c["blocks.0.attn.q.weight"])


@pytest.mark.parametrize("layers, norm, act", [(1, None, "relu"), (2, None, "relu"), (2, "LN", "gelu"), (3, "RMS", "relu")])
def test_fast_path_matches_bridge_logits_and_gradients(layers: int, norm: str | None, act: str) -> None:
    config = ModelConfig(**TINY, n_layers=layers, normalization=norm, act_fn=act)
    bridge, fast_model = build_model(config), build_model(config)
    tokens = AdditionTask(3).generate(32, torch.Generator().manual_seed(0)).tokens
    answers = tokens[:, 8:]
    slow_logits = answer_logits(bridge, tokens)
    fast_logits = AnswerForward(fast_model)(tokens)
    torch.testing.assert_close(fast_logits, slow_logits, atol=1e-5, rtol=1e-5)
    token_losses(slow_logits, answers).mean().backward()
    token_losses(fast_logits, answers).mean().backward()
    slow_grads = {n: p.grad for n, p in bridge.named_parameters() if p.grad is not None}
    fast_grads = {n: p.grad for n, p in fast_model.named_parameters() if p.grad is not None}
    assert slow_grads.keys() == fast_grads.keys() and len(slow_grads) > 10
    for name in slow_grads:
        torch.testing.assert_close(fast_grads[name], slow_grads[name], atol=1e-5, rtol=1e-4)


def test_transformerlens_techniques_work_on_the_model() -> None:
    model = build_model(ModelConfig(**TINY))
    task = AdditionTask(3)
    clean = task.generate(8, torch.Generator().manual_seed(0)).tokens
    corrupt = task.generate(8, torch.Generator().manual_seed(1)).tokens
    logits, cache = model.run_with_cache(clean)
    resid, labels = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-2, return_labels=True)
    assert labels == ["0_pre", "0_mid", "final_post"]
    torch.testing.assert_close(resid[-1] @ model.W_U + model.b_U, logits[:, -2], atol=1e-4, rtol=1e-4)
    heads, head_labels = cache.stack_head_results(layer=-1, pos_slice=-2, return_labels=True)
    assert head_labels == ["L0H0", "L0H1", "L0H2", "L0H3"] and heads.shape == (4, 8, 32)
    parts, _ = cache.decompose_resid(layer=-1, pos_slice=-2, return_labels=True)
    answer = clean[:, -1]
    attrs = cache.logit_attrs(parts, tokens=answer, pos_slice=-2)
    assert attrs.shape == (4, 8)
    metric = lambda out: out[:, -2, :10].sum()  # noqa: E731
    patched = patching.get_act_patch_attn_head_out_by_pos(model, corrupt, cache, metric)
    assert patched.shape == (1, 12, 4)
    # patching every head of the clean run with the clean run's own activations changes nothing
    same = patching.get_act_patch_attn_head_out_by_pos(model, clean, cache, metric)
    torch.testing.assert_close(same, torch.full_like(same, float(metric(logits))), atol=1e-3, rtol=1e-5)


def test_ablation_through_hooks_changes_logits() -> None:
    model = build_model(ModelConfig(**TINY))
    tokens = AdditionTask(3).generate(8, torch.Generator().manual_seed(0)).tokens
    clean = model(tokens)
    ablated = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", lambda z, hook: torch.zeros_like(z))])
    assert not torch.allclose(clean, ablated)


def test_predictions_use_digit_tokens_only() -> None:
    logits = torch.zeros(2, 3, 12)
    logits[..., 10] = 5.0  # '+' is never a prediction
    logits[0, :, 3] = 1.0
    assert predicted_digits(logits)[0].tolist() == [3, 3, 3]
    assert int(predicted_digits(logits)[1].max()) < 10


@pytest.mark.parametrize("name", ["tpu", "gpu0", "cuda:x"])
def test_unknown_device(name: str) -> None:
    with pytest.raises(ConfigError):
        resolve_device(name)


def test_seed_initialisation_matches_the_seed_notebook() -> None:
    model = build_model(ModelConfig(d_model=256, d_mlp=1024, n_heads=4))
    weights = model.state_dict()
    assert abs(weights["unembed.weight"].std().item() - 12**-0.5) < 0.02  # the seed's randn / sqrt(d_vocab)
    for name in ("embed.weight", "blocks.0.attn.q.weight", "blocks.0.attn.o.weight", "blocks.0.mlp.out.weight"):
        assert abs(weights[name].std().item() - 256**-0.5) < 0.005, name
    assert all(weights[name].abs().max() == 0 for name in weights if name.endswith(".bias"))
    other = build_model(ModelConfig(d_model=256, d_mlp=1024, n_heads=4, init="transformerlens")).state_dict()
    assert other["unembed.weight"].std().item() < 0.1


def test_tokenizer_round_trip_without_bos() -> None:
    model = build_model(ModelConfig(**TINY))
    task = AdditionTask(3)
    assert model.to_tokens("123+456=").tolist() == [[1, 2, 3, 10, 4, 5, 6, 11]]  # no BOS, no EOS
    questions = ["123+456=", "999+001="]
    assert torch.equal(model.to_tokens(questions), task.encode(questions)[:, : task.question_len])
    assert model.to_str_tokens("123+456=") == list("123+456=")
    full = task.encode("123+456=")
    assert model.to_str_tokens(full[0]) == list("123+456=0579")
    assert model.to_string(full[0]) == "123+456=0579"
    assert model.to_string(full) == ["123+456=0579"]
    assert model.to_single_token("=") == 11
    assert model.to_tokens(" 12 3+456 =").tolist() == [[1, 2, 3, 10, 4, 5, 6, 11]]  # whitespace is ignored


def test_tokenizer_rejects_unknown_characters() -> None:
    with pytest.raises(ValueError, match="0-9"):
        AdditionTokenizer()("12*3")


def test_tokenizer_changes_no_weight_or_logit() -> None:
    config = ModelConfig(**TINY)
    model = build_model(config)
    bare = TransformerBridge.boot_native(bridge_config(config), device="cpu")
    bare.load_state_dict(model.state_dict())
    bare.eval()
    assert bare.tokenizer is None and isinstance(model.tokenizer, AdditionTokenizer)
    assert model.state_dict().keys() == bare.state_dict().keys()
    assert model.cfg.d_vocab == bare.cfg.d_vocab == 12
    tokens = AdditionTask(3).generate(16, torch.Generator().manual_seed(0)).tokens
    assert torch.equal(model(tokens), bare(tokens))
    assert torch.equal(model("123+456="), bare(model.to_tokens("123+456=")))


def test_transformerlens_generate_matches_greedy_answers() -> None:
    from analysis_fixtures import trained_one_digit_model
    from arithlens.inference import predict

    model = trained_one_digit_model()
    questions = ["7+8=", "0+0=", "9+9=", "4+5="]
    assert model.generate("7+8=", max_new_tokens=2, do_sample=False) == "7+8=15"
    assert model.generate(questions, max_new_tokens=2, do_sample=False) == predict(model, questions)
    tokens = model.to_tokens("3+4=")
    assert model.generate(tokens, max_new_tokens=2, do_sample=False).tolist() == [[3, 10, 4, 11, 0, 7]]


def test_answer_loss_is_the_training_loss_not_transformerlens_loss() -> None:
    from arithlens.inference import answer_loss

    model = build_model(ModelConfig(**TINY))
    task = AdditionTask(3)
    tokens = task.generate(16, torch.Generator().manual_seed(0)).tokens
    per_digit = token_losses(answer_logits(model, tokens), tokens[:, task.question_len :])
    torch.testing.assert_close(answer_loss(model, tokens), per_digit.mean())
    torch.testing.assert_close(answer_loss(model, tokens, per_digit=True), per_digit)
    assert answer_loss(model, tokens).dtype == torch.float64
    questions = task.questions(task.batch_from_tokens(tokens))
    torch.testing.assert_close(answer_loss(model, questions), per_digit.mean())  # strings get the true answer
    # TransformerLens's own loss averages over every position, question digits included
    assert abs(float(model(tokens, return_type="loss")) - float(per_digit.mean())) > 1e-3
