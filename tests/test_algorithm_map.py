"""The algorithm map and the failed-case list, from hand-made evidence tables with a known answer."""

from __future__ import annotations

import pandas as pd
import pytest

from arithlens import ArithlensError
from arithlens.analysis.algorithm_map import MAP_COLUMNS, algorithm_map, digit_roles, failed_cases, roles_for

N = 3  # A2 is predicted at position 8, A1 at 9


def ablation_rows(node: str, kind: str, position: int, head: int, digit: str, drops: dict[str, float],
                  baseline: float = 1.0) -> list[dict]:
    return [{"node": node, "kind": kind, "position": position, "layer": 0, "head": head, "answer_digit": digit,
             "subtask_class": cls, "questions": 100, "loss": 1.0, "loss_delta": drop, "accuracy": baseline - drop,
             "accuracy_delta": -drop} for cls, drop in drops.items()]


def patch_row(kind: str, node: str, head: int, recovery: float, *, component: str = "head", digit: str = "A2",
              position: int = 8, span: float = 4.0, clean_correct: float = 1.0, baseline_flips: float = 0.1,
              net_ci: tuple[float, float] | None = None) -> dict:
    flips = min(1.0, baseline_flips + recovery * 0.8)
    net = flips - baseline_flips
    low, high = net_ci if net_ci is not None else (net - 0.05, net + 0.05)
    return {"kind": kind, "answer_digit": digit, "component": component, "layer": 0, "head": head,
            "position": position, "node": node, "recovery": recovery, "flips": flips,
            "baseline_flips": baseline_flips, "net_flips": net, "net_flips_ci_low": low, "net_flips_ci_high": high,
            "clean_logit_diff": span / 2, "corrupted_logit_diff": -span / 2, "clean_correct": clean_correct}


def evidence():
    ablation = pd.DataFrame(
        ablation_rows("P8L0H0", "head", 8, 0, "A2", {"all": 0.5, "BA": 0.5, "UC1": 0.5, "US9": 0.5})  # BaseAdd
        + ablation_rows("P8L0H1", "head", 8, 1, "A2", {"all": 0.2, "BA": 0.0, "UC1": 0.4, "US9": 0.3})  # carry
        + ablation_rows("P8L0H2", "head", 8, 2, "A2", {"all": 0.0, "BA": 0.0, "UC1": 0.0, "US9": 0.0})
        + ablation_rows("P8L0H2", "head", 8, 2, "all", {"all": 0.0})  # whole-question row: never a digit
        + ablation_rows("P9L0H0", "head", 9, 0, "A1", {"all": 0.005, "BA": 0.005, "UC1": 0.0, "US9": 0.0})
        + ablation_rows("P7L0H0", "head", 7, 0, "A3", {"all": 0.3}, baseline=0.4)  # a digit it cannot do
        + ablation_rows("P9L0H1", "head", 9, 1, "A1", {"all": 0.4, "BA": 0.3, "UC1": 0.5, "US9": 0.5})
    )
    patching = pd.DataFrame([
        patch_row("UseSum9", "P8L0H2", 2, 0.8),
        patch_row("MakeSum9", "P8L0H1", 1, 0.5),
        patch_row("MakeCarry1", "P8L0H1", 1, 0.1),
        patch_row("BaseAdd", "P8L0M", -1, 0.9, component="mlp"),
        patch_row("MakeCarry1", "P7L0H0", 0, 5.0, digit="A3", position=7, span=0.1),  # noise over noise
        patch_row("MakeSum9", "P7L0H0", 0, 0.9, digit="A3", position=7, clean_correct=0.2),  # it cannot do A3
    ])
    pca = pd.DataFrame([
        {"answer_digit": "A2", "node": "P8L0H1", "pair_offset": 1, "separation": 3.0, "silhouette": 0.6},
        {"answer_digit": "A2", "node": "P8L0H2", "pair_offset": 2, "separation": 0.5, "silhouette": 0.0},
    ])
    attention = pd.DataFrame([
        {"layer": 0, "head": 1, "query_pos": 8, "query_name": "A3", "rank": 0, "key_pos": 1, "key_name": "D1",
         "weight": 0.45},
        {"layer": 0, "head": 1, "query_pos": 8, "query_name": "A3", "rank": 1, "key_pos": 5, "key_name": "D'1",
         "weight": 0.4},
    ])
    return ablation, patching, pca, attention


