"""Why a pair matches: where in the image p(match) comes from, and which words of the caption carry it.

* The map is Grad-CAM (Selvaraju et al., 2017) on the image tower's last spatial feature map (B,h,w,C) (over
  two backbones, efficientnet-lite2+mobilenetv2, the first's: EfficientNet-Lite2's, at the image's own size),
  from one forward and one backward pass of the Keras model: each channel weighted by the mean gradient of
  the match score over the map, summed, negative values cut, scaled to [0, 1] by its maximum. The score
  differentiated is p(match)'s log-odds, log p(match) - log p(no-match) (the head's two logits' difference):
  its gradient is p(match)'s divided by p(1-p), the same for every position, so after the scaling the map is
  Grad-CAM of p(match) itself, without vanishing where p is close to 0 or 1. Over a frozen backbone whose
  features training cached, the map is computed end to end from the pixels through the backbone.
* The word scores are occlusion: the caption is embedded again without each word in turn, and a word's
  score is p(match) with it minus p(match) without it (positive: the word speaks for the match). A run
  that reads caption embeddings needs the sentence encoder for that (the ``text`` extra); without one the
  word scores are None, with a note saying so, and the map still comes.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf
from PIL import Image as PILImage
from PIL.PngImagePlugin import PngInfo

from .captions import ENCODER_HINT, check_captions
from .data.image_files import model_input
from .errors import CaptionError
from .figures import pyplot
from .files import atomic_write
from .models.classifier import FROZEN_PART, TRAINED_PART
from .models.image_towers import FIRST_POOL

if TYPE_CHECKING:
    from .data.image_files import ImageLike as Image

NO_ENCODER = "no word scores: a caption with a word left out must be embedded, and no sentence encoder is available"


@dataclass
class Explanation:
    """What ``Matcher.explain`` returns: the pair's p(match), the run's threshold and decision, the map (a
    grid [h,w] in [0, 1] over the image, row 0 at the top) and each word's score (None without an encoder)."""
    caption: str
    p_match: float
    threshold: float
    match: bool
    grid: np.ndarray
    words: list[tuple[str, float]] | None
    notes: list[str] = field(default_factory=list)
    layer: str = ""  # the feature map's layer

    def to_json(self) -> dict:
        return {"caption": self.caption, "p_match": self.p_match, "threshold": self.threshold, "match": self.match,
                "grid": [[round(float(v), 4) for v in row] for row in self.grid], "grid_shape": list(self.grid.shape),
                "feature_map": self.layer,
                "words": None if self.words is None else [{"word": w, "score": round(s, 6)} for w, s in self.words],
                "notes": self.notes}


def _output_in(parent: keras.Model, layer) -> object:
    """``layer``'s output tensor as ``parent``'s graph holds it (for a nested model, ``layer.output`` is the
    nested model's own output, not where ``parent`` calls it)."""
    for node in reversed(layer._inbound_nodes):
        tensor = node.output_tensors[0]
        try:
            keras.Model(parent.input, tensor)
        except ValueError:
            continue
        return tensor
    raise ValueError(f"cannot find where {parent.name} calls {layer.name}")


def _last_spatial(stage: keras.Model):
    """The last layer of ``stage`` whose output is a (B,h,w,C) map, past its input, or None; over two backbones
    (``BackbonePair``), the first network (the one at the image's own size, whose map ``FIRST_POOL`` pools)."""
    if FIRST_POOL in {layer.name for layer in stage.layers}:
        return stage.get_layer(FIRST_POOL).input._keras_history.operation
    found = None
    for layer in stage.layers[1:]:
        nodes = layer._inbound_nodes
        if nodes and len(nodes[-1].output_tensors[0].shape) == 4:
            found = layer
    return found


class GradCam:
    """The image encoder cut at its last spatial feature map: ``stages`` run in a row, the one holding the map
    (``at``) as a model that also returns the map."""

    def __init__(self, model):
        encoder = model.image_encoder
        names = {layer.name for layer in encoder.layers}
        stages = [encoder.get_layer(FROZEN_PART), encoder.get_layer(TRAINED_PART)] if FROZEN_PART in names \
            else [encoder]
        for at in reversed(range(len(stages))):
            layer = _last_spatial(stages[at])
            if layer is not None:
                break
        else:
            raise ValueError("the image tower has no spatial (4-D) feature map")
        self.model, self.layer = model, layer.name
        stage = stages[at]
        self.before, self.after = stages[:at], stages[at + 1:]
        self.cut = keras.Model(stage.input, [_output_in(stage, layer), stage.output], name="gradcam_cut")

    def __call__(self, pixels: np.ndarray, text_features) -> tuple[float, np.ndarray]:
        """p(match) of ``pixels`` [1,S,S,3] with ``text_features`` [1,D], and the map [h,w] in [0, 1]."""
        x = tf.convert_to_tensor(pixels, tf.float32)
        text_features = tf.convert_to_tensor(text_features)
        for stage in self.before:
            x = stage(x, training=False)
        with tf.GradientTape() as tape:
            tape.watch(x)
            feature_map, features = self.cut(x, training=False)
            for stage in self.after:
                features = stage(features, training=False)
            p = tf.cast(self.model.score(features, text_features, training=False), tf.float32)
            log_odds = tf.math.log(p[:, 0] + 1e-30) - tf.math.log(p[:, 1] + 1e-30)
        grads = tf.cast(tape.gradient(log_odds, feature_map), tf.float32)[0]  # (h,w,C)
        fmap = tf.cast(feature_map, tf.float32)[0]
        weights = tf.reduce_mean(grads, axis=(0, 1))  # one per channel
        cam = tf.nn.relu(tf.reduce_sum(fmap * weights, axis=-1)).numpy()
        top = float(cam.max())
        cam = cam / top if top > 0 and np.isfinite(top) else np.zeros_like(cam)
        return float(p[0, 0]), cam.astype(np.float32)


