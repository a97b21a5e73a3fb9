"""``itm export``: a trained run as a TensorFlow SavedModel (TensorFlow Serving, any TensorFlow) or a
LiteRT ``.tflite`` model (phones, edge devices), servable without itm.

SavedModel signatures (N is free)::

    serving_default(image: string [N] JPEG/PNG/GIF/BMP bytes, caption: string [N]) -> p_match float32 [N],
                                                                                      match bool [N]
    encode_image(image: string [N])     -> image_features float32 [N, D]   (what the head takes: an index)
    encode_text(caption: string [N])    -> text_features float32 [N, D]
    score_embeddings(image: string [N], text_embedding: float32 [N, 384]) -> p_match, match
                                        (the original's contract: precomputed all-MiniLM-L6-v2 embeddings)

Decoding and resizing (itm's own ``preprocess_image``, traced into the graph, so the export sees what
training saw), the WordPiece tokenizer and the text encoder are in the graph: a client sends bytes and
text. A run trained on precomputed embeddings gets the TensorFlow all-MiniLM-L6-v2 as its caption
encoder (the model that computed those embeddings). The tokenizer's ops are tensorflow-text's, so a
loader needs ``import tensorflow_text`` (and a TensorFlow Serving build must include its ops). The run's
threshold and config travel as assets (``assets/threshold.json``, ``assets/config.json``).

LiteRT has no string ops nor tensorflow-text's, so the ``.tflite`` model takes what comes after them:
``pixels`` float32 [N, S, S, 3] (RGB, 0..255, already resized to S x S) and, for a run on precomputed
embeddings, ``text_embedding`` float32 [N, 384], or, for a run with the text encoder inside, ``token_ids``
int32 [N, L] (BERT WordPiece ids, 0 = padding). Outputs: ``p_match`` and ``match``.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

from .. import output_folder
from ..data.images import preprocess_image
from ..defaults import EMBEDDING_DIM, EXPORT_FORMATS as FORMATS
from ..errors import ConfigError, DataError, MissingExtra
from ..models.classifier import text_input_name
from ..models.minilm import SentenceEncoder, encoder_from_folder
from ..models.run_reader import SavedRun
from ..tfenv import quiet_native_log


def _sentence_encoder_in(model):
    """The SentenceEncoder layer inside a text encoder (the minilm or scratch tower), or None."""
    found = [layer for layer in model.layers if isinstance(layer, SentenceEncoder)]
    return found[0] if found else None


def _caption_encoder():
    """The TensorFlow all-MiniLM-L6-v2 that embeds captions for a run trained on precomputed embeddings."""
    try:
        return encoder_from_folder(None)
    except DataError as e:
        raise MissingExtra(f"exporting a run on precomputed caption embeddings needs the all-MiniLM-L6-v2 "
                           f"weights: {e}") from None


def build_module(run_dir, with_caption_encoder: bool = True, for_litert: bool = False):
    """The run as a ``tf.Module`` whose ``tf.function``s are the signatures above (and ``litert``)."""


    run = SavedRun(run_dir)
    model = run.load_model()
    threshold, threshold_source = run.threshold()
    image_encoder, text_encoder, head = model.image_encoder, model.text_encoder, model.head
    size = int(model.input["image_input"].shape[1])
    raw_text = text_input_name(model) == "caption"
    inner = _sentence_encoder_in(text_encoder) if raw_text else None
    captions = _caption_encoder() if with_caption_encoder and not raw_text else None
    # From a 384-d sentence embedding to the text features: the text encoder itself, or, for the minilm tower,
    # its part after all-MiniLM-L6-v2 (the scratch tower's own encoder has no such embedding).
    if not raw_text:
        from_embedding = text_encoder
    elif inner is not None and inner.config["hidden_size"] == EMBEDDING_DIM and inner.name.startswith("minilm"):
        from_embedding = keras.Model(inner.output, text_encoder.output)
    else:
        from_embedding = None
    from_ids = None if inner is None else from_embedding or keras.Model(inner.output, text_encoder.output)

    def call(part, x):
        return part(x, training=False)

    module = tf.Module()
    # The module tracks the tf.Variables under the Keras parts (as keras.export does), not the parts: tracked
    # Keras objects would make tf.saved_model.save trace and save every layer's own functions, which no
    # signature uses (half of each export's time). The variables include the seed state of --augment's random
    # layers (idle at inference), which the traced functions capture too; and LiteRT's converter freezes only
    # the tf.Variables it finds tracked.
    parts = [x for x in (image_encoder, text_encoder, head, captions, from_embedding, from_ids) if x is not None]
    module.tf_variables = list({id(v.value): v.value for p in parts for v in p.variables}.values())
    module.threshold = tf.Variable(threshold, dtype=tf.float32, trainable=False, name="threshold")
    module.config = run.config
    module.threshold_source = threshold_source
    module.image_size, module.raw_text = size, raw_text

    def pixels(images):
        decode = lambda data: tf.cast(preprocess_image(data, size), tf.float32)  # noqa: E731
        return tf.map_fn(decode, images, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))

    def text_features(caption):
        if raw_text:
            return call(text_encoder, caption)
        return call(text_encoder, call(captions, caption))

    def scored(image_features, text_feats):
        p = tf.cast(call(head, [image_features, text_feats])[:, 0], tf.float32)
        return {"p_match": p, "match": p >= module.threshold}

    strings = tf.TensorSpec([None], tf.string)

    @tf.function(input_signature=[strings], autograph=False)
    def encode_image(image):
        return {"image_features": tf.cast(call(image_encoder, pixels(image)), tf.float32)}

    module.encode_image = encode_image
    if raw_text or captions is not None:
        @tf.function(input_signature=[strings], autograph=False)
        def encode_text(caption):
            return {"text_features": tf.cast(text_features(caption), tf.float32)}

        @tf.function(input_signature=[strings, strings], autograph=False)
        def serve(image, caption):
            return scored(call(image_encoder, pixels(image)), text_features(caption))

        module.encode_text, module.serve = encode_text, serve
    if from_embedding is not None:
        @tf.function(input_signature=[strings, tf.TensorSpec([None, EMBEDDING_DIM], tf.float32)], autograph=False)
        def score_embeddings(image, text_embedding):
            return scored(call(image_encoder, pixels(image)), call(from_embedding, text_embedding))

        module.score_embeddings = score_embeddings

    # LiteRT: no string or tensorflow-text ops. The pixels go through the same preprocess_image (a resize
    # to the size they already have is the identity), so a change of scaling there reaches this model too.
    pixel_spec = tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")
    if raw_text:
        if from_ids is None:
            module.litert = None
        else:
            @tf.function(input_signature=[pixel_spec, tf.TensorSpec([None, None], tf.int32, name="token_ids")],
                         autograph=False)
            def litert(pixels_in, token_ids):
                feats = call(from_ids, inner.encode_ids(token_ids, training=False))
                return scored(call(image_encoder, tf.cast(preprocess_image(pixels_in, size), tf.float32)), feats)

            module.litert = litert
    else:
        @tf.function(input_signature=[pixel_spec, tf.TensorSpec([None, EMBEDDING_DIM], tf.float32,
                                                                name="text_embedding")], autograph=False)
        def litert(pixels_in, text_embedding):
            return scored(call(image_encoder, tf.cast(preprocess_image(pixels_in, size), tf.float32)),
                          call(text_encoder, text_embedding))

        module.litert = litert
    return module


def _signatures(module) -> dict:
    names = {"serving_default": "serve", "encode_image": "encode_image", "encode_text": "encode_text",
             "score_embeddings": "score_embeddings"}
    return {sig: getattr(module, attr) for sig, attr in names.items() if hasattr(module, attr)}


SAVEDMODEL_NAMES = ("saved_model.pb", "fingerprint.pb", "variables", "assets")  # what tf.saved_model.save writes


def _is_export(folder: Path) -> bool:
    """A SavedModel folder that itm export wrote before the folder record: its graph and its threshold asset."""
    return (folder / "saved_model.pb").is_file() and (folder / "assets" / "threshold.json").is_file()


# A SavedModel goes only into a new or empty folder, or replaces an earlier export with --overwrite.
EXPORT = output_folder.Kind("export", "itm export", "a SavedModel export", legacy=_is_export, known=SAVEDMODEL_NAMES)
TFLITE_ID = b"TFL3"  # a LiteRT flatbuffer's file identifier, at bytes 4..8


def _is_tflite(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(8)[4:8] == TFLITE_ID
    except OSError:
        return False


def _check_apart(run_dir, out: Path) -> None:
    SavedRun(run_dir)  # not a run folder: said first
    output_folder.check_apart({"--output": out}, {"--run": run_dir})


def export_savedmodel(run_dir, output, overwrite: bool = False) -> Path:
    """Write the SavedModel into ``output`` (a new or empty folder, or with ``overwrite`` an earlier export,
    of which only what the export wrote is replaced); returns it."""
    out = Path(output)
    if output_folder.check(out, EXPORT, "--output", "--overwrite") and not overwrite:
        raise ConfigError(f"--output {out} holds an earlier export: pass --overwrite to replace it, or choose a new "
                          "folder (TensorFlow Serving wants MODEL/1, MODEL/2, ... one folder per version)")
    _check_apart(run_dir, out)
    module = build_module(run_dir)
    output_folder.claim(out, EXPORT, "--output")
    output_folder.clear(out, EXPORT)
    output_folder.record(out, EXPORT, *SAVEDMODEL_NAMES)
    with tempfile.TemporaryDirectory() as tmp:
        threshold = Path(tmp) / "threshold.json"
        threshold.write_text(json.dumps({"threshold": float(module.threshold.numpy()),
                                         "source": module.threshold_source}, indent=2) + "\n")
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps(module.config, indent=2) + "\n")
        module.threshold_file = tf.saved_model.Asset(str(threshold))
        module.config_file = tf.saved_model.Asset(str(config))
        tf.saved_model.save(module, str(out), signatures=_signatures(module))
    return out


def export_litert(run_dir, output, quantize: bool = False, overwrite: bool = False) -> Path:
    """Write the ``.tflite`` model to ``output`` (a new file, or with ``overwrite`` an earlier LiteRT model);
    ``quantize``: dynamic-range int8 weights."""
    out = Path(output)
    if out.is_dir():
        raise ConfigError(f"--output {out} is a folder; for --format litert give a file name such as model.tflite")
    output_folder.check_new_file(out, "--output", overwrite, _is_tflite, "a LiteRT model (.tflite)")
    _check_apart(run_dir, out)
    module = build_module(run_dir, with_caption_encoder=False, for_litert=True)
    if module.litert is None:
        raise ConfigError("this run's text tower (scratch) cannot be exported to LiteRT")
    with tempfile.TemporaryDirectory() as tmp:  # through a SavedModel: the converter freezes its variables
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.litert})
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["serving_default"])
        flatbuffer = _convert(converter, quantize)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(flatbuffer)
    tmp.replace(out)
    return out


def _convert(converter, quantize: bool) -> bytes:

    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    with quiet_native_log():  # the converter's absl lines ('Ignored output_format.', ...)
        return converter.convert()


def export(run_dir, output, fmt: str = "savedmodel", quantize: bool = False, overwrite: bool = False) -> Path:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if quantize and fmt != "litert":
        raise ConfigError("--quantize is for --format litert")
    if fmt == "litert":
        return export_litert(run_dir, output, quantize, overwrite=overwrite)
    return export_savedmodel(run_dir, output, overwrite=overwrite)

