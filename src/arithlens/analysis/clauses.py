"""Hypothesis clauses tested causally: patch the nodes a clause names between questions that differ in its sub-task.

The published work tests "algorithm clauses" by filtering tagged nodes. Here
each clause (see `arithlens.analysis.hypotheses` for the format) gets
question pairs from `patching.make_patch_pairs` that differ in exactly the
sub-task it names, and one intervention:

- a "patch" test (the clause's own sub-task of A_d): run the corrupted
  questions with the clean activations of the clause's nodes written in, all
  at once (every head and the MLP at a position, in every layer; the named
  nodes; or, with `attends_to`, the heads at the position that put at least
  `min_attention` of their mean attention, over the clean questions, on the
  named positions). The evidence is patching's: `net_flips`, the share of
  pairs whose patched A_d is exactly the clean answer digit minus the share
  that give it unpatched, with Newcombe's 95% interval, and `recovery` of the
  clean-vs-corrupted logit difference.
- an "invariance" test (an absent clause about another digit's sub-task):
  the pairs whose true A_d is the same in both questions; the evidence is
  `changed`, the share whose predicted A_d the intervention moves (Wilson
  95% interval): patched against unpatched, or, with no place named, the
  clean question against the corrupted one.

Verdicts. "computed": **strong** when the net flip rate's interval lies above
`STRONG_NET` (0.5: most pairs give exactly the clean digit, net of the
baseline), **weak** when it lies above 0 (the patch moves A_d to the clean
digit on more pairs than chance), else **fail**. "absent": the effect (net
flips, or `changed`) is **strong** when its interval lies within the clause's
± `margin` (an equivalence test: the intervention does nothing that large),
**fail** when it lies wholly beyond the margin, and **weak** when it cannot
be told from the margin either way. A clause whose heads are picked by
attention fails when no head reaches `min_attention`. Strong and weak pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge import TransformerBridge

from arithlens.analysis.hypotheses import Clause, ClauseError, Hypotheses, ResolvedClause, resolve_clauses
from arithlens.analysis.naming import node_name
from arithlens.analysis.patching import (
    DEFAULT_PAIRS,
    pair_metrics,  # the same logit difference patching.parquet reports, so the two tables agree
    make_patch_pairs,
    paired_difference_interval,
    wilson_interval,
)
from arithlens.errors import ArithlensError
from arithlens.model import model_config_of
from arithlens.task import AdditionBatch, AdditionTask

STRONG_NET = 0.5
VERDICTS = ("strong", "weak", "fail")
CLAUSE_COLUMNS = ["clause", "answer_digit", "subtask", "pair", "expect", "test", "nodes", "claim", "pairs",
                  "clean_correct", "baseline_flips", "flips", "net_flips", "net_flips_ci_low", "net_flips_ci_high",
                  "recovery", "changed", "changed_ci_low", "changed_ci_high", "margin", "verdict", "reason"]
_OVERSAMPLE = 32  # invariance pairs keep A_d only about 1 time in 9 (a carry-out changed with the units kept)


def computed_verdict(net_ci_low: float, strong: float = STRONG_NET) -> str:
    """strong / weak / fail for a "computed" clause from the low end of its net flip rate's 95% interval."""
    if net_ci_low > strong:
        return "strong"
    return "weak" if net_ci_low > 0 else "fail"


def absent_verdict(ci_low: float, ci_high: float, margin: float) -> str:
    """strong / weak / fail for an "absent" clause from the 95% interval of its effect (an equivalence test)."""
    if -margin <= ci_low and ci_high <= margin:
        return "strong"
    if ci_low > margin or ci_high < -margin:
        return "fail"
    return "weak"


@dataclass
class _PairRun:
    """One pair set run once: clean activations, and both runs' logits at the positions up to the target."""

    clean: AdditionBatch
    corrupted: AdditionBatch
    cache: dict[str, torch.Tensor]
    clean_logits: torch.Tensor
    corrupted_logits: torch.Tensor


