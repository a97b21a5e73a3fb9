"""Evaluation: every metric against an independent computation, retrieval ranks by hand, figures."""
import json

import numpy as np
import pytest
from sklearn import metrics as skm

from conftest import ROOT, itm_cli
from itm.evaluation.metrics import (average_precision, best_threshold, binary_metrics, bootstrap_ci, retrieval_metrics,
                         roc_auc)

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("seed", range(5))
def test_metrics_agree_with_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(300) < 0.25
    p = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1).round(2)  # rounded, so there are ties
    m = binary_metrics(y, p, 0.5)
    pred = p > 0.5
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert m["confusion"] == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    assert roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p))
    assert average_precision(y, p) == pytest.approx(skm.average_precision_score(y, p))


def test_threshold_maximises_balanced_accuracy_on_dev():
    rng = np.random.default_rng(1)
    y = rng.random(200) < 0.3
    p = np.clip(rng.normal(0.3 + 0.15 * y, 0.1), 0, 1)
    t = best_threshold(y, p)
    grid = np.linspace(0, 1, 2001)
    best_on_grid = max(binary_metrics(y, p, g)["balanced_accuracy"] for g in grid)
    assert binary_metrics(y, p, t)["balanced_accuracy"] >= best_on_grid - 1e-12
    assert t != 0.5  # the scores sit low, so 0.5 is not the best cut


@pytest.mark.parametrize("n, decimals, threshold", [(7, None, 0.5), (60, 1, 0.5), (300, None, 0.37)])
def test_bootstrap_scores_all_resamples_at_once_as_one_by_one(n, decimals, threshold):
    """The resamples are scored together from draw counts; each must equal binary_metrics and roc_auc of
    that resample (ties, tiny splits with resamples of one class, another threshold)."""
    rng = np.random.default_rng(n)
    y = rng.random(n) < 0.4
    p = rng.random(n) if decimals is None else np.round(rng.random(n), decimals)
    draws = np.random.default_rng(5)
    one_by_one = {"accuracy": [], "balanced_accuracy": [], "roc_auc": []}
    for _ in range(200):
        idx = draws.integers(0, n, n)
        m = binary_metrics(y[idx], p[idx], threshold)
        one_by_one["accuracy"].append(m["accuracy"])
        one_by_one["balanced_accuracy"].append(m["balanced_accuracy"])
        one_by_one["roc_auc"].append(roc_auc(y[idx], p[idx]))
    expected = {k: [np.nanpercentile(v, 2.5), np.nanpercentile(v, 97.5)] for k, v in one_by_one.items()}
    got = bootstrap_ci(y, p, threshold, n_resamples=200, seed=5)
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k], rtol=0, atol=1e-12)


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_n():
    rng = np.random.default_rng(2)
    y = rng.random(2000) < 0.25
    p = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1)
    small = bootstrap_ci(y[:200], p[:200], n_resamples=300)
    large = bootstrap_ci(y, p, n_resamples=300)
    full = binary_metrics(y, p)
    lo, hi = large["balanced_accuracy"]
    assert lo < full["balanced_accuracy"] < hi
    assert large["roc_auc"][0] < roc_auc(y, p) < large["roc_auc"][1]
    assert large["accuracy"][0] < full["accuracy"] < large["accuracy"][1]
    width = lambda ci, k: ci[k][1] - ci[k][0]  # noqa: E731
    assert width(large, "accuracy") < width(small, "accuracy")


def test_retrieval_ranks_by_hand():
    # 3 image queries x 4 caption candidates. Relevant: image0 -> c1; image1 -> c2 or c3; image2 -> none.
    scores = np.array([[0.9, 0.8, 0.1, 0.2],    # c1 is 2nd
                       [0.1, 0.2, 0.3, 0.95],   # c3 is 1st
                       [0.5, 0.5, 0.5, 0.5]])
    relevant = np.array([[0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]], bool)
    r = retrieval_metrics(scores, relevant, ks=(1, 2))
    assert r["queries"] == 2 and r["candidates"] == 4
    assert r["R@1"] == 0.5 and r["R@2"] == 1.0 and r["median_rank"] == 1.5


