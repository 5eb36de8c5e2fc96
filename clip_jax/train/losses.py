"""Contrastive losses: softmax (CLIP InfoNCE) and sigmoid (SigLIP), dense and sharded; distillation.

The dense functions are the readable references: they build the full global B x B logit matrix.
The sharded functions compute the same global mean with `jax.shard_map`: each device holds its
local rows of the batch, all-gathers the text features and builds only its [b, B] block of logits,
so no device ever holds B x B. Gradients come from autodiff through `all_gather` (its
transpose is a reduce-scatter), which gives every shard the cotangent contributions of the negatives
it served to other shards.

Features are L2-normalised [B, E] arrays (float32 or bfloat16); `logit_scale` is already exponentiated.
Logits are always accumulated in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

LOSS_KINDS = ("softmax", "sigmoid")
DEFAULT_BATCH_AXES = ("data", "fsdp")


def _logits(a: jax.Array, b: jax.Array, logit_scale: jax.Array) -> jax.Array:
    """scale * a @ b.T in float32, without upcasting bf16 operands (keeps the gathered copy small)."""
    dots = jnp.einsum("ie,je->ij", a, b, preferred_element_type=jnp.float32)
    return jnp.asarray(logit_scale, jnp.float32) * dots


def _softmax_ce_sum(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Sum over rows of cross-entropy(logits[i], labels[i])."""
    positives = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    return jnp.sum(jax.nn.logsumexp(logits, axis=1) - positives)


def _sigmoid_nll_sum(logits: jax.Array, row_offset: jax.Array | int) -> jax.Array:
    """-sum log_sigmoid(label * logits), label +1 where column == row_offset + row, else -1."""
    rows = jnp.arange(logits.shape[0])[:, None] + row_offset
    cols = jnp.arange(logits.shape[1])[None, :]
    labels = jnp.where(rows == cols, 1.0, -1.0)
    return -jnp.sum(jax.nn.log_sigmoid(labels * logits))


def softmax_loss(img: jax.Array, txt: jax.Array, logit_scale: jax.Array) -> jax.Array:
    """Symmetric InfoNCE (CLIP): mean of CE(image->text) and CE(text->image), positives on the diagonal."""
    batch = img.shape[0]
    logits = _logits(img, txt, logit_scale)
    labels = jnp.arange(batch)
    return (_softmax_ce_sum(logits, labels) + _softmax_ce_sum(logits.T, labels)) / (2 * batch)


def sigmoid_loss(img: jax.Array, txt: jax.Array, logit_scale: jax.Array, logit_bias: jax.Array) -> jax.Array:
    """SigLIP: -sum over all pairs of log_sigmoid(label * (scale * <i, t> + bias)) / B."""
    logits = _logits(img, txt, logit_scale) + jnp.asarray(logit_bias, jnp.float32)
    return _sigmoid_nll_sum(logits, 0) / img.shape[0]


def distill_loss(
    img: jax.Array,
    txt: jax.Array,
    logit_scale: jax.Array,
    teacher_img: jax.Array,
    teacher_txt: jax.Array,
    teacher_logit_scale: jax.Array,
) -> jax.Array:
    """open_clip's DistillClipLoss distillation term: the mean over rows of the cross-entropy between the
    teacher's and the student's softmax distributions, image->text and text->image, averaged.

    The student is trained on `contrastive + weight * distill` (open_clip sums the two, weight 1).
    Dense: with a sharded batch, XLA gathers the features to build both global logit matrices.
    """
    student = _logits(img, txt, logit_scale)
    teacher = _logits(teacher_img, teacher_txt, teacher_logit_scale)
    return (_soft_cross_entropy(teacher, student) + _soft_cross_entropy(teacher.T, student.T)) / 2


def _soft_cross_entropy(teacher_logits: jax.Array, student_logits: jax.Array) -> jax.Array:
    """Mean over rows of -sum_j softmax(teacher)[i, j] * log_softmax(student)[i, j]."""
    target = jax.nn.softmax(teacher_logits, axis=1)
    return -jnp.mean(jnp.sum(target * jax.nn.log_softmax(student_logits, axis=1), axis=1))


def _check_batch_axes(mesh: Mesh, batch_axes: Sequence[str], batch: int) -> tuple[str, ...]:
    batch_axes = tuple(batch_axes)
    missing = [a for a in batch_axes if a not in mesh.axis_names]
    if missing or not batch_axes:
        raise ValueError(f"batch_axes {batch_axes} must be non-empty axes of the mesh {mesh.axis_names}")
    shards = math.prod(mesh.shape[a] for a in batch_axes)
    if batch % shards:
        raise ValueError(f"global batch {batch} is not divisible by the {shards} shards of {batch_axes}")
    return batch_axes


