"""Figures of a run (matplotlib, written as PNG files), the report's gallery of Grad-CAM maps among them."""
from __future__ import annotations

import random
import textwrap
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from ..data.images import preprocess
from ..explain import GradCam
from ..figures import pyplot
from .metrics import average_precision, decide, roc_auc


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)


def plot_history(history: dict[str, list[float]], path: Path) -> None:
    """Loss and binary accuracy per epoch, train and validation side by side."""
    plt = pyplot()
    epochs = range(1, len(history["loss"]) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    scores = [k for k in history if "accuracy" in k or "auc" in k]
    for ax, keys, title in ((axes[0], [k for k in ("loss", "val_loss") if k in history], "loss"),
                            (axes[1], scores, "accuracy and ROC-AUC")):
        for key in keys:
            ax.plot(epochs, history[key], "o-", label=key.replace("val_", "dev ").replace("_", " "))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    _save(fig, path)


def roc_points(is_match, p_match):
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0) to (1, 1)."""
    y = np.asarray(is_match).astype(bool)
    order = np.argsort(-np.asarray(p_match, dtype=np.float64), kind="mergesort")
    tp = np.r_[0, np.cumsum(y[order])]
    fp = np.r_[0, np.cumsum(~y[order])]
    return fp / max(1, (~y).sum()), tp / max(1, y.sum())


def plot_roc_pr(is_match, p_match, path: Path) -> None:
    plt = pyplot()
    y = np.asarray(is_match).astype(bool)
    fpr, tpr = roc_points(y, p_match)
    order = np.argsort(-np.asarray(p_match), kind="mergesort")
    tp = np.cumsum(y[order])
    precision = tp / np.arange(1, len(y) + 1)
    recall = tp / max(1, y.sum())
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    axes[0].plot(fpr, tpr, label=f"model (AUC {roc_auc(y, p_match):.3f})")
    axes[0].plot([0, 1], [0, 1], "--", color="grey", label="chance")
    axes[0].set(title="ROC", xlabel="false positive rate", ylabel="true positive rate")
    axes[1].plot(recall, precision, label=f"model (AP {average_precision(y, p_match):.3f})")
    axes[1].axhline(y.mean(), ls="--", color="grey", label=f"chance ({y.mean():.2f})")
    axes[1].set(title="precision-recall (match = positive)", xlabel="recall", ylabel="precision", ylim=(0, 1.02))
    for ax in axes:
        ax.legend(loc="lower right" if ax is axes[0] else "upper right")
        ax.grid(alpha=0.3)
    _save(fig, path)


def plot_confusion(confusion: dict, path: Path, threshold: float = 0.5) -> None:
    """The confusion matrix of the decisions at ``threshold`` (the dev-chosen one, as the report's)."""
    plt = pyplot()
    cells = np.array([[confusion["tp"], confusion["fn"]], [confusion["fp"], confusion["tn"]]])
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(cells, cmap="Blues")
    for (i, j), v in np.ndenumerate(cells):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=14,
                color="white" if v > cells.max() / 2 else "black")
    ax.set_xticks([0, 1], ["match", "no-match"])
    ax.set_yticks([0, 1], ["match", "no-match"])
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion (threshold {threshold:.3f})")
    _save(fig, path)


def plot_score_distribution(is_match, p_match, path: Path, threshold: float = 0.5) -> None:
    """p(match) of matching and non-matching pairs, with the decision threshold marked."""
    plt = pyplot()
    y = np.asarray(is_match).astype(bool)
    p = np.asarray(p_match)
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 26)
    ax.hist(p[~y], bins=bins, alpha=0.6, density=True, label=f"no-match pairs ({(~y).sum()})")
    ax.hist(p[y], bins=bins, alpha=0.6, density=True, label=f"match pairs ({y.sum()})")
    ax.axvline(threshold, color="grey", ls="--", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="p(match)", ylabel="density", title="p(match) for matching vs non-matching pairs")
    ax.legend()
    _save(fig, path)


def correct_and_wrong(triples, p_match, threshold: float) -> tuple[list[int], list[int]]:
    """Indices of the triples decided rightly and wrongly at ``threshold``."""
    predicted = decide(p_match, threshold)
    correct = [i for i, t in enumerate(triples) if predicted[i] == bool(t.match)]
    return correct, [i for i, t in enumerate(triples) if predicted[i] != bool(t.match)]


