"""Training across machines: ``tf.distribute.MultiWorkerMirroredStrategy``, in a small custom loop.

Keras 3's ``fit`` cannot drive that strategy (keras-team/keras#20585). With TensorFlow 2.20 and
Keras 3.15, two workers on loopback fail before the first step on any input, dict or tuple:
``fit`` builds the model from a sample batch that it first averages with ``strategy.reduce``,
which this strategy cannot do on a nested batch ("Attempt to convert a value ({'image_input':
PerReplica ...}) to a Tensor"); with that step skipped, it fails again averaging the step's scalar
logs over axis 0 ("Invalid reduction dimension 0 for input with 0 dimensions"). So the workers
run this loop instead: the same ``Trainer.train_step`` and the same callbacks that ``fit`` would run,
only the epoch loop is written here:

* the global batch (``--batch-size``) is split across all replicas of all workers; each replica's
  loss is its share (``Trainer.train_step``) and the optimizer sums the replicas' gradients, so a
  step is one step on the whole global batch;
* the input is sharded per worker (``epoch_shard``): each worker reads and decodes only its own
  part of each epoch;
* only the chief (task 0) writes: the run folder, and its epoch-end backup (``EpochBackup``). A
  restarted cluster resumes from the chief's backup, which the chief alone reads and then hands to
  the other workers (``from_chief``), so the workers share no filesystem.
"""
from __future__ import annotations

import json
import os

import keras
import numpy as np
import tensorflow as tf

from ..data.folder import Split
from ..errors import ConfigError
from .callbacks import keras_verbosity

TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}')


def check_tf_config(text: str | None = None) -> dict:
    """The TF_CONFIG environment variable, parsed and checked; a ConfigError says what is wrong."""
    text = os.environ.get("TF_CONFIG", "") if text is None else text
    how = (f"set it on every machine to the same cluster and that machine's own task, e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}' "
           "(the chief, task 0, writes the run folder)")
    if not text.strip():
        raise ConfigError(f"--strategy multiworker reads its cluster from TF_CONFIG, which is not set: {how}")
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({e}): {how}") from None
    cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
    task = tf_config.get("task") if isinstance(tf_config, dict) else None
    if (not isinstance(cluster, dict) or not cluster or set(cluster) - {"chief", "worker"}
            or not all(isinstance(hosts, list) and hosts and all(isinstance(h, str) and ":" in h for h in hosts)
                       for hosts in cluster.values())):
        raise ConfigError(f"TF_CONFIG's cluster must map 'worker' (and optionally 'chief') to lists of "
                          f"'host:port': {how}")
    if (not isinstance(task, dict) or task.get("type") not in cluster or not isinstance(task.get("index"), int)
            or not 0 <= task["index"] < len(cluster[task["type"]])):
        raise ConfigError(f"TF_CONFIG's task must name this machine's place in the cluster, a type of "
                          f"{' or '.join(cluster)} and an index in its list: {how}")
    return tf_config


def epoch_shard(split: Split, seed: int, epoch: int, global_batch: int, pipeline: int, pipelines: int) -> Split:
    """Input pipeline ``pipeline``'s (of ``pipelines``, one per worker) share of one epoch of ``split``.

    Every worker draws the same permutation of all triples from ``(seed, epoch)``, cuts it to whole
    global batches (a different, random, remainder of fewer than ``global_batch`` triples sits out
    each epoch) and takes every ``pipelines``-th triple from position ``pipeline`` on. The shards are
    disjoint, cover the epoch, are equally long (so every worker runs the same number of steps), and
    a worker's k-th batch of ``global_batch / pipelines`` triples is its part of the permutation's
    k-th global batch.
    """
    order = np.random.default_rng([seed, epoch]).permutation(len(split.triples))
    order = order[:len(order) // global_batch * global_batch]
    return Split(split.name, [split.triples[i] for i in order[pipeline::pipelines]], split.images_dir)


def from_chief(strategy, values: list) -> list:
    """The chief's ``values`` (tensors), on every worker: an all-reduce sum to which only replica 0,
    the chief's first, contributes. (Sent as float64, one dtype for one packed all-reduce, which
    carries float32 and integers below 2**53 exactly.)"""
    def contribute():
        context = tf.distribute.get_replica_context()
        first = tf.equal(context.replica_id_in_sync_group, 0)
        return context.all_reduce("SUM", [tf.where(first, tf.cast(v, tf.float64), tf.zeros(v.shape, tf.float64))
                                          for v in values])

    summed = strategy.experimental_local_results(tf.function(lambda: strategy.run(contribute))())[0]
    return [tf.cast(s, v.dtype) for s, v in zip(summed, values)]


def fit_multiworker(trainer, strategy, pipeline, train: Split, embeddings, steps: int, done: int, callbacks) -> None:
    """Train ``trainer`` (built and compiled in ``strategy.scope()``) in place, running ``callbacks`` as
    ``fit`` would. Every worker runs this at the same time; ``done`` is the epochs the chief's backup had;
    ``pipeline`` (``itm.data.pipelines.MultiWorkerPipeline``) makes each worker's share of an epoch."""
    config = pipeline.config
    global_batch = config.batch_size
    optimizer = trainer.optimizer
    with strategy.scope():
        optimizer.build(trainer.trainable_variables)  # all workers create the same variables, in the same order
    variables = trainer.variables + optimizer.variables
    seed, done, *values = from_chief(strategy, [tf.constant(config.seed, tf.int64), tf.constant(done, tf.int64),
                                                *[tf.convert_to_tensor(v) for v in variables]])
    for v, value in zip(variables, values):
        v.assign(value)
    seed, done = int(seed), int(done)

    def batches(context, epoch):
        shard = epoch_shard(train, seed, epoch, global_batch, context.input_pipeline_id, context.num_input_pipelines)
        return pipeline.worker_dataset(shard, embeddings, context.get_per_replica_batch_size(global_batch))

    step = tf.function(lambda batch: strategy.run(trainer.train_step, args=(batch,)))
    run = keras.callbacks.CallbackList(callbacks, add_history=False, add_progbar=True, model=trainer,
                                       epochs=config.epochs, steps=steps, verbose=keras_verbosity())
    run.on_train_begin()
    for epoch in range(done, config.epochs):
        trainer.reset_metrics()
        run.on_epoch_begin(epoch)
        shards = strategy.distribute_datasets_from_function(lambda context, e=epoch + 1: batches(context, e))
        for i, batch in enumerate(shards):
            run.on_train_batch_begin(i)
            step(batch)
            run.on_train_batch_end(i, {m.name: m.result() for m in trainer.metrics})
        run.on_epoch_end(epoch, {m.name: float(m.result()) for m in trainer.metrics})
    run.on_train_end()

