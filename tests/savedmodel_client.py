"""Run as a script with ``python -I -S``: a client of an exported SavedModel that has TensorFlow and
tensorflow-text but not itm. argv: site-packages folders (joined by os.pathsep), the SavedModel, then
image files and captions as JSON. Prints JSON: whether itm was importable, the signatures, and outputs."""
import json
import os
import sys

sys.path += sys.argv[1].split(os.pathsep)  # no .pth files run: the editable install of itm stays out
try:
    import itm  # noqa: F401
    itm_importable = True
except ImportError:
    itm_importable = False

import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402,F401  (registers the tokenizer's ops)

model = tf.saved_model.load(sys.argv[2])
request = json.loads(sys.argv[3])
images = tf.constant([open(p, "rb").read() for p in request["images"]])
captions = tf.constant(request["captions"])
serve = model.signatures["serving_default"]
out = serve(image=images, caption=captions)
result = {"itm_importable": itm_importable, "signatures": sorted(model.signatures),
          "p_match": out["p_match"].numpy().tolist(), "match": out["match"].numpy().tolist(),
          "outputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in out.items()},
          "assets": sorted(os.listdir(os.path.join(sys.argv[2], "assets")))}
img = model.signatures["encode_image"](image=images)["image_features"]
txt = model.signatures["encode_text"](caption=captions)["text_features"]
result["features"] = [img.shape.as_list(), txt.shape.as_list()]
if "score_embeddings" in model.signatures and request.get("embeddings"):
    emb = tf.constant(request["embeddings"], tf.float32)
    score = model.signatures["score_embeddings"]
    result["p_from_embeddings"] = score(image=images, text_embedding=emb)["p_match"].numpy().tolist()
print(json.dumps(result))
