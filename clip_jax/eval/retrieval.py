"""Zero-shot image-text retrieval: recall@1/5/10 in both directions, several captions per image.

Batches are dicts with "image" [b, S, S, 3], "mask" [b] and the captions of each image, either as tokens
("text" or "tokens": int [b, K, L], with "text_mask" bool [b, K] or all-zero rows marking missing ones; what
`clip_jax.eval.datasets.retrieval_dataset` yields) or as strings ("captions", "caption" or "texts": [b, K] with
empty strings for missing ones, or a list of lists).

    python -m clip_jax.eval.retrieval --model ViT-B-32-quickgelu --weights ViT-B-32.pt \
        --dataset coco_captions --split test --data-dir ~/tensorflow_datasets --output coco.json
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np

from clip_jax.eval import features as F
from clip_jax.eval.common import DataConfig, Evaluator
from clip_jax.eval.datasets import retrieval_dataset
from clip_jax.eval.metrics import retrieval_metrics
from clip_jax.eval.runtime import Batch, batch_mask, default_mesh, gather_processes, iterate_batches
from clip_jax.inputs import ModelInputs
from clip_jax.models.clip import CLIP

CAPTION_KEYS = ("captions", "caption", "texts")


def _as_text(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def batch_tokens(
    batch: Batch, tokenize: Callable[[list[str]], np.ndarray], max_captions: int, context_length: int
) -> np.ndarray:
    """Captions of a batch as int32 [b, max_captions, L]; missing captions are all-zero rows."""
    for key in ("text", "tokens"):
        if key not in batch:
            continue
        tok = np.asarray(batch[key], np.int32)
        if tok.ndim == 2:
            tok = tok[:, None]
        if "text_mask" in batch:
            # Tokenized empty strings are not all-zero (they hold SOT/EOT): text_mask says which are real.
            tok = np.where(np.asarray(batch["text_mask"], bool)[..., None], tok, 0)
        out = np.zeros((tok.shape[0], max_captions, tok.shape[2]), np.int32)
        out[:, : min(max_captions, tok.shape[1])] = tok[:, :max_captions]
        return out
    key = next((k for k in CAPTION_KEYS if k in batch), None)
    if key is None:
        raise KeyError(f"retrieval batches need 'tokens' or one of {CAPTION_KEYS}; got {sorted(batch)}")
    rows = batch[key]
    out = np.zeros((len(rows), max_captions, context_length), np.int32)
    for i, caps in enumerate(rows):
        caps = [caps] if isinstance(caps, (str, bytes)) else list(np.asarray(caps).reshape(-1))
        texts = [t for t in (_as_text(c) for c in caps) if t.strip()][:max_captions]
        if texts:
            out[i, : len(texts)] = tokenize(texts)
    return out


def retrieval_eval(
    model: CLIP,
    params: Any,
    dataset: Iterable[Batch],
    *,
    tokenizer: Callable[[list[str]], np.ndarray] | None = None,
    max_captions: int = 8,
    text_batch_size: int = 256,
    mesh: jax.sharding.Mesh | None = None,
    max_batches: int | None = None,
    progress: str | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Image->text and text->image recall@k of a model on a dataset of images with several captions.

    Non-finite (NaN or inf) image or text features raise a ValueError naming the side; ties between scores
    count against the model (see `clip_jax.eval.metrics.retrieval_ranks`).
    """
    mesh = default_mesh() if mesh is None else mesh
    context_length = model.cfg.text.context_length
    if tokenizer is None:
        tokenizer = ModelInputs().text_tokenizer(model.cfg)  # CLIP's BPE; a SigLIP tower needs its own
    img_enc = F.image_encoder(model, params, mesh=mesh)
    image_feats, tokens = [], []
    for batch in iterate_batches(dataset, max_batches, progress):
        keep = gather_processes(batch_mask(batch))
        f = gather_processes(img_enc(np.asarray(batch["image"], np.float32)))
        t = gather_processes(batch_tokens(batch, tokenizer, max_captions, context_length))
        image_feats.append(f[keep])
        tokens.append(t[keep])
    if not image_feats:
        raise ValueError("the dataset yielded no batches")
    image_feats = np.concatenate(image_feats)
    F.check_finite(image_feats, "image", "retrieval")
    tokens = np.concatenate(tokens)  # [N, K, L]
    present = tokens.any(axis=-1)  # [N, K]
    if not present.any(axis=1).all():
        raise ValueError(f"{int((~present.any(axis=1)).sum())} images have no caption")
    text_to_image = np.nonzero(present)[0]
    flat = tokens[present]
    if model.cfg.text.padding_inert:  # not SigLIP's text tower: it reads every column
        flat = F.trim_tokens(flat)
    text_feats = F.encode_in_batches(F.text_encoder(model, params, mesh=mesh), flat, text_batch_size)
    F.check_finite(text_feats, "text", "retrieval")
    metrics = retrieval_metrics(image_feats, text_feats, text_to_image, ks)
    metrics.update(num_images=int(image_feats.shape[0]), num_captions=int(flat.shape[0]))
    return metrics


