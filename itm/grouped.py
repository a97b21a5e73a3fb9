"""Training on image-grouped batches: the image tower runs once per image, not once per triple.

``fit_grouped_triples`` keeps the original's triples and loss (the fast faithful path);
``fit_contrastive`` is the stronger recipe, with in-batch negatives:

Each step takes B distinct training images, each with one of its matching captions, and
scores all B x B pairs. The image tower runs once per image (not once per triple, as the
original's loop does), every other caption in the batch is a negative, and two losses
share the towers:

* InfoNCE (CLIP's contrastive loss) on the cosine similarity of the projected features,
  which shapes one space where matching images and captions lie close;
* the match/no-match head's KL loss on all B x B pairs, positives weighted up so both
  classes count equally, and on the batch images' own triples from the split (whose
  negatives may be harder than a random other caption).

The model that comes out is the same Keras model as any other (image + caption ->
[p(match), p(no-match)]), so evaluation, saving and serving do not change.
"""
from __future__ import annotations

import sys
import time
from collections import defaultdict

import numpy as np

from .data import DataDir, ImageCache, Split
from .metrics import binary_metrics, roc_auc


def captions_per_image(split: Split) -> dict[str, list[str]]:
    """Each image of ``split`` with its matching captions (the positives)."""
    out = defaultdict(list)
    for t in split.triples:
        if t.match:
            out[t.image].append(t.caption)
    return dict(out)


def predict_cached(model, split: Split, embeddings, cache: ImageCache, batch_size: int = 128) -> np.ndarray:
    """[p(match), p(no-match)] for every triple of ``split``, from the decoded-once images."""
    idx = np.array([cache.index[t.image] for t in split.triples])
    text = np.stack([embeddings[t.caption] for t in split.triples])
    out = []
    for i in range(0, len(idx), batch_size):
        images = cache.pixels[idx[i:i + batch_size]].astype(np.float32) / 255.0
        out.append(np.asarray(model({"image_input": images, "text_embedding": text[i:i + batch_size]},
                                    training=False)))
    return np.concatenate(out).astype(np.float64)


def end_epoch(model, data: DataDir, cache: ImageCache, optimizer, history, backup, epoch: int, epochs: int,
              start: float, train_record: dict) -> None:
    """Score dev, append the epoch to ``history``, print it like Keras does, and back the run up."""
    dev = data.splits["dev"]
    dev_match = np.array([t.match for t in dev.triples])
    probs = predict_cached(model, dev, data.embeddings, cache)
    y = np.stack([dev_match, ~dev_match], axis=1).astype(np.float64)
    dev_metrics = binary_metrics(dev_match, probs[:, 0])
    record = {**train_record,
              "val_loss": float(np.mean(np.sum(y * np.log(np.clip(y, 1e-7, 1) / np.clip(probs, 1e-7, 1)), axis=1))),
              "val_binary_accuracy": dev_metrics["accuracy"],
              "val_balanced_accuracy": dev_metrics["balanced_accuracy"],
              "val_roc_auc": roc_auc(dev_match, probs[:, 0]),
              "learning_rate": float(optimizer.learning_rate)}
    record_epoch(model, record, history, backup, epoch, epochs, start)


def record_epoch(model, record: dict, history, backup, epoch: int, epochs: int, start: float) -> None:
    """Append the epoch's figures to ``history``, print them like Keras does, and back the run up."""
    for k, v in record.items():
        history[k].append(v)
    print(f"epoch {epoch}/{epochs} - {time.perf_counter() - start:.0f}s - " +
          " - ".join(f"{k}: {v:.4f}" for k, v in record.items() if k != "learning_rate") +
          f" - learning_rate: {record['learning_rate']:.3g}", flush=True)
    if backup:
        backup.save(model, epoch, dict(history))


