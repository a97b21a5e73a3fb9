"""Scoring a trained model on a split: the original's test report, honest metrics, retrieval, figures.

``evaluate_model`` is the one place this happens; training calls it at its end and
``itm evaluate`` calls it on a saved run.
"""
from __future__ import annotations

import csv
import json
import random
import re
import time
from pathlib import Path

import keras
import numpy as np

from ..data.batches import group_by_image, one_hot
from ..data.folder import DataDir, Split
from ..errors import ConfigError
from ..files import write_json
from ..figures import wanted as figures_wanted
from ..run_files import TENSORBOARD_DIR, record
from . import plots
from ..models.scorer import Scorer
from .tensorboard import log_evaluation
from .metrics import average_precision, best_threshold, binary_metrics, bootstrap_ci, roc_auc
from .predict import cached_backbone_stores, caption_features, score_split, split_image_features, store_of
from ..defaults import DEFAULT_RERANK
from .retrieval import retrieval_report


def print_sample_predictions(split: Split, probs: np.ndarray, rate: float = 0.1, seed: int | None = None) -> None:
    """The original's printout of about ``rate`` of the predictions, each probability to 4 decimals (the
    original printed float32's full repr, 16-19 digits; predictions.tsv keeps 6)."""
    rng = random.Random(seed)
    for t, (p_match, p_nomatch) in zip(split.triples, probs):
        if rng.random() < rate:
            path = split.images_dir / t.image
            print("ITM=%s PREDICTIONS: match=%.4f, no-match=%.4f \t -> \t %s" % (t.caption, p_match, p_nomatch, path))


def write_predictions(path: Path, split: Split, probs: np.ndarray) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE, escapechar="\\")
        w.writerow(["image", "caption", "label", "p_match"])
        for t, p in zip(split.triples, probs[:, 0]):
            w.writerow([t.image, t.caption, "match" if t.match else "no-match", f"{p:.6f}"])


def split_metrics(is_match: np.ndarray, p_match: np.ndarray, dev_threshold: float, seed: int = 0) -> dict:
    """Threshold metrics at 0.5 and at the dev-chosen threshold, ranking metrics, bootstrap intervals."""
    return {
        **binary_metrics(is_match, p_match, 0.5),
        "roc_auc": roc_auc(is_match, p_match),
        "average_precision": average_precision(is_match, p_match),
        "ci95": bootstrap_ci(is_match, p_match, 0.5, seed=seed),
        "at_dev_threshold": {**binary_metrics(is_match, p_match, dev_threshold),
                             "ci95": bootstrap_ci(is_match, p_match, dev_threshold, seed=seed)},
    }


def retrieval(scorer: Scorer, split: Split, embeddings, rerank: int = DEFAULT_RERANK, store=None) -> dict:
    """Image-to-text and text-to-image Recall@1/5/10 over the split's images and captions: the embedding's
    shortlist, re-ranked by the head (``itm.evaluation.retrieval``); ``store``: the images' cached backbone
    features (``split_image_features``)."""
    start = time.perf_counter()
    images = sorted(group_by_image(split.triples))
    captions = sorted({t.caption for t in split.triples})
    image_index = {name: i for i, name in enumerate(images)}
    caption_index = {c: j for j, c in enumerate(captions)}
    relevant = np.zeros((len(images), len(captions)), dtype=bool)
    for t in split.triples:
        if t.match:
            relevant[image_index[t.image], caption_index[t.caption]] = True
    report = retrieval_report(scorer, split_image_features(scorer, images, split.images_dir, store),
                              caption_features(scorer, captions, embeddings), relevant, rerank)
    report["seconds"] = time.perf_counter() - start
    return report


ONE_CLASS_NOTE = ("{name}: only {label} lines ({n}): accuracy, ROC-AUC and the other binary metrics need both "
                  "classes, so they are left out; retrieval is what this split can show")


FIGURES = ("roc-pr", "confusion", "scores", "samples", "gallery")


def predictions_name(name: str) -> str:
    return "predictions.tsv" if name == "test" else f"predictions-{name}.tsv"


def split_files(name: str) -> list[str]:
    """What scoring a split (or another folder) called ``name`` writes into the run folder."""
    return [f"metrics-{name}.json", predictions_name(name), *(f"{figure}-{name}.png" for figure in FIGURES)]


OWN_SPLITS = ("train", "dev", "test")  # the run's own splits: never the name of another folder's files
MAX_NAME = 64
NAME_CHARS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(name: str) -> str:
    """``--name``: a file-name part of its own (no separators), of at most MAX_NAME characters, that is not
    one of the run's own splits."""
    if not NAME_CHARS.fullmatch(name) or len(name) > MAX_NAME:
        raise ConfigError(f"--name {name[:80]!r}{'...' if len(name) > 80 else ''}: use 1 to {MAX_NAME} letters, "
                          "digits, '.', '_' or '-' (starting with a letter or digit; no path separators)")
    if name in OWN_SPLITS:
        raise ConfigError(f"--name {name} is the name of the run's own {name} split: choose another --name")
    return name


