"""Shared test settings: every test runs with at least 2 torch threads.

Determinism is promised at any thread count, and thread-dependent accumulation
order (the bug that made same-seed runs differ) only shows with 2 or more.
"""

from __future__ import annotations

import torch

torch.set_num_threads(max(2, torch.get_num_threads()))
