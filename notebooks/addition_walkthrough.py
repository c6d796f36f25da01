# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # How a 1-layer transformer adds: the walkthrough
#
# This notebook retells the seed research notebook, *Addition Interpretability Analysis*, step by step
# with arithlens. It trains (or loads) a small transformer on n-digit addition (`12345+67890=080235`),
# breaks its loss down by sub-task, looks at its attention, ablates and attributes its heads, maps the
# useful nodes to the addition algorithm and shows what a 1-layer model cannot do.
#
# The seed built its own transformer, hook points and data generator. Here the model is a
# TransformerLens 4.x `TransformerBridge`, so `run_with_cache`, `run_with_hooks` and the
# `ActivationCache` methods all work. Two of the seed's cells failed: its logit lens crashed (its cache
# was a plain dict) and its head attribution never ran. Both work here (sections 8 and 9).
#
# Each figure is followed by a sentence that is computed from the numbers behind it, so the text
# stays true whichever model you run.
#
# *This notebook is kept as `addition_walkthrough.py`, a Jupytext percent-format script: that file is
# the source, and this `.ipynb` is written from it, without outputs, by `jupytext --sync notebooks/*.py`.*
#
# **Conventions.** Tokens are `x` digits (most significant first), `+`, `y` digits, `=`, then the n+1
# answer digits. `D0` is the units digit of x, `D'0` that of y, and `A0` that of the answer. The logits
# at position p predict token p+1, so for 5 digits position 16 (P16) predicts A0 and P11 predicts A5.
# Nodes are named `P16L0H1` (position 16, layer 0, head 1) and `P16L0M` (the MLP at position 16).

# %% [markdown]
# ## 1. Set-up
#
# From the repository root, `bash scripts/setup.sh` makes `.venv` with arithlens and everything it
# needs. Then open this notebook with the `.venv` kernel. The cell below installs arithlens from this
# checkout only if it is missing, as it would be on Colab; elsewhere it does nothing.

# %%
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("arithlens") is None:  # a fresh environment: install this checkout into this kernel
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", ".."], check=True)

# %%
import tempfile
import time
from pathlib import Path

import pandas as pd
import plotly.express as px
import torch
from IPython.display import HTML, display

import arithlens
from arithlens import AdditionBatch, AdditionTask, ModelConfig, RunConfig, SubtractionTask, TrainConfig
from arithlens.analysis import (ablate, accuracy_table, activation_patching, algorithm_map, attention_examples,
                                circuitsvis_html, digit_roles, direct_logit_attribution, evaluate, failed_cases,
                                failure_table, head_output_pca, head_source_attribution, logit_lens,
                                make_question_set, mean_attention_by_class, node_ablation, nodes_table,
                                phase_changes, position_ablation, question_set_names, random_accuracy,
                                top_attended, useful_nodes)
from arithlens.datasets import batch_records
from arithlens.inference import predict
from arithlens.model import predicted_digits
from arithlens.plots import analysis as analysis_plots
from arithlens.plots import training as training_plots
from arithlens.runs import bundled_model_names, load_run

pd.set_option("display.width", 160)
pd.set_option("display.max_columns", 24)


def pct(share: float) -> str:
    return f"{100 * share:.1f}%"


def breaks_sentence(what: str, effects: pd.DataFrame, threshold: float = 0.01) -> str:
    """'Ablating X breaks only A0: accuracy on A0 falls from 99.8% to 12.0%.' from effects rows
    (answer_digit, accuracy, accuracy_delta) of one ablation, for all questions."""
    digits = effects[effects["answer_digit"] != "all"]
    broken = digits[digits["accuracy_delta"] < -threshold]
    if broken.empty:
        return f"Ablating {what} breaks no answer digit: none loses more than {threshold:.0%} accuracy."
    only = "only " if len(broken) == 1 else ""
    falls = [f"accuracy on {row.answer_digit} falls from {pct(row.accuracy - row.accuracy_delta)} to "
             f"{pct(row.accuracy)}" for row in broken.itertuples()]
    return f"Ablating {what} breaks {only}{', '.join(broken['answer_digit'])}: {'; '.join(falls)}."


# %% [markdown]
# ## 2. Configuration
#
# The seed's model and training settings. Tests replace this cell's values with tiny ones (the cell is
# tagged `parameters`), so keep it to plain assignments.

# %% tags=["parameters"]
N_DIGITS = 5             # digits per operand (2 or more)
MODEL = None             # a run folder or bundled model name to load; None: see USE_BUNDLED
USE_BUNDLED = True       # with MODEL None, load the bundled add_d{N_DIGITS}_l{N_LAYERS} if installed, else train
RUN_DIR = None           # where to train; None: a new temporary folder
STEPS = 3000             # the seed trained 3000 steps of 64 fresh questions
N_LAYERS = 1
D_MODEL = 512
N_HEADS = 4
D_MLP = 2048
LR = 1e-4
BATCH_SIZE = 64
SEED = 129000
DEVICE = "cpu"           # or "cuda"
QUESTIONS = 2000         # questions per analysis question set
EVAL_QUESTIONS = 100_000 # random questions for the accuracy table
PATCH_PAIRS = 64         # question pairs per activation-patching experiment
SUB_STEPS = 3000         # steps to train a subtraction model when the bundled sub_d5_l2 is not used

