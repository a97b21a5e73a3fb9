"""The TensorFlow all-MiniLM-L6-v2 (itm.models.minilm, itm.models.tokenizer) against sentence-transformers.

Token ids are checked against a committed table made with sentence-transformers' own tokenizer
(tricky cases: punctuation, accents, compatibility characters, CJK, control characters, a caption
over 256 tokens), against that tokenizer directly where it is installed, and embeddings against
the shared Flickr8k pickle that sentence-transformers computed.
"""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import NO_COURSE_DATA, NO_MINILM_MODEL, NO_SENTENCE_TRANSFORMERS, NO_TEXT_EXTRA, ROOT, SHARED, itm_cli
from itm.errors import DataError

pytest.importorskip("tensorflow_text", reason=NO_TEXT_EXTRA)
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from itm.models.minilm import SentenceEncoder, encoder_from_folder, minilm_text_tower, scratch_text_tower  # noqa: E402
from itm.models.minilm_files import HUB_NAME, default_model_path, model_folder  # noqa: E402
from itm.models.tokenizer import WordPieceTokenizer, load_vocab  # noqa: E402


def caption_input():
    """A model's raw-caption input, as the classifier declares it: strings (B,)."""
    return keras.Input(shape=(), dtype="string", name="caption")


TABLE = json.loads((Path(__file__).parent / "minilm_token_ids.json").read_text(encoding="utf-8"))["cases"]
HAVE_MODEL = default_model_path() != HUB_NAME
needs_model = pytest.mark.skipif(not HAVE_MODEL, reason=NO_MINILM_MODEL)
PICKLE = SHARED / "flickr8k.cmp9137.sentence_transformers.pkl"


@pytest.fixture(scope="module")
def encoder():
    if not HAVE_MODEL:
        pytest.skip(NO_MINILM_MODEL)
    return encoder_from_folder(None)


def token_ids(tokenizer, captions):
    """Unpadded id lists: the tokenizer pads with 0 ([PAD]), which never occurs inside a caption."""
    return [[int(t) for t in row if t != 0] for row in tokenizer(tf.constant(captions)).numpy()]


@needs_model
def test_token_ids_match_the_committed_reference_table():
    tokenizer = WordPieceTokenizer(load_vocab(Path(default_model_path()) / "vocab.txt"), max_length=256)
    got = token_ids(tokenizer, [case["caption"] for case in TABLE])
    for case, ids in zip(TABLE, got):
        assert ids == case["ids"], repr(case["caption"])
    assert max(len(case["ids"]) for case in TABLE) == 256  # the table holds a truncated caption


@needs_model
def test_token_ids_match_sentence_transformers_itself():
    pytest.importorskip("sentence_transformers", reason=NO_SENTENCE_TRANSFORMERS)
    from itm.models.encoders import load_sentence_transformer

    st = load_sentence_transformer()
    captions = [case["caption"] for case in TABLE] + ["A black dog is running through the snow ."]
    expected = [st.tokenizer([c], truncation=True, max_length=st.max_seq_length)["input_ids"][0] for c in captions]
    tokenizer = WordPieceTokenizer(load_vocab(Path(default_model_path()) / "vocab.txt"), max_length=st.max_seq_length)
    assert token_ids(tokenizer, captions) == expected


@pytest.mark.skipif(not PICKLE.is_file(), reason=NO_COURSE_DATA)
def test_embeddings_match_the_shared_sentence_transformers_pickle(encoder):
    from itm.data.folder import load_embeddings_pickle
    from itm.models.minilm import embed_captions

    expected = load_embeddings_pickle(PICKLE)
    everything = sorted(expected)
    captions = everything[::900] + [max(everything, key=len)]  # 20 spread over the corpus, and the longest
    got = encoder(tf.constant(captions)).numpy()  # (20,384)
    want = np.stack([expected[c] for c in captions])
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert got.shape == (len(captions), 384)
    assert cosine.min() >= 0.9999, dict(zip(captions, cosine))
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # the bulk path (sorted by length, batched) gives the same vectors in the caller's order
    np.testing.assert_allclose(embed_captions(encoder, captions, batch_size=7), got, atol=1e-5)


