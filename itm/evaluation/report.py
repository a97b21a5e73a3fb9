"""A one-page Markdown report of a run, and a side-by-side comparison of several runs."""
from __future__ import annotations

from pathlib import Path

from ..files import read_json


def load_run_metrics(run_dir: Path, split: str = "test") -> dict:
    """The run's metrics for ``split`` (from ``itm evaluate`` or training), with its config and timing."""
    run_dir = Path(run_dir)
    base = read_json(run_dir / "metrics.json", "metrics file") if (run_dir / "metrics.json").is_file() else {}
    path = run_dir / f"metrics-{split}.json"
    metrics = read_json(path, "metrics file") if path.is_file() else (base if base.get("split") == split else {})
    for key in ("config", "train_seconds", "seconds_per_epoch", "parameters", "train_examples_per_second"):
        if key in base:
            metrics.setdefault(key, base[key])
    return metrics


def _ci(m: dict, key: str, ci_key: str = "ci95") -> str:
    lo, hi = m[ci_key][key]
    return f"{m[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def metrics_table(m: dict) -> list[str]:
    t = m["at_dev_threshold"]
    rows = [
        "| metric | at 0.5 | at the dev threshold ({:.3f}) |".format(m["dev_threshold"]),
        "| --- | --- | --- |",
        f"| accuracy (95% CI) | {_ci(m, 'accuracy')} | {_ci(t, 'accuracy')} |",
        f"| balanced accuracy (95% CI) | {_ci(m, 'balanced_accuracy')} | {_ci(t, 'balanced_accuracy')} |",
        f"| precision / recall / F1 (match) | {m['precision']:.3f} / {m['recall']:.3f} / {m['f1']:.3f} | "
        f"{t['precision']:.3f} / {t['recall']:.3f} / {t['f1']:.3f} |",
        "| confusion tp / fp / tn / fn | {tp} / {fp} / {tn} / {fn} | ".format(**m["confusion"])
        + "{tp} / {fp} / {tn} / {fn} |".format(**t["confusion"]),
        f"| ROC-AUC (95% CI) | {_ci(m, 'roc_auc')} | |",
        f"| average precision | {m['average_precision']:.3f} | |",
        f"| always answering no-match | {m['majority_baseline_accuracy']:.3f} accuracy, 0.500 balanced | |",
        f"| `model.evaluate` loss / binary accuracy | {m['tf_evaluate']['loss']:.4f} / "
        f"{m['tf_evaluate']['binary_accuracy']:.4f} | |",
    ]
    return rows


STAGE_NAMES = {"embedding": "embedding alone", "reranked": "embedding, top {k} re-ranked by the head",
               "head": "the head over every pair"}


