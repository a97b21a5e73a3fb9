"""BERT WordPiece tokenisation inside the TensorFlow graph (tensorflow-text), as a Keras layer.

Why in the graph: a saved model then takes raw caption strings, and scoring a new caption needs
TensorFlow alone. The tokenisation is that of all-MiniLM-L6-v2 in sentence-transformers (BERT
uncased: lower-case, NFD, accents stripped, split on whitespace, punctuation and CJK characters,
WordPiece over ``vocab.txt``), then ``[CLS] ... [SEP]``, truncated to ``max_length`` tokens in all.

    captions (B,) string -> token_ids (B,L) int32, 0 = [PAD], L = longest in the batch <= max_length
"""
from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf

from ..errors import DataError

PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
# CJK ideographs, as BERT's BasicTokenizer._is_chinese_char lists them: each becomes a word of its own.
_CJK = (r"[\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}\x{2B740}-\x{2B81F}"
        r"\x{2B820}-\x{2CEAF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}]")
# What BERT's clean-up drops, once \t \n \r are spaces: U+FFFD and the "other" characters (control,
# format, private use, surrogate, unassigned).
_DROPPED = r"[\p{C}\x{FFFD}]"


def load_vocab(path) -> list[str]:
    """``vocab.txt``: one WordPiece token per line, the line number is its id."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no vocabulary file {path} (a sentence-transformers model folder has vocab.txt)")
    vocab = path.read_text(encoding="utf-8").splitlines()
    missing = [t for t in (PAD, UNK, CLS, SEP) if t not in vocab]
    if missing:
        raise DataError(f"{path} is not a BERT WordPiece vocabulary: it lacks {', '.join(missing)}")
    return vocab


def _text_module():
    try:
        import tensorflow_text
    except ImportError:
        raise DataError("tensorflow-text is not installed; pip install 'tensorflow-text==2.20.*'") from None
    return tensorflow_text


@keras.saving.register_keras_serializable(package="itm")
class WordPieceTokenizer(keras.layers.Layer):
    """Strings (B,) -> BERT token ids (B,L) int32, padded with 0 to the longest in the batch.

    The vocabulary is part of the layer's config, so a saved model carries its own tokenizer.
    """

    def __init__(self, vocab: list[str], max_length: int = 256, lower_case: bool = True, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if max_length < 2:
            raise ValueError(f"max_length must leave room for [CLS] and [SEP], got {max_length}")
        self.vocab, self.max_length, self.lower_case = list(vocab), int(max_length), bool(lower_case)
        self.pad_id, self.cls_id, self.sep_id = (self.vocab.index(t) for t in (PAD, CLS, SEP))
        self._tokenizer = _text_module().FastBertTokenizer(
            vocab=self.vocab, suffix_indicator="##", max_bytes_per_word=100, unknown_token=UNK,
            token_out_type=tf.int32, lower_case_nfd_strip_accents=False)

    def normalize(self, captions):
        """BERT's normaliser, step for step: drop control characters, space out CJK characters, then
        (uncased) NFD, drop combining marks, lower-case. tensorflow-text's own uncased mode folds
        compatibility characters too (ß -> ss, ﬁ -> fi, … -> ...), which the reference does not."""
        captions = tf.strings.regex_replace(captions, r"[\t\n\r]", " ")
        captions = tf.strings.regex_replace(captions, _DROPPED, "")
        captions = tf.strings.regex_replace(captions, _CJK, r" \0 ")
        if self.lower_case:
            captions = _text_module().normalize_utf8(captions, "NFD")
            captions = tf.strings.regex_replace(captions, r"\p{M}", "")
            # per character, as the reference does: ICU would make a word-final capital sigma ς
            captions = tf.strings.regex_replace(captions, "\u03a3", "\u03c3")
            captions = tf.strings.lower(captions, encoding="utf-8")
        return captions

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def call(self, captions):
        captions = tf.reshape(tf.convert_to_tensor(captions, dtype=tf.string), [-1])  # (B,)
        pieces = self._tokenizer.tokenize(self.normalize(captions))  # ragged (B, (n_i))
        pieces = pieces[:, : self.max_length - 2]  # truncation, as the reference does
        ends = tf.fill(tf.stack([pieces.nrows(), tf.constant(1, pieces.row_splits.dtype)]), 0)  # (B,1)
        cls = tf.RaggedTensor.from_tensor(ends + self.cls_id, row_splits_dtype=pieces.row_splits.dtype)
        sep = tf.RaggedTensor.from_tensor(ends + self.sep_id, row_splits_dtype=pieces.row_splits.dtype)
        ids = tf.concat([cls, pieces, sep], axis=1)  # ragged (B, (n_i + 2))
        return ids.to_tensor(default_value=self.pad_id)  # (B,L)

    def compute_output_shape(self, input_shape):
        return (input_shape[0] if input_shape else None, None)

    def compute_output_spec(self, captions):
        return keras.KerasTensor((captions.shape[0] if captions.shape else None, None), dtype="int32")

    def get_config(self):
        return {**super().get_config(), "vocab": self.vocab, "max_length": self.max_length,
                "lower_case": self.lower_case}
