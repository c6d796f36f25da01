"""Analyses of trained addition models, each a function over a model and a question set.

Question sets and outcomes:   make_question_set, question_set_names, evaluate, random_accuracy,
                              accuracy_table, failure_table, failure_patterns, failure_pattern_summary, nines
Ablation and useful nodes:    ablate, node_ablation, position_ablation, useful_positions, useful_nodes,
                              nodes_table, node_name, parse_node_name; default_reference,
                              is_uniformly_random, NarrowReferenceWarning (the ablation reference)
Attention:                    attention_patterns, mean_attention_by_class, attention_examples, top_attended
Logit lens and DLA:           analysis_cache, logit_lens, direct_logit_attribution, head_source_attribution
Activation patching:          make_patch_pairs, activation_patching; patch_pair (one pair, one node)
PCA:                          head_output_pca, pca, cluster_separation, tri_state
Training dynamics:            phase_changes, detect_phase_changes, subtask_changes, compare_checkpoints
Algorithm map:                algorithm_map, failed_cases
Does the map explain it:      score_circuit, map_circuit, faithfulness, completeness, minimality, circuit_nodes
                              (node sets scored by mean ablation, as MIB / EAP-IG do; see circuit)
                              path_patching_edges, top_edges (layer-to-layer edges of a map; see edges)
Hypothesis tests:             Clause, read_hypotheses, parse_hypotheses, published_clauses, evaluate_clauses
                              (algorithm claims tested causally by patching; see hypotheses and clauses)
Everything for a run folder:  analyze_run, load_analysis
"""

from __future__ import annotations

from arithlens.analysis.ablation import ablate, node_ablation, position_ablation
from arithlens.analysis.accuracy import (
    EvalResult,
    accuracy_table,
    evaluate,
    failure_pattern_summary,
    failure_patterns,
    failure_table,
    nines,
    random_accuracy,
)
from arithlens.analysis.algorithm_map import ROLES, algorithm_map, digit_roles, failed_cases
from arithlens.analysis.edges import path_patching_edges, top_edges
from arithlens.analysis.circuit import (
    circuit_nodes,
    completeness,
    faithfulness,
    map_circuit,
    minimality,
    score_circuit,
)
from arithlens.analysis.attention import (
    attention_examples,
    attention_patterns,
    circuitsvis_html,
    mean_attention_by_class,
    top_attended,
)
from arithlens.analysis.attribution import (
    analysis_cache,
    digit_class_masks,
    direct_logit_attribution,
    head_source_attribution,
    logit_lens,
    logit_lens_logits,
)
from arithlens.analysis.clauses import evaluate_clauses
from arithlens.analysis.dynamics import (
    PhaseChange,
    compare_checkpoints,
    detect_phase_changes,
    phase_changes,
    subtask_changes,
)
from arithlens.analysis.hypotheses import Clause, ClauseError, parse_hypotheses, published_clauses, read_hypotheses
from arithlens.analysis.naming import node_name, parse_node_name
from arithlens.analysis.nodes import Node, nodes_table, useful_nodes, useful_positions
from arithlens.analysis.patching import (
    PAIR_KINDS,
    PatchPairs,
    activation_patching,
    make_patch_pairs,
    pair_kinds,
    patch_answer_digit,
)
from arithlens.analysis.pairs import PairPatch, patch_pair
from arithlens.analysis.pca import TRI_STATES, cluster_separation, head_output_pca, head_outputs, pca, tri_state
from arithlens.analysis.question_sets import QuestionSet, make_question_set, question_set_names
from arithlens.analysis.reference import NarrowReferenceWarning, default_reference, is_uniformly_random
from arithlens.analysis.runner import analyze_run, load_analysis

__all__ = [
    "PAIR_KINDS",
    "ROLES",
    "TRI_STATES",
    "Clause",
    "ClauseError",
    "EvalResult",
    "NarrowReferenceWarning",
    "Node",
    "PairPatch",
    "PatchPairs",
    "PhaseChange",
    "QuestionSet",
    "ablate",
    "accuracy_table",
    "activation_patching",
    "algorithm_map",
    "analysis_cache",
    "analyze_run",
    "attention_examples",
    "attention_patterns",
    "circuit_nodes",
    "circuitsvis_html",
    "cluster_separation",
    "completeness",
    "default_reference",
    "compare_checkpoints",
    "detect_phase_changes",
    "digit_class_masks",
    "digit_roles",
    "direct_logit_attribution",
    "evaluate",
    "evaluate_clauses",
    "failed_cases",
    "faithfulness",
    "failure_pattern_summary",
    "failure_patterns",
    "failure_table",
    "head_output_pca",
    "head_outputs",
    "head_source_attribution",
    "is_uniformly_random",
    "load_analysis",
    "logit_lens",
    "logit_lens_logits",
    "make_patch_pairs",
    "make_question_set",
    "map_circuit",
    "path_patching_edges",
    "top_edges",
    "mean_attention_by_class",
    "minimality",
    "nines",
    "node_ablation",
    "node_name",
    "nodes_table",
    "pair_kinds",
    "parse_hypotheses",
    "parse_node_name",
    "patch_answer_digit",
    "patch_pair",
    "pca",
    "published_clauses",
    "phase_changes",
    "position_ablation",
    "question_set_names",
    "random_accuracy",
    "read_hypotheses",
    "score_circuit",
    "subtask_changes",
    "top_attended",
    "tri_state",
    "useful_nodes",
    "useful_positions",
]