def retrieval_table(r: dict) -> list[str]:
    rows = [f"Over {r['images']} images and {r['captions']} captions (scored in {r['seconds']:.1f} s):", "",
            "| stage | direction | queries | R@1 | R@5 | R@10 | median rank |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    stages = r.get("stages") or {"head": r}  # metrics written before the two stages: the head over every pair
    for stage, figures in stages.items():
        for name, key in (("image -> text", "image_to_text"), ("text -> image", "text_to_image")):
            x = figures[key]
            rows.append(f"| {STAGE_NAMES.get(stage, stage).format(k=r.get('rerank'))} | {name} | {x['queries']} | "
                        f"{x['R@1']:.3f} | {x['R@5']:.3f} | {x['R@10']:.3f} | {x['median_rank']:.0f} |")
    return rows


def write_report(run_dir: Path, splits=("test",)) -> Path:
    """Write ``report.md``: config, data, metrics with intervals, retrieval and figures, linked relatively."""
    run_dir = Path(run_dir)
    first = load_run_metrics(run_dir, splits[0])
    config = first.get("config", {})
    lines = [f"# ITM run report: {run_dir.name}", ""]
    if config:
        lines += [f"Preset `{config.get('preset')}`, data `{config.get('data_dir')}`, "
                  f"{first.get('parameters', '?'):,} parameters." if isinstance(first.get("parameters"), int)
                  else f"Preset `{config.get('preset')}`, data `{config.get('data_dir')}`."]
        if "train_seconds" in first:
            lines += ["", f"Training: {config.get('epochs')} epochs in {first['train_seconds'] / 60:.1f} min "
                      f"({first['seconds_per_epoch']:.1f} s per epoch, "
                      f"{first['train_examples_per_second']:.1f} examples/s)."]
    for split in splits:
        m = load_run_metrics(run_dir, split)
        if "note" in m and "confusion" not in m:  # one class (the retrieval protocol): retrieval only
            lines += ["", f"## {split} split: {m['n']} pairs, all {m['one_class']}", "", f"Note: {m['note']}."]
            if "retrieval" in m:
                lines += ["", "### Retrieval", ""] + retrieval_table(m["retrieval"])
            continue
        lines += ["", f"## {split} split: {m['n']} pairs, {m['confusion']['tp'] + m['confusion']['fn']} of them "
                  "matches", ""] + metrics_table(m)
        if "retrieval" in m:
            lines += ["", "### Retrieval", ""] + retrieval_table(m["retrieval"])
        lines += ["", "### Figures", ""]
        for name, caption in ((f"roc-pr-{split}.png", "ROC and precision-recall"),
                              (f"scores-{split}.png", "p(match) distributions"),
                              (f"confusion-{split}.png", "confusion matrix at the dev threshold"),
                              (f"samples-{split}.png", "sample pairs at the dev threshold: correct (top), mistakes (bottom)"),
                              (f"gallery-{split}.png", "the most confident true matches, the worst false matches and the "
                                                       "worst missed matches, each with its Grad-CAM map")):
            if (run_dir / name).is_file():
                lines.append(f"![{caption}]({name})")
    if (run_dir / "history.png").is_file():
        lines += ["", "## Training curves", "", "![training curves](history.png)"]
    if config:
        lines += ["", "## Config", "", "| option | value |", "| --- | --- |"]
        lines += [f"| {k} | `{v}` |" for k, v in config.items()]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def compare_table(run_dirs, split: str = "test") -> str:
    """A plain-text table of the main metrics of several runs, one row each."""
    header = ["run", "preset", "params", "train min", "accuracy [95% CI]", "balanced acc [95% CI]",
              "ROC-AUC [95% CI]", "bal acc @dev thr", "i->t R@1", "t->i R@1"]
    rows = [header]
    for run in run_dirs:
        m = load_run_metrics(run, split)
        r = m.get("retrieval", {})
        if m and "note" in m and "ci95" not in m:  # one class: retrieval only
            rows.append([str(run), m.get("config", {}).get("preset", "?"), f"{m.get('parameters', 0):,}",
                         "-", "(one class: no binary metrics)", "-", "-", "-",
                         f"{r['image_to_text']['R@1']:.3f}" if r else "-",
                         f"{r['text_to_image']['R@1']:.3f}" if r else "-"])
            continue
        if not m or "ci95" not in m:
            rows.append([str(run), "(no evaluated metrics: run `itm evaluate --run` first)"] + [""] * 8)
            continue

        def ci(key, m=m):
            return f"{m[key]:.3f} [{m['ci95'][key][0]:.3f}, {m['ci95'][key][1]:.3f}]"

        rows.append([
            str(run), m.get("config", {}).get("preset", "?"), f"{m.get('parameters', 0):,}",
            f"{m['train_seconds'] / 60:.1f}" if "train_seconds" in m else "-",
            ci("accuracy"), ci("balanced_accuracy"), ci("roc_auc"),
            f"{m['at_dev_threshold']['balanced_accuracy']:.3f}",
            f"{r['image_to_text']['R@1']:.3f}" if r else "-", f"{r['text_to_image']['R@1']:.3f}" if r else "-",
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
