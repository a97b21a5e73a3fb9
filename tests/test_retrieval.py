"""Retrieval in two stages (the embedding's shortlist, the head's re-ranking) and the standard protocol's folder:
`itm ood-split --protocol`, and `itm evaluate` on a split of match lines only (retrieval, and a note instead of
binary metrics)."""
import json
import shutil

import numpy as np
import pytest

from conftest import itm_cli
from test_pretrained import photos_and_captions  # noqa: F401 (a fixture)


# ---------------------------------------------------------------- the two stages, by hand

def test_shortlist_takes_the_k_most_similar_best_first():
    from itm.evaluation.retrieval import shortlist

    sims = np.array([[0.1, 0.9, 0.5, 0.7], [0.4, 0.3, 0.2, 0.1]])
    assert shortlist(sims, 2).tolist() == [[1, 3], [0, 1]]
    assert shortlist(sims, 10).tolist() == [[1, 3, 2, 0], [0, 1, 2, 3]]  # k beyond the candidates: all, sorted
    assert shortlist(sims, 0).shape == (2, 0)


def test_the_head_reorders_the_shortlist_and_only_the_shortlist():
    from itm.evaluation.metrics import retrieval_metrics
    from itm.evaluation.retrieval import reranked_scores

    sims = np.array([[0.9, 0.8, 0.7, 0.1]])  # the embedding ranks candidate 0 first, the true one (2) third
    head = np.array([[0.2, 0.1, 0.95, 0.99]])  # the head knows better, and would put 3 first if it saw it
    asked = []

    def pair_scores(rows, cols):
        asked.extend(zip(rows.tolist(), cols.tolist()))
        return head[rows, cols]

    scores = reranked_scores(sims, 3, pair_scores)
    assert sorted(asked) == [(0, 0), (0, 1), (0, 2)]  # the head ran on the shortlist alone
    assert np.argsort(-scores[0]).tolist() == [2, 0, 1, 3]  # re-ordered by the head; 3 stays out, below
    relevant = np.array([[False, False, True, False]])
    assert retrieval_metrics(sims, relevant)["R@1"] == 0.0
    assert retrieval_metrics(scores, relevant)["R@1"] == 1.0


def test_two_stage_search_returns_the_shortlist_in_the_heads_order():
    from itm.evaluation.retrieval import two_stage_search

    sims = np.array([0.1, 0.9, 0.8, 0.7, 0.2])
    p = np.array([0.99, 0.3, 0.6, 0.9, 0.5])
    cols, scores = two_stage_search(sims, 3, lambda c: p[c], top=2)
    assert cols.tolist() == [3, 2] and scores.tolist() == [0.9, 0.6]  # 0 scores higher but is not shortlisted
    cols, _ = two_stage_search(sims, 3, lambda c: p[c], top=None)  # no top: every candidate, by the head
    assert cols.tolist() == [0, 3, 2, 4, 1]