def _pair_set(task: AdditionTask, clause: ResolvedClause, count: int, seed: int, source: str
              ) -> tuple[AdditionBatch, AdditionBatch]:
    """The clause's questions: its pair kind, filtered for an invariance test to pairs that keep A_d's true value."""
    if clause.test == "patch":
        pairs = make_patch_pairs(task, clause.kind, clause.digit, count, seed)
        return pairs.clean, pairs.corrupted
    pairs = make_patch_pairs(task, clause.kind, clause.pair_digit, max(_OVERSAMPLE * count, 512), seed)
    column = task.question_len + task.n_digits - clause.digit
    keep = (pairs.clean.tokens[:, column] == pairs.corrupted.tokens[:, column]).nonzero().squeeze(1)[:count]
    if len(keep) == 0:
        raise ClauseError(f"{source} clause {clause.label}: no question pair varies {clause.kind} of pair "
                          f"{clause.pair} without changing A{clause.digit}'s true value, so its absence cannot be "
                          f"tested; name another pair, or leave the clause out")
    return pairs.clean.select(keep), pairs.corrupted.select(keep)


def _run(model: TransformerBridge, clean: AdditionBatch, corrupted: AdditionBatch, target: int) -> _PairRun:
    device = model.W_U.device
    # The model is causal: nothing after the target reaches its logits.
    with torch.inference_mode():
        logits, cache = model.run_with_cache(
            clean.tokens[:, : target + 1].to(device),
            names_filter=lambda name: name.endswith(("attn.hook_z", "hook_mlp_out", "attn.hook_pattern")))
        corrupted_logits = model(corrupted.tokens[:, : target + 1].to(device))
    return _PairRun(clean, corrupted, {name: cache[name] for name in cache.keys()}, logits, corrupted_logits)


def _patched_logits(model: TransformerBridge, run: _PairRun, sites: Sequence[tuple[int, int, int | None]],
                    target: int) -> torch.Tensor:
    """The corrupted run with every site's clean activation written in at once (hook_z per head, mlp_out)."""
    by_hook: dict[str, list[tuple[int, int | None]]] = {}
    for position, layer, head in sites:
        hook = f"blocks.{layer}.hook_mlp_out" if head is None else f"blocks.{layer}.attn.hook_z"
        by_hook.setdefault(hook, []).append((position, head))

    def writer(name: str, places: list[tuple[int, int | None]]):  # noqa: ANN202 - a TransformerLens hook
        source = run.cache[name]

        def write(activation: torch.Tensor, hook: HookPoint) -> torch.Tensor:
            for position, head in places:
                if head is None:
                    activation[:, position] = source[:, position]
                else:
                    activation[:, position, head] = source[:, position, head]
            return activation
        return write

    tokens = run.corrupted.tokens[:, : target + 1].to(model.W_U.device)
    hooks = [(name, writer(name, places)) for name, places in by_hook.items()]
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        return model(tokens)


def _attending_heads(run: _PairRun, clause: ResolvedClause, n_layers: int) -> tuple[list[tuple[int, int, int]], str]:
    """Heads at the clause's position whose mean attention on its keys reaches min_attention; the weights in words."""
    weights = []
    for layer in range(n_layers):
        pattern = run.cache[f"blocks.{layer}.attn.hook_pattern"][:, :, clause.position]  # [batch, head, key]
        share = pattern[:, :, list(clause.keys)].sum(-1).mean(0)  # [head]
        weights += [(float(w), (clause.position, layer, head)) for head, w in enumerate(share.tolist())]
    weights.sort(key=lambda item: -item[0])
    picked = [site for weight, site in weights if weight >= clause.clause.min_attention]
    words = ", ".join(f"{node_name(*site)} {weight:.0%}" for weight, site in weights[: max(len(picked), 1)])
    return picked, words