def test_roles_per_digit():
    assert roles_for(3, 3) == ["MakeCarry1", "MakeSum9", "UseSum9"]
    assert roles_for(1, 3) == ["BaseAdd", "MakeCarry1"]
    assert roles_for(0, 3) == ["BaseAdd"]


def test_map_claims_follow_the_evidence():
    ablation, patching, pca, attention = evidence()
    frame = algorithm_map(N, ablation, patching=patching, pca=pca, attention=attention)
    assert list(frame.columns) == MAP_COLUMNS
    claims = {(r.answer_digit, r.role, r.node): r for r in frame.itertuples()}
    assert set(claims) == {
        ("A2", "BaseAdd", "P8L0H0"),  # ablation: fails without any carry
        ("A2", "MakeCarry1", "P8L0H1"),  # ablation: fails only with a carry in (patching 0.1 is too weak)
        ("A2", "MakeSum9", "P8L0H1"),  # patching 0.5
        ("A2", "UseSum9", "P8L0H2"),  # patching 0.8
        ("A2", "BaseAdd", "P8L0M"),  # patching 0.9, known only from patching
        ("A1", "BaseAdd", "P9L0H1"),  # fails BA as much as UC1: BaseAdd, not MakeCarry1
    }
    carry = claims[("A2", "MakeCarry1", "P8L0H1")]
    assert carry.supported_by == "ablation" and carry.confidence == 2  # + PCA tri-state of pair D1
    assert "40% with a carry in vs 0% without" in carry.evidence
    assert carry.evidence.startswith("mean-ablating it drops A2")
    recorded = ablation.assign(method="resample", reference="1,000 uniformly random questions (seed 1)")
    text = algorithm_map(N, recorded).set_index(["role", "node"]).loc[("MakeCarry1", "P8L0H1"), "evidence"]
    assert text.startswith("resample-ablating it (against 1,000 uniformly random questions (seed 1)) drops A2")
    assert "tri-state of pair D1" in carry.evidence and "attends to D1 (0.45), D'1 (0.40)" in carry.evidence
    sum9 = claims[("A2", "MakeSum9", "P8L0H1")]
    assert sum9.supported_by == "patching" and sum9.patching_recovery == 0.5 and sum9.confidence == 2
    assert sum9.patching_net_flips == pytest.approx(0.4)
    assert "net of the 10% that flip unpatched" in sum9.evidence and "95% CI 35% to 45%" in sum9.evidence
    use = claims[("A2", "UseSum9", "P8L0H2")]
    assert use.confidence == 1 and use.pca_separation == 0.5  # PCA shown but below the bar
    mlp = claims[("A2", "BaseAdd", "P8L0M")]
    assert (mlp.kind, mlp.position, mlp.head, mlp.attends_to) == ("mlp", 8, -1, "")
    # a 0.5% drop is under the 1% threshold; lowering the threshold makes the claim
    assert not any(key[2] == "P9L0H0" for key in claims)
    lower = algorithm_map(N, ablation, threshold=0.001)
    assert ("A1", "BaseAdd", "P9L0H0") in {(r.answer_digit, r.role, r.node) for r in lower.itertuples()}


def test_map_from_ablation_alone_and_digit_roles():
    ablation, *_ = evidence()
    frame = algorithm_map(N, ablation)
    assert set(frame["supported_by"]) == {"ablation"}
    assert digit_roles(frame) == {"A2": {"BaseAdd": ["P8L0H0"], "MakeCarry1": ["P8L0H1"]}, "A1": {"BaseAdd": ["P9L0H1"]}}
    with pytest.raises(ArithlensError, match="node_ablation"):
        algorithm_map(N, ablation.drop(columns="accuracy_delta"))
    with pytest.raises(ArithlensError):
        algorithm_map(N, ablation, patch_threshold=0)


