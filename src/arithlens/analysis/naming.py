"""Node names: ``P14L0H2`` is head 2 of layer 0 at position 14, ``P14L0M`` the layer-0 MLP there.

A leaf module with no analysis imports, so every analysis (ablation,
attribution, patching, PCA, useful nodes) can name nodes without importing
another analysis: that keeps the import graph of `arithlens.analysis` acyclic.
"""

from __future__ import annotations

import re

from arithlens.errors import ArithlensError

_NODE_NAME = re.compile(r"P(\d+)L(\d+)(?:H(\d+)|M)")


def node_name(position: int, layer: int, head: int | None) -> str:
    """`P14L0H2` for a head, `P14L0M` for the MLP (head None)."""
    return f"P{position}L{layer}" + ("M" if head is None else f"H{head}")


def parse_node_name(name: str) -> tuple[int, int, int | None]:
    """(position, layer, head or None for an MLP) from a name like `P14L0H2` or `P14L0M`."""
    match = _NODE_NAME.fullmatch(str(name).strip())
    if match is None:
        raise ArithlensError(f"bad node name {name!r}: use P<position>L<layer>H<head> or P<position>L<layer>M, e.g. P14L0H2")
    position, layer, head = match.groups()
    return int(position), int(layer), None if head is None else int(head)
