"""Images into the model, with TensorFlow: one preprocessing for training, evaluation and inference.

Every image goes through ``preprocess_image``: resized to S x S, float32 pixels 0..255 (the model's
image encoder scales them itself). What an image file must be to get here, and how one is read, is
``itm.data.image_files``'s rule.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from ..errors import ImageError
from .image_files import model_input


def preprocess_image(image, image_size: int = 224):
    """Encoded image bytes (or decoded uint8 pixels, HxWx3) -> float32 [S, S, 3], pixels 0..255.

    The one image preprocessing, shared by training, evaluation and inference, so that a served
    model sees exactly what it was trained on.
    """
    image = tf.convert_to_tensor(image)
    if image.dtype == tf.string:
        image = tf.io.decode_image(image, channels=3, expand_animations=False)
    return tf.image.resize(image, (image_size, image_size))  # float32, 0..255


def preprocess(images, image_size: int, max_pixels: int | None = None) -> np.ndarray:
    """Images of any accepted kind -> float32 [N, S, S, 3], pixels 0..255 (inference)."""
    out = np.empty((len(images), image_size, image_size, 3), np.float32)
    for i, image in enumerate(images):
        name = str(image) if isinstance(image, (str, os.PathLike)) else "the image data"
        try:
            out[i] = preprocess_image(model_input(image, name, max_pixels), image_size).numpy()
        except tf.errors.InvalidArgumentError as e:  # a file that Pillow read and TensorFlow did not
            raise ImageError(f"{name} cannot be decoded: {e.message.splitlines()[0]}") from None
    return out


# ---------------------------------------------------------------- decode once, keep uint8

@dataclass
class ImageCache:
    """Every distinct image decoded and resized once, kept as uint8 (a quarter of float32's memory)."""
    names: list[str]
    pixels: np.ndarray  # (N, S, S, 3) uint8
    index: dict[str, int]

    dtype = "uint8"  # what a batch of it holds (itm.data.batches); the model scales pixels itself

    def rows(self, names) -> np.ndarray:
        return np.array([self.index[n] for n in names], dtype=np.int32)

    def take(self, names, rng=None) -> np.ndarray:
        """The pixels of ``names``; ``rng`` is for stores that draw (features of mirrored photos), unused here."""
        return self.pixels[self.rows(names)]

    @property
    def item_shape(self) -> tuple:
        return tuple(self.pixels.shape[1:])


def decoded_paths(paths, image_size: int):
    """A tf.data dataset of ``preprocess_image`` applied to each file, in order, decoded in parallel."""
    return tf.data.Dataset.from_tensor_slices([str(p) for p in paths]).map(
        lambda path: preprocess_image(tf.io.read_file(path), image_size), num_parallel_calls=tf.data.AUTOTUNE)


def load_image_cache(names, images_dir, image_size: int) -> ImageCache:
    """Decode each of ``names`` (files in ``images_dir``) once, resized to ``image_size``, as uint8."""
    names = list(dict.fromkeys(names))

    def load(path):
        img = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        img = tf.image.resize(img, (image_size, image_size))  # as preprocess_image, then rounded
        return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)

    paths = [str(Path(images_dir) / n) for n in names]
    ds = tf.data.Dataset.from_tensor_slices(paths).map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(256)
    pixels = np.concatenate([b.numpy() for b in ds]) if names else np.zeros((0, image_size, image_size, 3), np.uint8)
    return ImageCache(names, pixels, {n: i for i, n in enumerate(names)})