def words_of(caption: str) -> list[str]:
    return caption.split()


def without_each_word(caption: str) -> list[str]:
    """The caption with each of its words left out in turn (none for a caption of one word)."""
    words = words_of(caption)
    if len(words) < 2:
        return []
    return [" ".join(words[:i] + words[i + 1:]) for i in range(len(words))]


def explain(matcher, image: Image, caption: str) -> Explanation:
    """``Matcher.explain``: the map and the word scores of one image and one caption (``matcher``, an
    ``itm.Matcher``, is not imported here: it imports this module)."""
    caption = check_captions(caption)
    if len(caption) != 1:
        raise CaptionError("explain takes one caption")
    caption = caption[0]
    pixels = matcher.preprocess([image])
    text = matcher.encode_text([caption])
    with matcher._lock:
        if matcher.gradcam is None:  # built on first use, once
            matcher.gradcam = GradCam(matcher.model)
        p, grid = matcher.gradcam(pixels, text)
    matcher.finite(np.array([p]))
    notes = list(matcher.run_notes)
    words = None
    variants = without_each_word(caption)
    if not variants:
        notes.append("no word scores: the caption has one word")
    else:
        try:
            others = matcher.encode_text(variants)
        except CaptionError:
            notes.append(f"{NO_ENCODER} ({matcher.captions._why_none or 'none found'}). {ENCODER_HINT}")
        else:
            p_without = matcher.pairs(_image_features(matcher, pixels), others)[0]
            words = [(w, float(p - q)) for w, q in zip(words_of(caption), p_without)]
    return Explanation(caption, p, matcher.threshold, matcher.is_match(p), grid, words, notes, matcher.gradcam.layer)


def _image_features(matcher, pixels: np.ndarray) -> np.ndarray:
    with matcher._lock:
        return matcher.scorer.encode_images(pixels)


# ---------------------------------------------------------------- the figure

PNG_TAG = ("Software", "itm explain")  # in every PNG it writes: what --overwrite may replace
DISPLAY = 448  # the photo's longest side in the figure, in pixels


def photo_pixels(image: Image, max_pixels: int | None = None) -> np.ndarray:
    """The image as uint8 RGB HxWx3 for the figure, its longest side at most DISPLAY."""


    data = model_input(image, max_pixels=max_pixels)
    im = PILImage.open(io.BytesIO(data)).convert("RGB") if isinstance(data, bytes) else PILImage.fromarray(data)
    im.thumbnail((DISPLAY, DISPLAY))
    return np.asarray(im)


def is_explain_png(path) -> bool:
    """Whether ``path`` is a PNG that ``itm explain`` wrote (its text chunk says so)."""
    try:
        with PILImage.open(path) as im:
            return im.format == "PNG" and im.text.get(PNG_TAG[0]) == PNG_TAG[1]
    except (OSError, ValueError):
        return False


def _word_colour(score: float, scale: float):
    """Red for a word that speaks for the match, blue against, white for none; ``scale`` is the largest |score|."""
    return pyplot().colormaps["bwr"](0.5 + 0.35 * (score / scale if scale > 0 else 0.0))  # light enough to read


def write_png(e: Explanation, photo: np.ndarray, path) -> None:
    """The photo with the map over it, the caption's words shaded by their scores, and p(match), the threshold
    and the decision, as a PNG at ``path`` (written whole or not at all)."""
    plt = pyplot()
    h, w = photo.shape[:2]
    words = e.words if e.words is not None else [(word, 0.0) for word in words_of(e.caption)]
    lines = 1 + len(e.caption) // 52  # about 52 characters to a line of words
    top, bottom = 0.4, 0.35 + 0.32 * lines  # inches: the title; the words and the legend
    height = 5.2 * h / w + top + bottom
    fig = plt.figure(figsize=(5.2, height), dpi=100)
    ax = fig.add_axes((0.02, bottom / height, 0.96, 1 - (bottom + top) / height))
    ax.imshow(photo)
    ax.imshow(e.grid, cmap="jet", alpha=0.45, extent=(0, w, h, 0), interpolation="bilinear", vmin=0, vmax=1)
    ax.set_axis_off()
    verdict = "match" if e.match else "no match"
    fig.text(0.5, 1 - 0.2 / height, f"p(match) = {e.p_match:.3f}   threshold {e.threshold:.3f}   -> {verdict}",
             ha="center", va="center", fontsize=11, weight="bold", color="darkgreen" if e.match else "darkred")
    scale = max((abs(s) for _, s in words), default=0.0)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    x, y = 0.03, (bottom - 0.2) / height
    for word, score in words:
        t = fig.text(x, y, word, fontsize=11, va="center",
                     bbox=dict(boxstyle="round,pad=0.2", facecolor=_word_colour(score, scale), edgecolor="none"))
        width = t.get_window_extent(renderer).width / fig.bbox.width
        if x + width > 0.97 and x > 0.03:  # wrap onto the next line
            x, y = 0.03, y - 0.32 / height
            t.set_position((x, y))
        x += width + 0.015
    how = ("words: red raises p(match), blue lowers it (p with the word minus p without: "
           f"at most {scale:.3f})" if e.words is not None else "no word scores (no sentence encoder)")
    fig.text(0.03, 0.06 / height, how, fontsize=7.5, color="dimgrey", va="bottom")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    buffer.seek(0)
    info = PngInfo()
    info.add_text(*PNG_TAG)
    out = io.BytesIO()
    with PILImage.open(buffer) as im:
        im.save(out, format="PNG", pnginfo=info, optimize=True)
    atomic_write(path, lambda f: f.write(out.getvalue()), "the explanation figure")
