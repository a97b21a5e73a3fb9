"""Reading image files with Pillow: one rule for the data check, training, evaluation and inference.

An image is usable when Pillow reads its header as one of the formats TensorFlow decodes
(``TF_FORMATS``), it has at most ``MAX_PIXELS`` pixels (known from the header, before anything is
decoded, so a small file that claims a huge image costs nothing), and it decodes. The data check
(``image_problem``) applies the rule to a data folder, so the pipelines, which decode with TensorFlow
(``itm.data.images``), never meet a file the check let by. Inference (``model_input``) applies the same
rule and, for a format Pillow reads but TensorFlow does not (e.g. TIFF), decodes it with Pillow instead.
Nothing here imports TensorFlow: the data check runs without it.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError, ImageError

if TYPE_CHECKING:  # for type checkers only
    from typing import TypeAlias

    # An image as itm takes one: a path, the file's bytes, a PIL image or a uint8 array HxWx3.
    ImageLike: TypeAlias = str | os.PathLike | bytes | bytearray | np.ndarray | Image.Image

TF_FORMATS = {"JPEG", "PNG", "GIF", "BMP", "WEBP"}  # what tf.io.decode_image reads
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"}
MAX_PIXELS = 50_000_000  # width x height; Flickr photos are well under 1M


def _open(data: bytes, what: str, max_pixels: int | None = None, decode: bool = True):
    """Pillow's view of ``data`` after the header and pixel-count checks; with ``decode``, also decoded
    in full, at reduced size where the format allows, to find a broken file."""
    max_pixels = max_pixels or MAX_PIXELS
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


def list_images(folder) -> list[Path]:
    """The image files under ``folder`` (recursively), by suffix, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
