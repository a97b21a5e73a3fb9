"""The training step of every objective and pipeline: the classifier wrapped as a ``keras.Model`` whose
``train_step`` Keras' ``fit`` drives (as in the keras.io dual-encoder examples).

``train_step`` takes the batches of ``itm.data.batches``:

* triples ``({"image_input", "text_embedding" | "caption"}, labels)``: the whole model per triple,
  the original's step;
* grouped ``({"images", "owner", "text_embedding"}, labels)``: the image encoder once per image, the
  fusion head once per triple (image ``owner[t]`` with caption t); the same loss per triple;
* grouped with ``"positive_text"`` (the contrastive objective): the same, plus InfoNCE over the
  batch's B images and one matching caption each, and the head on all B x B pairs (with
  ``head_negatives`` n: on the B positives and 2Bn sampled negatives), both classes weighted equally.

The loss per pair is Keras' KL divergence throughout (the original's). ``binary_accuracy`` counts the
batch's triples. The model that is saved is the plain classifier, ``trainer.model``.
"""
from __future__ import annotations

import keras
import tensorflow as tf


def mean_kl(labels, p):
    """The original's loss: Keras' KL divergence, averaged over the pairs."""
    return tf.reduce_mean(keras.losses.kl_divergence(labels, p))


def contrastive_targets(text, soft_targets: float = 0.0):
    """(B,B) InfoNCE targets for a batch of B caption embeddings: one-hot (CLIP) when ``soft_targets``
    is 0, else row k is softmax(cosine of caption k to the batch's captions / soft_targets), so that two
    images whose captions say the same thing ("a dog runs on the grass") are not pushed apart."""
    if soft_targets <= 0:
        return tf.eye(tf.shape(text)[0])
    unit = tf.math.l2_normalize(tf.cast(text, tf.float32), -1)
    return tf.nn.softmax(tf.matmul(unit, unit, transpose_b=True) / soft_targets, axis=-1)


def info_nce(logits, targets):
    """CLIP's symmetric cross-entropy over the (B,B) image-caption logits (image i, caption j).

    Row k of ``targets`` is what batch item k should match, image to captions and caption to images
    alike (built from the captions' similarities, which are symmetric)."""
    cross_entropy = keras.losses.categorical_crossentropy
    return 0.5 * (tf.reduce_mean(cross_entropy(targets, logits, from_logits=True))
                  + tf.reduce_mean(cross_entropy(targets, tf.transpose(logits), from_logits=True)))


def sampled_pairs(logits, n: int, hard: bool):
    """(image rows, caption rows, match) of the pairs the head trains on in a batch of B images and their B
    captions: the B positives, then for each image n captions of other images, then for each caption n
    other images. ``hard``: drawn with the probability of their (no-gradient) similarity ``logits`` (ALBEF's
    hard negatives), else uniformly; never the positive itself."""
    b = tf.shape(logits)[0]
    sim = tf.stop_gradient(tf.cast(logits, tf.float32)) if hard else tf.zeros_like(logits, tf.float32)
    sim -= 1e4 * tf.eye(b)
    rows = tf.range(b, dtype=tf.int64)
    other_captions = tf.reshape(tf.random.categorical(sim, n), [-1])  # image repeat(rows, n) with these
    other_images = tf.reshape(tf.random.categorical(tf.transpose(sim), n), [-1])  # caption repeat(rows, n)
    image_rows = tf.concat([rows, tf.repeat(rows, n), other_images], 0)
    text_rows = tf.concat([rows, other_captions, tf.repeat(rows, n)], 0)
    match = tf.concat([tf.ones([b]), tf.zeros([2 * b * n])], 0)
    return image_rows, text_rows, match


