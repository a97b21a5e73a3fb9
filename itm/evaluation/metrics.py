"""Binary match/no-match metrics from p(match), with match as the positive class.

Accuracy alone misleads on the Flickr8k test split (75.5% no-match), so balanced
accuracy, precision/recall/F1 and the majority-class baseline always come with it.
"""
from __future__ import annotations

import numpy as np


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def decide(p_match, threshold: float):
    """The match decision, the one comparison every part of itm uses (metrics, figures, ``Matcher``, the
    web page): p(match) strictly above the threshold. At 0.5 it is the original's argmax of the two
    probabilities and Keras' BinaryAccuracy, so a tie (p = 0.5) is no-match everywhere."""
    return np.asarray(p_match, dtype=np.float64) > threshold


def binary_metrics(is_match, p_match, threshold: float = 0.5) -> dict:
    """Metrics of the decision ``decide(p_match, threshold)`` against the true labels (1 = match)."""
    y = np.asarray(is_match).astype(bool)
    pred = decide(p_match, threshold)
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


def roc_auc(is_match, p_match) -> float:
    """Area under the ROC curve: P(a random match scores above a random no-match), ties count half."""
    y = np.asarray(is_match).astype(bool)
    s = np.asarray(p_match, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # Average ranks over ties (1-based), the Mann-Whitney U statistic.
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(is_match, p_match) -> float:
    """Area under the precision-recall curve as a step sum over distinct thresholds (scikit-learn's way)."""
    y = np.asarray(is_match).astype(bool)
    s = np.asarray(p_match, dtype=np.float64)
    if not y.any():
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last_of_tie = np.r_[np.diff(s) != 0, True]
    tp = np.cumsum(y)[last_of_tie]
    fp = np.cumsum(~y)[last_of_tie]
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_threshold(is_match, p_match) -> float:
    """The decision threshold that maximises balanced accuracy (chosen on dev, applied to test).

    Candidates lie midway between consecutive distinct scores, so the choice does not sit on a
    dev score and generalises no worse than either neighbour.
    """
    s = np.unique(np.asarray(p_match, dtype=np.float64))
    candidates = np.r_[0.5, (s[:-1] + s[1:]) / 2] if len(s) > 1 else np.array([0.5])
    scores = [binary_metrics(is_match, p_match, t)["balanced_accuracy"] for t in candidates]
    return float(candidates[int(np.argmax(scores))])


def bootstrap_ci(is_match, p_match, threshold: float = 0.5, n_resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict:
    """Percentile bootstrap intervals (resampling pairs) for accuracy, balanced accuracy and ROC-AUC.

    Each resample is a count of how often it drew each pair, so all of them are scored at once from the
    pairs' tie groups, found once: the same numbers as scoring each resample on its own, without a
    Python loop over resamples."""
    y = np.asarray(is_match).astype(bool)
    s = np.asarray(p_match, dtype=np.float64)
    n = len(y)
    rng = np.random.default_rng(seed)
    stats = {"accuracy": [], "balanced_accuracy": [], "roc_auc": []}
    pred = s > threshold  # decide()
    _, group = np.unique(s, return_inverse=True)  # each pair's tie group, groups in ascending score
    groups = group.max() + 1
    for start in range(0, n_resamples, 100):  # 100 resamples at a time bound the memory on large splits
        draws = np.stack([rng.integers(0, n, n) for _ in range(min(100, n_resamples - start))])
        counts = np.stack([np.bincount(d, minlength=n) for d in draws]).astype(np.float64)  # (B, n)
        pos, neg = counts * y, counts * ~y
        tp, fn = (pos * pred).sum(1), (pos * ~pred).sum(1)
        tn, fp = (neg * ~pred).sum(1), (neg * pred).sum(1)
        n_pos, n_neg = tp + fn, tn + fp
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(n_pos > 0, tp / n_pos, 0.0)
            specificity = np.where(n_neg > 0, tn / n_neg, 0.0)
            stats["accuracy"].extend((tp + tn) / n)
            stats["balanced_accuracy"].extend((recall + specificity) / 2)
            # AUC = P(match scores above no-match), ties half: per tie group, its matches times the
            # no-matches below it plus half those beside it.
            pos_g, neg_g = np.zeros((len(counts), groups)), np.zeros((len(counts), groups))
            np.add.at(pos_g.T, group, pos.T)
            np.add.at(neg_g.T, group, neg.T)
            below = np.cumsum(neg_g, axis=1) - neg_g
            auc = (pos_g * (below + neg_g / 2)).sum(1) / (n_pos * n_neg)
            stats["roc_auc"].extend(np.where((n_pos > 0) & (n_neg > 0), auc, np.nan))
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {k: [float(np.nanpercentile(v, lo)), float(np.nanpercentile(v, hi))] for k, v in stats.items()}


def retrieval_metrics(scores: np.ndarray, relevant: np.ndarray, ks=(1, 5, 10), tie_break: np.ndarray | None = None) -> dict:
    """Recall@K and median rank of the first relevant candidate, for each query row of ``scores``.

    ``scores[q, c]`` is the model's p(match) of query q with candidate c; ``relevant[q, c]`` is True
    where c is a true match of q. Queries without any relevant candidate are left out.

    Equal scores are ordered by ``tie_break`` (e.g. the embedding's cosine, as a search orders the head's
    saturated p(match) of 1.0); what is still tied counts against the model, so that ties never make hits.
    """
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    tie = np.zeros_like(scores) if tie_break is None else np.asarray(tie_break, dtype=np.float64)
    keep = relevant.any(axis=1)
    scores, relevant, tie = scores[keep], relevant[keep], tie[keep]
    # the best relevant candidate, by score and then tie_break; its rank is 1 + the candidates ahead of it
    best = np.where(relevant, scores, -np.inf).max(axis=1)[:, None]
    best_tie = np.where(relevant & (scores == best), tie, -np.inf).max(axis=1)[:, None]
    ahead = (scores > best) | ((scores == best) & ((tie > best_tie) | ((tie == best_tie) & ~relevant)))
    ranks = 1 + ahead.sum(axis=1)
    out = {f"R@{k}": float(np.mean(ranks <= k)) for k in ks}
    out["median_rank"] = float(np.median(ranks)) if len(ranks) else float("nan")
    out["queries"] = int(len(ranks))
    out["candidates"] = int(scores.shape[1])
    return out