def contrastive_targets(text, soft_targets: float = 0.0):
    """(B,B) InfoNCE targets for a batch of B caption embeddings: one-hot (CLIP) when ``soft_targets``
    is 0, else row k is softmax(cosine of caption k to the batch's captions / soft_targets)."""
    import tensorflow as tf

    if soft_targets <= 0:
        return tf.eye(tf.shape(text)[0])
    unit = tf.math.l2_normalize(tf.cast(text, tf.float32), -1)
    return tf.nn.softmax(tf.matmul(unit, unit, transpose_b=True) / soft_targets, axis=-1)


def info_nce(logits, targets):
    """CLIP's symmetric cross-entropy over the (B,B) image-caption logits (image i, caption j).

    Row k of ``targets`` is what batch item k should match, image to captions and caption to images
    alike (built from the captions' similarities, which are symmetric).
    """
    import tensorflow as tf

    cross_entropy = tf.keras.losses.categorical_crossentropy
    return 0.5 * (tf.reduce_mean(cross_entropy(targets, logits, from_logits=True))
                  + tf.reduce_mean(cross_entropy(targets, tf.transpose(logits), from_logits=True)))


def fit_contrastive(model, data: DataDir, cache: ImageCache, optimizer, epochs: int, batch_size: int,
                    temperature: float = 0.07, contrastive_weight: float = 1.0, seed: int = 0,
                    callbacks_every_seconds: float = 30.0, backup=None,
                    extra: dict[str, list[str]] | None = None, hard_negatives: bool = False,
                    soft_targets: float = 0.0) -> dict[str, list[float]]:
    """Train ``model`` in place; returns per-epoch history like ``keras.Model.fit``'s.

    ``extra``: more matching captions of training images (itm/extra_captions.py), drawn from with
    the split's own; their embeddings must be in ``data.embeddings``. ``hard_negatives``: see train_step.
    ``soft_targets`` > 0: InfoNCE's targets are softmax(cosine of the batch's captions / soft_targets),
    not one-hot, so that two images whose captions say the same thing ("a dog runs on the grass") are
    not pushed apart as if they did not match.
    """
    import tensorflow as tf

    from .model import split_model

    image_encoder, text_encoder, head = split_model(model)
    positives = captions_per_image(data.splits["train"])
    for image, captions in (extra or {}).items():
        if image in positives:
            positives[image] = positives[image] + captions
    images = sorted(positives)
    image_rows = np.array([cache.index[name] for name in images])
    steps_per_epoch = len(images) // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"the train split has {len(images)} images with a match, fewer than one batch of "
                         f"{batch_size}; lower --batch-size")
    b = batch_size
    eye = tf.reshape(tf.eye(b), [-1])  # pair (i, j) at i*b + j is a positive when i == j
    pair_labels = tf.stack([eye, 1.0 - eye], axis=-1)
    pair_weights = eye * (b - 1) + (1.0 - eye)  # both classes weigh the same in total
    variables = model.trainable_variables
    given = defaultdict(list)  # each image's own triples from the split, hard negatives included
    for t in data.splits["train"].triples:
        given[t.image].append(t)
    dim = data_embedding_dim(data)
    spec = [tf.TensorSpec([b, *cache.pixels.shape[1:]], tf.uint8), tf.TensorSpec([b, dim], tf.float32),
            tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, dim], tf.float32), tf.TensorSpec([None, 2], tf.float32)]

    @tf.function(input_signature=spec)
    def train_step(pixels, text, owner, triple_text, triple_labels):
        images = tf.cast(pixels, tf.float32) / 255.0
        with tf.GradientTape() as tape:
            zi = image_encoder(images, training=True)  # (B,D), or (B,N,D) tokens for attention
            zt = text_encoder(text, training=True)  # (B,D)
            vi = zi if len(zi.shape) == 2 else tf.reduce_mean(zi, axis=1)
            vi, ti = tf.cast(vi, tf.float32), tf.cast(zt, tf.float32)  # the loss in float32 under mixed precision
            logits = tf.matmul(tf.math.l2_normalize(vi, -1), tf.math.l2_normalize(ti, -1),
                               transpose_b=True) / temperature  # (B,B)
            nce = info_nce(logits, contrastive_targets(text, soft_targets))
            p = head([tf.repeat(zi, b, axis=0), tf.tile(zt, [b] + [1] * (len(zt.shape) - 1))],
                     training=True)  # (B*B,2): image i with caption j at row i*B + j
            p = tf.cast(p, tf.float32)
            kl = tf.reduce_sum(pair_labels * tf.math.log(tf.clip_by_value(pair_labels, 1e-7, 1.0)
                                                         / tf.clip_by_value(p, 1e-7, 1.0)), axis=-1)
            head_loss = tf.reduce_sum(pair_weights * kl) / tf.reduce_sum(pair_weights)
            if hard_negatives:
                # ALBEF's hard negatives: for each image a caption of another image, and for each caption
                # another image, drawn with the probability of their (no-gradient) similarity; the head
                # then meets the confusable pairs as often as the positives, not 1/B as often.
                sim = tf.stop_gradient(logits) - 1e4 * tf.eye(b)
                rows = tf.range(b, dtype=tf.int64)
                hard = tf.concat([rows * b + tf.random.categorical(sim, 1)[:, 0],
                                  tf.random.categorical(tf.transpose(sim), 1)[:, 0] * b + rows], axis=0)
                head_loss += 0.5 * (tf.reduce_mean(tf.gather(kl, rows * (b + 1))) + tf.reduce_mean(tf.gather(kl, hard)))
            # The batch images' own triples from the split: the original's loss, on its (maybe hard) negatives.
            pt = tf.cast(head([tf.gather(zi, owner), text_encoder(triple_text, training=True)], training=True),
                         tf.float32)
            triple_loss = tf.reduce_mean(tf.reduce_sum(
                triple_labels * tf.math.log(tf.clip_by_value(triple_labels, 1e-7, 1.0) / tf.clip_by_value(pt, 1e-7, 1.0)),
                axis=-1))
            loss = head_loss + triple_loss + contrastive_weight * nce
            scaled = optimizer.scale_loss(loss)  # float16: the model's LossScaleOptimizer scales; else as is
        optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        correct = tf.cast(tf.equal(p[:, 0] > 0.5, eye > 0.5), tf.float32)
        balanced_acc = 0.5 * (tf.reduce_sum(correct * eye) / b + tf.reduce_sum(correct * (1 - eye)) / (b * b - b))
        return loss, balanced_acc

    done, history = backup.restore(model) if backup else (0, {})
    history = defaultdict(list, history)
    for epoch in range(done + 1, epochs + 1):
        start = last = time.perf_counter()
        rng = np.random.default_rng([seed, epoch])  # per epoch, so a resumed run draws what it would have
        order = rng.permutation(len(images))
        losses, accs = [], []
        for step in range(steps_per_epoch):
            chosen = order[step * b:(step + 1) * b]
            pixels = cache.pixels[image_rows[chosen]]
            text = np.stack([data.embeddings[rng.choice(positives[images[i]])] for i in chosen])
            triples = [(g, t) for g, i in enumerate(chosen) for t in given[images[i]]]
            loss, acc = train_step(pixels, text, np.array([g for g, _ in triples], np.int32),
                                   np.stack([data.embeddings[t.caption] for _, t in triples]).astype(np.float32),
                                   np.array([[1, 0] if t.match else [0, 1] for _, t in triples], np.float32))
            losses.append(float(loss))
            accs.append(float(acc))
            now = time.perf_counter()
            if not sys.stdout.isatty() and now - last >= callbacks_every_seconds:
                last = now
                print(f"  epoch {epoch}/{epochs} step {step + 1}/{steps_per_epoch}: loss {np.mean(losses):.4f}",
                      flush=True)
        end_epoch(model, data, cache, optimizer, history, backup, epoch, epochs, start,
                  {"loss": float(np.mean(losses)), "pair_balanced_accuracy": float(np.mean(accs))})
    return dict(history)


