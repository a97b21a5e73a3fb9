"""all-MiniLM-L6-v2 in Keras 3: raw caption strings in, the sentence-transformers embedding out.

A BERT encoder (6 post-LayerNorm layers, hidden 384, 12 heads, GELU intermediate 1536, learned
positions), mean pooling over the real tokens and L2 normalisation: what ``SentenceTransformer.encode``
computes, but in TensorFlow alone, tokenisation included, so that a saved model takes raw text and the
text tower can be trained end to end. Weights come from a sentence-transformers model folder's
``model.safetensors``, read with the safetensors numpy API (no torch).

    captions (B,) string -> token_ids (B,L) -> BERT (B,L,384) -> mean over real tokens (B,384) -> L2
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from ..errors import DataError
from .minilm_files import model_folder
from . import tokenizer  # the module: Keras' registration (itm.models.keras_registry) may meet it half-made

EMBEDDING_DIM = 384


def _freeze_sublayers(layer):
    """A layer made with trainable=False (as when loaded from a file) must freeze the sublayers it made
    after Layer.__init__: Keras propagates the flag only when it is set, and a set to the value the
    layer already has is skipped."""
    for sublayer in layer._layers:
        sublayer.trainable = layer.trainable


def _masked_bias(mask, dtype):
    """(B,L) 1/0 mask -> (B,1,1,L) additive attention bias: 0 for real tokens, very negative for padding."""
    very_negative = -3e4 if dtype == "float16" else -1e9
    # expand_dims, not [:, None, None, :]: LiteRT's strided slice cannot add axes (itm export --format litert)
    return ops.expand_dims(ops.expand_dims(ops.cast(1 - mask, dtype), 1), 1) * very_negative


@keras.saving.register_keras_serializable(package="itm")
class BertEmbeddings(layers.Layer):
    """token ids (B,L) -> word + position + token-type(0) embeddings, LayerNorm, dropout: (B,L,H)."""

    def __init__(self, vocab_size: int, hidden_size: int, max_positions: int, type_vocab_size: int = 2,
                 layer_norm_eps: float = 1e-12, dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.config = dict(vocab_size=vocab_size, hidden_size=hidden_size, max_positions=max_positions,
                           type_vocab_size=type_vocab_size, layer_norm_eps=layer_norm_eps, dropout=dropout)
        self.word = layers.Embedding(vocab_size, hidden_size, name="word_embeddings")
        self.position = layers.Embedding(max_positions, hidden_size, name="position_embeddings")
        self.token_type = layers.Embedding(type_vocab_size, hidden_size, name="token_type_embeddings")
        self.norm = layers.LayerNormalization(epsilon=layer_norm_eps, name="layer_norm")
        self.drop = layers.Dropout(dropout)
        _freeze_sublayers(self)

    def build(self, ids_shape):
        for embedding in (self.word, self.position, self.token_type):
            embedding.build((None, None))
        self.norm.build((None, None, self.config["hidden_size"]))
        self.built = True

    def call(self, ids, training=None):
        positions = ops.expand_dims(ops.arange(ops.shape(ids)[1]), 0)  # (1,L)
        x = self.word(ids) + self.position(positions) + self.token_type(ops.zeros_like(ids))  # (B,L,H)
        return self.drop(self.norm(x), training=training)

    def get_config(self):
        return {**super().get_config(), **self.config}


@keras.saving.register_keras_serializable(package="itm")
class BertLayer(layers.Layer):
    """One post-LN BERT encoder layer: x (B,L,H), mask (B,L) -> (B,L,H).

    LN(x + Dropout(Dense(MultiHeadSelfAttention(x)))), then LN(h + Dropout(Dense(GELU(Dense(h))))).
    """

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, layer_norm_eps: float = 1e-12,
                 dropout: float = 0.1, attention_dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
        self.config = dict(hidden_size=hidden_size, num_heads=num_heads, intermediate_size=intermediate_size,
                           layer_norm_eps=layer_norm_eps, dropout=dropout, attention_dropout=attention_dropout)
        self.head_dim = hidden_size // num_heads
        self.query = layers.Dense(hidden_size, name="query")
        self.key = layers.Dense(hidden_size, name="key")
        self.value = layers.Dense(hidden_size, name="value")
        self.attention_output = layers.Dense(hidden_size, name="attention_output")
        self.attention_norm = layers.LayerNormalization(epsilon=layer_norm_eps, name="attention_norm")
        self.intermediate = layers.Dense(intermediate_size, name="intermediate")
        self.output_dense = layers.Dense(hidden_size, name="output")
        self.output_norm = layers.LayerNormalization(epsilon=layer_norm_eps, name="output_norm")
        self.attention_drop = layers.Dropout(attention_dropout)
        self.drop = layers.Dropout(dropout)
        _freeze_sublayers(self)

    def build(self, x_shape, mask_shape=None):
        h, i = self.config["hidden_size"], self.config["intermediate_size"]
        for dense in (self.query, self.key, self.value, self.attention_output, self.intermediate):
            dense.build((None, None, h))
        self.output_dense.build((None, None, i))
        self.attention_norm.build((None, None, h))
        self.output_norm.build((None, None, h))
        self.built = True

    def _heads(self, x):  # (B,L,H) -> (B,heads,L,head_dim)
        b, n = ops.shape(x)[0], ops.shape(x)[1]
        return ops.transpose(ops.reshape(x, (b, n, self.config["num_heads"], self.head_dim)), (0, 2, 1, 3))

    def call(self, x, mask, training=None):
        b, n = ops.shape(x)[0], ops.shape(x)[1]
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / math.sqrt(self.head_dim)  # (B,heads,L,L)
        probs = ops.softmax(scores + _masked_bias(mask, scores.dtype), axis=-1)
        context = ops.matmul(self.attention_drop(probs, training=training), v)  # (B,heads,L,head_dim)
        context = ops.reshape(ops.transpose(context, (0, 2, 1, 3)), (b, n, self.config["hidden_size"]))
        h = self.attention_norm(x + self.drop(self.attention_output(context), training=training))
        y = self.output_dense(keras.activations.gelu(self.intermediate(h), approximate=False))  # exact erf GELU
        return self.output_norm(h + self.drop(y, training=training))

    def get_config(self):
        return {**super().get_config(), **self.config}


@keras.saving.register_keras_serializable(package="itm")
class SentenceEncoder(layers.Layer):
    """Caption strings (B,) -> L2-normalised mean-pooled BERT embeddings (B,hidden).

    ``tokenize`` and ``encode_ids`` are the two halves, for callers that sort or batch by token length.
    """

    def __init__(self, vocab: list[str], hidden_size: int = 384, num_layers: int = 6, num_heads: int = 12,
                 intermediate_size: int = 1536, max_positions: int = 512, type_vocab_size: int = 2,
                 max_length: int = 256, layer_norm_eps: float = 1e-12, dropout: float = 0.1,
                 attention_dropout: float = 0.1, normalize: bool = True, **kwargs):
        super().__init__(**kwargs)
        if max_length > max_positions:
            raise ValueError(f"max_length {max_length} exceeds the model's {max_positions} positions")
        self.config = dict(hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                           intermediate_size=intermediate_size, max_positions=max_positions,
                           type_vocab_size=type_vocab_size, max_length=max_length, layer_norm_eps=layer_norm_eps,
                           dropout=dropout, attention_dropout=attention_dropout, normalize=normalize)
        self.tokenizer = tokenizer.WordPieceTokenizer(vocab, max_length=max_length, name="tokenizer")
        self.embeddings = BertEmbeddings(len(vocab), hidden_size, max_positions, type_vocab_size, layer_norm_eps,
                                         dropout, name="embeddings")
        self.encoder_layers = [BertLayer(hidden_size, num_heads, intermediate_size, layer_norm_eps, dropout,
                                         attention_dropout, name=f"layer_{i}") for i in range(num_layers)]
        _freeze_sublayers(self)

    def build(self, captions_shape=None):
        self.embeddings.build((None, None))
        for layer in self.encoder_layers:
            layer.build((None, None, self.config["hidden_size"]))
        self.built = True

    def tokenize(self, captions):
        return self.tokenizer(captions)  # (B,L) int32

    def encode_ids(self, ids, training=None):
        """token ids (B,L), 0 = padding -> (B,hidden)."""
        mask = ops.cast(ops.not_equal(ids, self.tokenizer.pad_id), "int32")  # (B,L)
        x = self.embeddings(ids, training=training)  # (B,L,H)
        for layer in self.encoder_layers:
            x = layer(x, mask, training=training)
        weights = ops.expand_dims(ops.cast(mask, x.dtype), -1)  # (B,L,1)
        pooled = ops.sum(x * weights, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1e-9)  # (B,H)
        if self.config["normalize"]:
            pooled = pooled / ops.maximum(ops.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return pooled

    def call(self, captions, training=None):
        return self.encode_ids(self.tokenize(captions), training=training)

    def compute_output_shape(self, captions_shape):
        return (captions_shape[0] if captions_shape else None, self.config["hidden_size"])

    def get_config(self):
        return {**super().get_config(), "vocab": self.tokenizer.vocab, **self.config}


# ---- loading a sentence-transformers model folder ----------------------------------------------------

def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path.parent} is not a sentence-transformers model folder: no {path.name}") from None
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def encoder_from_folder(folder=None, trainable: bool = False, dropout: float | None = None,
                        name: str = "minilm") -> SentenceEncoder:
    """A SentenceEncoder with the architecture and weights of a sentence-transformers BERT folder.

    Checks what this implementation reproduces (BERT, mean pooling) and says so when a folder differs.
    """
    folder = model_folder(folder)
    config = _read_json(folder / "config.json")
    if config.get("model_type", "bert") != "bert" or config.get("hidden_act", "gelu") != "gelu":
        raise DataError(f"{folder}: only BERT models with exact GELU are supported "
                        f"(model_type={config.get('model_type')!r}, hidden_act={config.get('hidden_act')!r})")
    st_config = _read_json(folder / "sentence_bert_config.json") if (folder / "sentence_bert_config.json").is_file() \
        else {}
    pooling = folder / "1_Pooling" / "config.json"
    if pooling.is_file() and not _read_json(pooling).get("pooling_mode_mean_tokens", False):
        raise DataError(f"{pooling}: only mean pooling is implemented")
    modules = _read_json(folder / "modules.json") if (folder / "modules.json").is_file() else []
    normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    tokenizer_config = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() \
        else {}
    if not tokenizer_config.get("do_lower_case", True):
        raise DataError(f"{folder}: only lower-casing (uncased) BERT tokenizers are implemented")
    vocab = tokenizer.load_vocab(folder / "vocab.txt")
    hidden_dropout = config.get("hidden_dropout_prob", 0.1) if dropout is None else dropout
    attention_dropout = config.get("attention_probs_dropout_prob", 0.1) if dropout is None else dropout
    encoder = SentenceEncoder(
        vocab, hidden_size=config["hidden_size"], num_layers=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"], intermediate_size=config["intermediate_size"],
        max_positions=config["max_position_embeddings"], type_vocab_size=config.get("type_vocab_size", 2),
        max_length=int(st_config.get("max_seq_length") or 512), layer_norm_eps=config.get("layer_norm_eps", 1e-12),
        dropout=hidden_dropout, attention_dropout=attention_dropout, normalize=normalize, name=name)
    load_safetensors_weights(encoder, folder / "model.safetensors")
    encoder.trainable = trainable
    return encoder


def load_safetensors_weights(encoder: SentenceEncoder, path) -> None:
    """Copy a Hugging Face BertModel's ``model.safetensors`` into ``encoder`` (torch Linear [out,in] ->
    Keras Dense kernel [in,out]). Every weight the encoder needs must be there, with its shape."""
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise DataError("safetensors is not installed; pip install safetensors") from None
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no weights file {path} (a sentence-transformers model folder has model.safetensors)")
    tensors = {k.removeprefix("bert."): v for k, v in load_file(str(path)).items()}
    if not encoder.built:
        encoder.build()

    def dense(prefix):
        return [tensors[f"{prefix}.weight"].T, tensors[f"{prefix}.bias"]]

    def norm(prefix):
        return [tensors[f"{prefix}.weight"], tensors[f"{prefix}.bias"]]

    plan = []  # (keras layer, [arrays]) pairs
    try:
        e = encoder.embeddings
        plan += [(e.word, [tensors["embeddings.word_embeddings.weight"]]),
                 (e.position, [tensors["embeddings.position_embeddings.weight"]]),
                 (e.token_type, [tensors["embeddings.token_type_embeddings.weight"]]),
                 (e.norm, norm("embeddings.LayerNorm"))]
        for i, layer in enumerate(encoder.encoder_layers):
            p = f"encoder.layer.{i}"
            plan += [(layer.query, dense(f"{p}.attention.self.query")),
                     (layer.key, dense(f"{p}.attention.self.key")),
                     (layer.value, dense(f"{p}.attention.self.value")),
                     (layer.attention_output, dense(f"{p}.attention.output.dense")),
                     (layer.attention_norm, norm(f"{p}.attention.output.LayerNorm")),
                     (layer.intermediate, dense(f"{p}.intermediate.dense")),
                     (layer.output_dense, dense(f"{p}.output.dense")),
                     (layer.output_norm, norm(f"{p}.output.LayerNorm"))]
    except KeyError as e:
        raise DataError(f"{path} lacks the weight {e.args[0]!r}: not a BERT model of this shape") from None
    for keras_layer, arrays in plan:
        expected = [tuple(w.shape) for w in keras_layer.weights]
        got = [tuple(a.shape) for a in arrays]
        if expected != got:
            raise DataError(f"{path}: weights for {keras_layer.path} have shapes {got}, the model expects {expected}")
        keras_layer.set_weights([np.asarray(a, dtype=np.float32) for a in arrays])


def caption_embedder(encoder: SentenceEncoder, batch_size: int = 128):
    """A function captions -> float32 (N,hidden), in the callers' order, for embedding many captions fast:
    tokenise all, then run batches of similar length (little padding). Traced once, reused per call."""
    width, pad_id = encoder.config["max_length"], encoder.tokenizer.pad_id
    tokenize = tf.function(encoder.tokenize, input_signature=[tf.TensorSpec([None], tf.string)])
    run = tf.function(lambda ids: encoder.encode_ids(ids, training=False),
                      input_signature=[tf.TensorSpec([None, None], tf.int32)])

    def embed(captions) -> np.ndarray:
        captions = list(captions)
        out = np.empty((len(captions), encoder.config["hidden_size"]), np.float32)
        if not captions:
            return out
        ids = np.concatenate([_pad(tokenize(tf.constant(captions[i:i + 4096])).numpy(), width)
                              for i in range(0, len(captions), 4096)])  # (N,max_length)
        lengths = (ids != pad_id).sum(axis=1)
        order = np.argsort(-lengths, kind="stable")
        for lo in range(0, len(order), batch_size):
            idx = order[lo:lo + batch_size]
            out[idx] = run(tf.constant(ids[idx, : lengths[idx].max()])).numpy()
        return out

    return embed


def embed_captions(encoder: SentenceEncoder, captions, batch_size: int = 128) -> np.ndarray:
    """float32 (N,hidden) embeddings of ``captions``, in their order."""
    return caption_embedder(encoder, batch_size)(captions)


def tf_encoder(model_dir=None, batch_size: int = 128):
    """``itm embed --backend tf``: a local sentence-transformers folder's model as captions -> (N,hidden)."""
    return caption_embedder(encoder_from_folder(model_dir), batch_size)