def _row(clause: ResolvedClause, run: _PairRun, patched: torch.Tensor | None, nodes: str,
         note: str) -> dict[str, object]:
    """The evidence and the verdict of one clause (`patched` None: no head qualified, nothing patched)."""
    task = AdditionTask(run.clean.n_digits)
    column = task.question_len + task.n_digits - clause.digit
    clean_digit, corrupt_digit = run.clean.tokens[:, column], run.corrupted.tokens[:, column]
    target = clause.target
    predicted = {name: logits[:, target, :10].argmax(-1).cpu() for name, logits in
                 (("clean", run.clean_logits), ("corrupted", run.corrupted_logits))}
    pairs = len(run.clean)
    nan = float("nan")
    row: dict[str, object] = {
        "clause": clause.clause.name or clause.label, "answer_digit": f"A{clause.digit}", "subtask": clause.kind,
        "pair": clause.pair, "expect": clause.clause.expect, "test": clause.test, "nodes": nodes,
        "claim": clause.clause.claim, "pairs": pairs,
        "clean_correct": float((predicted["clean"] == clean_digit).float().mean()),
        "baseline_flips": nan, "flips": nan, "net_flips": nan, "net_flips_ci_low": nan, "net_flips_ci_high": nan,
        "recovery": nan, "changed": nan, "changed_ci_low": nan, "changed_ci_high": nan,
        "margin": clause.clause.margin if clause.clause.expect == "absent" else nan,
    }
    if patched is None:
        row.update(verdict="fail", reason=note)
        return row
    moved = patched[:, target, :10].argmax(-1).cpu()
    changed = moved != predicted["corrupted"]
    low, high = wilson_interval(changed.sum(), pairs)
    row.update(changed=float(changed.float().mean()), changed_ci_low=float(low), changed_ci_high=float(high))
    if clause.test == "patch":
        metric = pair_metrics(target, clean_digit.to(patched.device), corrupt_digit.to(patched.device))["logit_diff"]
        clean_ld, corrupt_ld = (float(metric(run.clean_logits).mean()), float(metric(run.corrupted_logits).mean()))
        span = clean_ld - corrupt_ld
        flips, baseline = moved == clean_digit, predicted["corrupted"] == clean_digit
        net_low, net_high = paired_difference_interval(flips, baseline)
        net = float(flips.float().mean() - baseline.float().mean())
        row.update(baseline_flips=float(baseline.float().mean()), flips=float(flips.float().mean()), net_flips=net,
                   net_flips_ci_low=float(net_low), net_flips_ci_high=float(net_high),
                   recovery=(float(metric(patched).mean()) - corrupt_ld) / span if abs(span) > 1e-9 else nan)
        effect, effect_low, effect_high = "net flips", float(net_low), float(net_high)
        evidence = (f"{row['flips']:.0%} of pairs give the clean A{clause.digit}, "
                    f"{row['baseline_flips']:.0%} unpatched: net {net:+.0%} "
                    f"(95% CI {effect_low:+.0%} to {effect_high:+.0%})")
    else:
        effect, effect_low, effect_high = "changed", float(low), float(high)
        evidence = (f"A{clause.digit} moves on {row['changed']:.0%} of pairs that keep its true value "
                    f"(95% CI {effect_low:.0%} to {effect_high:.0%})")
    if clause.clause.expect == "computed":
        verdict = computed_verdict(effect_low)
        rule = f"CI low above {STRONG_NET:.0%}" if verdict == "strong" else (
            "CI above 0" if verdict == "weak" else "CI reaches 0")
    else:
        margin = clause.clause.margin
        verdict = absent_verdict(effect_low, effect_high, margin)
        rule = {"strong": f"within ±{margin:.0%}", "fail": f"beyond ±{margin:.0%}",
                "weak": f"cannot be told from ±{margin:.0%}"}[verdict]
    row.update(verdict=verdict, reason=f"{note}{evidence}; {effect} {rule}: {verdict}")
    return row


def evaluate_clauses(model: TransformerBridge, clauses: Hypotheses | Sequence[Clause], *, pairs: int = DEFAULT_PAIRS,
                     seed: int = 0) -> pd.DataFrame:
    """Test every clause causally on `pairs` question pairs each; one row per clause (columns `CLAUSE_COLUMNS`).

    Every clause is checked against the model and its questions built before
    any model run, so a bad clause fails fast with a `ClauseError`. Clauses
    that share a pair set (sub-task, answer digit) share its runs.
    """
    if not isinstance(pairs, int) or isinstance(pairs, bool) or pairs < 1:
        raise ArithlensError(f"pairs must be an integer >= 1, got {pairs!r}")
    config = model_config_of(model)
    if config.op != "add":
        raise ArithlensError(f"hypothesis clauses are written in addition's sub-tasks and token layout, and this is "
                             f"a {config.op} model; test it with `arithlens circuit` and the analysis's patching")
    task = AdditionTask(config.n_digits)
    hypotheses = clauses if isinstance(clauses, Hypotheses) else Hypotheses(tuple(clauses))
    resolved = resolve_clauses(hypotheses, config)
    sets: dict[tuple[str, int, int], tuple[AdditionBatch, AdditionBatch]] = {}
    for clause in resolved:
        key = (clause.kind, clause.digit, clause.pair_digit)
        if key not in sets:
            sets[key] = _pair_set(task, clause, pairs, seed, hypotheses.source)
    rows: dict[int, dict[str, object]] = {}
    for key, (clean, corrupted) in sets.items():
        group = [(index, c) for index, c in enumerate(resolved) if (c.kind, c.digit, c.pair_digit) == key]
        run = _run(model, clean, corrupted, group[0][1].target)  # one run per pair set, freed after its clauses
        for index, clause in group:
            rows[index] = _evaluate(model, clause, run, config.n_layers)
    return pd.DataFrame([rows[index] for index in range(len(resolved))], columns=CLAUSE_COLUMNS)


