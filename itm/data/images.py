"""Reading images: one rule for the data check, training, evaluation and inference.

An image is usable when Pillow reads its header as one of the formats TensorFlow decodes
(``TF_FORMATS``), it has at most ``MAX_PIXELS`` pixels (known from the header, before anything is
decoded, so a small file that claims a huge image costs nothing), and it decodes. The data check
(``image_problem``) applies the rule to a data folder, so the pipelines, which decode with TensorFlow,
never meet a file the check let by. Inference (``model_input``) applies the same rule and, for a
format Pillow reads but TensorFlow does not (e.g. TIFF), decodes it with Pillow instead.

Every image then goes through ``preprocess_image``: resized to S x S, float32 pixels 0..255 (the model's
image encoder scales them itself).
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, ImageError

TF_FORMATS = {"JPEG", "PNG", "GIF", "BMP", "WEBP"}  # what tf.io.decode_image reads
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"}
MAX_PIXELS = 50_000_000  # width x height; Flickr photos are well under 1M


def _open(data: bytes, what: str, max_pixels: int | None = None, decode: bool = True):
    """Pillow's view of ``data`` after the header and pixel-count checks; with ``decode``, also decoded
    in full, at reduced size where the format allows, to find a broken file."""
    max_pixels = max_pixels or MAX_PIXELS
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own bound is lower
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(f"{what} is {w}x{h} pixels, more than the {max_pixels:,} allowed")
            if decode:
                im.draft("RGB", (64, 64))  # JPEG: decode at 1/8 scale, enough to find a broken file
                im.load()
            return im
    except UnidentifiedImageError:
        raise ImageError(f"{what} is not an image in a format that can be read (JPEG, PNG, GIF, BMP, WebP, ...)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{what} is too large to decode ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{what} is not an image that can be decoded ({e})") from None


def read_bytes(path, what: str | None = None) -> bytes:
    """The bytes of an image file, read whole only once its first bytes are an image header that Pillow knows
    (a 2 GiB file named big.jpg that is no image costs a few bytes of reading, not 2 GiB of memory)."""
    if "://" in str(path):
        raise ImageError(f"image {path} is a URL: itm reads image files only (download it first)")
    try:
        with open(path, "rb") as f:
            if not _looks_like_an_image(f):
                if f.seek(0, os.SEEK_END) == 0:
                    raise ImageError(f"image {path} is an empty file (0 bytes)")
                raise ImageError(f"{what or path} is not an image in a format that can be read "
                                 "(JPEG, PNG, GIF, BMP, WebP, ...)")
            f.seek(0)
            data = f.read()
    except FileNotFoundError:
        raise ImageError(f"image {path} does not exist") from None
    except OSError as e:
        raise ImageError(f"cannot read image {path}: {e.strerror or e}") from None
    if not data:
        raise ImageError(f"image {path} is an empty file (0 bytes)")
    return data


def _looks_like_an_image(f) -> bool:
    """Whether the open file ``f`` starts as an image Pillow identifies (it reads the header only)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Image.open(f)  # reads the header only; not closed here: that would close our file
    except UnidentifiedImageError:
        return False
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError):
        return True  # an image header with a fault, or too many pixels: _open says which
    return True


def image_problem(path) -> str | None:
    """Why the data-folder image ``path`` cannot be used for training, or None. 'missing' when absent."""
    if not os.path.isfile(path):
        return "missing"
    try:
        im = _open(read_bytes(path, "it"), "it")
    except ImageError as e:
        return str(e).removeprefix("it ")
    if im.format not in TF_FORMATS:
        return (f"a {im.format} file, which the training pipeline (TensorFlow) cannot decode; "
                "convert it to JPEG or PNG")
    return None


def model_input(image, what: str | None = None, max_pixels: int | None = None):
    """Any accepted image -> what ``preprocess_image`` takes: encoded bytes (TensorFlow decodes them,
    exactly as in training) or uint8 pixels (HxWx3).

    Accepted: a path (str or Path), encoded bytes, a PIL image, or a uint8 array HxW, HxWx3 or HxWx4.
    """
    from PIL import Image

    max_pixels = max_pixels or MAX_PIXELS
    if isinstance(image, (str, os.PathLike)):
        return model_input(read_bytes(image), what or str(image), max_pixels)
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        im = _open(data, what or "the image data", max_pixels, decode=False)  # TensorFlow decodes (preprocess)
        return data if im.format in TF_FORMATS else np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    if isinstance(image, Image.Image):
        w, h = image.size
        if w * h > max_pixels:
            raise ImageError(f"the image is {w}x{h} pixels, more than the {max_pixels:,} allowed")
        return np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ImageError(f"an image array must be uint8 pixels 0..255, got {image.dtype} "
                             "(for floats in [0, 1]: (a * 255).round().astype('uint8'))")
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) < 1:
            raise ImageError(f"an image array must be HxW, HxWx3 or HxWx4, got shape {image.shape}")
        return image[..., :3]
    raise ImageError(f"cannot use a {type(image).__name__} as an image: give a path, bytes, "
                     "a PIL image or a uint8 array")


def preprocess_image(image, image_size: int = 224):
    """Encoded image bytes (or decoded uint8 pixels, HxWx3) -> float32 [S, S, 3], pixels 0..255.

    The one image preprocessing, shared by training, evaluation and inference, so that a served
    model sees exactly what it was trained on.
    """
    import tensorflow as tf

    image = tf.convert_to_tensor(image)
    if image.dtype == tf.string:
        image = tf.io.decode_image(image, channels=3, expand_animations=False)
    return tf.image.resize(image, (image_size, image_size))  # float32, 0..255


def preprocess(images, image_size: int, max_pixels: int | None = None) -> np.ndarray:
    """Images of any accepted kind -> float32 [N, S, S, 3], pixels 0..255 (inference)."""
    import tensorflow as tf

    out = np.empty((len(images), image_size, image_size, 3), np.float32)
    for i, image in enumerate(images):
        name = str(image) if isinstance(image, (str, os.PathLike)) else "the image data"
        try:
            out[i] = preprocess_image(model_input(image, name, max_pixels), image_size).numpy()
        except tf.errors.InvalidArgumentError as e:  # a file that Pillow read and TensorFlow did not
            raise ImageError(f"{name} cannot be decoded: {e.message.splitlines()[0]}") from None
    return out


def list_images(folder) -> list[Path]:
    """The image files under ``folder`` (recursively), by suffix, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


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
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices([str(p) for p in paths]).map(
        lambda path: preprocess_image(tf.io.read_file(path), image_size), num_parallel_calls=tf.data.AUTOTUNE)


def load_image_cache(names, images_dir, image_size: int) -> ImageCache:
    """Decode each of ``names`` (files in ``images_dir``) once, resized to ``image_size``, as uint8."""
    import tensorflow as tf

    names = list(dict.fromkeys(names))

    def load(path):
        img = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        img = tf.image.resize(img, (image_size, image_size))  # as preprocess_image, then rounded
        return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)

    paths = [str(Path(images_dir) / n) for n in names]
    ds = tf.data.Dataset.from_tensor_slices(paths).map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(256)
    pixels = np.concatenate([b.numpy() for b in ds]) if names else np.zeros((0, image_size, image_size, 3), np.uint8)
    return ImageCache(names, pixels, {n: i for i, n in enumerate(names)})