# %% [markdown]
# ## 3. Train the model, or load a trained one
#
# `arithlens.train` runs the seed's training loop (AdamW, lr warm-up over 10 steps, float64
# per-token cross-entropy over the answer digits, a fresh batch every step) and records every step's
# loss per answer digit and per sub-task in the run folder's `metrics.parquet`. With the seed's
# settings 3000 steps take a few minutes on a laptop CPU. If arithlens ships a trained model for these
# settings (`arithlens models` lists them), it is loaded instead; set `USE_BUNDLED = False` to train.

# %%
config = RunConfig(
    model=ModelConfig(n_digits=N_DIGITS, n_layers=N_LAYERS, d_model=D_MODEL, n_heads=N_HEADS, d_mlp=D_MLP,
                      seed=SEED),
    train=TrainConfig(steps=STEPS, batch_size=BATCH_SIZE, lr=LR, seed=SEED, device=DEVICE,
                      checkpoint_every=max(STEPS // 6, 1)),
)
bundled = f"add_d{N_DIGITS}_l{N_LAYERS}"
if MODEL is not None:
    run = load_run(MODEL)
    print(f"Loaded {MODEL}.")
elif USE_BUNDLED and bundled in bundled_model_names():
    run = load_run(bundled)
    print(f"Loaded the bundled model {bundled}.")
else:
    run_dir = Path(RUN_DIR) if RUN_DIR else Path(tempfile.mkdtemp(prefix="arithlens_")) / "run"
    if (run_dir / "model.safetensors").is_file():  # re-running the notebook reuses the finished run
        run = load_run(run_dir)
        print(f"Reusing the run in {run_dir} (delete it to train again).")
    else:
        started = time.perf_counter()
        run = arithlens.train(config, run_dir, progress=False)
        print(f"Trained {STEPS} steps into {run_dir} in {time.perf_counter() - started:.0f} s.")

model = run.model(DEVICE)  # a TransformerLens TransformerBridge, in eval mode
task = AdditionTask(run.config.model.n_digits)
n = task.n_digits
n_layers, n_heads = run.config.model.n_layers, run.config.model.n_heads
metrics = run.metrics
print(run.config.model)
every = max(len(metrics) // 10, 1)
print(metrics[["step", "loss"]].iloc[::every].to_string(index=False))  # the seed printed this while training

# %% [markdown]
# How good is it? `random_accuracy` scores uniformly random questions with one teacher-forced
# forward each (a question is right when every answer digit is); `predict` answers the way a user
# would ask, one greedy digit at a time.

# %%
result = random_accuracy(model, EVAL_QUESTIONS, seed=1)
random_table = accuracy_table(result)
display(random_table)
examples = task.questions(make_question_set(task, "published_hard", 3).batch)
examples += task.questions(make_question_set(task, "random", 3, seed=5).batch)
for question, answered in zip(examples, predict(model, examples)):
    truth = int(question[:n]) + int(question[n + 1 : 2 * n + 1])
    print(f"{answered}   {'right' if int(answered[2 * n + 2 :]) == truth else f'wrong, the sum is {truth}'}")

# %% tags=["interpretation"]
overall = random_table[random_table["group_kind"] == "overall"].iloc[0]
by_digit = random_table[random_table["group_kind"] == "answer_digit"]
worst = by_digit.sort_values("accuracy").iloc[0]
print(f"On {overall.questions:,} random questions the model answers {pct(overall.accuracy)} correctly "
      f"({overall.failures:,} wrong, {overall.nines:.0f} nines); its weakest answer digit is {worst.group} "
      f"at {pct(worst.accuracy)}.")

# %% [markdown]
# ## 4. Loss graphs: total and per answer digit
#
# The seed's first graphs: the training loss, and the loss of each answer token. Phase changes (steep
# drops of one digit's loss, found by `phase_changes`) are shaded in the colour of their digit.

# %% tags=["figure"]
phases = phase_changes(metrics)
training_plots.loss_curves(metrics, log_y=True).show()
training_plots.add_phase_bands(training_plots.per_token_loss_curves(metrics, log_y=True), phases)

# %% tags=["interpretation"]
first, last = metrics["loss"].iloc[0], metrics["loss"].iloc[-max(len(metrics) // 20, 1):].mean()
print(f"The loss fell from {first:.3g} at step 0 to {last:.3g} (mean of the last 5% of steps).")
if phases.empty:
    print("No answer digit shows a clear phase change in this run; train for longer to see them.")
else:
    firsts = phases.sort_values("steepest_step").drop_duplicates("answer_digit")
    order = ", ".join(f"{row.answer_digit} at step {row.steepest_step} ({row.loss_before:.2g} to {row.loss_after:.2g})"
                      for row in firsts.itertuples())
    missing = [f"A{d}" for d in range(n, -1, -1) if f"A{d}" not in set(phases["answer_digit"])]
    print(f"Phase changes, by the steepest drop of each answer digit's loss, in order: {order}."
          + (f" No clear phase for {', '.join(missing)}." if missing else ""))

# %% [markdown]
# ## 5. The sub-task breakdowns
#
# Each answer digit A_d needs one of three things, and the seed tracked the loss of each separately:
#
# * **BaseAdd**: no carry comes into digit d, so A_d = (D_d + D'_d) mod 10;
# * **UseCarry1**: a carry comes in and D_d + D'_d is not 9;
# * **UseSum9**: a carry comes in and D_d + D'_d = 9, so the carry cascades on.
#
# Every (question, digit) is in exactly one of the three. First the case counts, then the graphs.

# %%
tail = metrics.iloc[-max(len(metrics) // 10, 1):]  # the last 10% of steps: the loss the run ended on
rows = []
for digit in range(n):
    for key, label in training_plots.SUBTASKS.items():
        loss, count = tail[f"{key}_loss_d{digit}"], tail[f"{key}_count_d{digit}"]
        end_loss = (loss * count).sum() / count.sum() if count.sum() else float("nan")  # weighted by cases
        rows.append({"digit": f"A{digit}", "subtask": label, "cases": int(metrics[f"{key}_count_d{digit}"].sum()),
                     "end_loss": end_loss})
subtasks = pd.DataFrame(rows)
print("Cases per answer digit over all training steps:")
display(subtasks.pivot(index="subtask", columns="digit", values="cases"))
print("Loss per case over the last 10% of steps (NaN: no such case, e.g. no carry ever comes into A0):")
display(subtasks.pivot(index="subtask", columns="digit", values="end_loss"))

# %% tags=["interpretation"]
totals = training_plots.case_totals(metrics, n)
share = {label: count / sum(totals.values()) for label, count in totals.items()}
print("Over training the per-digit cases were " + ", ".join(f"{label} {count:,} ({pct(share[label])})"
                                                               for label, count in totals.items()) + ".")
seen = subtasks.dropna(subset=["end_loss"])
hardest, easiest = seen.loc[seen["end_loss"].idxmax()], seen.loc[seen["end_loss"].idxmin()]
print(f"At the end of training the hardest case is {hardest.subtask} at {hardest.digit} (loss {hardest.end_loss:.3g}) "
      f"and the easiest {easiest.subtask} at {easiest.digit} (loss {easiest.end_loss:.3g}).")
ranked = seen.sort_values("end_loss", ascending=False).groupby("digit")["subtask"].apply(" > ".join)
print("Final loss, hardest first, per digit: " + "; ".join(f"{digit}: {order}" for digit, order in ranked.items()) + ".")

# %% tags=["figure"]
training_plots.base_add_only_curve(metrics).show()
training_plots.subtask_digit_curves(metrics, "base_add").show()
training_plots.use_carry1_any_curve(metrics).show()
training_plots.subtask_digit_curves(metrics, "use_carry1").show()
training_plots.use_sum9_cascade_curves(metrics).show()
training_plots.subtask_digit_curves(metrics, "use_sum9")

# %% [markdown]
# The seed also compared the sub-tasks digit by digit (log scale):

# %% tags=["figure"]
for digit in range(n):
    training_plots.digit_comparison_curves(metrics, digit, log_y=True).show()

# %% tags=["interpretation"]
for digit in range(1, n):  # digit 0 never has a carry coming in
    rows = subtasks[subtasks["digit"] == f"A{digit}"].set_index("subtask")["end_loss"]
    base, carry, sum9 = rows["BaseAdd"], rows["UseCarry1"], rows["UseSum9"]
    if rows.notna().all():
        print(f"A{digit}: UseCarry1 ends {carry / base:.3g}x and UseSum9 {sum9 / base:.3g}x BaseAdd's loss.")
    else:
        print(f"A{digit}: {', '.join(rows[rows.isna()].index)} never came up in the last 10% of steps.")

# %% [markdown]
# ## 6. Attention patterns
#
# The seed displayed CircuitsVis attention patterns for a few BaseAdd-only, UseCarry1 and UseSum9
# questions from one random batch. `make_question_set` builds sets that hold exactly the cases they
# claim, which matters for the rare ones: a random 5-digit question has a UseSum9 cascade of depth 4
# with probability about 1 in 22,000 (a carry out of the units, then four pairs summing to 9).

# %%
sets = {name: make_question_set(task, name, QUESTIONS, seed=0)
        for name in ("random", "base_add", "use_carry1", "use_sum9")}
for question_set in sets.values():
    print(f"{question_set.name:10} {len(question_set):6,} questions: {question_set.description}")
mixed = AdditionBatch.concat([sets[name].batch for name in ("base_add", "use_carry1", "use_sum9")])
batch = sets["random"].batch  # the questions most analyses below run on

# The seed's way: one forward with a cache, then the pattern hook ([batch, head, query, key]).
demo = batch.select(slice(0, 64))
logits, cache = model.run_with_cache(demo.tokens.to(DEVICE))
pattern = cache["blocks.0.attn.hook_pattern"]
print(task.decode(demo.tokens[:1])[0], "pattern", tuple(pattern.shape))

# %% tags=["figure"]
picks = [sets[name].batch.select(slice(0, 1)) for name in ("base_add", "use_carry1", "use_sum9")]
example_attention = attention_examples(model, task, questions=[task.questions(b)[0] for b in picks])
analysis_plots.attention_heatmaps(example_attention, n, row_key="example")

# %%
try:  # CircuitsVis is optional: pip install circuitsvis for the seed's interactive view
    display(HTML(circuitsvis_html(model, task, task.questions(picks[2])[0])))
except arithlens.ArithlensError as error:
    print(error)

# %% [markdown]
# One question is noisy; the mean over many shows the structure. Below, the mean pattern per question
# category, at the positions that predict answer digits.

# %% tags=["figure"]
mean_attention = mean_attention_by_class(model, mixed)
analysis_plots.attention_heatmaps(mean_attention, n)

# %% tags=["interpretation"]
top = top_attended(mean_attention, category="all", top_k=1, min_weight=0.0)
top = top[top["query_pos"].isin(task.answer_logit_positions)].copy()
top["answer_digit"] = [f"A{3 * n + 1 - q}" for q in top["query_pos"]]
top["head_name"] = [f"L{l}H{h}" for l, h in zip(top["layer"], top["head"])]
top["reads"] = [f"{key} ({weight:.2f})" for key, weight in zip(top["key_name"], top["weight"])]
display(top.pivot(index="answer_digit", columns="head_name", values="reads").loc[task.answer_digit_names()])


def operand_digit(name: str) -> int | None:
    """3 for D3 or D'3; None for +, = and answer tokens."""
    return int(name.lstrip("D'")) if name.startswith("D") else None


stairs = []
for head_name, rows in top.groupby("head_name"):
    offsets = {operand_digit(key) - int(digit[1:]) for key, digit in zip(rows["key_name"], rows["answer_digit"])
               if operand_digit(key) is not None}
    reads_operands = sum(operand_digit(key) is not None for key in rows["key_name"])
    if len(offsets) == 1 and reads_operands >= 2:
        offset = offsets.pop()
        stairs.append(f"{head_name} reads pair d{offset:+d}" if offset else f"{head_name} reads pair d")
if stairs:
    print(f"At the position predicting A_d, {len(stairs)} of {n_layers * n_heads} heads attend mostly to a digit "
          f"pair at a fixed offset from d, the published 'staircase': {'; '.join(stairs)}.")
else:
    print("No head attends to a digit pair at a fixed offset from the answer digit across all positions: "
          "this model shows no attention staircase (yet).")

# %% [markdown]
# ## 7. A hook experiment: ablate one head and see what breaks
#
# The seed's hook cell registered a hook that returned its input unchanged (zero-ablation was
# commented out). Here a hook mean-ablates one head at one position: its `hook_z` output there is
# replaced by its mean, so downstream components stay in distribution (the advice in the seed's
# closing notes). The mean is taken over a separate set of uniformly random questions, the
# `reference`: the mean over the tested questions themselves is not neutral, because over a narrow
# set (only cascades, say) it already encodes their answer, and "ablating" can then even raise
# accuracy. The head is the one that attends most to the units pair (D0, D'0) at the position that
# predicts A0.

# %% tags=["figure"]
digit = 0
position = task.logit_position_for_answer_digit(digit)
at_position = mean_attention[(mean_attention["category"] == "all") & (mean_attention["layer"] == 0)
                             & (mean_attention["query_pos"] == position)]
units = at_position[at_position["key_name"].isin([f"D{digit}", f"D'{digit}"])]
head = int(units.groupby("head")["weight"].sum().idxmax())
hook_name = "blocks.0.attn.hook_z"  # [batch, pos, head, d_head]
tokens = batch.tokens.to(DEVICE)
reference = make_question_set(task, "random", QUESTIONS, seed=1).batch  # the mean comes from these questions

with torch.no_grad():
    _, z_cache = model.run_with_cache(reference.tokens.to(DEVICE), names_filter=hook_name)
mean_z = z_cache[hook_name][:, position, head].mean(0)  # [d_head]


def mean_ablate_head(z: torch.Tensor, hook) -> torch.Tensor:
    z = z.clone()
    z[:, position, head] = mean_z
    return z


with torch.no_grad():
    clean_logits = model(tokens)
    ablated_logits = model.run_with_hooks(tokens, fwd_hooks=[(hook_name, mean_ablate_head)])

answers = batch.tokens[:, 2 * n + 2 :]  # [batch, n+1], An .. A0
answer_logits = slice(2 * n + 1, 3 * n + 2)
clean_right = (predicted_digits(clean_logits[:, answer_logits]).cpu() == answers).double().mean(0)
ablated_right = (predicted_digits(ablated_logits[:, answer_logits]).cpu() == answers).double().mean(0)
node = f"P{position}L0H{head}"
by_hand = pd.DataFrame({"answer_digit": task.answer_digit_names(), "accuracy": ablated_right.numpy(),
                        "accuracy_delta": (ablated_right - clean_right).numpy()})
bars = pd.DataFrame({"answer_digit": task.answer_digit_names(), "clean": clean_right.numpy(),
                     f"{node} ablated": ablated_right.numpy()}).melt(id_vars="answer_digit")
px.bar(bars, x="answer_digit", y="value", color="variable", barmode="group", range_y=[0, 1.05],
       labels={"value": "accuracy", "variable": ""}, title=f"Accuracy per answer digit, {node} mean-ablated")

# %% tags=["interpretation"]
print(breaks_sentence(node, by_hand))

# %% [markdown]
# `arithlens.analysis.ablate` does the same for any hook name (and any head or position), with the
# mean over its `reference` questions, and splits the effect by sub-task class of each digit: BA (no
# carry in), UC1 (a carry in, the pair does not sum to 9) and US9 (a carry into a pair summing to 9).

# %% tags=["interpretation"]
effects = ablate(model, batch, hook_name, head=head, position=position, method="mean", reference=reference)
display(effects)
same = effects[effects["subtask_class"] == "all"].set_index("answer_digit").loc[task.answer_digit_names(), "accuracy"]
gap = abs(same.to_numpy() - ablated_right.numpy()).max()
assert gap <= 2 / len(batch), f"ablate and the hand-written hook disagree by {gap:.3f}"
print("ablate agrees with the hand-written hook on every digit's accuracy.")
rows = effects[(effects["answer_digit"] == f"A{digit}") & (effects["subtask_class"] != "all")]
print(f"By class, A{digit} accuracy with {node} ablated: "
      + ", ".join(f"{row.subtask_class} {pct(row.accuracy)} ({row.questions} questions)"
                  for row in rows.itertuples() if row.questions) + ".")

# %% [markdown]
# The published finding: each answer digit is computed at the token just before it. Two ablations per
# position test it: the attention and MLP *outputs* there (what the position computes) and its *input*
# (what it is given). Ablating a position's whole `resid_post` would prove nothing in one layer: only that
# position's unembedding reads it. (`position_ablation` takes its means from 1,000 random questions.)

# %% tags=["figure"]
positions = position_ablation(model, batch)
analysis_plots.position_ablation_heatmap(positions, n)

# %% tags=["interpretation"]
for site, rows_of_site in positions.groupby("site", sort=False):
    harmless = []
    print(f"{site}:")
    for position_index, rows in rows_of_site.groupby("position"):
        if (rows.loc[rows["answer_digit"] != "all", "accuracy_delta"] < -0.01).any():
            print("  " + breaks_sentence(f"the {site} at {task.position_label(position_index)}", rows))
        else:
            harmless.append(task.position_label(position_index))
    print(f"  Ablating the {site} at any of {', '.join(harmless) or 'no position'} breaks no answer digit.")

# %% [markdown]
# ## 8. Logit lens
#
# The seed's cell `cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1, return_labels=True)`
# crashed with an AttributeError: its cache was a plain dict. With a TransformerLens cache it runs.
# Decoding each stage of the residual stream with the unembedding shows where each answer digit
# becomes readable: after the embeddings (`0_pre`), after attention (`0_mid`), after the MLP.

# %% tags=["figure"]
answer_positions = task.answer_logit_positions
stages, labels = cache.accumulated_resid(layer=-1, incl_mid=True, apply_ln=True, pos_slice=answer_positions,
                                         return_labels=True)  # [stage, batch, n+1, d_model]
stage_logits = stages @ model.W_U + model.b_U
demo_answers = demo.tokens[:, 2 * n + 2 :].to(DEVICE)
print(labels, "accuracy per stage on the demo questions:",
      [round(float((predicted_digits(s) == demo_answers).double().mean()), 3) for s in stage_logits])

lens = logit_lens(model, batch)
analysis_plots.logit_lens_figure(lens, n)

# %% tags=["interpretation"]
rows = lens[lens["subtask_class"] == "all"]
gains = {}
for answer_digit, stages_of in rows.groupby("answer_digit", sort=False):
    accuracy = stages_of.sort_values("stage_index").set_index("stage")["accuracy"]
    steps = accuracy.diff().dropna()
    gains[answer_digit] = steps.idxmax()
    print(f"{answer_digit}: " + ", ".join(f"{pct(value)} at {stage}" for stage, value in accuracy.items()))
makers = pd.Series(gains).value_counts()
where = "attention" if makers.index[0].endswith("_mid") else "an MLP"
print(f"For {makers.iloc[0]} of {n + 1} answer digits the biggest gain in accuracy comes at stage "
      f"{makers.index[0]}, that is from {where}.")

# %% [markdown]
# ## 9. Head attribution
#
# The seed's head-attribution cell, `cache.stack_head_results(layer=-1, pos_slice=-1, ...)`, never ran.
# Here it does: each head's output at each answer-predicting position, projected on the unembedding
# of the correct digit (`cache.logit_attrs`), is that head's direct contribution to the answer.

# %% tags=["figure"]
per_head, head_labels = cache.stack_head_results(layer=-1, pos_slice=answer_positions, return_labels=True)
per_head_attrs = cache.logit_attrs(per_head, tokens=demo_answers, pos_slice=answer_positions)  # [head, batch, n+1]
px.imshow(per_head_attrs.mean(1).detach().cpu().numpy(), x=task.answer_digit_names(), y=head_labels,
          color_continuous_scale="RdBu", color_continuous_midpoint=0.0,
          labels={"x": "answer digit", "y": "head", "color": "logit"},
          title="Direct logit attribution of each head (demo questions), as the seed intended")

# %% [markdown]
# `direct_logit_attribution` does this over many questions for every component (heads, MLPs,
# embeddings, biases), as the correct digit's lead over the best wrong digit, split by sub-task class;
# the rows of one digit sum to its mean lead. `head_source_attribution` splits each head's part by the
# position it reads from.

# %% tags=["figure"]
dla = direct_logit_attribution(model, batch)
analysis_plots.dla_heatmap(dla, n).show()
sources = head_source_attribution(model, batch)
analysis_plots.head_source_heatmaps(sources, n)

# %% tags=["interpretation"]
rows = dla[(dla["subtask_class"] == "all")]
for answer_digit, parts in rows.groupby("answer_digit", sort=False):
    lead = parts["logit_diff_attr"].sum()
    nodes_only = parts[parts["kind"].isin(["head", "mlp"])].sort_values("logit_diff_attr", ascending=False)
    best = ", ".join(f"{row.node} {row.logit_diff_attr:+.2f}" for row in nodes_only.head(2).itertuples())
    reads = sources[(sources["answer_digit"] == answer_digit) & (sources["subtask_class"] == "all")]
    main = reads.loc[reads["logit_diff_attr"].idxmax()]
    print(f"{answer_digit}: the right digit leads the best wrong one by {lead:.2f} logits on average; "
          f"largest direct parts {best}; the largest single read is {main.node} reading {main.source_name}.")

# %% [markdown]
# ## 10. Useful nodes and the algorithm map
#
# Following the later published method: mean-ablate every head and MLP at every position, one at a
# time. A node is *useful* if that drops some answer digit's accuracy by more than 1%. Its tags say
# which digits it breaks, for which sub-task classes, and where it attends.

# %% tags=["figure"]
node_effects = node_ablation(model, batch, method="mean")
useful = nodes_table(useful_nodes(model, batch, ablation=node_effects))
display(useful)
analysis_plots.useful_nodes_map(useful, n, n_layers, n_heads)

# %% tags=["figure"]
analysis_plots.node_effect_heatmaps(node_effects, n)

# %% tags=["interpretation"]
total = len(node_effects["node"].unique())
print(f"{len(useful)} of {total} nodes are useful.")
off_position = []
for answer_digit in task.answer_digit_names():
    breakers = [row for row in useful.itertuples() if answer_digit in row.impacts.split(",")]
    home = task.logit_position_for_answer_digit(int(answer_digit[1:]))
    off_position += [row.node for row in breakers if row.position != home]
    print(f"{answer_digit} is broken by {', '.join(row.node for row in breakers) or 'no single node'}.")
if off_position:
    print(f"Useful nodes away from the position that predicts the digit they break: {', '.join(off_position)}.")
elif len(useful):
    print("Every useful node sits at the position that predicts the digit it breaks, as published.")

# %% [markdown]
# To say *what* each node computes, two more kinds of evidence:
#
# * **activation patching**: take pairs of questions that differ in one sub-task feeding A_d (say,
#   pair d-1 makes a carry in one and not in the other), run the corrupted one, and patch in one
#   node's activation from the clean one. If A_d's logit difference comes back, the node carries that
#   sub-task;
# * **PCA** of a head's output, coloured by the tri-state of the pair below (MakeCarry1 / MakeSum9 /
#   neither): three clusters mean the head reads that tri-state.

# %% tags=["figure"]
patches = activation_patching(model, count=PATCH_PAIRS, seed=0)
analysis_plots.patching_heatmaps(patches, n)

# %% tags=["figure"]
pca_summary, pca_points = head_output_pca(model, mixed)
best = pca_summary.sort_values("separation", ascending=False).iloc[0]
print(f"Clearest tri-state clusters: {best.node} for {best.answer_digit}, coloured by pair D{best.pair_digit} "
      f"(separation {best.separation:.2f}, silhouette {best.silhouette:.2f}; above about 2 the clusters are apart).")
shown = pca_points[pca_points["answer_digit"] == best.answer_digit]
analysis_plots.pca_scatter(shown, n, colour_by="tri_state_below" if best.pair_offset == 1 else "tri_state_below2",
                           summary=pca_summary)

# %% tags=["interpretation"]
attended = top_attended(mean_attention, category="all")
amap = algorithm_map(n, node_effects, patching=patches, pca=pca_summary, attention=attended)
display(amap[["answer_digit", "role", "node", "supported_by", "confidence", "evidence"]])
roles = digit_roles(amap)
for answer_digit in task.answer_digit_names():
    found = roles.get(answer_digit, {})
    text = "; ".join(f"{role} by {', '.join(found_nodes)}" for role, found_nodes in found.items())
    print(f"{answer_digit}: {text or 'no node is credited with any sub-task'}.")

# %% [markdown]
# ## 11. What the 1-layer model cannot do: carry cascades
#
# A carry that cascades through several sum-9 pairs (`445+555=1000`, `06665+03335=010000`) has to be
# known at the position predicting the top digit, but one attention layer can only read the digits
# themselves, not a carry computed from them. The published 1-layer model got about 25% of cascades
# right. Here accuracy is measured on question sets with a UseSum9 cascade of each exact depth.

# %% tags=["figure"]
tables = [random_table.assign(source="random")]
for depth in range(1, n):
    depth_set = make_question_set(task, f"cascade_depth_{depth}", QUESTIONS, seed=0)
    tables.append(accuracy_table(evaluate(model, depth_set.batch)).assign(source=depth_set.name))
hard = make_question_set(task, "published_hard", min(QUESTIONS, 200), seed=0)
hard_result = evaluate(model, hard.batch)
tables.append(accuracy_table(hard_result).assign(source=hard.name))
accuracies = pd.concat(tables, ignore_index=True)
random_depths = accuracies[(accuracies["source"] == "random") & (accuracies["group_kind"] == "cascade_depth")]
depth_zero = random_depths[random_depths["group"] == "0"].iloc[0]
by_depth = pd.DataFrame(
    [{"cascade_depth": 0, "questions": depth_zero.questions, "accuracy": depth_zero.accuracy}]
    + [{"cascade_depth": int(row.source.rsplit("_", 1)[1]), "questions": row.questions, "accuracy": row.accuracy}
       for row in accuracies[accuracies["source"].str.startswith("cascade_depth_")
                             & (accuracies["group_kind"] == "overall")].itertuples()])
px.bar(by_depth, x="cascade_depth", y="accuracy", text=[pct(a) for a in by_depth["accuracy"]],
       hover_data=["questions"], range_y=[0, 1.05], labels={"cascade_depth": "cascade depth"},
       title="Accuracy by UseSum9 cascade depth (depth 0 from random questions)")

# %% tags=["interpretation"]
steps = ", ".join(f"{pct(row.accuracy)} at depth {row.cascade_depth}" for row in by_depth.itertuples())
print(f"Accuracy by UseSum9 cascade depth: {steps}. On the published hard cases it is "
      f"{pct(hard_result.accuracy)} ({hard_result.failures} of {len(hard_result)} wrong).")
display(failure_table(hard_result, task, limit=8))
display(failed_cases(accuracies))

# %% [markdown]
# The bundled models make the contrast: `add_d5_l2` has a second layer, which can read a carry that the
# first layer computed, and it was trained on Sum9-enriched questions. Here are the same cascade sets
# for this model and every other bundled model for this many digits.

# %% tags=["figure"]
this_model = MODEL or (bundled if USE_BUNDLED and bundled in bundled_model_names() else "this run")
contenders = {f"{this_model} (this notebook)": model}
for name in bundled_model_names():
    if name.startswith(f"add_d{n}_") and name != this_model:
        contenders[name] = load_run(name).model(DEVICE)
cascade_sets = [make_question_set(task, f"cascade_depth_{depth}", QUESTIONS, seed=0) for depth in range(1, n)]
side_by_side = pd.DataFrame([
    {"model": label, "cascade_depth": depth, "accuracy": evaluate(candidate, depth_set.batch).accuracy}
    for label, candidate in contenders.items()
    for depth, depth_set in enumerate(cascade_sets, start=1)
])
px.bar(side_by_side, x="cascade_depth", y="accuracy", color="model", barmode="group", range_y=[0, 1.05],
       labels={"cascade_depth": "cascade depth"}, title="Accuracy on UseSum9 cascades, model by model")

# %% tags=["interpretation"]
for label, rows in side_by_side.groupby("model", sort=False):
    shown = ", ".join(f"{pct(row.accuracy)} at depth {row.cascade_depth}" for row in rows.itertuples())
    print(f"{label}: {shown}.")

# %% [markdown]
# ## 12. Subtraction: the same toolkit on the next operation
#
# The published follow-up work went on to subtraction. `--op sub` (or `ModelConfig(op="sub")`) trains on
# `12345-67890=-055545`: after `=` a sign token (`+` for answers of 0 or more, `-` below 0), then the n+1
# digits of |x - y|. The sub-tasks are computed on the larger operand a minus the smaller b: MakeBorrow
# (MB, a_d < b_d), MakeZero (MZ, a_d == b_d, which passes a borrow on, as a sum of 9 passes a carry),
# UseBorrow and the borrow cascade depth. Every analysis above takes a subtraction model and names its
# tables so. Here is one: the bundled 2-layer `sub_d5_l2` when it fits these settings, or a model
# trained here.

# %%
sub_task = SubtractionTask(n)
sub_bundled = f"sub_d{n}_l2"
if USE_BUNDLED and MODEL is None and sub_bundled in bundled_model_names():
    sub_run = load_run(sub_bundled)
    print(f"Loaded the bundled model {sub_bundled}.")
else:
    sub_config = RunConfig(
        model=ModelConfig(n_digits=n, n_layers=2, d_model=D_MODEL, n_heads=N_HEADS, d_mlp=D_MLP, op="sub",
                          normalization="LN", seed=SEED),
        train=TrainConfig.from_recipe("fast", steps=SUB_STEPS, seed=SEED, device=DEVICE, enrich_fraction=0.6,
                                      checkpoint_every=max(SUB_STEPS // 4, 1)),
    )
    sub_dir = Path(tempfile.mkdtemp(prefix="arithlens_sub_")) / "run"
    started = time.perf_counter()
    sub_run = arithlens.train(sub_config, sub_dir, progress=False)
    print(f"Trained a subtraction model for {SUB_STEPS} steps in {time.perf_counter() - started:.0f} s.")
sub_model = sub_run.model(DEVICE)
print(predict(sub_model, sub_task.questions(make_question_set(sub_task, "published_hard", 4).batch)))
display(pd.DataFrame(batch_records(sub_task, make_question_set(sub_task, "negative", 3, seed=2).batch)))

# %% tags=["figure"]
depth_names = [name for name in question_set_names(sub_task) if name.startswith("borrow_cascade_depth_")]
sub_sets = ["positive", "negative", "zero", *depth_names]
sub_accuracy = pd.DataFrame([{"question set": name,
                              "accuracy": evaluate(sub_model, make_question_set(sub_task, name, QUESTIONS).batch).accuracy}
                             for name in sub_sets])
px.bar(sub_accuracy, x="question set", y="accuracy", range_y=[0, 1.05],
       title="Subtraction accuracy by sign of the answer and by borrow cascade depth")

# %% tags=["figure"]
sub_batch = make_question_set(sub_task, "random", QUESTIONS, seed=0).batch
sub_nodes = node_ablation(sub_model, sub_batch)
analysis_plots.node_effect_heatmaps(sub_nodes, sub_task, value="accuracy_delta")

# %% tags=["interpretation"]
sub_useful = useful_nodes(sub_model, sub_batch, ablation=sub_nodes)
worst = sub_accuracy.sort_values("accuracy").iloc[0]
print(f"The subtraction model is weakest on the {worst['question set']} set ({pct(worst['accuracy'])}); "
      f"{len(sub_useful)} nodes are useful, and the classes its ablation table names are "
      f"{', '.join(sorted(set(sub_nodes['subtask_class'])))} (BD: no borrow in; UB: a borrow in; UZ: a borrow "
      f"into an equal pair, which passes it on).")

# %% [markdown]
# ## Where next
#
# * `arithlens run` does all of this from the command line and writes an offline `report.html`;
#   from Python, `arithlens.analysis.analyze_run(run.path)` writes every table above into the run
#   folder and `arithlens.report.build_report(run.path)` the page.
# * `arithlens run --op sub` and `--op mixed` run the whole job on subtraction, or on both operations in
#   one model (`--init-from add_d5_l2` starts it from the addition model, as the published mixed model did).
# * `notebooks/your_own_experiment.ipynb` is a short notebook for your own ablations and patches by hook name.
# * Set `N_LAYERS = 2` to retell the story with the bundled 2-layer model `add_d5_l2`, which gets
#   cascades right (the published 2-layer model answered a million questions with no error), or set
#   `USE_BUNDLED = False` as well to train one yourself (it needs many more steps and Sum9-enriched
#   data; the README gives the command `add_d5_l2` was trained with).