def test_embedding_vectors_are_unit_length_and_average_tokens():
    from itm.evaluation.retrieval import embedding_vectors

    v = embedding_vectors(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert np.allclose(v[0], [0.6, 0.8]) and np.all(np.isfinite(v))
    tokens = np.array([[[1.0, 0.0], [0.0, 1.0]]])  # (N, T, D): averaged, then normalised
    assert np.allclose(embedding_vectors(tokens), [[2 ** -0.5, 2 ** -0.5]])


# ---------------------------------------------------------------- the protocol folder

def test_ood_split_protocol_holds_every_caption_as_a_match_and_contains_the_pair_folder(photos_and_captions,  # noqa: F811
                                                                                         tmp_path):
    from itm.data.folder import load_data_dir
    from itm.data.ood import ood_split

    folder, token, names = photos_and_captions
    proto = ood_split(token, folder, tmp_path / "proto", photos=12, seed=5, embed=False, protocol=True)
    pairs = ood_split(token, folder, tmp_path / "pairs", photos=7, seed=5, embed=False)
    test = load_data_dir(proto, splits=("test",), need_embeddings=False).splits["test"]
    chosen = {t.image for t in test.triples}
    assert len(chosen) == 12 and len(test.triples) == 60 and test.n_match == 60  # 5 captions each, all match
    for t in test.triples:
        assert names[int(t.caption.split()[1])] == t.image  # "photo {i} caption {k}": its own captions
    # the same seed draws the same photos first: a protocol folder of 1,000 holds the 600 of the pair folder
    paired = {t.image for t in load_data_dir(pairs, splits=("test",), need_embeddings=False).splits["test"].triples}
    assert paired < chosen


def test_ood_split_protocol_from_the_command_line_defaults_to_1000_photos(photos_and_captions, tmp_path):  # noqa: F811
    folder, token, _ = photos_and_captions
    r = itm_cli("ood-split", "--protocol", "--captions", token, "--images", folder, "--out", tmp_path / "o",
                "--no-embed")
    assert r.returncode == 2 and "fewer than --photos 1000" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- both stages on a trained fixture run

@pytest.mark.slow
def test_evaluate_a_protocol_folder_reports_both_stages_and_search_uses_them(contrastive_run, tiny_data, tmp_path):
    """On a copy of the session's ``contrastive_run`` (evaluate writes into the run)."""
    run = shutil.copytree(contrastive_run, tmp_path / "run")
    # the standard protocol's shape: every photo with its match captions only; one class
    proto = tmp_path / "proto"
    shutil.copytree(tiny_data, proto)
    lines = (tiny_data / "flickr8k.TestImages.txt").read_text().splitlines()
    matches = [line for line in lines if line.endswith("\tmatch")]
    (proto / "flickr8k.TestImages.txt").write_text("\n".join(matches) + "\n")
    r = itm_cli("evaluate", "--run", str(run), "--data-dir", str(proto), "--name", "proto",
                "--rerank", "3")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout[-3000:] + r.stderr[-3000:]
    assert "note: proto: only match lines" in r.stdout and "ROC-AUC" in r.stdout
    m = json.loads((run / "metrics-proto.json").read_text())
    assert "roc_auc" not in m and "accuracy" not in m and m["one_class"] == "match" and m["n"] == len(matches)
    ret = m["retrieval"]
    assert ret["images"] == 6 and ret["rerank"] == 3 and set(ret["stages"]) == {"embedding", "reranked", "head"}
    for stage in ret["stages"].values():
        assert stage["image_to_text"]["queries"] == 6 and stage["text_to_image"]["queries"] == ret["captions"]
    # re-ranking only reorders each query's top 3: the top 5 and 10 hold the embedding's, so R@5 and R@10 agree
    emb, rer = ret["stages"]["embedding"], ret["stages"]["reranked"]
    for direction in ("image_to_text", "text_to_image"):
        for k in ("R@5", "R@10"):
            assert rer[direction][k] == pytest.approx(emb[direction][k])
    report = (run / "report.md").read_text()
    assert "all match" in report and "embedding alone" in report and "re-ranked by the head" in report
    r = itm_cli("compare", "--split", "proto", str(run))
    assert r.returncode == 0 and "one class" in r.stdout, r.stdout + r.stderr

    # the Matcher: unit embeddings, and search's two stages agree with the head over every image when the
    # shortlist holds them all, and keep to the embedding's nearest when it is short
    from itm.serving.matcher import Matcher

    matcher = Matcher.load(run)
    assert matcher.contrastive
    images = sorted((proto / "flickr8k-resised").glob("*.jpg"))
    query = matches[0].split("\t")[1]
    vi, vt = matcher.encode_image(images, normalize=True), matcher.encode_text([query], normalize=True)
    assert np.allclose(np.linalg.norm(vi, axis=1), 1, atol=1e-5) and np.allclose(np.linalg.norm(vt, axis=1), 1)
    everything = matcher.search(proto / "flickr8k-resised", query, top=None, rerank=0)
    full = matcher.search(proto / "flickr8k-resised", query, top=None, rerank=len(images))
    assert [path for path, _ in full] == [path for path, _ in everything]
    assert [p for _, p in full] == pytest.approx([p for _, p in everything], abs=1e-6)
    nearest = {images[i].name for i in np.argsort(-(vi @ vt[0]))[:2]}
    two = matcher.search(proto / "flickr8k-resised", query, top=2, rerank=2)
    assert {path.name for path, _ in two} == nearest
    assert [p for _, p in two] == sorted((p for _, p in two), reverse=True)
