"""Zero-shot classification: a classifier built from class names and prompt templates
(`clip_jax.eval.classifier`), then top-1/top-5 accuracy and mean per-class recall.

Library use (e.g. on in-memory params):
    metrics = zeroshot_eval(model, params, dataset, classnames, templates)
As an evaluator (the trainer's `config.evals.<name> = {"type": "zeroshot", ...}`, the script below):
    ZeroShot({"dataset": "imagenet1k", "data_dir": ...}, model).run(params)

Command line:
    python -m clip_jax.eval.zeroshot --model ViT-B-32-quickgelu --weights ViT-B-32.pt \
        --dataset imagenet1k --data-dir ~/tensorflow_datasets --output results/zs_in1k.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from clip_jax.eval import metadata
from clip_jax.eval.classifier import (
    Head,
    Tokenizer,
    build_zeroshot_classifier,
    check_classifier,
    evaluate_logits,
    head_for,
    logits_encoder,
)
from clip_jax.eval.common import DataConfig, Evaluator
from clip_jax.eval.datasets import eval_dataset
from clip_jax.eval.runtime import Batch, default_mesh
from clip_jax.inputs import ModelInputs
from clip_jax.models.clip import CLIP


def zeroshot_eval(
    model: CLIP,
    params: Any,
    dataset: Iterable[Batch],
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    *,
    classifier: np.ndarray | None = None,
    head: Head | None = None,
    tokenizer: Tokenizer | None = None,
    mesh: jax.sharding.Mesh | None = None,
    max_batches: int | None = None,
    progress: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    checkpoint_id: str | None = None,
) -> dict[str, float]:
    """Zero-shot top-1, top-5 and mean per-class recall of a model on a dataset of image batches.

    Pass either `classnames` and `templates` (the classifier is built, and cached with `cache_dir`) or a
    prebuilt `classifier` [D, C]. `head` restricts or regroups the classifier's classes (ImageNet-R/-A,
    ObjectNet). Padding rows (mask 0) are not counted.
    """
    if mesh is None:
        mesh = default_mesh()
    if classifier is None:
        if classnames is None or templates is None:
            raise ValueError("pass classnames and templates, or a classifier")
        classifier = build_zeroshot_classifier(
            model,
            params,
            classnames,
            templates,
            tokenizer=tokenizer,
            mesh=mesh,
            cache_dir=cache_dir,
            checkpoint_id=checkpoint_id,
        )
    check_classifier(classifier)
    enc = logits_encoder(model, params, mesh)
    clf = jnp.asarray(classifier, jnp.float32)
    return evaluate_logits(
        lambda x: enc(x, clf), dataset, head or Head(), max_batches=max_batches, progress=progress
    )


@dataclasses.dataclass(frozen=True)
class ZeroShotConfig(DataConfig):
    """templates: the dataset's own (None), "openai" or "simple" (ImageNet sets), or a JSON file of them;
    classifier_cache: a folder caching the classifier's weights (used when `run` gets a checkpoint_id)."""

    templates: str | None = None
    classifier_cache: str | None = None


class ZeroShot(Evaluator):
    """Zero-shot top-1/top-5/mean per-class recall on one registered dataset."""

    config_class = ZeroShotConfig

    def __init__(
        self, config, model: CLIP, *, where: str = "zeroshot", inputs: ModelInputs | None = None
    ) -> None:
        super().__init__(config, model, where=where, inputs=inputs)
        c = self.config
        self.spec = metadata.get_dataset(c.dataset)
        # The model's prompt style (OpenAI's, or big_vision's for SigLIP): its inputs say which.
        classnames, templates = metadata.classnames_and_templates(self.spec.name, c.task, self.inputs.prompts)
        self.classnames = classnames
        self.templates = metadata.choose_templates(c.templates, self.spec, templates)
        self.head = head_for(self.spec.head)
        self.tokenizer = self.inputs.text_tokenizer(model.cfg)  # here, so that a missing one stops the start
        self.dataset = eval_dataset(c, model.cfg.vision.image_size, transform=self.inputs.transform)

    def run(self, params: Any, *, checkpoint_id: str | None = None) -> dict[str, Any]:
        c = self.config
        return zeroshot_eval(
            self.model,
            params,
            self.dataset,
            self.classnames,
            self.templates,
            head=self.head,
            tokenizer=self.tokenizer,
            max_batches=c.max_batches,
            progress=self.spec.name,
            cache_dir=c.classifier_cache if checkpoint_id else None,
            checkpoint_id=checkpoint_id,
        )


def main(argv: Sequence[str] | None = None) -> dict:
    from clip_jax.eval import cli

    parser = argparse.ArgumentParser(description="Zero-shot classification of a CLIP checkpoint.")
    cli.add_common_args(parser)
    parser.add_argument("--dataset", required=True, help="CLIP_benchmark or TFDS name, e.g. imagenet1k")
    parser.add_argument("--split", default=None, help="dataset split (default: the dataset's test split)")
    cli.add_template_arg(parser)
    parser.add_argument("--classifier-cache", default=None, help="folder caching classifier weights")
    args = parser.parse_args(argv)

    model, params, ident = cli.load_model(args)
    config = cli.data_fields(args) | {"templates": args.templates, "classifier_cache": args.classifier_cache}
    evaluator = cli.build(ZeroShot, config, model, ident.inputs)
    metrics = evaluator.run(params, checkpoint_id=ident.checkpoint_id)
    return cli.write_result(args, ident, evaluator.spec.name, "zeroshot_classification", metrics)


if __name__ == "__main__":
    from clip_jax.cli_errors import run_cli

    raise SystemExit(run_cli(main, "clip_jax.eval.zeroshot"))