def test_padding_does_not_change_an_embedding():
    """A caption's vector must not depend on the longer captions batched with it."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "dog", "runs", "red", "ball", ".", "##s"]
    encoder = SentenceEncoder(vocab, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                              max_positions=32, max_length=16)
    alone = encoder(tf.constant(["a dog"])).numpy()
    batched = encoder(tf.constant(["a dog", "a red ball runs . a dog runs . dogs"])).numpy()
    np.testing.assert_allclose(batched[0], alone[0], atol=1e-6)


def test_a_tiny_string_model_saves_and_loads(tmp_path):
    """Tokenizer and encoder travel inside model.keras: the loaded model takes raw strings."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "dog", "cat", "runs", "##s", ".", "cafe"]
    text = caption_input()
    encoder = SentenceEncoder(vocab, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16,
                              max_positions=16, max_length=8, name="minilm", trainable=False)
    model = keras.Model(text, keras.layers.Dense(2, name="head")(encoder(text)))
    captions = tf.constant(["A dog runs.", "Cats ... CAFÉ", "", "a dog runs a dog runs a dog runs"])
    before = model(captions).numpy()
    model.save(tmp_path / "tiny.keras")
    loaded = keras.saving.load_model(tmp_path / "tiny.keras")
    np.testing.assert_allclose(loaded(captions).numpy(), before, atol=1e-6)
    assert loaded.get_layer("minilm").tokenizer.vocab == vocab
    assert len(model.trainable_weights) == len(loaded.trainable_weights) == 2  # frozen stays frozen: the head only


@needs_model
def test_the_tower_is_frozen_unless_asked_and_gives_384_dims():
    text = caption_input()
    frozen = keras.Model(text, minilm_text_tower(text, 0.1))
    assert frozen.output.shape == (None, 384) and not frozen.trainable_weights
    text = caption_input()
    tuned = keras.Model(text, minilm_text_tower(text, 0.1, trainable=True))
    assert len(tuned.trainable_weights) == 5 + 6 * 16  # 3 embedding tables + LayerNorm, 16 per encoder layer


def small_classifier(text_features):
    """image (B,32,32,3) + caption (B,) -> [p(match), p(no-match)], from the classifier's own parts."""
    from itm.models.classifier import project_embeddings
    from itm.models.fusion_heads import ConcatHead
    from itm.models.image_towers import FaithfulCNN

    image = keras.Input(shape=(32, 32, 3), name="image_input")
    text = caption_input()
    image_vec = keras.layers.Flatten()(FaithfulCNN().feature_map(image, 0.1))
    image_proj = project_embeddings(image_vec, 1, 16, 0.1, "image_proj")
    text_proj = project_embeddings(text_features(text), 1, 16, 0.1, "text_proj")
    return keras.Model({"image_input": image, "caption": text}, ConcatHead()(image_proj, text_proj, 0.1))


