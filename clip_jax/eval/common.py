"""The evaluator interface that every evaluation shares, and the registry that builds them from configs.

An evaluator is built once from its config (a mapping of fields) and the model, which is where it reads
its datasets and class names, and then `run(params)` scores any number of parameter sets: the trainer
calls it at its evaluation steps, the command-line scripts once, the sweeps per run. The train config
names its evaluations:

    config.evals.shape = {"type": "zeroshot", "dataset": "clip_synthetic", "task": "shape"}
    config.evals.probe = {"type": "linear_probe", "dataset": "clip_synthetic", "max_batches": 8}
    config.evals.val = {"type": "contrastive", "dataset": "clip_synthetic", "batch_size": 64}

Each type has a dataclass of fields (`ZeroShotConfig`, ...); an unknown field, a missing required one
or an unknown type is an error that names `config.evals.<name>.<field>`.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from clip_jax.inputs import ModelInputs, model_inputs
from clip_jax.models.clip import CLIP

# type -> "module:class"; imported when used, so that the evaluators never import each other.
EVALUATOR_TYPES = {
    "zeroshot": "clip_jax.eval.zeroshot:ZeroShot",
    "robustness": "clip_jax.eval.robustness:Robustness",
    "linear_probe": "clip_jax.eval.linear_probe:LinearProbe",
    "retrieval": "clip_jax.eval.retrieval:Retrieval",
    "contrastive": "clip_jax.eval.contrastive:Contrastive",
}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where an evaluation's images come from (see `clip_jax.eval.datasets`).

    dataset: a name of `clip_jax.eval.metadata` (e.g. "imagenet1k", "clip_synthetic") or, for retrieval,
    a TFDS name; split: default the dataset's test split; task: the label feature of a multi-label dataset
    (clip_synthetic's "shape" or "color"); batch_size: global, over all processes; max_batches: a cap
    (smoke tests, training-time evaluation); preprocess: "pil" (default: batches bit-equal with
    open_clip's preprocess) or "tf" (faster, within `clip_jax.preprocess.TF_EVAL_GAP` of it).
    """

    dataset: str = ""
    split: str | None = None
    task: str | None = None
    data_dir: str | None = None
    objectnet_dir: str | None = None
    batch_size: int = 256
    max_batches: int | None = None
    preprocess: str = "pil"


ConfigT = TypeVar("ConfigT", bound=DataConfig)


def parse_config(cls: type[ConfigT], fields: Mapping[str, Any], where: str) -> ConfigT:
    """`cls(**fields)`, with errors that name `where.<field>` for unknown fields and bad values."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown field {where}.{unknown[0]}; fields of this evaluation: {sorted(known)}")
    config = cls(**fields)
    if config.batch_size < 1:
        raise ValueError(f"{where}.batch_size must be >= 1, got {config.batch_size}")
    if config.max_batches is not None and config.max_batches < 1:
        raise ValueError(f"{where}.max_batches must be >= 1 or None, got {config.max_batches}")
    if config.preprocess not in ("pil", "tf"):
        raise ValueError(f"{where}.preprocess={config.preprocess!r}; choose from ('pil', 'tf')")
    return config


class Evaluator(abc.ABC):
    """One evaluation of a model: built once (datasets, class names, prompts), run on any params.

    Subclasses set `config_class` (a DataConfig dataclass) and implement `run`. `run` returns a dict of
    metrics: floats, and for evaluations over several datasets a dict of them per dataset. `inputs`
    (`clip_jax.inputs.ModelInputs`) are the model's eval transform and tokenizer, which its datasets
    and prompts are made with.
    """

    config_class: ClassVar[type[DataConfig]] = DataConfig
    requires_dataset: ClassVar[bool] = True

    def __init__(
        self,
        config: Mapping[str, Any],
        model: CLIP,
        *,
        where: str = "evaluation",
        inputs: ModelInputs | None = None,
    ) -> None:
        self.where = where
        self.config = parse_config(self.config_class, dict(config), where)
        if self.requires_dataset and not self.config.dataset:
            raise ValueError(f"{where}.dataset is required")
        self.model = model
        # The model's eval transform and tokenizer (`clip_jax.inputs.model_inputs` of its checkpoint);
        # without them, its config family's defaults.
        self.inputs = inputs if inputs is not None else model_inputs(model.cfg)

    @abc.abstractmethod
    def run(self, params: Any, *, checkpoint_id: str | None = None) -> dict[str, Any]:
        """Metrics of `params` (the model's parameter tree). `checkpoint_id` names the weights for caches
        (e.g. a file path and its modification time); without it nothing is cached across runs."""


def evaluator_class(type_name: str, where: str = "evaluation") -> type[Evaluator]:
    if type_name not in EVALUATOR_TYPES:
        raise ValueError(f"{where}.type={type_name!r}; choose from {sorted(EVALUATOR_TYPES)}")
    module, cls = EVALUATOR_TYPES[type_name].split(":")
    return getattr(importlib.import_module(module), cls)


def _split_type(name: str, fields: Mapping[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    fields = dict(fields)
    if "type" not in fields:
        raise ValueError(f"{where}.{name}.type is required; choose from {sorted(EVALUATOR_TYPES)}")
    return fields.pop("type"), fields


def check_evals_config(evals: Mapping[str, Mapping[str, Any]], where: str = "config.evals") -> None:
    """Validate every evaluation's type and fields without reading any data (for config validation)."""
    for name, fields in evals.items():
        if not isinstance(fields, Mapping) and not hasattr(fields, "to_dict"):
            raise ValueError(f"{where}.{name} must be a dict with a 'type', got {fields!r}")
        fields = fields.to_dict() if hasattr(fields, "to_dict") else fields
        type_name, rest = _split_type(name, fields, where)
        cls = evaluator_class(type_name, f"{where}.{name}")
        config = parse_config(cls.config_class, rest, f"{where}.{name}")
        if cls.requires_dataset and not config.dataset:
            raise ValueError(f"{where}.{name}.dataset is required")


def make_evaluators(
    evals: Mapping[str, Mapping[str, Any]],
    model: CLIP,
    *,
    defaults: Mapping[str, Any] | None = None,
    where: str = "config.evals",
    inputs: ModelInputs | None = None,
) -> dict[str, Evaluator]:
    """{name: evaluator} for a config's `evals` section; `defaults` fill fields an evaluation leaves unset
    (the trainer passes its data_dir), `inputs` are the model's (the trainer's tokenizer)."""
    out = {}
    for name, fields in evals.items():
        fields = fields.to_dict() if hasattr(fields, "to_dict") else dict(fields)
        type_name, rest = _split_type(name, fields, where)
        cls = evaluator_class(type_name, f"{where}.{name}")
        known = {f.name for f in dataclasses.fields(cls.config_class)}
        for key, value in (defaults or {}).items():
            if key in known and rest.get(key) is None and value is not None:
                rest[key] = value
        out[name] = cls(rest, model, where=f"{where}.{name}", inputs=inputs)
    return out


def flat_scalars(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a metrics dict as {"a/b": value} (lists such as sweep histories are left out)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            out.update(flat_scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out
