"""Metrics on a hand-made example whose every number is worked out below."""
import pytest

from itm.evaluation.metrics import binary_metrics


def test_hand_made_example():
    # 10 pairs, 3 of them matches. Predictions (threshold 0.5): 2 of the matches found,
    # 1 no-match wrongly called a match, 6 no-matches right.
    is_match = [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    p_match = [0.9, 0.6, 0.2, 0.7, 0.1, 0.4, 0.3, 0.2, 0.1, 0.5]  # 0.5 is not > 0.5
    m = binary_metrics(is_match, p_match)
    assert m["confusion"] == {"tp": 2, "fp": 1, "tn": 6, "fn": 1}
    assert m["n"] == 10
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 6 / 7) / 2)
    assert m["majority_baseline_accuracy"] == pytest.approx(0.7)


def test_always_no_match_is_exposed():
    m = binary_metrics([1, 0, 0, 0], [0.1, 0.1, 0.1, 0.1])
    assert m["accuracy"] == 0.75 and m["balanced_accuracy"] == 0.5
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0


def test_threshold():
    m = binary_metrics([1, 0], [0.3, 0.1], threshold=0.2)
    assert m["confusion"] == {"tp": 1, "fp": 0, "tn": 1, "fn": 0}


def test_mismatched_lengths():
    with pytest.raises(ValueError):
        binary_metrics([1, 0, 1], [0.2, 0.3])
