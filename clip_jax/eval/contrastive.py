"""Contrastive validation: the training loss and in-batch retrieval accuracy on held-out image-text pairs.

The quantity big_vision's contrastive evaluator reports (big_vision/evaluators/proj/image_text/contrastive.py
and `utils.bidirectional_contrastive_loss`, google-research/big_vision at 0127fb6) and open_clip's
`--val-data` (`evaluate` in open_clip_train/train.py: `clip_val_loss`): the loss the run trains with, on
pairs it never trains on, so that over- and under-fitting show in the metrics of a run or a sweep.

- Pairs: each image with its first caption, in the order the data pipeline yields them (the pipeline of
  `clip_jax.eval.retrieval`: a TFDS name or a source the data module reads, default split "test").
- Batches: consecutive groups of `batch_size` pairs, a config field independent of the training batch,
  because both metrics depend on it (the softmax loss grows with log B, in-batch accuracy falls with B).
  The last partial group is DROPPED, so that every batch is scored at the same size; `num_examples` says
  how many pairs were scored. (big_vision masks the partial batch and scores it at its smaller size,
  open_clip weights it by its size; both then mix batch sizes.)
- loss: `clip_jax.train.losses.contrastive_loss` (dense) of each batch with the model's exp(logit_scale)
  and logit_bias; "softmax" (CLIP) or "sigmoid" (SigLIP), by default the run's (the trainer passes its
  config.loss) or else the model's (sigmoid when it has a logit bias). Averaged over batches, which equals
  big_vision's per-example average since every batch has the same size.
- image_to_text_acc1 / text_to_image_acc1: the fraction of images whose own caption scores highest among
  the batch's captions, and of captions whose own image does (big_vision's `ncorrect_minibatch` is the
  first). Ties go to the lower index, as jnp.argmax. Like big_vision's, these are training-health
  monitors: compare them across runs only at the same batch_size.

    python -m clip_jax.eval.contrastive --checkpoint runs/tiny --dataset clip_synthetic/tiny \
        --split test --batch-size 64 --output val.json
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from clip_jax.eval import features as F
from clip_jax.eval.common import DataConfig, Evaluator
from clip_jax.eval.datasets import retrieval_dataset
from clip_jax.eval.runtime import Batch, batch_mask, default_mesh, gather_processes, iterate_batches
from clip_jax.inputs import ModelInputs
from clip_jax.models.clip import CLIP

# clip_jax.train.losses' kinds, written out here because evaluators never import the trainer
# (tests/test_layout.py); tests/test_eval_contrastive.py checks both losses against its dense ones.
LOSS_KINDS = ("softmax", "sigmoid")


@functools.partial(jax.jit, static_argnames="kind")
def batch_metrics(
    img: jax.Array, txt: jax.Array, logit_scale: jax.Array, logit_bias: jax.Array | None, *, kind: str
) -> dict[str, jax.Array]:
    """Loss and in-batch top-1 accuracies of one batch of L2-normalised pairs (row i of img with row i of
    txt); `logit_scale` is already exponentiated.

    softmax: big_vision's bidirectional_contrastive_loss, the mean over pairs of the image->text and
    text->image cross-entropies, averaged (CLIP's); sigmoid: SigLIP's, -sum over all B x B pairs of
    log_sigmoid(label * logit) / B, label +1 on the diagonal and -1 elsewhere.
    """
    cos = jnp.einsum("ie,je->ij", img, txt, preferred_element_type=jnp.float32)
    logits = jnp.asarray(logit_scale, jnp.float32) * cos
    target = jnp.arange(img.shape[0])
    if kind == "softmax":
        i2t = -jnp.diagonal(jax.nn.log_softmax(logits, axis=1))
        t2i = -jnp.diagonal(jax.nn.log_softmax(logits, axis=0))
        loss = jnp.mean(0.5 * (i2t + t2i))
    else:
        labels = 2.0 * jnp.eye(img.shape[0]) - 1.0
        logits = logits + jnp.asarray(logit_bias, jnp.float32)
        loss = -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / img.shape[0]
    # The bias shifts every logit equally and the scale is positive, so the ranking is the cosines'.
    return {
        "loss": loss,
        "image_to_text_acc1": jnp.mean(jnp.argmax(cos, axis=1) == target),
        "text_to_image_acc1": jnp.mean(jnp.argmax(cos, axis=0) == target),
    }


def fixed_batches(pairs: Iterable[tuple[np.ndarray, np.ndarray]], batch_size: int) -> Iterator[tuple]:
    """Regroup a stream of (image features, text features) chunks into batches of exactly `batch_size`
    rows; a last partial batch is dropped (see the module docstring for why)."""
    img_buf: list[np.ndarray] = []
    txt_buf: list[np.ndarray] = []
    held = 0
    for img, txt in pairs:
        img_buf.append(img)
        txt_buf.append(txt)
        held += img.shape[0]
        if held < batch_size:
            continue
        img_all, txt_all = np.concatenate(img_buf), np.concatenate(txt_buf)
        full = held - held % batch_size
        for s in range(0, full, batch_size):
            yield img_all[s : s + batch_size], txt_all[s : s + batch_size]
        img_buf, txt_buf, held = [img_all[full:]], [txt_all[full:]], held - full


def contrastive_eval(
    model: CLIP,
    params: Any,
    dataset: Iterable[Batch],
    *,
    batch_size: int,
    loss: str,
    mesh: jax.sharding.Mesh | None = None,
    max_batches: int | None = None,
    progress: str | None = None,
) -> dict[str, float]:
    """Mean over fixed-size batches of the contrastive loss and in-batch accuracies (module docstring).

    `dataset` yields what `clip_jax.data.make_retrieval_dataset` does: "image", "text" int [b, K, L] (the
    first caption is scored), "text_mask" [b, K] and "mask" [b]; images without a caption are skipped.
    """
    mesh = default_mesh() if mesh is None else mesh
    img_enc = F.image_encoder(model, params, mesh=mesh)
    txt_enc = F.text_encoder(model, params, mesh=mesh)
    scale = jnp.exp(jnp.asarray(params["logit_scale"], jnp.float32))
    bias = params.get("logit_bias") if loss == "sigmoid" else None
    seen = 0

    def pairs() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        nonlocal seen
        for batch in iterate_batches(dataset, max_batches, progress):
            tokens = np.asarray(batch["text"], np.int32)
            tokens = tokens[:, 0] if tokens.ndim == 3 else tokens
            keep = batch_mask(batch)
            if "text_mask" in batch:
                keep &= np.asarray(batch["text_mask"], bool).reshape(keep.shape[0], -1)[:, 0]
            if model.cfg.text.padding_inert:  # not SigLIP's text tower: it reads every column
                tokens = F.trim_tokens(tokens)
            # Gather before dropping rows: every process contributes the same number of rows.
            keep = gather_processes(keep)
            img = gather_processes(img_enc(np.asarray(batch["image"], np.float32)))[keep]
            txt = gather_processes(txt_enc(tokens))[keep]
            seen += int(keep.sum())
            yield img, txt

    sums: dict[str, float] = {}
    num_batches = 0
    for img, txt in fixed_batches(pairs(), batch_size):
        F.check_finite(img, "image", "contrastive")
        F.check_finite(txt, "text", "contrastive")
        for key, value in batch_metrics(img, txt, scale, bias, kind=loss).items():
            sums[key] = sums.get(key, 0.0) + float(value)
        num_batches += 1
    if not num_batches:
        raise ValueError(f"contrastive: {seen} captioned pairs, fewer than one batch of {batch_size}")
    metrics = {key: value / num_batches for key, value in sums.items()}
    metrics["num_examples"] = num_batches * batch_size
    return metrics


@dataclasses.dataclass(frozen=True)
class ContrastiveConfig(DataConfig):
    """dataset: a TFDS name or a source the data module reads (default split "test"), held out from
    training; batch_size: the fixed in-batch size, a last partial batch dropped; loss: "softmax" or
    "sigmoid", None for the run's (the trainer's config.loss) or else the model's; name: the dataset's name
    in result records."""

    loss: str | None = None
    name: str | None = None


class Contrastive(Evaluator):
    """Contrastive loss and in-batch image->text / text->image top-1 accuracy on held-out pairs."""

    config_class = ContrastiveConfig

    def __init__(
        self, config, model: CLIP, *, where: str = "contrastive", inputs: ModelInputs | None = None
    ) -> None:
        super().__init__(config, model, where=where, inputs=inputs)
        c = self.config
        has_bias = model.cfg.init_logit_bias is not None
        self.loss = c.loss or ("sigmoid" if has_bias else "softmax")
        if self.loss not in LOSS_KINDS:
            raise ValueError(f"{where}.loss={c.loss!r}; choose from {LOSS_KINDS}")
        if self.loss == "sigmoid" and not has_bias:
            raise ValueError(f"{where}.loss='sigmoid' needs a model with a logit bias; use 'softmax'")
        cfg = model.cfg
        self.dataset = retrieval_dataset(
            c,
            cfg.vision.image_size,
            cfg.text.context_length,
            transform=self.inputs.transform,
            tokenizer=self.inputs.tokenizer,  # None: the pipeline's own CLIP BPE
            captions_per_image=1,
        )
        available = getattr(self.dataset, "num_examples", None)
        if c.max_batches is not None and available is not None:
            available = min(available, c.max_batches * c.batch_size)
        if available is not None and available < c.batch_size:
            raise ValueError(
                f"{where}.batch_size={c.batch_size} is more than the {available} pairs read from "
                f"{c.dataset}; lower it or read more (split, max_batches)"
            )
        self.name = c.name or c.dataset

    def run(self, params: Any, *, checkpoint_id: str | None = None) -> dict[str, Any]:
        c = self.config
        return contrastive_eval(
            self.model,
            params,
            self.dataset,
            batch_size=c.batch_size,
            loss=self.loss,
            max_batches=c.max_batches,
            progress=c.dataset,
        )


def _run_loss(checkpoint: str | None) -> str | None:
    """The loss a training run given as --checkpoint was trained with (its config.json), else None."""
    if not checkpoint:
        return None
    from clip_jax.weights import training_run

    if not training_run.is_training_run(checkpoint):
        return None
    return (training_run.run_config(checkpoint) or {}).get("loss")


def main(argv: Sequence[str] | None = None) -> dict:
    from clip_jax.eval import cli

    parser = argparse.ArgumentParser(
        description="Contrastive validation loss and in-batch retrieval accuracy at a fixed batch size."
    )
    cli.add_common_args(parser)
    parser.add_argument("--dataset", required=True, help="TFDS name or a source the data module reads")
    parser.add_argument("--split", default="test")
    parser.add_argument("--name", default=None, help="dataset name in the record (default: --dataset)")
    parser.add_argument(
        "--loss",
        choices=LOSS_KINDS,
        default=None,
        help="default: a training run's config.loss, else sigmoid for a model with a logit bias, else softmax",
    )
    args = parser.parse_args(argv)

    model, params, ident = cli.load_model(args)
    loss = args.loss or _run_loss(args.checkpoint)
    fields = cli.data_fields(args) | {"name": args.name, "loss": loss}
    evaluator = cli.build(Contrastive, fields, model, ident.inputs)
    metrics = evaluator.run(params, checkpoint_id=ident.checkpoint_id)
    return cli.write_result(
        args, ident, evaluator.name, "contrastive", metrics, loss=evaluator.loss, batch_size=args.batch_size
    )


if __name__ == "__main__":
    from clip_jax.cli_errors import run_cli

    raise SystemExit(run_cli(main, "clip_jax.eval.contrastive"))