@needs_model
@pytest.mark.fresh_process
def test_a_trained_minilm_classifier_scores_new_captions_in_a_fresh_process_without_torch(tmp_path):
    """Done-when of issue 7: trained with the minilm tower, saved, loaded where torch cannot be imported,
    it scores an image against new captions given as plain strings."""
    model = small_classifier(lambda text: minilm_text_tower(text, 0.1))
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="kl_divergence")
    rng = np.random.default_rng(0)
    images = 255 * rng.random((4, 32, 32, 3), dtype=np.float32)  # pixels 0..255, as the model takes
    # strings reach Keras as tf.string tensors (tf.data, as the pipeline feeds them): numpy str arrays do not
    train = tf.data.Dataset.from_tensor_slices(({"image_input": images, "caption": ["a dog runs .", "a red car",
                                                 "two girls", "snow"]}, np.eye(2, dtype=np.float32)[[0, 1, 0, 1]]))
    history = model.fit(train.batch(2), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    new = {"image_input": images[:2], "caption": ["A brown dog catches a frisbee .", "Children in snow"]}
    expected = model.predict(tf.data.Dataset.from_tensors(new), verbose=0)  # (2,2)
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "expected.npy", expected)
    np.save(tmp_path / "images.npy", new["image_input"])
    script = textwrap.dedent(f"""
        import sys

        class NoTorch:  # importing torch (or sentence-transformers) fails, as where it is not installed
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "sentence_transformers"):
                    raise ImportError("torch is not available here")
        sys.meta_path.insert(0, NoTorch())
        import numpy as np, keras, tensorflow as tf
        import itm.models.minilm  # registers the layers
        model = keras.saving.load_model({str(tmp_path / "m.keras")!r})
        got = model({{"image_input": tf.constant(np.load({str(tmp_path / "images.npy")!r})),
                     "caption": tf.constant({new["caption"]!r})}}).numpy()
        assert len(model.trainable_weights) == {len(model.trainable_weights)}  # the encoder is still frozen
        np.testing.assert_allclose(got, np.load({str(tmp_path / "expected.npy")!r}), atol=1e-5)
        assert "torch" not in sys.modules and "sentence_transformers" not in sys.modules
        print("p(match)", got[:, 0].tolist())
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[:2500]
    assert "p(match)" in done.stdout


@needs_model
def test_fine_tuning_moves_the_encoder_weights():
    tuned = encoder_from_folder(None, trainable=True, name="tuned")
    before = tuned.encoder_layers[0].query.kernel.numpy().copy()
    with tf.GradientTape() as tape:
        vectors = tuned(tf.constant(["a dog runs", "a cat sleeps"]), training=True)  # (2,384)
        loss = tf.reduce_sum(vectors[0] * vectors[1])  # pull the two captions apart
    grads = tape.gradient(loss, tuned.trainable_weights)
    assert len(grads) == 5 + 6 * 16 and all(g is not None for g in grads)
    keras.optimizers.Adam(1e-3).apply(grads, tuned.trainable_weights)
    assert not np.allclose(tuned.encoder_layers[0].query.kernel.numpy(), before)


@needs_model
@pytest.mark.slow  # a 30,522-row embedding trained with Adam: over a minute here
def test_the_scratch_tower_learns_from_zero_over_the_same_wordpieces():
    model = small_classifier(lambda text: scratch_text_tower(text, 0.1, hidden_size=16, num_layers=1, num_heads=2))
    scratch = model.get_layer("scratch")
    assert scratch.output.shape == (None, 16) and scratch.trainable
    assert scratch.tokenizer.vocab_size == 30522 and scratch.config["max_length"] == 64
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="kl_divergence")
    before = scratch.embeddings.word.embeddings.numpy().copy()
    x = tf.data.Dataset.from_tensors(({"image_input": np.zeros((2, 32, 32, 3), np.float32),
                                       "caption": ["a dog runs", "a cat sleeps"]}, np.eye(2, dtype=np.float32)))
    model.fit(x, epochs=1, verbose=0)
    assert not np.allclose(scratch.embeddings.word.embeddings.numpy(), before)


@needs_model
def test_itm_embed_backend_tf_writes_the_encoders_vectors(tiny_data, encoder):
    from itm.data.folder import load_embeddings_file

    out = tiny_data / "tf.npz"
    done = itm_cli("embed", "--data-dir", tiny_data, "--out", out, "--backend", "tf")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tf)" in done.stderr  # the log names the backend
    vectors = load_embeddings_file(out)
    captions = sorted(vectors)
    np.testing.assert_allclose(np.stack([vectors[c] for c in captions]),
                               encoder(tf.constant(captions)).numpy(), atol=1e-5)


def test_a_model_folder_missing_files_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DataError, match="lacks vocab.txt, model.safetensors"):
        model_folder(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        model_folder(tmp_path / "nowhere")


def test_a_vocabulary_without_bert_specials_is_refused(tmp_path):
    (tmp_path / "vocab.txt").write_text("a\nb\n[UNK]\n")
    with pytest.raises(DataError, match=r"lacks \[PAD\], \[CLS\], \[SEP\]"):
        load_vocab(tmp_path / "vocab.txt")


@needs_model
def test_weights_of_another_shape_are_refused(tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    folder = Path(shutil.copytree(default_model_path(), tmp_path / "model"))
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["encoder.layer.3.intermediate.dense.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(DataError, match="lacks the weight 'encoder.layer.3.intermediate.dense.weight'"):
        encoder_from_folder(folder)
