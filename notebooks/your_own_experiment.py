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
# # Your own experiment
#
# A short template: load a model, pick a question set, ablate or patch anything by its
# TransformerLens hook name, and plot what changes. `notebooks/addition_walkthrough.ipynb` tells the
# whole story; this one is for trying things. Set up with `bash scripts/setup.sh` from the repository
# root and use the `.venv` kernel.
#
# *This notebook is kept as `your_own_experiment.py`, a Jupytext percent-format script: that file is
# the source, and this `.ipynb` is written from it, without outputs, by `jupytext --sync notebooks/*.py`.*

# %%
import tempfile
from pathlib import Path

import pandas as pd
import plotly.express as px
import torch
from IPython.display import display

import arithlens
from arithlens import AdditionTask, ModelConfig, RunConfig, TrainConfig
from arithlens.analysis import ablate, make_question_set, question_set_names
from arithlens.model import predicted_digits
from arithlens.runs import bundled_model_names, load_run

# %% [markdown]
# ## Settings
#
# With `MODEL = None` the bundled `add_d5_l1` is used when installed; otherwise a small model is
# trained here (about a minute on a CPU: fine for trying things, not fully trained).

# %% tags=["parameters"]
MODEL = None                      # a run folder or bundled model name; None: bundled add_d5_l1, else train
USE_BUNDLED = True
RUN_DIR = None                    # where to train if training; None: a temporary folder
N_DIGITS = 5                      # the model to train if there is none to load
STEPS = 1500
D_MODEL = 128
N_HEADS = 4
D_MLP = 512
LR = 1e-3
QUESTION_SET = "use_sum9"         # see the list printed below
COUNT = 500
HOOK_NAME = "blocks.0.attn.hook_z"
HEAD = "auto"                     # a head number; None: every head; "auto": the head whose ablation costs most
ANSWER_DIGIT = 1                  # ablate at the position that predicts this digit (0 = units) ...
POSITION = None                   # ... unless a position is given here; None and ANSWER_DIGIT None: all positions
METHOD = "mean"                   # zero, mean or resample
PATCH_FROM = "base_add"           # patch activations from this question set into QUESTION_SET

# %%
if MODEL is not None:
    run = load_run(MODEL)
elif USE_BUNDLED and "add_d5_l1" in bundled_model_names():
    run = load_run("add_d5_l1")
else:
    run_dir = Path(RUN_DIR) if RUN_DIR else Path(tempfile.mkdtemp(prefix="arithlens_")) / "run"
    config = RunConfig(model=ModelConfig(n_digits=N_DIGITS, d_model=D_MODEL, n_heads=N_HEADS, d_mlp=D_MLP),
                       train=TrainConfig(steps=STEPS, lr=LR, checkpoint_every=STEPS))
    run = load_run(run_dir) if (run_dir / "model.safetensors").is_file() else arithlens.train(config, run_dir, progress=False)
model = run.model()
task = AdditionTask(run.config.model.n_digits)
n = task.n_digits
position = POSITION if POSITION is not None or ANSWER_DIGIT is None else task.logit_position_for_answer_digit(ANSWER_DIGIT)
print(f"{run.path}: {run.config.model}")
print("question sets:", ", ".join(question_set_names(n)))
classic = [name for name in model.hook_dict  # the bridge also has aliases such as blocks.0.attn.o.hook_in
           if name.startswith("blocks.0.") and name.count(".") <= 3 and not name.endswith(("hook_in", "hook_out"))]
print("hook names:", ", ".join(sorted(classic)))

# %%
questions = make_question_set(task, QUESTION_SET, COUNT, seed=0)
print(f"{questions.name}: {questions.description}")
print("\n".join(task.decode(questions.batch.tokens[:5])))

# %% [markdown]
# ## Ablate by hook name
#
# `ablate` replaces the hook's activation (one head and/or one position of it, or all of it) with its
# mean over the `reference` questions (or zero, or a reference question's value) and reports loss and
# accuracy per answer digit and sub-task class: BA (no carry in), UC1 (a carry in, the pair does not
# sum to 9) and US9 (a carry into a pair summing to 9).
#
# The reference here is a set of uniformly random questions, not `QUESTION_SET` itself: the mean over
# the tested questions is not neutral, because over a narrow set (only cascades, say) it already
# encodes their answer, and "ablating" can then even raise accuracy.
#
# With `HEAD = "auto"` the cell below first ablates each head in turn (for hooks that have heads) and
# keeps the one whose ablation costs the chosen answer digit the most accuracy, so the default
# experiment looks at a head that matters.

# %%
reference = make_question_set(task, "random", COUNT, seed=1).batch  # the mean (or resampled values) come from here
with torch.no_grad():
    _, probe = model.run_with_cache(questions.batch.tokens[:1], names_filter=HOOK_NAME)
pattern_like = HOOK_NAME.endswith(("hook_pattern", "hook_attn_scores"))  # [batch, head, query, key]
n_hook_heads = probe[HOOK_NAME].shape[1 if pattern_like else 2] if probe[HOOK_NAME].ndim == 4 else 0
target = f"A{ANSWER_DIGIT}" if ANSWER_DIGIT is not None else "all"  # "all": whole-question accuracy
if HEAD == "auto" and n_hook_heads:
    costs = pd.Series({
        candidate: ablate(model, questions.batch, HOOK_NAME, method=METHOD, head=candidate, position=position,
                          reference=reference)
                   .set_index(["answer_digit", "subtask_class"]).loc[(target, "all"), "accuracy_delta"]
        for candidate in range(n_hook_heads)})
    head = int(costs.idxmin())
    print(f"Accuracy change of {target} when {METHOD}-ablating each head of {HOOK_NAME} at position {position}: "
          + ", ".join(f"head {h} {100 * cost:+.1f} points" for h, cost in costs.items()) + f"; using head {head}.")