def accuracy_rows(source: str, kind: str, group: str, questions: int, correct: int) -> dict:
    return {"source": source, "group_kind": kind, "group": group, "questions": questions, "correct": correct,
            "accuracy": correct / questions, "failures": questions - correct, "nines": 0.0}


def test_failed_cases_lists_what_fails_worst_first():
    accuracy = pd.DataFrame([
        accuracy_rows("random", "overall", "all", 10000, 9950),  # overall is not a case
        accuracy_rows("random", "category", "BaseAdd", 3000, 3000),
        accuracy_rows("random", "category", "UseSum9", 2000, 1950),
        accuracy_rows("random", "cascade_depth", "3", 5, 0),  # too few questions to judge
        accuracy_rows("cascade_depth_1", "overall", "all", 300, 297),  # 99%: fine
        accuracy_rows("cascade_depth_2", "overall", "all", 300, 222),  # 74%
        accuracy_rows("cascade_depth_3", "overall", "all", 300, 150),
        accuracy_rows("cascade_depth_2", "category", "UseSum9", 300, 222),  # sets count only overall
    ])
    cases = failed_cases(accuracy)
    assert list(zip(cases["source"], cases["group_kind"], cases["group"])) == [
        ("cascade_depth_3", "overall", "all"),  # 50%
        ("cascade_depth_sets", "cascade_depth_at_least", "2"),  # (222 + 150) / 600 = 62%
        ("cascade_depth_2", "overall", "all"),  # 74%
        ("cascade_depth_sets", "cascade_depth_at_least", "1"),  # 669 / 900 = 74.3%
        ("random", "category", "UseSum9")]
    depth2 = cases[cases["group_kind"] == "cascade_depth_at_least"].set_index("group")
    assert depth2.loc["2", "questions"] == 600 and depth2.loc["2", "accuracy"] == pytest.approx(372 / 600)
    assert depth2.loc["1", "accuracy"] == pytest.approx(669 / 900)
    assert cases.iloc[2]["description"] == "the cascade_depth_2 question set: 74.0% correct, 26.0% fail (300 questions)"
    assert depth2.loc["2", "description"].startswith("UseSum9 cascades of depth >= 2: 62.0% correct")
    assert cases.iloc[-1]["description"] == "UseSum9 questions: 97.5% correct, 2.5% fail (2000 questions)"
    assert failed_cases(accuracy, min_accuracy=0.4).empty
    with pytest.raises(ArithlensError):
        failed_cases(accuracy.drop(columns="source"))


def test_patching_claims_need_net_flips_whose_interval_excludes_zero():
    """54% of pairs flipping is no evidence when 46% flip with no patch at all."""
    ablation, *_ = evidence()
    patching = pd.DataFrame([
        patch_row("UseSum9", "P8L0H2", 2, 0.8, baseline_flips=0.46, net_ci=(-0.05, 0.21)),  # recovery alone
        patch_row("MakeSum9", "P8L0H1", 1, 0.5, baseline_flips=0.46, net_ci=(0.25, 0.55)),
    ])
    frame = algorithm_map(N, ablation, patching=patching)
    claims = {(r.answer_digit, r.role, r.node): r for r in frame.itertuples()}
    assert ("A2", "UseSum9", "P8L0H2") not in claims
    sum9 = claims[("A2", "MakeSum9", "P8L0H1")]
    assert sum9.supported_by == "patching"
    assert sum9.patching_net_flips == pytest.approx(0.4) and "patching_flips" not in frame.columns
    assert "net of the 46% that flip unpatched" in sum9.evidence
    with pytest.raises(ArithlensError, match="net_flips"):
        algorithm_map(N, ablation, patching=patching.drop(columns=["net_flips_ci_low"]))