@dataclasses.dataclass(frozen=True)
class RetrievalConfig(DataConfig):
    """dataset: a TFDS name or a source the data module reads (default split "test"); name: the dataset's
    name in result records; max_captions: captions per image that are scored."""

    dataset: str = "coco_captions"
    name: str | None = None
    max_captions: int = 8


class Retrieval(Evaluator):
    """Image->text and text->image recall@1/5/10 on a dataset of images with several captions each."""

    config_class = RetrievalConfig

    def __init__(
        self, config, model: CLIP, *, where: str = "retrieval", inputs: ModelInputs | None = None
    ) -> None:
        super().__init__(config, model, where=where, inputs=inputs)
        c = self.config
        if c.max_captions < 1:
            raise ValueError(f"{where}.max_captions must be >= 1, got {c.max_captions}")
        cfg = model.cfg
        self.tokenizer = self.inputs.text_tokenizer(cfg)
        self.dataset = retrieval_dataset(
            c,
            cfg.vision.image_size,
            cfg.text.context_length,
            transform=self.inputs.transform,
            tokenizer=self.inputs.tokenizer,  # None: the pipeline's own CLIP BPE
        )
        self.name = c.name or ("mscoco_captions" if c.dataset.startswith("coco_captions") else c.dataset)

    def run(self, params: Any, *, checkpoint_id: str | None = None) -> dict[str, Any]:
        c = self.config
        return retrieval_eval(
            self.model,
            params,
            self.dataset,
            tokenizer=self.tokenizer,
            max_captions=c.max_captions,
            max_batches=c.max_batches,
            progress=c.dataset,
        )


def main(argv: Sequence[str] | None = None) -> dict:
    from clip_jax.eval import cli

    parser = argparse.ArgumentParser(description="Zero-shot image-text retrieval recall@k.")
    cli.add_common_args(parser)
    parser.add_argument(
        "--dataset", default="coco_captions", help="TFDS name or a source the data module reads"
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--name", default=None, help="dataset name in the record (default: --dataset)")
    parser.add_argument("--max-captions", type=int, default=8)
    args = parser.parse_args(argv)

    model, params, ident = cli.load_model(args)
    fields = cli.data_fields(args) | {"name": args.name, "max_captions": args.max_captions}
    evaluator = cli.build(Retrieval, fields, model, ident.inputs)
    metrics = evaluator.run(params, checkpoint_id=ident.checkpoint_id)
    return cli.write_result(args, ident, evaluator.name, "zeroshot_retrieval", metrics)


if __name__ == "__main__":
    from clip_jax.cli_errors import run_cli

    raise SystemExit(run_cli(main, "clip_jax.eval.retrieval"))
