"""Plotly figures for training curves and interpretability results.

Every function returns a `plotly.graph_objects.Figure` and never shows it.
Signed effects use a diverging RdBu scale centred on 0; position axes use the
task's position labels (`P14 (→A2)` where a position predicts an answer digit, else `P2 (D2)`).
"""

from __future__ import annotations

from arithlens.plots.analysis import (
    attention_heatmaps,
    dla_heatmap,
    head_source_heatmaps,
    logit_lens_figure,
    node_effect_heatmaps,
    patching_heatmaps,
    pca_scatter,
    position_ablation_heatmap,
    useful_nodes_map,
)
from arithlens.plots.circuit import circuit_diagram, faithfulness_curve
from arithlens.plots.training import (
    add_phase_bands,
    base_add_only_curve,
    digit_comparison_curves,
    loss_curves,
    per_token_loss_curves,
    subtask_digit_curves,
    training_figures,
    use_carry1_any_curve,
    use_sum9_cascade_curves,
)

__all__ = [
    "add_phase_bands",
    "attention_heatmaps",
    "base_add_only_curve",
    "circuit_diagram",
    "digit_comparison_curves",
    "dla_heatmap",
    "faithfulness_curve",
    "head_source_heatmaps",
    "logit_lens_figure",
    "loss_curves",
    "node_effect_heatmaps",
    "patching_heatmaps",
    "pca_scatter",
    "per_token_loss_curves",
    "position_ablation_heatmap",
    "subtask_digit_curves",
    "training_figures",
    "use_carry1_any_curve",
    "use_sum9_cascade_curves",
    "useful_nodes_map",
]