def softmax_loss_sharded(
    img: jax.Array,
    txt: jax.Array,
    logit_scale: jax.Array,
    mesh: Mesh,
    batch_axes: Sequence[str] = DEFAULT_BATCH_AXES,
) -> jax.Array:
    """`softmax_loss` with the batch sharded over `batch_axes`; each device builds one [b, B] logit block.

    Image->text rows are local; text->image columns combine per-shard partial logsumexps with a psum of
    [B] vectors. Other mesh axes (e.g. `tensor`) see the features replicated.
    """
    axes = _check_batch_axes(mesh, batch_axes, img.shape[0])

    def local(img_l, txt_l, scale):
        b = img_l.shape[0]
        n = b * jax.lax.psum(1, axes)
        # all_gather(tiled) concatenates in the same major-to-minor order over `axes` as the P(axes)
        # batch sharding and axis_index, so local row i is global row offset + i.
        txt_all = jax.lax.all_gather(txt_l, axes, tiled=True)
        logits = _logits(img_l, txt_all, scale)  # [b, B]: this shard's rows of the global logits
        labels = jax.lax.axis_index(axes) * b + jnp.arange(b)
        positives = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
        row_lse = jax.nn.logsumexp(logits, axis=1)
        # text->image needs a logsumexp down each global column, i.e. over every shard's rows: combine
        # per-shard partial sums instead of gathering the image features and building a second block.
        # The shift only stabilises exp, so it carries no gradient (and pmax has no transpose).
        col_max = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(logits, axis=0)), axes)
        col_lse = jnp.log(jax.lax.psum(jnp.sum(jnp.exp(logits - col_max), axis=0), axes)) + col_max
        local_sum = jnp.sum(row_lse) - 2 * jnp.sum(positives)
        return (jax.lax.psum(local_sum, axes) + jnp.sum(col_lse)) / (2 * n)

    fn = jax.shard_map(local, mesh=mesh, in_specs=(P(axes, None), P(axes, None), P()), out_specs=P())
    return fn(img, txt, jnp.asarray(logit_scale, jnp.float32))


def sigmoid_loss_sharded(
    img: jax.Array,
    txt: jax.Array,
    logit_scale: jax.Array,
    logit_bias: jax.Array,
    mesh: Mesh,
    batch_axes: Sequence[str] = DEFAULT_BATCH_AXES,
) -> jax.Array:
    """`sigmoid_loss` with the batch sharded over `batch_axes`; each device builds its [b, B] logit rows.

    The sigmoid loss sums over all pairs, so one direction (local images vs all texts) covers it.
    """
    axes = _check_batch_axes(mesh, batch_axes, img.shape[0])

    def local(img_l, txt_l, scale, bias):
        b = img_l.shape[0]
        txt_all = jax.lax.all_gather(txt_l, axes, tiled=True)
        logits = _logits(img_l, txt_all, scale) + bias
        nll = _sigmoid_nll_sum(logits, jax.lax.axis_index(axes) * b)
        return jax.lax.psum(nll, axes) / (b * jax.lax.psum(1, axes))

    fn = jax.shard_map(local, mesh=mesh, in_specs=(P(axes, None), P(axes, None), P(), P()), out_specs=P())
    return fn(img, txt, jnp.asarray(logit_scale, jnp.float32), jnp.asarray(logit_bias, jnp.float32))


def contrastive_loss(
    kind: str,
    img: jax.Array,
    txt: jax.Array,
    logit_scale: jax.Array,
    logit_bias: jax.Array | None = None,
    mesh: Mesh | None = None,
    batch_axes: Sequence[str] = DEFAULT_BATCH_AXES,
) -> jax.Array:
    """One entry point for training: `kind` in {"softmax", "sigmoid"}; dense if `mesh` is None, else sharded."""
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss {kind!r}: config `loss` must be one of {LOSS_KINDS}")
    if kind == "sigmoid" and logit_bias is None:
        raise ValueError("loss 'sigmoid' needs a logit_bias (set init_logit_bias in the model config)")
    if kind == "softmax":
        if mesh is None:
            return softmax_loss(img, txt, logit_scale)
        return softmax_loss_sharded(img, txt, logit_scale, mesh, batch_axes)
    if mesh is None:
        return sigmoid_loss(img, txt, logit_scale, logit_bias)
    return sigmoid_loss_sharded(img, txt, logit_scale, logit_bias, mesh, batch_axes)