def _scored_folder(run_dir: Path, name: str) -> str | None:
    """The data folder that the run's evaluation ``name`` scored ('' when its metrics do not say; None: no
    such evaluation)."""
    path = run_dir / f"metrics-{name}.json"
    if not path.exists():
        return None
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("data_dir") or "")
    except (OSError, ValueError, AttributeError):
        return ""


def evaluation_name(run_dir, data_dir, name: str | None = None) -> str:
    """The name of another folder's evaluation files in the run folder (metrics-NAME.json, ...): ``--name``
    (checked; refused when the run holds an evaluation of another folder under it), else the folder's name
    made a file name and made unique, so scoring another folder never replaces the run's own split metrics
    nor another folder's."""
    run_dir, folder = Path(run_dir), str(Path(data_dir).resolve())
    if name is not None:
        check_name(name)
        scored = _scored_folder(run_dir, name)
        if scored is not None and scored != folder:
            raise ConfigError(f"--name {name}: {run_dir} already holds the evaluation of "
                              f"{scored or 'another folder'} under that name: choose another --name")
        return name
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(folder).name).strip(".-_")[:MAX_NAME - 4] or "data"
    if base in OWN_SPLITS:  # e.g. ~/other/test: named after its parent too
        base = (re.sub(r"[^A-Za-z0-9._-]+", "-", Path(folder).parent.name).strip(".-_")[:MAX_NAME // 2]
                or "other") + f"-{base}"
    for i in range(1, 1000):
        candidate = base if i == 1 else f"{base}-{i}"
        if candidate in OWN_SPLITS:
            continue
        if _scored_folder(run_dir, candidate) in (None, folder):
            return candidate
    raise ConfigError(f"{run_dir} holds 999 evaluations named after {base}: give --name")


def keras_evaluation(labels: np.ndarray, probs: np.ndarray) -> dict:
    """What the original's ``model.evaluate`` reported (its loss and binary accuracy), from the predictions."""
    return {"loss": float(keras.losses.KLDivergence()(labels, probs)),
            "binary_accuracy": float(np.mean((probs > 0.5) == (labels > 0.5)))}


def evaluate_model(model, data: DataDir, out_dir: Path, splits=("test",), seed: int = 0,
                   original_printout: bool = False, with_retrieval: bool = True, threshold: float | None = None,
                   tag: str | None = None, rerank: int = DEFAULT_RERANK,
                   run_config: dict | None = None) -> dict[str, dict]:
    """Score ``splits`` and write, per split, ``metrics-<split>.json``, predictions and figures.

    The decision threshold that maximises balanced accuracy on dev is stored in ``calibration.json``;
    metrics are reported at 0.5 and at that threshold. Scoring other data (an out-of-distribution
    folder) passes the run's own ``threshold`` and a ``tag`` that names the files instead of the split.
    A split of one class (the retrieval protocol: match lines only) gets retrieval and a note instead of
    binary metrics; ``rerank``: the candidates per query that the head re-ranks in retrieval. ``run_config``
    (the run's config.json): a run trained with --cache-features takes its images' backbone features from
    the feature cache (``cached_backbone_stores``) instead of decoding them and running the backbone again.
    """
    out_dir = Path(out_dir)
    scorer = Scorer(model)
    stores = cached_backbone_stores(model, run_config, [data.splits[s] for s in
                                                        (() if threshold is not None else ("dev",)) + tuple(splits)])
    probs = {}
    if threshold is None:
        probs["dev"] = score_split(scorer, data.splits["dev"], data.embeddings, store_of(stores, data.splits["dev"]))
        dev_match = np.array([t.match for t in data.splits["dev"].triples])
        threshold = best_threshold(dev_match, probs["dev"][:, 0])
        record(out_dir, "calibration.json")
        write_json(out_dir / "calibration.json", {"threshold": threshold, "chosen_on": "dev",
                                                  "criterion": "max balanced accuracy"})
    results = {}
    for split_name in splits:
        name = tag or split_name
        split = data.splits[split_name]
        if split_name not in probs:
            probs[split_name] = score_split(scorer, split, data.embeddings, store_of(stores, split))
        p = probs[split_name]
        is_match = np.array([t.match for t in split.triples])
        record(out_dir, *split_files(name), TENSORBOARD_DIR)
        source = {"data_dir": str(Path(data.path).resolve()), "data_split": split_name}
        if is_match.all() or not is_match.any():
            results[name] = one_class_split(scorer, split, data.embeddings, p, name, threshold, out_dir, rerank,
                                            source, store_of(stores, split))
            continue
        if original_printout:
            print(f"TESTING classifier model on the {split_name} split "
                  "(showing a sample of image-text-matching predictions)...")
            print_sample_predictions(split, p, seed=seed)
        # The original's own count: predicted class is the larger of the two probabilities.
        accuracy = float(np.mean((p[:, 0] > p[:, 1]) == is_match))
        print("%s accuracy=%4f" % (name.upper(), accuracy))
        tf_eval = keras_evaluation(one_hot(split.triples), p)
        print(f"Tensorflow test method: Loss: {tf_eval['loss']}; ACCURACY: {tf_eval['binary_accuracy']}")

        metrics = {"split": name, **source, **split_metrics(is_match, p[:, 0], threshold, seed=seed)}
        metrics["accuracy"] = accuracy
        metrics["dev_threshold"] = threshold
        metrics["tf_evaluate"] = tf_eval
        if with_retrieval:
            metrics["retrieval"] = retrieval(scorer, split, data.embeddings, rerank, store_of(stores, split))
        print(summary_line(metrics))

        write_predictions(out_dir / predictions_name(name), split, p)
        figures = {figure: out_dir / f"{figure}-{name}.png" for figure in FIGURES} if figures_wanted() else {}
        if figures:
            plots.plot_roc_pr(is_match, p[:, 0], figures["roc-pr"])
            # The figures show the decisions at the threshold that predict, the web page and the report use.
            plots.plot_confusion(metrics["at_dev_threshold"]["confusion"], figures["confusion"], threshold)
            plots.plot_score_distribution(is_match, p[:, 0], figures["scores"], threshold)
            plots.plot_samples(split, p[:, 0], figures["samples"], seed=seed, threshold=threshold)
            plots.write_gallery(model, split, data.embeddings, p[:, 0], threshold, figures["gallery"])
        write_json(out_dir / f"metrics-{name}.json", metrics)
        log_evaluation(out_dir, name, metrics, figures)
        results[name] = metrics
    return results


def one_class_split(scorer: Scorer, split: Split, embeddings, p: np.ndarray, name: str, threshold: float,
                    out_dir: Path, rerank: int, source: dict, store=None) -> dict:
    """A split of match lines only (or no-match only): the note, and retrieval, which needs no negatives."""
    label = "match" if split.triples[0].match else "no-match"
    note = ONE_CLASS_NOTE.format(name=name, label=label, n=len(split.triples))
    print(f"note: {note}")
    metrics = {"split": name, **source, "n": len(split.triples), "one_class": label, "note": note, "dev_threshold": threshold,
               "mean_p_match": float(np.mean(p[:, 0])),
               "share_above_dev_threshold": float(np.mean(p[:, 0] > threshold))}
    metrics["retrieval"] = retrieval(scorer, split, embeddings, rerank, store)
    print(summary_line(metrics))
    write_predictions(out_dir / predictions_name(name), split, p)
    write_json(out_dir / f"metrics-{name}.json", metrics)
    return metrics


def retrieval_line(r: dict) -> str:
    """One line per stage: ``name: image->text R@1/5/10 = ..., text->image R@1/5/10 = ...``."""
    def figures(x):
        return f"{x['R@1']:.3f}/{x['R@5']:.3f}/{x['R@10']:.3f}"

    stages = r.get("stages") or {"head": r}  # metrics written before the two stages: the head over every pair
    names = {"embedding": "embedding alone", "reranked": f"embedding top {r.get('rerank')} re-ranked by the head",
             "head": "the head over every pair"}
    lines = [f"retrieval over {r['images']} images x {r['captions']} captions ({r['seconds']:.1f} s):"]
    for key, stage in stages.items():
        lines.append(f"  {names.get(key, key)}: image->text R@1/5/10 = {figures(stage['image_to_text'])}, "
                     f"text->image R@1/5/10 = {figures(stage['text_to_image'])}")
    return "\n".join(lines)


def summary_line(m: dict) -> str:
    if "ci95" not in m:  # one class: retrieval only
        return retrieval_line(m["retrieval"]) if "retrieval" in m else f"{m['split']}: {m.get('note', '')}"
    ci = m["ci95"]
    line = (f"{m['split']}: accuracy={m['accuracy']:.4f} [{ci['accuracy'][0]:.3f}, {ci['accuracy'][1]:.3f}] "
            f"balanced_accuracy={m['balanced_accuracy']:.4f} "
            f"[{ci['balanced_accuracy'][0]:.3f}, {ci['balanced_accuracy'][1]:.3f}] "
            f"roc_auc={m['roc_auc']:.4f} [{ci['roc_auc'][0]:.3f}, {ci['roc_auc'][1]:.3f}] "
            f"precision={m['precision']:.4f} recall={m['recall']:.4f} f1={m['f1']:.4f} "
            f"(always answering no-match would score accuracy={m['majority_baseline_accuracy']:.4f}); "
            f"at the dev threshold {m['dev_threshold']:.3f}: "
            f"balanced_accuracy={m['at_dev_threshold']['balanced_accuracy']:.4f}")
    if "retrieval" in m:
        line += "\n" + retrieval_line(m["retrieval"])
    return line