class GroupedTriples:
    """The original's loss on the split's own triples, with the image tower run once per image.

    A batch holds a few distinct training images and every triple of each; the image features
    are gathered per triple, so the model and the KL loss per triple are exactly the original's
    while the convolutions (nearly all of the cost) run about six times less.
    """

    def __init__(self, model, data: DataDir, cache: ImageCache, optimizer, images_per_batch: int, seed: int = 0):
        import tensorflow as tf

        from .model import split_model

        self.data, self.cache, self.images_per_batch = data, cache, images_per_batch
        self.by_image = defaultdict(list)
        for t in data.splits["train"].triples:
            self.by_image[t.image].append(t)
        self.images = sorted(self.by_image)
        self.seed = seed
        image_encoder, text_encoder, head = split_model(model)
        variables = model.trainable_variables
        loss_fn = tf.keras.losses.KLDivergence()
        spec = [tf.TensorSpec([None, *cache.pixels.shape[1:]], tf.uint8), tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([None, data_embedding_dim(data)], tf.float32), tf.TensorSpec([None, 2], tf.float32)]

        @tf.function(input_signature=spec)
        def train_step(pixels, owner, text, labels):
            with tf.GradientTape() as tape:
                zi = image_encoder(tf.cast(pixels, tf.float32) / 255.0, training=True)  # (G,D): once per image
                zt = text_encoder(text, training=True)  # (T,D): one per triple
                p = tf.cast(head([tf.gather(zi, owner), zt], training=True), tf.float32)  # (T,2)
                loss = loss_fn(labels, p)
                scaled = optimizer.scale_loss(loss)  # float16: the model's LossScaleOptimizer scales; else as is
            optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
            correct = tf.reduce_mean(tf.cast(tf.equal(p[:, 0] > 0.5, labels[:, 0] > 0.5), tf.float32))
            return loss, correct

        self.train_step = train_step

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.images) // self.images_per_batch)

    def epoch_batches(self, epoch: int = 1):
        """One epoch of (pixels, owner, text, labels) batches, in that epoch's random image order."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.images))
        for step in range(self.steps_per_epoch):
            group = [self.images[i] for i in order[step * self.images_per_batch:(step + 1) * self.images_per_batch]]
            triples = [(g, t) for g, name in enumerate(group) for t in self.by_image[name]]
            yield (self.cache.pixels[[self.cache.index[name] for name in group]],
                   np.array([g for g, _ in triples], np.int32),
                   np.stack([self.data.embeddings[t.caption] for _, t in triples]).astype(np.float32),
                   np.array([[1, 0] if t.match else [0, 1] for _, t in triples], np.float32))


def data_embedding_dim(data: DataDir) -> int:
    return len(next(iter(data.embeddings.values())))


def fit_grouped_triples(model, data: DataDir, cache: ImageCache, optimizer, epochs: int, images_per_batch: int,
                        seed: int = 0, every_seconds: float = 30.0, backup=None) -> dict[str, list[float]]:
    """Train ``model`` in place with ``GroupedTriples``; returns per-epoch history like ``fit``'s."""
    trainer = GroupedTriples(model, data, cache, optimizer, images_per_batch, seed)
    done, history = backup.restore(model) if backup else (0, {})
    history = defaultdict(list, history)
    for epoch in range(done + 1, epochs + 1):
        start = last = time.perf_counter()
        losses, accs, counts = [], [], []
        for step, batch in enumerate(trainer.epoch_batches(epoch)):
            loss, acc = trainer.train_step(*batch)
            losses.append(float(loss))
            accs.append(float(acc))
            counts.append(len(batch[1]))
            now = time.perf_counter()
            if not sys.stdout.isatty() and now - last >= every_seconds:
                last = now
                print(f"  epoch {epoch}/{epochs} step {step + 1}/{trainer.steps_per_epoch}: "
                      f"loss {np.average(losses, weights=counts):.4f}", flush=True)
        end_epoch(model, data, cache, optimizer, history, backup, epoch, epochs, start,
                  {"loss": float(np.average(losses, weights=counts)),
                   "binary_accuracy": float(np.average(accs, weights=counts))})
    return dict(history)
