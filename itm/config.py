"""Run configuration, named presets, and where the data comes from."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

# Where a prepared Flickr8k folder is looked for when neither --data-dir nor ITM_DATA_DIR is given:
# the original's own relative path first, then the project's data/ folder.
DEFAULT_DATA_DIRS = (Path("flickr8k.dataset-cmp9137-item1"), Path("data/flickr8k.dataset-cmp9137-item1"))


@dataclass
class TrainConfig:
    """Everything a training run depends on; the defaults are the original baseline's."""
    data_dir: str | None = None
    output_dir: str | None = None
    preset: str = "faithful"
    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 3e-5
    warmup_fraction: float = 0.2
    clipnorm: float = 1.0  # gradient clipping by global norm; 0 turns it off
    seed: int | None = None
    limit: int | None = None
    image_size: int = 224
    image_tower: str = "faithful-cnn"
    text_tower: str = "precomputed"  # precomputed | minilm | scratch (the last two read raw captions)
    text_trainable: bool = False  # minilm: fine-tune the encoder with the rest of the model
    text_learning_rate: float | None = None  # minilm fine-tuning: the encoder's own peak rate (same schedule)
    fusion: str = "concat"
    projection_dim: int = 128
    num_projection_layers: int = 1
    dropout: float = 0.1
    augment: bool = False  # random flips and shifts of training images
    image_weights: str = "none"  # keras.applications backbones: none | imagenet | a weights file
    freeze_backbone: bool = False
    objective: str = "kl"  # kl: the original's loss on the split's triples; contrastive: see itm/contrastive.py
    pipeline: str = "faithful"  # faithful: decode a JPEG per triple; cached: decode each image once (uint8);
    # grouped: cached, and each batch holds whole images with all their triples (image tower once per image);
    # shards: stream train and dev from TFRecord shards (itm shard), for data bigger than memory
    shards_dir: str | None = None  # pipeline shards: where the shards are (default: DATA_DIR/shards)
    negatives: str = "fixed"  # fixed: the split's no-match triples; redraw: new negative captions every epoch
    temperature: float = 0.07  # contrastive objective: InfoNCE temperature
    contrastive_weight: float = 1.0  # contrastive objective: weight of InfoNCE beside the head's loss
    hard_negatives: bool = False  # contrastive: the head also meets in-batch pairs drawn by similarity (ALBEF)
    soft_targets: float = 0.0  # contrastive: InfoNCE targets = softmax(caption-caption cosine / this); 0: one-hot
    extra_captions: str = "none"  # contrastive: more captions of the TRAIN images (none | auto | a Flickr8k.token.txt)
    xla: bool = False  # compile the Keras train step with XLA (jit_compile): often faster on GPUs, slower on CPUs
    precision: str = "float32"  # float32 | mixed_bfloat16 (CPUs with AVX512-BF16) | mixed_float16 (GPUs)
    # | auto (the fast one this machine has: see fast_precision)
    strategy: str = "default"  # tf.distribute: default (one device) | mirrored (this machine's GPUs or CPUs)
    # | multiworker (the machines TF_CONFIG names; see itm/multiworker.py)

    def to_dict(self) -> dict:
        return asdict(self)

    def model_kwargs(self) -> dict:
        keys = ("image_size", "image_tower", "text_tower", "fusion", "projection_dim", "num_projection_layers",
                "dropout", "augment", "image_weights", "freeze_backbone", "text_trainable")
        return {k: getattr(self, k) for k in keys}