def _evaluate(model: TransformerBridge, clause: ResolvedClause, run: _PairRun, n_layers: int) -> dict[str, object]:
    """One clause's row: pick its heads by attention if it asks to, patch, and judge."""
    note, sites = "", clause.sites
    if clause.keys:
        heads, words = _attending_heads(run, clause, n_layers)
        if not heads:
            return _row(clause, run, None, "", f"no head at P{clause.position} puts {clause.clause.min_attention:.0%} "
                                               f"of its attention on {', '.join(clause.clause.attends_to)} "
                                               f"(the most: {words})")
        sites, note = tuple(heads), f"attention on {', '.join(clause.clause.attends_to)}: {words}; "
    if sites is None:  # the whole question: the clean run is the intervention
        return _row(clause, run, run.clean_logits, "whole question", note)
    patched = _patched_logits(model, run, sites, clause.target)
    return _row(clause, run, patched, ", ".join(node_name(*site) for site in sites), note)


def clause_counts(frame: pd.DataFrame) -> dict[str, object]:
    """Counts by verdict: total, passed, strong, weak, fail, "text" ("X of Y clauses passed (S strong, W weak)")
    and "failed" (the failed clauses' names)."""
    counts = {verdict: int((frame["verdict"] == verdict).sum()) for verdict in VERDICTS}
    passed = counts["strong"] + counts["weak"]
    return {"total": len(frame), "passed": passed, **counts,
            "text": f"{passed} of {len(frame)} clauses passed ({counts['strong']} strong, {counts['weak']} weak)",
            "failed": frame.loc[frame["verdict"] == "fail", "clause"].tolist()}


def clause_records(frame: pd.DataFrame) -> list[dict[str, object]]:
    """The rows as JSON-safe dicts (NaN becomes None), for --json and summary.json."""
    return [{key: (None if isinstance(value, float) and value != value else value) for key, value in row.items()}
            for row in frame.astype(object).to_dict("records")]


def clause_display(frame: pd.DataFrame) -> pd.DataFrame:
    """The table as people read it: one evidence column in words, percentages, the verdict last."""
    def evidence(row: pd.Series) -> str:
        if row["test"] == "patch" and row["net_flips"] == row["net_flips"]:
            return (f"net flips {row['net_flips']:+.0%} (CI {row['net_flips_ci_low']:+.0%} to "
                    f"{row['net_flips_ci_high']:+.0%})")
        if row["changed"] == row["changed"]:
            return f"moves {row['changed']:.0%} (CI {row['changed_ci_low']:.0%} to {row['changed_ci_high']:.0%})"
        return str(row["reason"])

    return pd.DataFrame({
        "clause": frame["clause"], "digit": frame["answer_digit"], "subtask": frame["subtask"], "pair": frame["pair"],
        "expect": [e if e == "computed" else f"absent (±{m:.0%})" for e, m in zip(frame["expect"], frame["margin"])],
        "patched": frame["nodes"].where(frame["nodes"] != "", "nothing"), "pairs": frame["pairs"],
        "evidence": [evidence(row) for _, row in frame.iterrows()],
        "recovery": ["" if r != r else f"{r:.2f}" for r in frame["recovery"]],
        "clean accuracy": [f"{c:.0%}" for c in frame["clean_correct"]], "verdict": frame["verdict"],
    })


def clause_summary(frame: pd.DataFrame, file: str) -> dict[str, object]:
    """summary.json's "clauses": the file tested, `clause_counts` and every row."""
    return {"file": file, **clause_counts(frame), "rows": clause_records(frame)}
