"""Scoring a split with a trained model: the original's test report, plus honest metrics."""
from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np

from .data import Split, make_dataset, model_inputs
from .metrics import binary_metrics


def predict_split(model, split: Split, embeddings, batch_size: int = 16, image_size: int = 224) -> np.ndarray:
    """Softmax outputs ``[p(match), p(no-match)]`` for every triple of ``split``, in file order."""
    ds = make_dataset(split, embeddings, batch_size=batch_size, shuffle=False, image_size=image_size)
    return np.asarray(model.predict(model_inputs(ds), verbose=0), dtype=np.float64)


def print_sample_predictions(split: Split, probs: np.ndarray, rate: float = 0.1, seed: int | None = None) -> None:
    """The original's printout of about ``rate`` of the predictions."""
    rng = random.Random(seed)
    for t, (p_match, p_nomatch) in zip(split.triples, probs):
        if rng.random() < rate:
            path = split.images_dir / t.image
            print("ITM=%s PREDICTIONS: match=%s, no-match=%s \t -> \t %s" % (t.caption, p_match, p_nomatch, path))


def write_predictions(path: Path, split: Split, probs: np.ndarray) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE, escapechar="\\")
        w.writerow(["image", "caption", "label", "p_match"])
        for t, p in zip(split.triples, probs[:, 0]):
            w.writerow([t.image, t.caption, "match" if t.match else "no-match", f"{p:.6f}"])


def evaluate_split(model, split: Split, embeddings, batch_size: int = 16, image_size: int = 224,
                   seed: int | None = None, out_dir: Path | None = None) -> dict:
    """Print the original's test report and return the metrics; writes predictions.tsv to ``out_dir``."""
    print(f"TESTING classifier model on the {split.name} split (showing a sample of image-text-matching predictions)...")
    probs = predict_split(model, split, embeddings, batch_size, image_size)
    print_sample_predictions(split, probs, seed=seed)

    is_match = np.array([t.match for t in split.triples])
    # The original's own count: predicted class is the larger of the two probabilities.
    accuracy = float(np.mean((probs[:, 0] > probs[:, 1]) == is_match))
    print("%s accuracy=%4f" % (split.name.upper(), accuracy))

    ds = make_dataset(split, embeddings, batch_size=batch_size, shuffle=False, image_size=image_size)
    tf_eval = model.evaluate(model_inputs(ds), verbose=0, return_dict=True)
    print(f"Tensorflow test method: Loss: {tf_eval['loss']}; ACCURACY: {tf_eval['binary_accuracy']}")

    metrics = {"split": split.name, **binary_metrics(is_match, probs[:, 0])}
    metrics["accuracy"] = accuracy
    metrics["tf_evaluate"] = {"loss": float(tf_eval["loss"]), "binary_accuracy": float(tf_eval["binary_accuracy"])}
    print(f"balanced_accuracy={metrics['balanced_accuracy']:.4f} precision={metrics['precision']:.4f} "
          f"recall={metrics['recall']:.4f} f1={metrics['f1']:.4f} "
          f"(always answering no-match would score accuracy={metrics['majority_baseline_accuracy']:.4f})")
    if out_dir is not None:
        write_predictions(Path(out_dir) / "predictions.tsv", split, probs)
    return metrics