def _pad(ids: np.ndarray, width: int) -> np.ndarray:
    return np.pad(ids, ((0, 0), (0, width - ids.shape[1])))


def minilm_text_tower(text_input, dropout_rate: float = 0.1, model_dir=None, trainable: bool = False):
    """The ``minilm`` text tower: caption strings (B,) -> all-MiniLM-L6-v2 embedding (B,384).

    Frozen by default (then it computes exactly the precomputed embeddings, in the graph);
    ``trainable=True`` fine-tunes it with the rest of the model. ``dropout_rate`` is the classifier's
    and is not applied here: the encoder keeps its own (0.1, as pretrained).
    """
    return encoder_from_folder(model_dir, trainable=trainable)(text_input)


def scratch_text_tower(text_input, dropout_rate: float = 0.1, model_dir=None, hidden_size: int = 128,
                       num_layers: int = 2, num_heads: int = 4, max_length: int = 64):
    """The ``scratch`` text tower: caption strings (B,) -> (B,hidden_size), a small BERT-style Transformer
    over the same WordPiece tokens (all-MiniLM-L6-v2's ``vocab.txt``), trained from zero.

    Flickr8k captions are short (the longest is under 64 tokens), so 64 positions are enough; longer
    captions are truncated. No L2 normalisation: the projection that follows learns the scale.
    """
    vocab = tokenizer.load_vocab(model_folder(model_dir) / "vocab.txt")
    encoder = SentenceEncoder(vocab, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                              intermediate_size=4 * hidden_size, max_positions=max_length, max_length=max_length,
                              dropout=dropout_rate, attention_dropout=dropout_rate, normalize=False, name="scratch")
    return encoder(text_input)
