"""The original's optimizer, rebuilt for Keras 3.

The baseline trained with ``official.nlp.optimization.create_optimizer(...,
optimizer_type="adamw")`` from tf-models-official. That returns a legacy Keras 2
optimizer, which a Keras 3 model rejects, so this module re-creates the same
mathematics on ``keras.optimizers.AdamW``:

* learning rate: linear warm-up from 0 to ``init_lr`` over ``num_warmup_steps``,
  then ``PolynomialDecay(init_lr, num_train_steps, end_lr, power=1)`` evaluated at
  the *global* step (so right after warm-up the rate is already
  ``init_lr * (1 - warmup/total)``, exactly as in the original);
* Adam with beta_1 0.9, beta_2 0.999, epsilon 1e-6;
* decoupled weight decay 0.01, scaled by the learning rate, applied before the
  Adam update, on every variable whose path matches none of ``LayerNorm``,
  ``layer_norm``, ``bias``;
* gradients clipped to a global norm of 1.0.

``tests/test_optim.py`` checks all of this step by step against tf-models-official.
"""
from __future__ import annotations

import re

import keras
import tensorflow as tf
from keras import ops

EXCLUDE_FROM_WEIGHT_DECAY = ("LayerNorm", "layer_norm", "bias")


@keras.saving.register_keras_serializable(package="itm")
class WarmUp(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``initial_learning_rate``, then ``decay_schedule_fn(step)``."""

    def __init__(self, initial_learning_rate, decay_schedule_fn, warmup_steps, power=1.0, name=None):
        super().__init__()
        self.initial_learning_rate = initial_learning_rate
        self.decay_schedule_fn = decay_schedule_fn
        self.warmup_steps = warmup_steps
        self.power = power
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup_steps = ops.cast(self.warmup_steps, "float32")
        warmup_lr = self.initial_learning_rate * ops.power(step / warmup_steps, self.power)
        return ops.where(step < warmup_steps, warmup_lr, self.decay_schedule_fn(step))

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_schedule_fn": keras.saving.serialize_keras_object(self.decay_schedule_fn),
            "warmup_steps": self.warmup_steps,
            "power": self.power,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["decay_schedule_fn"] = keras.saving.deserialize_keras_object(config["decay_schedule_fn"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="itm")
class AdamWeightDecay(keras.optimizers.AdamW):
    """AdamW that skips weight decay on variables whose *path* matches a regex.

    Keras 3 names a variable ``bias`` or ``gamma`` and keeps the layer in its
    path (``layer_normalization/gamma``); the original matched the full Keras 2
    name, which held both, so the patterns are applied to the path here.
    """

    def __init__(self, exclude_from_weight_decay_patterns=EXCLUDE_FROM_WEIGHT_DECAY, lr_multipliers=None, **kwargs):
        super().__init__(**kwargs)
        self.exclude_from_weight_decay_patterns = tuple(exclude_from_weight_decay_patterns or ())
        # {path regex: factor}: variables whose path matches train at factor x the scheduled rate
        # (e.g. a pretrained text encoder fine-tuned with its own, smaller, learning rate).
        self.lr_multipliers = dict(lr_multipliers or {})
        self._multiplier_of = {}

    def build(self, var_list):
        if self.exclude_from_weight_decay_patterns:
            pattern = re.compile("|".join(self.exclude_from_weight_decay_patterns))
            self.exclude_from_weight_decay(var_list=[v for v in var_list if pattern.search(v.path)])
        for regex, factor in self.lr_multipliers.items():
            for v in var_list:
                if re.search(regex, v.path):
                    self._multiplier_of[self._var_key(v)] = float(factor)
        super().build(var_list)

    def update_step(self, gradient, variable, learning_rate):
        factor = self._multiplier_of.get(self._var_key(variable))
        if factor is not None:
            learning_rate = ops.multiply(learning_rate, factor)
        if _fused_adam_applies(variable):
            return _fused_adam(self, gradient, variable, learning_rate)
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config["exclude_from_weight_decay_patterns"] = list(self.exclude_from_weight_decay_patterns)
        config["lr_multipliers"] = dict(self.lr_multipliers)
        return config


def _fused_adam_applies(variable) -> bool:
    """TensorFlow's fused Adam kernel, outside tf.distribute (whose variables it does not take)."""
    if keras.backend.backend() != "tensorflow":
        return False
    return not tf.distribute.has_strategy() and hasattr(variable, "handle")


def _fused_adam(optimizer, gradient, variable, learning_rate):
    """Keras' Adam update (the same formula: m, v, then var -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m /
    (sqrt(v) + epsilon)) in TensorFlow's one fused kernel, which reads and writes each weight once
    instead of once per elementwise op: it is most of the update's cost for the faithful model's
    6.4M-weight image projection. The reference optimizer (tf-models-official) uses this kernel too."""
    dtype = variable.dtype
    local_step = ops.cast(optimizer.iterations + 1, dtype)
    index = optimizer._get_variable_index(variable)
    tf.raw_ops.ResourceApplyAdam(
        var=variable.handle, m=optimizer._momentums[index].handle, v=optimizer._velocities[index].handle,
        beta1_power=ops.power(ops.cast(optimizer.beta_1, dtype), local_step),
        beta2_power=ops.power(ops.cast(optimizer.beta_2, dtype), local_step),
        lr=ops.cast(learning_rate, dtype), beta1=ops.cast(optimizer.beta_1, dtype),
        beta2=ops.cast(optimizer.beta_2, dtype), epsilon=ops.cast(optimizer.epsilon, dtype),
        grad=ops.cast(gradient, dtype), use_locking=False)


def learning_rate_schedule(init_lr, num_train_steps, num_warmup_steps, end_lr=0.0, poly_power=1.0):
    """Warm-up then polynomial decay, both on the global step, as the original."""
    schedule = keras.optimizers.schedules.PolynomialDecay(
        initial_learning_rate=init_lr, decay_steps=num_train_steps, end_learning_rate=end_lr, power=poly_power)
    if num_warmup_steps:
        schedule = WarmUp(initial_learning_rate=init_lr, decay_schedule_fn=schedule, warmup_steps=num_warmup_steps)
    return schedule


def create_optimizer(init_lr, num_train_steps, num_warmup_steps, end_lr=0.0, optimizer_type="adamw",
                     beta_1=0.9, poly_power=1.0, global_clipnorm=1.0, lr_multipliers=None):
    """Keras 3 twin of ``official.nlp.optimization.create_optimizer`` (adamw only).

    Under a tf.distribute strategy the clipping applies to each replica's gradients before they
    are summed, as the reference's does; ``global_clipnorm=None`` turns clipping off.
    """
    if optimizer_type != "adamw":
        raise ValueError(f"Unsupported optimizer type: {optimizer_type!r} (only 'adamw' is implemented)")
    return AdamWeightDecay(
        learning_rate=learning_rate_schedule(init_lr, num_train_steps, num_warmup_steps, end_lr, poly_power),
        weight_decay=0.01,
        beta_1=beta_1,
        beta_2=0.999,
        epsilon=1e-6,
        global_clipnorm=global_clipnorm,
        lr_multipliers=lr_multipliers,
    )