# Each preset overrides some TrainConfig fields; options given on the command line override the preset.
PRESETS: dict[str, dict] = {
    "faithful": {},  # the original CMP9137 baseline, unchanged
    # From scratch, for 2 CPU cores: a batch-normalised CNN at 128x128 on decoded-once images,
    # interaction features in the head, and image-grouped batches with in-batch negatives; bfloat16 where
    # the CPU has it, which buys 40 epochs in the time float32 takes for 30.
    "best-cpu": dict(image_tower="cnn-bn", image_size=128, augment=True, fusion="interaction",
                     objective="contrastive", pipeline="cached", batch_size=32, learning_rate=1e-3,
                     warmup_fraction=0.05, epochs=40, projection_dim=256, precision="auto"),
    # An ImageNet backbone (downloaded by Keras on first use), frozen, with the same head and objective.
    "pretrained": dict(image_tower="efficientnetb0", image_weights="imagenet", freeze_backbone=True,
                       fusion="interaction", objective="contrastive", pipeline="cached", batch_size=64,
                       learning_rate=1e-3, warmup_fraction=0.05, epochs=8, projection_dim=256),
}


# Names of the registries in itm/model.py (tests/test_models.py keeps them equal), here so that the
# command line can list them without importing TensorFlow.
CHOICES = {
    "image_tower": ("faithful-cnn", "cnn-bn", "efficientnetb0", "mobilenetv3small", "resnet50"),
    "fusion": ("concat", "mlp", "interaction", "attention"),
    "text_tower": ("precomputed", "minilm", "scratch"),
    "objective": ("kl", "contrastive"),
    "pipeline": ("faithful", "cached", "grouped", "shards"),
    "negatives": ("fixed", "redraw"),
    "precision": ("float32", "mixed_bfloat16", "mixed_float16", "auto"),
    "strategy": ("default", "mirrored", "multiworker"),
}


class ConfigError(ValueError):
    """An impossible combination of options: reported to the user, never a traceback."""


def make_config(preset: str = "faithful", **overrides) -> TrainConfig:
    """The preset's settings, with every option that is not None in ``overrides`` on top."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    names = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise ConfigError(f"unknown config option(s): {', '.join(sorted(unknown))}")
    config = TrainConfig(preset=preset, **{**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}})
    for key, allowed in CHOICES.items():
        if getattr(config, key) not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, not {getattr(config, key)!r}")
    if config.negatives == "redraw" and config.pipeline != "cached":
        raise ConfigError("--negatives redraw needs --pipeline cached")
    if config.strategy != "default" and (config.objective != "kl" or config.pipeline == "grouped"):
        raise ConfigError(f"--strategy {config.strategy} trains on the split's triples: use it with the kl "
                          "objective and the faithful or cached pipeline")
    if config.strategy == "multiworker" and config.pipeline == "shards":
        raise ConfigError("--strategy multiworker shards the split's triples itself: use it with the faithful or "
                          "cached pipeline")
    if config.strategy == "multiworker" and config.negatives != "fixed":
        raise ConfigError("--strategy multiworker shards the split's triples: use it with --negatives fixed")
    if config.text_tower != "precomputed" and (config.objective != "kl" or config.pipeline != "faithful"):
        raise ConfigError(f"--text-tower {config.text_tower} reads raw captions: use it with the kl objective and "
                          "the faithful pipeline")
    if config.text_learning_rate is not None and not (config.text_tower == "minilm" and config.text_trainable):
        raise ConfigError("--text-learning-rate is for fine-tuning the minilm text tower (--text-tower minilm "
                          "--text-trainable)")
    if config.extra_captions != "none" and config.objective != "contrastive":
        raise ConfigError("--extra-captions feeds the contrastive objective's positives: use it with "
                          "--objective contrastive")
    if config.xla and (config.objective != "kl" or config.pipeline == "grouped" or config.strategy == "multiworker"):
        raise ConfigError("--xla compiles Keras' fit step: use it with the kl objective and the faithful, cached or "
                          "shards pipeline (the grouped loops' batch shapes vary from step to step), on one machine")
    if config.soft_targets < 0:
        raise ConfigError(f"--soft-targets is a temperature: 0 (off) or more, not {config.soft_targets}")
    if config.soft_targets and config.objective != "contrastive":
        raise ConfigError("--soft-targets shapes the contrastive objective's InfoNCE targets: use it with "
                          "--objective contrastive")
    if config.hard_negatives and config.objective != "contrastive":
        raise ConfigError("--hard-negatives draws from the contrastive objective's batch: use it with "
                          "--objective contrastive")
    if config.pipeline == "grouped" and config.objective != "kl":
        raise ConfigError("--pipeline grouped is for the kl objective (the contrastive one is grouped already)")
    if config.pipeline == "shards" and config.objective != "kl":
        raise ConfigError("--pipeline shards is for the kl objective (the contrastive one decodes every image "
                          "into memory)")
    if config.pipeline == "shards" and config.limit is not None:
        raise ConfigError("--limit takes the first N triples of the split files; shards hold whole splits: "
                          "use another --pipeline for a quick check")
    if config.shards_dir is not None and config.pipeline != "shards":
        raise ConfigError("--shards-dir is for --pipeline shards")
    if config.precision == "auto":
        config.precision = fast_precision()
    return config


def fast_precision() -> str:
    """Mixed precision where the hardware has fast low-precision maths: float16 on GPUs, bfloat16 on CPUs
    with AVX512-BF16 or AMX; else float32."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return "float32"
    return "mixed_bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


