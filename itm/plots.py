"""Figures of a run (matplotlib, written as PNG files)."""
from __future__ import annotations

from pathlib import Path


def plot_history(history: dict[str, list[float]], path: Path) -> None:
    """Loss and binary accuracy per epoch, train and validation side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(history["loss"]) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "loss", "KL-divergence loss"), (axes[1], "binary_accuracy", "binary accuracy")):
        ax.plot(epochs, history[key], "o-", label="train")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], "o-", label="dev")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
