"""Retrieval in two stages, as ALBEF and BLIP do it: a shortlist from the contrastive embedding, re-ranked
by the match head.

The embedding is the model's projected image and caption features (what the contrastive objective's InfoNCE
trains), L2-normalised: a collection is searched by one matrix product (or an approximate-nearest-neighbour
index), at no head evaluation per item. The head, which sees the pair together, then scores only the top k
of each query. ``retrieval_report`` measures both stages (and the head alone over every pair, where that is
affordable) with the field's Recall@K, so that each stage's contribution is visible.
"""
from __future__ import annotations

import time

import numpy as np

from ..defaults import DEFAULT_RERANK
from .metrics import retrieval_metrics

HEAD_ALL_PAIRS_MAX = 1_500_000  # above this many pairs (1,000 x 5,000: 5M) the head over every pair is left out


def embedding_vectors(features) -> np.ndarray:
    """Encoder features [N,D] (or [N,T,D] region tokens, averaged as the contrastive loss averages them) ->
    unit vectors [N,D] float32: the retrieval embedding, compared by dot product (cosine)."""
    x = np.asarray(features, np.float32)
    if x.ndim == 3:
        x = x.mean(axis=1)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def shortlist(similarities: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` most similar candidates of each query row, best first: [Q, min(k, C)] column indices."""
    sims = np.atleast_2d(similarities)
    k = min(int(k), sims.shape[1])
    if k <= 0:
        return np.zeros((sims.shape[0], 0), dtype=np.int64)
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1] else np.tile(np.arange(k), (len(sims), 1))
    order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def reranked_scores(similarities: np.ndarray, k: int, pair_scores) -> np.ndarray:
    """A ranking score for every (query, candidate): the head's p(match) + 2 for each query's top ``k`` by
    embedding (so they rank first, in the head's order), the cosine (in [-1, 1]) for the rest.

    ``pair_scores(query_rows, candidate_cols)`` -> p(match) of each pair: the head, called on Q*k pairs.
    """
    sims = np.asarray(similarities, np.float64)
    top = shortlist(sims, k)
    out = sims.copy()
    if top.size:
        rows = np.repeat(np.arange(len(sims)), top.shape[1])
        out[rows, top.ravel()] = 2.0 + np.asarray(pair_scores(rows, top.ravel()), np.float64)
    return out


def two_stage_search(similarities: np.ndarray, k: int, pair_scores, top: int | None = None):
    """One query against a collection: ``(indices, p_match)``, best first, of the ``max(k, top)`` candidates
    nearest by embedding, ordered by the head's p(match). ``pair_scores(cols)`` scores candidates ``cols``."""
    sims = np.asarray(similarities, np.float64).ravel()
    return rerank_shortlist(shortlist(sims[None], shortlist_size(len(sims), k, top))[0], pair_scores, top)


def shortlist_size(n: int, k: int, top: int | None) -> int:
    """How many candidates the head re-scores: ``max(k, top)``, or all ``n`` when every result is asked for."""
    return int(n) if top is None else max(int(k), int(top))


def rerank_shortlist(cols, pair_scores, top: int | None = None):
    """The second stage: shortlisted candidates ``cols`` (best first by embedding, from a matrix product or
    ``itm.index.VectorIndex``) -> ``(indices, p_match)`` of the ``top`` best by the head, ties in shortlist order."""
    cols = np.asarray(cols, np.int64)
    p = np.asarray(pair_scores(cols), np.float64) if len(cols) else np.zeros(0)
    order = np.argsort(-p, kind="stable")[:top]
    return cols[order], p[order]


def retrieval_report(scorer, image_features, text_features, relevant: np.ndarray,
                     rerank: int = DEFAULT_RERANK) -> dict:
    """Recall@1/5/10 and median rank both ways: the embedding alone, re-ranked by the head (the headline
    ``image_to_text`` / ``text_to_image``), and the head over every pair when there are few enough.

    ``relevant[i, j]``: caption j is a true caption of image i (five per image under the standard protocol).
    """
    start = time.perf_counter()
    sims = embedding_vectors(image_features) @ embedding_vectors(text_features).T  # [images, captions]

    def head(image_rows, text_rows):
        return scorer.pairs(image_features, text_features, image_rows, text_rows)[:, 0]

    stages = {"embedding": {"image_to_text": retrieval_metrics(sims, relevant),
                            "text_to_image": retrieval_metrics(sims.T, relevant.T)}}
    first = time.perf_counter()
    stages["embedding"]["seconds"] = first - start
    # the head's p(match) saturates (1.0 for several candidates): its ties go by the cosine, as a search's do
    stages["reranked"] = {
        "image_to_text": retrieval_metrics(reranked_scores(sims, rerank, head), relevant, tie_break=sims),
        "text_to_image": retrieval_metrics(reranked_scores(sims.T, rerank, lambda t, i: head(i, t)), relevant.T,
                                           tie_break=sims.T),
        "seconds": time.perf_counter() - first,
    }
    if sims.size <= HEAD_ALL_PAIRS_MAX:
        begin = time.perf_counter()
        scores = scorer.all_pairs(image_features, text_features)
        stages["head"] = {"image_to_text": retrieval_metrics(scores, relevant, tie_break=sims),
                          "text_to_image": retrieval_metrics(scores.T, relevant.T, tie_break=sims.T),
                          "seconds": time.perf_counter() - begin}
    return {"images": int(sims.shape[0]), "captions": int(sims.shape[1]), "rerank": int(rerank),
            "image_to_text": stages["reranked"]["image_to_text"], "text_to_image": stages["reranked"]["text_to_image"],
            "stages": stages}