def test_retrieval_ties_never_make_hits_and_go_by_the_tie_break():
    # a head saturated at 1.0 for every candidate: no order at all, so no hits (not R@1 = 1)
    saturated = np.ones((3, 5))
    relevant = np.eye(3, 5, dtype=bool)
    assert retrieval_metrics(saturated, relevant)["R@1"] == 0.0
    assert retrieval_metrics(saturated, relevant)["median_rank"] == 5.0
    # the tie broken by the embedding's cosine: query 0's true caption has the highest cosine, query 1's the
    # lowest, query 2's the second highest
    cosine = np.array([[0.9, 0.1, 0.2, 0.3, 0.4],
                       [0.5, 0.0, 0.6, 0.7, 0.8],
                       [0.1, 0.2, 0.5, 0.6, 0.3]])
    r = retrieval_metrics(saturated, relevant, ks=(1, 2), tie_break=cosine)
    assert (r["R@1"], r["R@2"]) == (pytest.approx(1 / 3), pytest.approx(2 / 3))
    # a score above the ties still wins, whatever the tie-break says
    scores = saturated.copy()
    scores[1, 1] = 2.0
    assert retrieval_metrics(scores, relevant, ks=(1,), tie_break=cosine)["R@1"] == pytest.approx(2 / 3)


def test_evaluate_and_compare_commands(faithful_run, tmp_path, with_figures):
    """On a copy of the session's trained run (``faithful_run``: ``itm train``, 1 epoch at 64 px)."""
    import shutil

    run = shutil.copytree(faithful_run, tmp_path / "run", ignore=shutil.ignore_patterns("search-cache"))
    r = itm_cli("evaluate", "--run", run, "--split", "all")
    assert r.returncode == 0, r.stdout + r.stderr
    for split, n in (("dev", 24), ("test", 24)):
        m = json.loads((run / f"metrics-{split}.json").read_text())
        assert m["n"] == n
        for key in ("roc_auc", "average_precision", "ci95", "at_dev_threshold", "dev_threshold", "retrieval"):
            assert key in m
        assert m["ci95"]["accuracy"][0] <= m["accuracy"] <= m["ci95"]["accuracy"][1]
        assert m["retrieval"]["images"] == 6 and m["retrieval"]["image_to_text"]["queries"] == 6
        for fig in ("roc-pr", "scores", "confusion", "samples", "gallery"):
            assert (run / f"{fig}-{split}.png").read_bytes()[:8] == PNG
    # The test scores in metrics.json (from training) and from `itm evaluate` agree.
    assert json.loads((run / "metrics.json").read_text())["roc_auc"] == pytest.approx(
        json.loads((run / "metrics-test.json").read_text())["roc_auc"])
    threshold = json.loads((run / "calibration.json").read_text())["threshold"]
    assert 0.0 <= threshold <= 1.0
    report = (run / "report.md").read_text()
    assert "## dev split" in report and "## test split" in report and "![ROC and precision-recall](roc-pr-test.png)" in report
    assert "Grad-CAM map](gallery-test.png)" in report
    r = itm_cli("compare", run, run)
    assert r.returncode == 0 and r.stdout.count(str(run)) == 2 and "balanced acc" in r.stdout


def test_without_figures_the_report_links_none(faithful_run, tmp_path):
    """The test suite's switch (``ITM_FIGURES=0``, itm/figures.py): the metrics and the report are written,
    no figure, and the report links no missing file."""
    import shutil

    run = shutil.copytree(faithful_run, tmp_path / "run", ignore=shutil.ignore_patterns("search-cache", "*.png"))
    r = itm_cli("evaluate", "--run", run, env={"ITM_FIGURES": "0"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((run / "metrics-test.json").read_text())["n"] == 24
    report = (run / "report.md").read_text()
    assert "## test split" in report and not list(run.glob("*.png")) and "](" not in report


def test_evaluate_rejects_a_folder_that_is_not_a_run(tmp_path):
    r = itm_cli("evaluate", "--run", tmp_path, cwd=ROOT)
    assert r.returncode == 2 and "is not a run folder" in r.stderr and "Traceback" not in r.stderr