class Trainer(keras.Model):
    """``model`` (the ITM classifier) with its objective's training step."""

    def __init__(self, model: keras.Model, temperature: float = 0.07, contrastive_weight: float = 1.0,
                 hard_negatives: bool = False, soft_targets: float = 0.0, cached_features: bool = False,
                 head_negatives: int = 0):
        super().__init__(name="trainer")
        self.model = model
        self.cached_features = cached_features
        self.temperature, self.contrastive_weight = temperature, contrastive_weight
        self.hard_negatives, self.soft_targets, self.head_negatives = hard_negatives, soft_targets, head_negatives
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy = keras.metrics.BinaryAccuracy(name="binary_accuracy")
        self.built = True  # its only weights are the (built) model's

    def call(self, inputs, training=False):
        return self.model(inputs, training=training)

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy]

    def encode_images(self, images, training):
        if images.dtype == tf.uint8:  # decoded-once pixels 0..255: the image encoder scales them itself
            images = tf.cast(images, tf.float32)
        if self.cached_features:  # the images of a batch are the frozen backbone's features: the rest of the encoder
            return self.model.image_trained(images, training=training)
        return self.model.encode_image(images, training=training)  # (G,D), or (G,N,D) tokens for attention

    def loss_and_predictions(self, x, labels, training: bool):
        """(loss, [p(match), p(no-match)] of the batch's triples, float32)."""
        if "owner" not in x:  # triples: the whole model per triple
            p = tf.cast(self.model(x, training=training), tf.float32)
            return mean_kl(labels, p), p
        zi = self.encode_images(x["images"], training)
        p = self.model.score(tf.gather(zi, x["owner"]), self.model.encode_text(x["text_embedding"], training=training),
                             training=training)
        p = tf.cast(p, tf.float32)
        loss = mean_kl(labels, p)
        if "positive_text" in x:
            loss += self.contrastive_loss(zi, x["positive_text"], training)
        return loss, p

    def contrastive_loss(self, zi, positive_text, training: bool):
        """InfoNCE between the B images and their positive captions, plus the head on all B x B pairs."""
        b = tf.shape(zi)[0]
        zt = self.model.encode_text(positive_text, training=training)  # (B,D)
        vi = zi if len(zi.shape) == 2 else tf.reduce_mean(zi, axis=1)
        vi, ti = tf.cast(vi, tf.float32), tf.cast(zt, tf.float32)  # the loss in float32 under mixed precision
        logits = tf.matmul(tf.math.l2_normalize(vi, -1), tf.math.l2_normalize(ti, -1),
                           transpose_b=True) / self.temperature  # (B,B)
        nce = info_nce(logits, contrastive_targets(positive_text, self.soft_targets))
        if self.head_negatives:
            return self.sampled_head_loss(zi, zt, logits, training) + self.contrastive_weight * nce
        # image i with caption j at row i*B + j; the positives (i == j) weigh as much as the B*B-B others
        p = tf.cast(self.model.score(tf.repeat(zi, b, axis=0), tf.tile(zt, [b] + [1] * (len(zt.shape) - 1)),
                                     training=training), tf.float32)  # (B*B,2)
        eye = tf.reshape(tf.eye(b), [-1])
        kl = keras.losses.kl_divergence(tf.stack([eye, 1.0 - eye], axis=-1), p)
        weights = eye * tf.cast(b - 1, tf.float32) + (1.0 - eye)
        head_loss = tf.reduce_sum(weights * kl) / tf.reduce_sum(weights)
        if self.hard_negatives:
            # ALBEF's hard negatives (``sampled_pairs``, one per image and one per caption): the head then
            # meets the confusable pairs as often as the positives, not 1/B as often. Pair (i, j) is row
            # i*B + j of ``kl``; the first B sampled pairs are the positives, the 2B after them the negatives.
            image_rows, text_rows, _ = sampled_pairs(logits, 1, hard=True)
            pair = image_rows * tf.cast(b, tf.int64) + text_rows
            head_loss += 0.5 * (tf.reduce_mean(tf.gather(kl, pair[:b])) + tf.reduce_mean(tf.gather(kl, pair[b:])))
        return head_loss + self.contrastive_weight * nce

    def sampled_head_loss(self, zi, zt, logits, training: bool):
        """The head on ``sampled_pairs`` of the batch, not on all B x B pairs: its cost grows as B, not B^2,
        so the InfoNCE batch can be large. Both classes weigh the same."""
        image_rows, text_rows, match = sampled_pairs(logits, self.head_negatives, self.hard_negatives)
        p = tf.cast(self.model.score(tf.gather(zi, image_rows), tf.gather(zt, text_rows), training=training),
                    tf.float32)  # (B + 2Bn, 2)
        kl = keras.losses.kl_divergence(tf.stack([match, 1.0 - match], axis=-1), p)
        weights = match * tf.cast(2 * self.head_negatives, tf.float32) + (1.0 - match)
        return tf.reduce_sum(weights * kl) / tf.reduce_sum(weights)

    def train_step(self, data):
        x, labels = data
        with tf.GradientTape() as tape:
            loss, p = self.loss_and_predictions(x, labels, training=True)
            # Under a tf.distribute strategy the optimizer sums the replicas' gradients: each replica's
            # loss is its share. scale_loss: mixed_float16's loss scaling (a no-op otherwise).
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = self.optimizer.scale_loss(loss / replicas)
        variables = self.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        self.loss_tracker.update_state(loss, sample_weight=tf.shape(labels)[0])
        self.accuracy.update_state(labels, p)
        return {m.name: m.result() for m in self.metrics}
