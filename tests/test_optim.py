"""The Keras 3 optimizer against tf-models-official's own, step by step."""
import numpy as np
import pytest
import keras

from itm.models.optim import create_optimizer, learning_rate_schedule

NAMES = ["dense/kernel", "dense/bias", "layer_normalization/gamma", "layer_normalization/beta", "conv2d/kernel"]
SHAPES = [(5, 4), (4,), (4,), (4,), (3, 3, 2, 4)]
TOTAL, WARMUP = 40, 8


def _keras3_vars(values):
    out = []
    for name, value in zip(NAMES, values):
        scope, leaf = name.split("/")
        with keras.name_scope(scope):
            out.append(keras.Variable(value, name=leaf))
    return out


def _gradients(seed):
    rng = np.random.default_rng(seed)
    # Scaled so that the global norm is sometimes above 1.0 (clipped) and sometimes below.
    return [[rng.normal(0, rng.choice([0.05, 2.0]), s).astype("float32") for s in SHAPES] for _ in range(TOTAL)]


def test_schedule_shape():
    schedule = learning_rate_schedule(3e-5, TOTAL, WARMUP)
    rates = [float(schedule(step)) for step in range(TOTAL + 2)]
    assert rates[0] == 0.0
    assert rates[WARMUP // 2] == pytest.approx(1.5e-5)
    # At the end of warm-up the polynomial decay is evaluated at the global step.
    assert rates[WARMUP] == pytest.approx(3e-5 * (1 - WARMUP / TOTAL))
    assert rates[TOTAL] == 0.0 and rates[TOTAL + 1] == 0.0
    # The optimizer's rate follows its own iteration counter.
    opt = create_optimizer(3e-5, TOTAL, WARMUP)
    assert float(opt.learning_rate) == 0.0
    opt.iterations.assign(WARMUP // 2)
    assert float(opt.learning_rate) == pytest.approx(1.5e-5)


def test_parity_with_tf_models_official():
    tf = pytest.importorskip("tensorflow")
    official = pytest.importorskip(
        "official.nlp.optimization",
        reason="tf-models-official not installed (pip install --no-deps tf-models-official tf-keras)")

    rng = np.random.default_rng(0)
    init = [rng.normal(0, 1, s).astype("float32") for s in SHAPES]
    grads = _gradients(1)

    ref_vars = []
    for name, value in zip(NAMES, init):
        scope, leaf = name.split("/")
        with tf.name_scope(scope):
            ref_vars.append(tf.Variable(value, name=leaf))
    ref = official.create_optimizer(init_lr=1e-2, num_train_steps=TOTAL, num_warmup_steps=WARMUP, optimizer_type="adamw")

    new_vars = _keras3_vars(init)
    new = create_optimizer(init_lr=1e-2, num_train_steps=TOTAL, num_warmup_steps=WARMUP)

    for step in range(TOTAL):
        ref_lr = float(ref._decayed_lr("float32"))
        new_lr = float(new.learning_rate)
        assert new_lr == pytest.approx(ref_lr, rel=1e-6, abs=1e-12), f"learning rate differs at step {step}"
        ref.apply_gradients(zip([tf.constant(g) for g in grads[step]], ref_vars))
        new.apply_gradients(zip([keras.ops.convert_to_tensor(g) for g in grads[step]], new_vars))
        for name, a, b in zip(NAMES, ref_vars, new_vars):
            np.testing.assert_allclose(np.asarray(b), a.numpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name} differs after step {step}")
    assert int(new.iterations) == TOTAL


def test_weight_decay_skips_bias_and_layer_norm():
    values = [np.ones(s, "float32") for s in SHAPES]
    variables = _keras3_vars(values)
    opt = create_optimizer(init_lr=0.1, num_train_steps=10, num_warmup_steps=0)
    opt.apply_gradients(zip([np.zeros(s, "float32") for s in SHAPES], variables))
    decayed = {n: not np.allclose(np.asarray(v), 1.0) for n, v in zip(NAMES, variables)}
    assert decayed == {"dense/kernel": True, "dense/bias": False, "layer_normalization/gamma": False,
                       "layer_normalization/beta": False, "conv2d/kernel": True}
    # Decoupled decay scaled by the learning rate: 1 - lr * 0.01.
    np.testing.assert_allclose(np.asarray(variables[0]), 1 - 0.1 * 0.01, rtol=1e-6)


def test_a_learning_rate_multiplier_scales_matching_variables_only():
    values = [np.ones(s, "float32") for s in SHAPES[:2]]
    variables = _keras3_vars(values)  # dense/kernel, dense/bias
    opt = create_optimizer(init_lr=0.1, num_train_steps=10, num_warmup_steps=0, lr_multipliers={"^dense/bias$": 0.1})
    opt.apply_gradients(zip([np.full(s, 0.3, "float32") for s in SHAPES[:2]], variables))
    kernel_step = 1 - np.asarray(variables[0]) - 0.1 * 0.01  # minus the kernel's weight decay
    bias_step = 1 - np.asarray(variables[1])  # biases are not decayed
    # Adam's first step moves each weight by about the learning rate, whatever the gradient's size.
    np.testing.assert_allclose(kernel_step, 0.1, rtol=1e-3)
    np.testing.assert_allclose(bias_step, 0.01, rtol=1e-3)
