"""Using a trained run: score image-caption pairs, rank captions, search a folder of images.

One ``Matcher`` serves the command line (``itm predict|rank|search``), the Python API
(``itm.Matcher``) and the web app (``itm serve``): they all check captions, rank and search through it.
It reads the run folder with ``itm.models.run_reader.SavedRun``, predicts through the model's
``itm.models.scorer.Scorer`` (each image and each caption encoded once, the small head per pair), reads
images by the rule of ``itm.data.images``, and caches a folder's image features on disk.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..captions import ENCODER_HINT, check_captions
from ..data.demo import is_demo
from ..data.features import FeatureFile
from ..data.folder import embeddings_path, load_embeddings
from ..data.image_files import list_images
from ..data.images import preprocess
from ..defaults import DEFAULT_RERANK
from ..errors import CaptionError, DataError, ImageError, ModelOutputError
from ..evaluation.metrics import decide
from ..evaluation.retrieval import embedding_vectors, rerank_shortlist, shortlist_size, two_stage_search
from ..explain import explain
from ..index import VectorIndex, path_beside
from ..log import logger
from ..models.encoders import find_encoder
from ..models.run_reader import SavedRun
from ..models.scorer import Scorer

BATCH = 64
DECODERS = 2  # images decoded at once, whatever the number of threads asking: bounds memory under load

if TYPE_CHECKING:  # what the public API takes, for type checkers only (nothing imported at run time)
    from typing import TextIO, TypeAlias

    from ..data.image_files import ImageLike as Image

    # Captions: one or several.
    Images: TypeAlias = Image | Sequence[Image]
    Captions: TypeAlias = str | Sequence[str]
    Log: TypeAlias = TextIO | None


# ---------------------------------------------------------------- captions

def _normal(caption: str) -> str:
    """The all-MiniLM-L6-v2 tokenizer lower-cases and splits on whitespace: these spellings embed alike."""
    return " ".join(caption.lower().split())


class CaptionEncoder:
    """Caption -> 384-d vector: the run's data-folder embeddings first (exactly what training saw),
    then a sentence encoder, loaded only when a caption needs it; else a ``CaptionError``."""

    def __init__(self, known: dict[str, np.ndarray] | None = None, source: str = "", encoder=None):
        """``encoder``: None finds one when first needed; False uses the known embeddings only."""
        self.known = dict(known or {})  # the data folder's captions
        self.by_normal = {_normal(c): c for c in self.known}
        self.learned: dict[str, np.ndarray] = {}  # captions the encoder embedded, remembered (not the folder's)
        self.source = source
        self.encoder = encoder or None
        self._searched = encoder is not None
        self._why_none = "this matcher uses the data folder's embeddings only" if encoder is False else ""
        self._lock = threading.Lock()
        self.embedded_new = 0  # captions the encoder embedded (not found in the data folder)

    @property
    def encoder_name(self) -> str:
        return getattr(self.encoder, "backend", "a sentence encoder") if self.encoder else "none"

    def in_folder(self, caption: str) -> bool:
        """Whether the data folder holds ``caption`` (as written, or spelled alike)."""
        return caption in self.known or _normal(caption) in self.by_normal

    def lookup(self, caption: str):
        key = caption if caption in self.known else self.by_normal.get(_normal(caption))
        if key is not None:
            return self.known[key]
        return self.learned.get(_normal(caption))

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
                self.embedded_new += len(missing)
                if len(self.learned) < 100_000:  # remember new captions, within reason
                    for c, v in zip(missing, new):
                        self.learned[_normal(c)] = v
            found = dict(zip(missing, new))
            vectors = [v if v is not None else found[c] for c, v in zip(captions, vectors)]
        return np.stack(vectors).astype(np.float32)


# ---------------------------------------------------------------- the matcher

class Matcher:
    """A trained run, ready to answer: ``Matcher.load(run_dir)``, then ``score``, ``rank``, ``search``."""

    def __init__(self, model: Any, threshold: float = 0.5, threshold_source: str = "default 0.5",
                 captions: CaptionEncoder | None = None, run_dir: str | os.PathLike | None = None,
                 model_key: str = "", trained_on_demo: bool = False):
        self.model = model
        self.scorer = Scorer(model)
        self.image_size = self.scorer.image_size
        self.threshold, self.threshold_source = float(threshold), threshold_source
        self.captions = captions or CaptionEncoder()
        self.run_dir = Path(run_dir) if run_dir else None
        self.model_key = model_key
        self.trained_on_demo = trained_on_demo
        self._lock = threading.Lock()  # one model call at a time: simple, and correct under any threads
        self._decoding = threading.BoundedSemaphore(DECODERS)
        self.max_pixels = None  # a lower bound than itm.data.image_files.MAX_PIXELS, for a server
        self.contrastive = False  # trained with InfoNCE: the embedding shortlists search (set by load)
        self.gradcam = None  # itm.explain.GradCam of the model, made by the first explain

    @classmethod
    def load(cls, run_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
             encoder: Callable[[list[str]], np.ndarray] | bool | None = None) -> Matcher:
        """Load ``run_dir/model.keras`` with its dev-calibrated threshold (``calibration.json``, else 0.5)
        and the caption embeddings of its data folder (``data_dir`` overrides the run's own).

        ``encoder`` embeds captions the data folder lacks: None finds the TensorFlow encoder or
        sentence-transformers on first need; False refuses new captions; or a callable
        ``list[str] -> float32 [n, 384]``."""
        run = SavedRun(run_dir)
        threshold, source = run.threshold()
        data_dir = data_dir or run.data_dir
        known, where = {}, ""
        if data_dir and Path(data_dir).is_dir():
            if embeddings_path(data_dir) is not None:
                known, where = load_embeddings(Path(data_dir)), str(data_dir)
        model = run.load_model()
        check_finite_weights(model, run.model_path)
        stat = run.model_path.stat()
        key = f"{run.model_path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}"
        demo = bool(run.data_dir) and is_demo(run.data_dir)
        matcher = cls(model, threshold, source, CaptionEncoder(known, where, encoder), run.path, key, demo)
        matcher.contrastive = run.config.get("objective") == "contrastive"
        return matcher

    @property
    def run_notes(self) -> list[str]:
        """What a reader of any of this run's scores should know: the demo training data."""
        if self.trained_on_demo:
            return ["this run was trained on the synthetic demo data (coloured shapes on plain backgrounds): "
                    "its scores for photos mean nothing; train on Flickr8k (data/README.md) for those"]
        return []

    @property
    def notes(self) -> list[str]:
        """The run's notes and how many captions a sentence encoder embedded so far in this process (one
        command's); a server answers each request with ``caption_notes`` of its own captions instead."""
        out = self.run_notes
        if self.captions.embedded_new:
            out.append(f"{self.captions.embedded_new} caption(s) were not in the run's data folder and were embedded "
                       f"by {self.captions.encoder_name}")
        return out

    def caption_notes(self, captions: Sequence[str]) -> list[str]:
        """The note for these captions alone (after they were scored): how many were not in the run's data
        folder and came from the sentence encoder."""
        if self.scorer.raw_text:
            return []
        new = {_normal(c) for c in captions if not self.captions.in_folder(c)}
        if not new:
            return []
        return [f"{len(new)} caption(s) were not in the run's data folder and were embedded by "
                f"{self.captions.encoder_name}"]

    def to_embed(self, captions: Sequence[str]) -> int:
        """How many distinct captions of these a sentence encoder (or a raw-text tower) must embed afresh: the
        costly part of a request (a server bounds it)."""
        distinct = {_normal(c) for c in captions}
        if self.scorer.raw_text:
            return len(distinct)
        return len({_normal(c) for c in captions if self.captions.lookup(c) is None})

    # -------------------------------------------------------- encoders

    def preprocess(self, images: Sequence[Image]) -> np.ndarray:
        """Images -> float32 [N,S,S,3], pixels 0..255, at most DECODERS decodes at a time across threads."""
        with self._decoding:
            return preprocess(images, self.image_size, self.max_pixels)

    def encode_image(self, images: Sequence[Image], normalize: bool = False) -> np.ndarray:
        """Image features [N,D] (tokens [N,T,D] for the attention head) in batches: what the head takes, as
        ``ITMClassifier.encode_image`` and the export's ``encode_image`` signature give them. ``normalize``:
        the retrieval embedding instead, unit vectors [N,D] compared with ``encode_text(...,
        normalize=True)``'s by dot product (trained by the contrastive objective's InfoNCE; meaningless for
        a run trained with the kl one), as OpenCLIP's ``encode_image(x, normalize=True)``."""
        chunks = []
        for i in range(0, len(images), BATCH):
            pixels = self.preprocess(images[i:i + BATCH])
            with self._lock:
                chunks.append(self.scorer.encode_images(pixels))
        features = np.concatenate(chunks) if chunks else np.zeros((0,), np.float32)
        return _unit(features) if normalize else features

    def encode_text(self, captions: Captions, normalize: bool = False) -> np.ndarray:
        """Text features [N,D] of checked captions: what the head takes, as ``ITMClassifier.encode_text`` and
        the export's ``encode_text`` signature give them; ``normalize``: unit vectors (see ``encode_image``)."""
        captions = check_captions(captions)
        texts = captions if self.scorer.raw_text else self.captions(captions)
        with self._lock:
            features = self.scorer.encode_texts(texts)
        return _unit(features) if normalize else features

    def encode_images(self, images: Sequence[Image]) -> np.ndarray:
        """Deprecated (itm 0.2's name): ``encode_image``, the same image features."""
        _deprecated("encode_images", "encode_image")
        return self.encode_image(images)

    def encode_captions(self, captions: Captions) -> np.ndarray:
        """Deprecated (itm 0.2's name): ``encode_text``, the same text features."""
        _deprecated("encode_captions", "encode_text")
        return self.encode_text(captions)

    def pairs(self, image_features: np.ndarray, text_features: np.ndarray) -> np.ndarray:
        """p(match) for every image x caption: [n_images, n_captions]."""
        with self._lock:
            return self.finite(self.scorer.all_pairs(image_features, text_features))

    def finite(self, p: np.ndarray) -> np.ndarray:
        """``p`` if every p(match) is a number; NaN or infinity is a ModelOutputError, never a score."""
        bad = int(np.size(p) - np.count_nonzero(np.isfinite(p)))
        if bad:
            where = f"the model of {self.run_dir}" if self.run_dir else "the model"
            raise ModelOutputError(f"{where} gives a non-finite p(match) (NaN or infinity) for {bad} pair(s): its "
                                   "weights or this input overflow; train the run again")
        return p

    # -------------------------------------------------------- the API

    def score(self, images: Images, captions: Captions) -> np.ndarray:
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
        text = self.encode_text(captions)
        return self.pairs(self.encode_image(images), text)

    def rank(self, image: Image, captions: Captions, top: int | None = None) -> list[tuple[str, float]]:
        """The captions that best fit ``image``, best first: ``[(caption, p_match), ...]``."""
        captions = check_captions(captions)
        p = self.score(image, captions)[0]
        return [(captions[i], float(p[i])) for i in best_first(p, top)]

    def search(self, folder: str | os.PathLike, query: str, top: int | None = 10, log: Log = None,
               rerank: int | None = None) -> list[tuple[Path, float]]:
        """The images of ``folder`` that best fit ``query``, best first: ``[(path, p_match), ...]``."""
        index = self.index_folder(folder, log=log)
        return [(index.paths[i], p) for i, p in self.search_index(index, query, top, rerank)]

    def search_index(self, index: FolderIndex, query: str, top: int | None = 10,
                     rerank: int | None = None) -> list[tuple[int, float]]:
        """The images of an indexed folder that best fit ``query``, best first: ``[(number in the index,
        p_match), ...]``; the one search of the command line and the web app.

        Two stages for a run trained contrastively: the ``max(rerank, top)`` images nearest to the query
        by the embedding (``rerank`` default ``DEFAULT_RERANK``), ordered by the head's p(match); else, or
        with ``rerank=0``, the head on every image."""
        text = self.encode_text([query])  # checks the query, even for an empty folder
        if not index.paths:
            return []
        rerank = (DEFAULT_RERANK if self.contrastive else 0) if rerank is None else rerank
        if rerank <= 0:
            p = self.pairs(index.features, text)[:, 0]
            return [(int(i), float(p[i])) for i in best_first(p, top)]

        def head(cols):
            with self._lock:
                return self.finite(self.scorer.pairs(index.features, text, cols, np.zeros(len(cols), np.int64))[:, 0])

        if index.vectors is not None:  # the folder's VectorIndex gives the shortlist (exact below EXACT_BELOW)
            ids, _ = index.vectors.search(embedding_vectors(text), shortlist_size(len(index.paths), rerank, top))
            cols, p = rerank_shortlist([index.rows[i] for i in ids[0] if i is not None], head, top)
        else:
            similarities = embedding_vectors(index.features) @ embedding_vectors(text)[0]
            cols, p = two_stage_search(similarities, rerank, head, top)
        return [(int(i), float(q)) for i, q in zip(cols, p)]

    def index_folder(self, folder: str | os.PathLike, log: Log = None) -> FolderIndex:
        return FolderIndex.build(self, folder, log=log)

    def explain(self, image: Image, caption: str):
        """Why ``image`` and ``caption`` match or not: an ``itm.explain.Explanation`` with p(match), the threshold,
        the decision, a Grad-CAM map of p(match) over the image (a grid in [0, 1]; one gradient pass) and each
        word's occlusion score (p(match) minus p(match) without the word; None without a sentence encoder)."""
        return explain(self, image, caption)

    def is_match(self, p: float | np.floating) -> bool:
        """p(match) above the run's threshold (``itm.evaluation.metrics.decide``, as the metrics and figures)."""
        return bool(decide(p, self.threshold))


def _unit(features: np.ndarray) -> np.ndarray:
    from ..evaluation.retrieval import embedding_vectors

    return embedding_vectors(features)


def _deprecated(old: str, new: str) -> None:
    """itm 0.2's plural names, kept with a warning for scripts written against 0.2: the singular ones now mean
    what they meant (one name per meaning, as the model's ``encode_image`` and ``encode_text``)."""
    warnings.warn(f"Matcher.{old} is deprecated: use Matcher.{new} (the same features)", DeprecationWarning,
                  stacklevel=3)


def check_finite_weights(model, path) -> None:
    """A model whose weights hold NaN or infinity gives NaN scores: refused as it loads, in one line."""
    bad = [w.path for w in model.weights if not np.isfinite(np.asarray(w)).all()]
    if bad:
        raise ModelOutputError(f"{path} holds NaN or infinite weights ({len(bad)} tensor(s), e.g. {bad[0]}): it cannot "
                               "score; train the run again")


def best_first(p: np.ndarray, top: int | None = None) -> np.ndarray:
    """The positions of the ``top`` highest scores, highest first; ties in their original order."""
    return np.argsort(-p, kind="stable")[:top]


# ---------------------------------------------------------------- folder feature cache

def cache_root(matcher: Matcher) -> Path:
    """``$ITM_CACHE_DIR/search`` when set, else ``RUN_DIR/search-cache``."""
    if os.environ.get("ITM_CACHE_DIR"):
        return Path(os.environ["ITM_CACHE_DIR"]) / "search"
    if matcher.run_dir is not None:
        return matcher.run_dir / "search-cache"
    return Path(tempfile.gettempdir()) / "itm-search-cache"


class FolderIndex:
    """A folder's image features, cached in one file per (folder, model) (``itm.data.features.FeatureFile``):
    an image is encoded again only when its path, modification time or size changed, so a second query costs
    one text encoding. For a run trained contrastively it also keeps ``vectors``, an ``itm.index.VectorIndex``
    of the images' embedding saved beside the feature cache (``rows``: id -> number in the index), which
    gives ``Matcher.search_index`` its shortlist; else ``vectors`` is None."""

    def __init__(self, paths: list[Path], features: np.ndarray, skipped: list[str], encoded: int,
                 vectors=None, names: list[str] | None = None, identities: list[tuple] | None = None):
        self.paths, self.features, self.skipped, self.encoded = paths, features, skipped, encoded
        # (device, inode, modification time, size) of each file as indexed: what a server checks before serving it
        self.identities = identities or [None] * len(paths)
        self.vectors = vectors
        self.rows = {name: i for i, name in enumerate(names or [])}

    @classmethod
    def build(cls, matcher: Matcher, folder, log=None) -> FolderIndex:
        folder = Path(folder).resolve()
        files = list_images(folder)
        key = hashlib.sha256(f"{folder}|{matcher.model_key}".encode()).hexdigest()[:24]
        store = FeatureFile(cache_root(matcher) / f"{key}.npz", matcher.model_key)
        names = [str(path.relative_to(folder)) for path in files]
        stats = [path.stat() for path in files]
        stamps = [(st.st_mtime_ns, st.st_size) for st in stats]
        todo = [i for i in range(len(files)) if store.get(names[i], stamps[i]) is None]
        skipped = []
        if todo and log:
            print(f"encoding {len(todo)} image(s) of {folder} ({len(files) - len(todo)} cached) ...",
                  file=log, flush=True)
        for lo in range(0, len(todo), BATCH):
            good, arrays = [], []
            for i in todo[lo:lo + BATCH]:  # a bad file is skipped and reported, not fatal for the whole folder
                try:
                    arrays.append(matcher.preprocess([files[i]])[0])
                    good.append(i)
                except ImageError as e:
                    skipped.append(str(e))
            if good:
                with matcher._lock:
                    feats = matcher.scorer.encode_images(np.stack(arrays))
                for i, f in zip(good, feats):
                    store.put(names[i], stamps[i], f)
        keep = [i for i in range(len(files)) if store.get(names[i], stamps[i]) is not None]
        features = (np.stack([store.get(names[i], stamps[i]) for i in keep]) if keep
                    else np.zeros((0,), np.float32))
        if todo:
            store.save([(names[i], stamps[i]) for i in keep])
        kept = [names[i] for i in keep]
        vectors = folder_vectors(store.path, kept, features, log) if matcher.contrastive and keep else None
        return cls([files[i] for i in keep], features, skipped, len(todo) - len(skipped), vectors, kept,
                   [identity(stats[i]) for i in keep])


def identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What makes a file the one indexed: device, inode, modification time and size."""
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def folder_vectors(feature_file: Path, names: list[str], features: np.ndarray, log=None):
    """The folder's embedding index beside its feature cache, brought up to date (new photos added, removed
    ones dropped, unchanged ones kept) and saved only when it changed; a place that cannot be written costs
    a warning, as the feature cache does. None (search falls back to the exact product) if it cannot be built."""

    path = path_beside(feature_file)
    vectors = embedding_vectors(features)
    try:
        index = VectorIndex.open(path, dim=vectors.shape[1], log=log)
        change = index.sync(names, vectors)
    except DataError as e:  # e.g. an all-zero embedding cannot be compared by direction
        logger.warning(f"warning: no search index for {feature_file.name}: {e} (searching exactly)")
        return None
    if change["added"] or change["replaced"] or change["removed"] or not path.is_file():
        try:
            index.save(path)
        except DataError as e:
            logger.warning(f"warning: {e} (carrying on without saving the search index)")
    return index