# --fast on the kl objective: 4x the triples per step at 4x the learning rate (a linear scaling rule).
# A grouped step of 16 triples holds only about 3 images, too few for the convolutions and the optimizer
# update (6.5M weights) to run efficiently; 64 triples (about 11 images) amortise both.
FAST_BATCH_SCALE = 4
FAST_LR_SCALE = 4


def apply_fast(config: TrainConfig, explicit: set[str] = frozenset()) -> TrainConfig:
    """--fast: what speeds training up without changing the model or the loss.

    kl objective: image-grouped batches (the image tower once per image) of 4x the triples at 4x the
    learning rate, unless --batch-size or --learning-rate (``explicit``) were given; every objective:
    mixed precision where the hardware has it. Shards stay shards, at their batch size: they are for data
    that the grouped pipeline's decoded-once cache cannot hold.
    """
    if config.strategy != "default":
        raise ConfigError(f"--fast trains on image-grouped batches, on one device: drop --fast or --strategy "
                          f"{config.strategy}")
    if config.xla and config.pipeline != "shards":
        raise ConfigError("--fast trains on image-grouped batches, which XLA would recompile at every new batch "
                          "shape: drop --fast or --xla")
    if config.pipeline == "shards":
        pass  # only the precision changes
    elif config.objective == "kl":
        config.pipeline = "grouped"
        if not {"batch_size", "learning_rate"} & set(explicit):
            config.batch_size *= FAST_BATCH_SCALE
            config.learning_rate *= FAST_LR_SCALE
    elif config.pipeline == "faithful":
        config.pipeline = "cached"
    config.precision = fast_precision()
    return config


def resolve_data_dir(data_dir: str | None) -> tuple[Path, str]:
    """Pick the data folder: --data-dir, else $ITM_DATA_DIR, else a default location, else the demo.

    Returns the folder and a line saying where it came from. A folder the user named
    explicitly must exist; only the absence of any choice falls back to the demo data.
    """
    from .data import DataError

    for value, origin in ((data_dir, "--data-dir"), (os.environ.get("ITM_DATA_DIR") or None, "ITM_DATA_DIR")):
        if value:
            path = Path(value).expanduser()
            if not path.is_dir():
                raise DataError(f"data folder {path} (from {origin}) does not exist")
            return path, f"Data: {path} (from {origin})"
    for path in DEFAULT_DATA_DIRS:
        if path.is_dir():
            return path, f"Data: {path} (default location)"
    from .demo import ensure_demo_data

    path = ensure_demo_data()
    where = " or ".join(str(p) for p in DEFAULT_DATA_DIRS)
    return path, (f"Data: no Flickr8k folder configured, so using the bundled DEMO dataset at {path}\n"
                  f"      (synthetic shapes; put the prepared Flickr8k at {where}, or pass --data-dir "
                  "or set ITM_DATA_DIR; see data/README.md)")