def plot_samples(split, p_match, path: Path, n: int = 6, seed: int = 0, threshold: float = 0.5) -> None:
    """Sample test pairs: correct decisions (at ``threshold``) on the top row, mistakes on the bottom row."""
    plt = pyplot()
    p = np.asarray(p_match)
    correct, wrong = correct_and_wrong(split.triples, p, threshold)
    rng = random.Random(seed)
    rows = [("correct", rng.sample(correct, min(n, len(correct)))), ("mistake", rng.sample(wrong, min(n, len(wrong))))]
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 6.4))
    for r, (kind, picks) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(picks):
                continue
            t = split.triples[picks[c]]
            with Image.open(split.images_dir / t.image) as im:
                ax.imshow(im.convert("RGB"))
            label = "match" if t.match else "no-match"
            title = "\n".join(textwrap.wrap(t.caption, 32)[:3])
            ax.set_title(f"{title}\ntrue {label}, p(match)={p[picks[c]]:.2f}", fontsize=7,
                         color="darkgreen" if kind == "correct" else "firebrick")
    _save(fig, path)


# ---------------------------------------------------------------- the report's gallery

GALLERY_ROWS = ("most confident true matches", "worst false matches", "worst missed matches")


def gallery_picks(is_match: np.ndarray, p_match: np.ndarray, threshold: float, n: int) -> list[list[int]]:
    """For each of GALLERY_ROWS, the indices of at most ``n`` pairs: true matches by p(match), highest first;
    no-match pairs decided match, highest first; matches decided no-match, lowest first."""
    decided = np.asarray(decide(p_match, threshold), bool)
    is_match = np.asarray(is_match, bool)
    order = np.argsort(-p_match, kind="stable")
    true_matches = [int(i) for i in order if is_match[i] and decided[i]]
    false_matches = [int(i) for i in order if not is_match[i] and decided[i]]
    missed = [int(i) for i in order[::-1] if is_match[i] and not decided[i]]
    return [true_matches[:n], false_matches[:n], missed[:n]]


def write_gallery(model, split, embeddings, p_match: np.ndarray, threshold: float, path, n: int = 4) -> None:
    """A figure of the split's most confident true matches, worst false matches and worst missed matches (a row
    each), every pair's photo with its Grad-CAM map, caption, p(match) and label: the original's printed sample
    predictions, made visible. One gradient pass per pair shown."""
    plt = pyplot()
    gradcam = GradCam(model)
    size = int(model.input["image_input"].shape[1])
    raw_text = "caption" in model.input
    rows = gallery_picks(np.array([t.match for t in split.triples]), np.asarray(p_match), threshold, n)
    fig, axes = plt.subplots(3, n, figsize=(2.6 * n, 9.3), squeeze=False)
    for r, (title, picks) in enumerate(zip(GALLERY_ROWS, rows)):
        for c in range(n):
            ax = axes[r][c]
            ax.axis("off")
            if c == 0:
                ax.text(-0.08, 0.5, title, transform=ax.transAxes, rotation=90, ha="right", va="center", fontsize=9)
            if c >= len(picks):
                if c == 0:
                    ax.text(0.5, 0.5, "none", transform=ax.transAxes, ha="center", va="center", color="grey")
                continue
            t = split.triples[picks[c]]
            photo_path = split.images_dir / t.image
            text = tf.constant([t.caption]) if raw_text else np.asarray(embeddings[t.caption], np.float32)[None]
            _, grid = gradcam(preprocess([photo_path], size), model.encode_text(text, training=False))
            with Image.open(photo_path) as im:
                im = im.convert("RGB")
                im.thumbnail((256, 256))
                photo = np.asarray(im)
            h, w = photo.shape[:2]
            ax.imshow(photo)
            ax.imshow(grid, cmap="jet", alpha=0.45, extent=(0, w, h, 0), interpolation="bilinear", vmin=0, vmax=1)
            caption = "\n".join(textwrap.wrap(t.caption, 34)[:3])
            ax.set_title(f"{caption}\n{'match' if t.match else 'no-match'}, p(match)={p_match[picks[c]]:.3f}",
                         fontsize=7, color="darkgreen" if r == 0 else "firebrick")
    fig.suptitle(f"At the threshold {threshold:.3f}; the maps: Grad-CAM of p(match) (itm explain)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
