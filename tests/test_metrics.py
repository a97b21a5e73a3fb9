"""Metrics on a hand-made example whose every number is worked out below."""
import pytest

from itm.evaluation.metrics import binary_metrics, decide


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


def test_one_threshold_one_comparison_everywhere():
    """A score exactly at the threshold is no-match for the metrics, the figures and the Matcher alike."""
    from types import SimpleNamespace

    from itm.evaluation.plots import correct_and_wrong
    from itm.serving.matcher import Matcher

    threshold = 0.3
    p = [0.3, 0.31, 0.29, 0.6]
    triples = [SimpleNamespace(match=m) for m in (1, 1, 0, 0)]
    assert list(decide(p, threshold)) == [False, True, False, True]
    assert binary_metrics([t.match for t in triples], p, threshold)["confusion"] == {"tp": 1, "fp": 1, "tn": 1, "fn": 1}
    assert [Matcher.is_match(SimpleNamespace(threshold=threshold), q) for q in p] == [False, True, False, True]
    # The sample figure sorts pairs by the same decision, at the threshold it is given (not 0.5).
    assert correct_and_wrong(triples, p, threshold) == ([1, 2], [0, 3])
    assert correct_and_wrong(triples, p, 0.5) == ([2], [0, 1, 3])
