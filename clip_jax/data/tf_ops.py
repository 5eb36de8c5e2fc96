"""TensorFlow ops that the input pipelines share: image decoding, tokenization inside tf.data, and
autograph-free map functions."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from clip_jax.tokenizer import tokenize


def no_autograph(fn):
    """`fn` for tf.data without autograph: it has no Python control flow on tensors, and converting it
    would cost seconds of tracing for every epoch's pipeline."""
    return tf.autograph.experimental.do_not_convert(fn)


def _tokenize_batch(captions: np.ndarray, context_length: int) -> np.ndarray:
    texts = [c.decode("utf-8", errors="replace") for c in captions.reshape(-1)]
    return tokenize(texts, context_length).reshape(captions.shape + (context_length,))


def tf_tokenize(captions: tf.Tensor, context_length: int) -> tf.Tensor:
    """Tokenize a string tensor of any shape inside tf.data: int32 [*shape, context_length]."""
    tokens = tf.numpy_function(
        lambda c: _tokenize_batch(c, context_length), [captions], tf.int32, stateful=False
    )
    tokens.set_shape(captions.shape.concatenate([context_length]))
    return tokens


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP/WebP bytes -> uint8 [H, W, 3]; raises on corrupt data (to be dropped)."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image