else:
    head = None if HEAD == "auto" else HEAD

# %% tags=["figure"]
effects = ablate(model, questions.batch, HOOK_NAME, method=METHOD, head=head, position=position, reference=reference)
display(effects)
grid = effects[effects["answer_digit"] != "all"].pivot(index="subtask_class", columns="answer_digit",
                                                       values="accuracy_delta")
px.imshow(grid[task.answer_digit_names()], color_continuous_scale="RdBu", color_continuous_midpoint=0.0,
          zmin=-1, zmax=1, text_auto=".1%",
          title=f"Accuracy change, {METHOD}-ablating {HOOK_NAME} (head {head}, position {position})")

# %% tags=["interpretation"]
where = HOOK_NAME + (f" head {head}" if head is not None else "") + (f" at position {position}" if position is not None else "")
replaced_by = {"mean": " (replaced by its mean over random questions)",
               "resample": " (replaced by random questions' values)"}.get(METHOD, "")
whole = effects[effects["answer_digit"] == "all"].iloc[0]
worst = effects[effects["answer_digit"] != "all"].sort_values("accuracy_delta").iloc[0]
sentence = (f"{METHOD.capitalize()}-ablating {where}{replaced_by} changes whole-question accuracy on {questions.name} "
            f"by {100 * whole.accuracy_delta:+.1f} points (to {100 * whole.accuracy:.1f}%)")
if worst.accuracy_delta < 0:
    group = worst.answer_digit + ("" if worst.subtask_class == "all" else f" {worst.subtask_class}")
    print(f"{sentence}; the largest drop is {group}, from {100 * (worst.accuracy - worst.accuracy_delta):.1f}% "
          f"to {100 * worst.accuracy:.1f}% ({100 * worst.accuracy_delta:+.1f} points).")
else:
    print(f"{sentence}; no answer digit loses accuracy, so this site does not matter for these questions "
          f"(try another HEAD, ANSWER_DIGIT or HOOK_NAME).")

# %% [markdown]
# ## Patch by hook name, with your own hook
#
# Run `QUESTION_SET` while writing in the activations of the same hook (same head and position) from
# `PATCH_FROM` questions, row by row. Edit `patch` to try anything else: scale it, add a direction, ...

# %% tags=["figure"]
source = make_question_set(task, PATCH_FROM, COUNT, seed=1)
with torch.no_grad():
    _, source_cache = model.run_with_cache(source.batch.tokens, names_filter=HOOK_NAME)
stored = source_cache[HOOK_NAME]


def site(value: torch.Tensor) -> tuple:
    """The index of the chosen head / position in an activation of this hook."""
    index = [slice(None)] * value.ndim
    pattern_like = HOOK_NAME.endswith(("hook_pattern", "hook_attn_scores"))  # [batch, head, query, key]
    position_axis, head_axis = (2, 1) if pattern_like else (1, 2 if value.ndim == 4 else None)
    if position is not None:
        index[position_axis] = position
    if head is not None and head_axis is not None:
        index[head_axis] = head
    return tuple(index)


def patch(value: torch.Tensor, hook) -> torch.Tensor:
    value = value.clone()
    value[site(value)] = stored[site(stored)]
    return value


tokens = questions.batch.tokens
with torch.no_grad():
    clean = predicted_digits(model(tokens)[:, 2 * n + 1 : 3 * n + 2])
    patched = predicted_digits(model.run_with_hooks(tokens, fwd_hooks=[(HOOK_NAME, patch)])[:, 2 * n + 1 : 3 * n + 2])
answers = tokens[:, 2 * n + 2 :]
changes = pd.DataFrame({
    "answer_digit": task.answer_digit_names(),
    "prediction changed": (patched != clean).double().mean(0).numpy(),
    "accuracy before": (clean == answers).double().mean(0).numpy(),
    "accuracy after": (patched == answers).double().mean(0).numpy(),
})
px.bar(changes.melt(id_vars="answer_digit"), x="answer_digit", y="value", color="variable", barmode="group",
       range_y=[0, 1.05], labels={"value": "share of questions", "variable": ""},
       title=f"Patching {HOOK_NAME} from {PATCH_FROM} into {QUESTION_SET}")

# %% tags=["interpretation"]
most = changes.sort_values("prediction changed", ascending=False).iloc[0]
print(f"Patching {HOOK_NAME} from {PATCH_FROM} questions changes {100 * most['prediction changed']:.1f}% of the "
      f"predictions of {most.answer_digit} (the digit it moves most), and "
      f"{100 * (patched != clean).any(dim=1).double().mean():.1f}% of whole answers.")

# %% [markdown]
# ## Ideas
#
# * `HOOK_NAME = "blocks.0.hook_resid_post"` with `HEAD = None` ablates a whole position.
# * `HOOK_NAME = "blocks.0.attn.hook_pattern"` edits where a head looks (the query is `position`).
# * `arithlens.analysis.activation_patching` and `arithlens.analysis.node_ablation` sweep every head
#   and MLP at every position.
