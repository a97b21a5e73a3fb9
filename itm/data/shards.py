"""TFRecord shards of a data folder, for data that does not fit in memory.

``itm shard`` (or ``itm prepare ... --shards N``) writes ``DIR/shards/<split>-00000-of-000NN.tfrecord``
and an ``index.json``; ``--pipeline shards`` trains from them with ``make_shard_dataset``.

One record per *image*, holding the JPEG bytes as stored (never re-encoded) and all of that image's
triples of the split (captions, their embeddings, match labels), rather than one record per triple:
a prepared split has about ten triples per image, so per-triple records would store every JPEG ten
times (MS-COCO at 224x224: about 30 GB instead of 3 GB) and decode it ten times per epoch. The reader
decodes each image once, with the same ``preprocess_image`` as the faithful pipeline, then yields its
triples one by one, so the model gets exactly the faithful pipeline's inputs and labels.

Writing is deterministic (images in a fixed shuffled order, protobuf maps serialised sorted), so the
same folder gives byte-identical shards. Each shard is written to a temporary name and renamed, and
``index.json`` is written last and removed first, so an interrupted write is never read as complete.
The index records the sha256 of the split files and the embeddings file the shards came from, so
shards that no longer match their folder are refused instead of silently training on old data.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from .. import output_folder
from ..defaults import SHARDS_SUBDIR, TARGET_SHARD_BYTES
from ..errors import DataError
from ..files import atomic_write, sha256_file
from ..log import logger
from .batches import group_by_image
from .folder import EMBEDDING_DIM, SPLIT_FILES, Split, embeddings_path, load_data_dir
from .images import preprocess_image

INDEX_FILE = "index.json"
FORMAT = 1
WRITE_ORDER_SEED = 0  # images are written in a fixed shuffled order, so shards mix the whole split
MAX_CYCLE_LENGTH = 16  # shards read at once
SHUFFLE_IMAGES = 256  # shuffle buffer of encoded image records (a few MB)
SHUFFLE_BATCHES = 8  # shuffle buffer of decoded triples, in batches (as the faithful pipeline's)
_SHARD_NAME = re.compile(r"^(?P<split>[a-z]+)-\d{5}-of-\d{5}\.tfrecord$")


def _log(message: str) -> None:
    logger.info(message)


def shard_name(split: str, i: int, n: int) -> str:
    return f"{split}-{i:05d}-of-{n:05d}.tfrecord"


def _sources(data_dir: Path, splits) -> dict:
    """What the shards were made from: the split files' and the embeddings file's sha256."""
    emb = embeddings_path(data_dir)
    out = {SPLIT_FILES[s]: sha256_file(data_dir / SPLIT_FILES[s]) for s in splits}
    out[emb.name] = sha256_file(emb)
    return out


def default_num_shards(split: Split) -> int:
    """As many shards as make about TARGET_SHARD_BYTES each (JPEG sizes plus 1.5 KB per triple)."""
    images = {t.image for t in split.triples}
    size = sum((split.images_dir / name).stat().st_size for name in images) + len(split.triples) * EMBEDDING_DIM * 4
    return max(1, math.ceil(size / TARGET_SHARD_BYTES))


def _float_list(vectors):
    """A FloatList of float32 ``vectors`` from their bytes, as the packed field it serialises to: building it
    from the array (``FloatList(value=...)``) converts float by float: 3.8 ms for an image of 5 triples, 13
    CPU-minutes for a million triples; this takes 0.024 ms. Same bytes out."""

    raw = np.ascontiguousarray(vectors, "<f4").tobytes()
    size, length = len(raw), bytearray()
    while size > 0x7F:  # the payload's length as a protobuf varint
        length.append(size & 0x7F | 0x80)
        size >>= 7
    length.append(size)
    return tf.train.FloatList.FromString(b"\x0a" + bytes(length) + raw)  # field 1 (value), wire type 2 (packed)


def _example(image: str, jpeg: bytes, triples, embeddings) -> bytes:
    vectors = np.concatenate([np.asarray(embeddings[t.caption], np.float32) for t in triples])
    feature = {
        "image_name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.encode("utf-8")])),
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
        "caption": tf.train.Feature(bytes_list=tf.train.BytesList(value=[t.caption.encode("utf-8") for t in triples])),
        "text_embedding": tf.train.Feature(float_list=_float_list(vectors)),
        "match": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(t.match) for t in triples])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def _write_split(split: Split, embeddings, out: Path, n: int) -> dict:
    """Write ``split`` into ``n`` shards of ``out``; remove older shards of the split; return its index entry."""
    grouped = group_by_image(split.triples)
    order = sorted(grouped)
    random.Random(WRITE_ORDER_SEED).shuffle(order)
    if n > len(order):
        _log(f"  {split.name}: {n} shards asked for {len(order)} images; writing {len(order)} (one image each)")
        n = len(order)
    names = [shard_name(split.name, i, n) for i in range(n)]
    output_folder.record(out, SHARDS, *names)
    _log(f"writing the {split.name} split ({len(order)} images, {len(split.triples)} triples) into {n} shard(s) "
         f"in {out}")
    start, written, report_every = time.perf_counter(), 0, max(1, n // 10)
    for i, name in enumerate(names):
        chunk = order[i * len(order) // n:(i + 1) * len(order) // n]
        tmp = out / f".{name}.tmp"
        try:
            with tf.io.TFRecordWriter(str(tmp)) as writer:
                for image in chunk:
                    jpeg = (split.images_dir / image).read_bytes()
                    writer.write(_example(image, jpeg, grouped[image], embeddings))
            os.replace(tmp, out / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        written += (out / name).stat().st_size
        if (i + 1) % report_every == 0 or i + 1 == n:
            _log(f"  {split.name}: {i + 1}/{n} shards, {written / 2**20:.1f} MiB "
                 f"({time.perf_counter() - start:.1f} s)")
    ours = output_folder.recorded(out)
    for old in out.iterdir():  # shards of this split from an earlier write with another count (itm's only)
        m = _SHARD_NAME.match(old.name)
        if m and m["split"] == split.name and old.name not in names and old.name in ours:
            old.unlink()
    return {"shards": n, "images": len(order), "triples": len(split.triples), "bytes": written}


def _legacy_shards(folder: Path) -> bool:
    """A shards folder written before the folder record: itm's index, and its shard files."""
    try:
        index = json.loads((folder / INDEX_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(index, dict) and index.get("format") == FORMAT and isinstance(index.get("splits"), dict) \
        and all(_SHARD_NAME.match(p.name) or p.name in (INDEX_FILE, output_folder.MARKER) or p.name.startswith(".")
                for p in folder.iterdir())


# It writes only into a new or empty folder, or its own earlier shards (itm.output_folder).
SHARDS = output_folder.Kind("shards", "itm shard", "a shards folder", legacy=_legacy_shards,
                            known=(INDEX_FILE, "*-of-*.tfrecord"))


def write_shards(data_dir, num_shards: int | None = None, out=None, splits=("train", "dev", "test")) -> Path:
    """Write the shards of ``data_dir`` into ``out`` (default ``data_dir/shards``); returns ``out``.

    ``num_shards`` is the train split's shard count (default: about 64 MiB per shard); the other
    splits get proportionally fewer, at least one, so that all shards are of a similar size.
    The folder is checked first (``load_data_dir``): shards are only written from valid data.
    """
    data_dir = Path(data_dir)
    out = Path(out) if out else data_dir / SHARDS_SUBDIR
    if num_shards is not None and num_shards < 1:
        raise DataError(f"--shards must be at least 1, got {num_shards}")
    if output_folder.inside(out, data_dir) and Path(out).resolve() != (data_dir / SHARDS_SUBDIR).resolve() \
            or output_folder.inside(data_dir, out):
        raise DataError(f"--out {out} is, holds or lies inside the data folder {data_dir}: shards go into a folder "
                        f"of their own ({data_dir / SHARDS_SUBDIR} by default); choose another --out")
    output_folder.check(out, SHARDS, "--out")
    data = load_data_dir(data_dir, splits=splits)
    try:
        output_folder.claim(out, SHARDS, "--out")
        output_folder.record(out, SHARDS, INDEX_FILE)
        (out / INDEX_FILE).unlink(missing_ok=True)  # written again last: no index, no complete set of shards
    except OSError as e:
        raise DataError(f"cannot write shards into {out}: {e}") from None
    reference = data.splits[splits[0]]
    n_reference = num_shards or default_num_shards(reference)
    index = {"format": FORMAT, "layout": "one tf.train.Example per image: image_name, image (the file's bytes), "
                                         "and per triple caption, text_embedding (float32), match (1 or 0)",
             "embedding_dim": EMBEDDING_DIM, "sources": _sources(data_dir, splits), "splits": {}}
    start = time.perf_counter()
    for name in splits:
        split = data.splits[name]
        n = max(1, round(n_reference * len(split.triples) / len(reference.triples)))
        index["splits"][name] = _write_split(split, data.embeddings, out, n)
    text = json.dumps(index, indent=2) + "\n"
    atomic_write(out / INDEX_FILE, lambda f: f.write(text.encode()))
    total = sum(s["bytes"] for s in index["splits"].values())
    print(f"wrote {sum(s['shards'] for s in index['splits'].values())} shards ({total / 2**20:.1f} MiB) to {out} "
          f"in {time.perf_counter() - start:.1f} s", flush=True)
    return out


# ---------------------------------------------------------------- reading

def shards_dir_of(data_dir, shards_dir=None) -> Path:
    return Path(shards_dir) if shards_dir else Path(data_dir) / SHARDS_SUBDIR


def read_index(shards_dir, splits=("train", "dev"), data_dir=None) -> dict:
    """The shards' index, checked: every split present, every shard file there, and (given ``data_dir``)
    written from that folder's current split files and embeddings. Raises a ``DataError`` saying what to run."""
    shards_dir = Path(shards_dir)
    redo = f"write them with: itm shard --data-dir {data_dir or 'DIR'}" + \
           (f" --out {shards_dir}" if data_dir and shards_dir != Path(data_dir) / SHARDS_SUBDIR else "")
    path = shards_dir / INDEX_FILE
    if not path.is_file():
        what = "no shard index" if shards_dir.is_dir() else "no shards folder"
        raise DataError(f"--pipeline shards: {what} at {path} (or an interrupted write); {redo}")
    try:
        index = json.loads(path.read_text())
    except ValueError as e:
        raise DataError(f"{path} is not a shard index ({e}); {redo}") from None
    if index.get("format") != FORMAT:
        raise DataError(f"{path}: shard format {index.get('format')!r}, this itm reads format {FORMAT}; {redo}")
    problems = []
    for split in splits:
        entry = index.get("splits", {}).get(split)
        if entry is None:
            problems.append(f"no {split} shards")
            continue
        missing = [shard_name(split, i, entry["shards"]) for i in range(entry["shards"])
                   if not (shards_dir / shard_name(split, i, entry["shards"])).is_file()]
        if missing:
            problems.append(f"{len(missing)} {split} shard(s) missing, e.g. {missing[0]}")
    if data_dir is not None and not problems:
        data_dir = Path(data_dir)
        names = [SPLIT_FILES[s] for s in splits]
        emb = embeddings_path(data_dir)
        names += [emb.name] if emb is not None else []
        for name in names:
            recorded = index.get("sources", {}).get(name)
            if recorded is None or recorded != sha256_file(data_dir / name):
                problems.append(f"{data_dir / name} has changed since the shards were written")
    if problems:
        raise DataError(f"the shards in {shards_dir} cannot be used: {'; '.join(problems)}; {redo}")
    return index


def _parse(image_size: int, embedding_dim: int):
    """record -> (the decoded image, its name, and its K triples: captions, embeddings, one-hot labels)."""
    spec = {"image_name": tf.io.FixedLenFeature([], tf.string), "image": tf.io.FixedLenFeature([], tf.string),
            "caption": tf.io.VarLenFeature(tf.string), "text_embedding": tf.io.VarLenFeature(tf.float32),
            "match": tf.io.VarLenFeature(tf.int64)}

    def parse(record):
        f = tf.io.parse_single_example(record, spec)
        captions = tf.sparse.to_dense(f["caption"])
        match = tf.sparse.to_dense(f["match"])
        vectors = tf.reshape(tf.sparse.to_dense(f["text_embedding"]), [tf.shape(captions)[0], embedding_dim])
        labels = tf.cast(tf.stack([match, 1 - match], axis=1), tf.float32)  # match = [1, 0]
        return preprocess_image(f["image"], image_size), f["image_name"], captions, vectors, labels
    return parse


def _triples(image, name, captions, vectors, labels):
    """One image's triples as the faithful pipeline's (features, label) elements.

    The image tensor is repeated by reference (``from_tensors(...).repeat``), not copied K times:
    on Flickr8k this took the pipeline from 0.7 to 0.3 CPU-seconds per 1000 examples (against ``tf.repeat``
    and ``unbatch``)."""
    images = tf.data.Dataset.from_tensors((image, name)).repeat(tf.shape(captions, out_type=tf.int64)[0])
    rows = tf.data.Dataset.from_tensor_slices((captions, vectors, labels))
    return tf.data.Dataset.zip(images, rows).map(
        lambda i, r: ({"image_input": i[0], "text_embedding": r[1], "caption": r[0], "file_name": i[1]}, r[2]))


def make_shard_dataset(shards_dir, split: str, batch_size: int = 16, shuffle: bool = True, seed: int | None = None,
                       image_size: int = 224, index: dict | None = None):
    """Stream a split from its shards: the faithful pipeline's batches, without holding the data in memory.

    Shards are listed from the index (shuffled when training), read ``MAX_CYCLE_LENGTH`` at a time
    in parallel (in any order when training: ``deterministic=False``, so a slow read never stalls the
    others), image records shuffled, each image decoded once with ``preprocess_image``, its triples
    flattened out, shuffled again (``SHUFFLE_BATCHES`` batches of triples, holding at most that many
    decoded images: the only memory that grows with the image size), batched and prefetched. Yields
    ``image_input``, ``text_embedding``, ``caption`` and ``file_name`` (the image's name in the data
    folder) with the one-hot label, match = [1, 0]. Without ``shuffle`` the order is fixed, not the
    split file's.
    """
    shards_dir = Path(shards_dir)
    index = index or read_index(shards_dir, splits=(split,))
    n = index["splits"][split]["shards"]
    # The index's file names rather than list_files' glob: exactly the shards the index counted.
    files = tf.data.Dataset.from_tensor_slices([str(shards_dir / shard_name(split, i, n)) for i in range(n)])
    if shuffle:
        files = files.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = files.interleave(tf.data.TFRecordDataset, cycle_length=min(n, MAX_CYCLE_LENGTH),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle)
    if shuffle:
        ds = ds.shuffle(SHUFFLE_IMAGES, seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(_parse(image_size, index.get("embedding_dim", EMBEDDING_DIM)), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=not shuffle).flat_map(_triples)
    if shuffle:
        ds = ds.shuffle(batch_size * SHUFFLE_BATCHES, seed=seed, reshuffle_each_iteration=True)
    # The batch count, known from the index (and checked as the data flows): without it Keras' fit counts
    # one optimizer step too many per epoch, at the end of the data, and the learning-rate schedule drifts.
    batches = math.ceil(index["splits"][split]["triples"] / batch_size)
    ds = ds.batch(batch_size).apply(tf.data.experimental.assert_cardinality(batches))
    return ds.prefetch(tf.data.AUTOTUNE)
