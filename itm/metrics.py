"""Binary match/no-match metrics from p(match), with match as the positive class.

Accuracy alone misleads on the Flickr8k test split (75.5% no-match), so balanced
accuracy, precision/recall/F1 and the majority-class baseline always come with it.
"""
from __future__ import annotations

import numpy as np


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def binary_metrics(is_match, p_match, threshold: float = 0.5) -> dict:
    """Metrics of the decision ``p_match > threshold`` against the true labels (1 = match)."""
    y = np.asarray(is_match).astype(bool)
    pred = np.asarray(p_match, dtype=np.float64) > threshold
    if y.shape != pred.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and scores {pred.shape} must be 1-d and of equal length")
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    tn = int(np.sum(~pred & ~y))
    fn = int(np.sum(~pred & y))
    n = len(y)
    recall = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    precision = _ratio(tp, tp + fp)
    return {
        "n": n,
        "threshold": threshold,
        "accuracy": _ratio(tp + tn, n),
        "balanced_accuracy": (recall + specificity) / 2,
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
        "majority_baseline_accuracy": _ratio(max(int(y.sum()), n - int(y.sum())), n),
    }
