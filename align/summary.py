"""Summaries of measured values: a mean and its standard error.

Dimension letters: N values.

Numpy only and no align imports, so any layer can use it: a source's demonstrations
(align.data.sources.demo_gold_reward) and a policy's samples (align.samples).
"""

from __future__ import annotations

import numpy as np


def mean_and_se(values_N) -> tuple[float, float]:
    """Mean and its standard error (mean NaN when empty, standard error NaN for fewer than two)."""
    x = np.asarray(values_N, np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    se = float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan")
    return float(x.mean()), se
