"""Class names, prompt templates and class-subset lists shipped as data, plus the evaluation dataset table.

Where each file comes from is in SOURCES.md; `build.py` regenerates the derived ones.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import string
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
# The CLIP paper's and other published accuracies, with their sources (SOURCES.md).
PUBLISHED_NUMBERS = HERE / "published_clip_numbers.json"
# ImageNet models' accuracies on ImageNet and its shifts (Taori et al. 2020's testbed): the points that
# the effective-robustness baselines are fitted on (clip_jax.eval.robustness; SOURCES.md).
TESTBED_POINTS = HERE / "imagenet_testbed_points.json"


@functools.cache
def _load(name: str) -> dict:
    with open(HERE / f"{name}.json") as f:
        return json.load(f)


def imagenet_classnames() -> list[str]:
    """OpenAI's 1000 curated ImageNet class names, in the standard (sorted WNID) label order."""
    return list(_load("imagenet")["classnames"])


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet WNIDs in label order (TFDS imagenet2012 / torchvision order)."""
    return list(_load("imagenet")["wnids"])


def imagenet_templates(kind: str = "openai") -> list[str]:
    """OpenAI's 80 ImageNet prompt templates ('openai') or their 7-template subset ('simple')."""
    key = {"openai": "templates", "simple": "templates_simple"}.get(kind)
    if key is None:
        raise ValueError(f"unknown template set {kind!r}; choose 'openai' (80) or 'simple' (7)")
    return list(_load("imagenet")[key])


# Zero-shot prompt styles: how a model's authors turn class names into prompts (clip_jax.inputs.ModelInputs
# .prompts says which one a model takes). "openai": OpenAI's class names and templates as written (CLIP's
# notebooks, open_clip). "big_vision": big_vision's zero-shot evaluator, which made SigLIP's published
# numbers: the same 1000 class names (its CLIP_IMAGENET_CLASS_NAMES equals ours), its 81 templates ("{}"
# added to OpenAI's 80), everything canonicalised and each class name cut at its first comma (SOURCES.md).
PROMPT_STYLES = ("openai", "big_vision")


def canonicalize_text(text: str, keep: str | None = None) -> str:
    """big_vision's prompt_engineering.canonicalize_text: "_" to space, ASCII punctuation removed except
    the exact string `keep` ("{}" in templates, "," in class names), lowercase, whitespace collapsed."""
    text = text.replace("_", " ")
    drop = str.maketrans("", "", string.punctuation)
    text = keep.join(part.translate(drop) for part in text.split(keep)) if keep else text.translate(drop)
    return re.sub(r"\s+", " ", text.lower()).strip()


def big_vision_templates() -> list[str]:
    """The 81 templates of big_vision's zero-shot evaluator ('clip_paper'), canonicalised as it does."""
    return [canonicalize_text(t, keep="{}") for t in _load("big_vision_prompts")["templates"]]


def big_vision_classnames(classnames: list[str]) -> list[str]:
    """Class names as big_vision's evaluator uses them: canonicalised, keeping only the first alias."""
    return [canonicalize_text(c, keep=",").split(",")[0] for c in classnames]


def subset_wnids(name: str) -> list[str]:
    """The 200 WNIDs of 'imagenet_r' or 'imagenet_a'."""
    if name not in ("imagenet_r", "imagenet_a"):
        raise ValueError(f"no class subset for {name!r}; known: imagenet_r, imagenet_a")
    return list(_load(name)["wnids"])


def subset_indices(name: str) -> np.ndarray:
    """ImageNet-1k label indices (sorted) of the 200 classes of 'imagenet_r' or 'imagenet_a'."""
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    return np.array(sorted(index[w] for w in subset_wnids(name)), np.int64)


def subset_mask(name: str) -> np.ndarray:
    """bool [1000]: which outputs of the 1000-way head belong to the 200-class subset."""
    mask = np.zeros(1000, bool)
    mask[subset_indices(name)] = True
    return mask


def objectnet_classes() -> list[dict]:
    """ObjectNet's 113 ImageNet-overlapping classes: [{folder, name, imagenet_indices}], sorted by folder."""
    return [dict(c) for c in _load("objectnet")["classes"]]


def classnames_and_templates(
    name: str, task: str | None = None, prompts: str = "openai"
) -> tuple[list[str], list[str]]:
    """Class names and templates of a dataset in the registry (ImageNet variants use the 1000 classes),
    in a prompt style of `PROMPT_STYLES` (a model's `ModelInputs.prompts`).

    `task` picks one of the synthetic dataset's label features ('shape', the default, or 'color').
    "big_vision" canonicalises them all; ImageNet and CIFAR get big_vision's 81 templates, as its
    evaluator gives every dataset unless told otherwise, the synthetic dataset keeps its own.
    """
    if prompts not in PROMPT_STYLES:
        raise ValueError(f"prompt style {prompts!r}; choose from {PROMPT_STYLES}")
    spec = get_dataset(name)
    if spec.classes == "imagenet":
        classnames, templates = imagenet_classnames(), imagenet_templates()
    elif spec.classes == "clip_synthetic":
        from clip_jax.data.synthetic import zeroshot_tasks

        classnames, templates = (list(x) for x in zeroshot_tasks()[label_feature(spec, task)])
    else:
        label_feature(spec, task)  # a task on a single-label dataset is an error
        d = _load(spec.classes)
        classnames, templates = list(d["classnames"]), list(d["templates"])
    if prompts == "openai":
        return classnames, templates
    if spec.classes != "clip_synthetic":
        templates = big_vision_templates()
    return big_vision_classnames(classnames), [canonicalize_text(t, keep="{}") for t in templates]


SYNTHETIC_DEFAULT_TASK = "shape"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """An evaluation dataset: its CLIP_benchmark name, where it comes from, and how it is scored."""

    name: str  # CLIP_benchmark's name, used in result records
    tfds_name: str | None  # None: read from a local folder (ObjectNet)
    split: str
    classes: str  # key of the class-name/template set
    # How the 1000-way ImageNet head is scored: None (as is), 'imagenet_r'/'imagenet_a' (200-class subset),
    # or 'objectnet' (113 classes, each a set of ImageNet classes).
    head: str | None = None


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec("imagenet1k", "imagenet2012", "validation", "imagenet"),
        DatasetSpec("imagenetv2", "imagenet_v2", "test", "imagenet"),
        DatasetSpec("imagenet-r", "imagenet_r", "test", "imagenet", head="imagenet_r"),
        DatasetSpec("imagenet-a", "imagenet_a", "test", "imagenet", head="imagenet_a"),
        DatasetSpec("imagenet_sketch", "imagenet_sketch", "test", "imagenet"),
        DatasetSpec("objectnet", None, "test", "imagenet", head="objectnet"),
        DatasetSpec("cifar10", "cifar10", "test", "cifar10"),
        DatasetSpec("cifar100", "cifar100", "test", "cifar100"),
        DatasetSpec("clip_synthetic", "clip_synthetic", "test", "clip_synthetic"),
    )
}


# The ImageNet distribution-shift suite of the CLIP paper (Fig. 13) in reporting order.
def label_feature(spec: DatasetSpec, task: str | None) -> str:
    """The label feature that an evaluation scores: clip_synthetic has one per task ("shape", the
    default, or "color"); every other dataset has "label" and no tasks."""
    if spec.classes == "clip_synthetic":
        from clip_jax.data.synthetic import zeroshot_tasks

        task = task or SYNTHETIC_DEFAULT_TASK
        if task not in zeroshot_tasks():
            raise ValueError(f"task {task!r} of {spec.name}: choose from {sorted(zeroshot_tasks())}")
        return task
    if task is not None:
        raise ValueError(f"{spec.name} has a single label; task={task!r} applies to clip_synthetic only")
    return "label"


def choose_templates(arg: str | None, spec: DatasetSpec, default: list[str]) -> list[str]:
    """The templates that `arg` names for a dataset whose own templates are `default`: None (those),
    "openai" (80) or "simple" (7) for ImageNet sets, or a JSON file holding a list of templates with '{}'."""
    if arg is None:
        return default
    if arg in ("openai", "simple"):
        if spec.classes != "imagenet":
            raise ValueError(f"--templates {arg} is an ImageNet template set; {spec.name} has its own")
        return imagenet_templates(arg)
    path = Path(arg)
    if not path.is_file():
        raise ValueError(f"--templates must be openai, simple or a JSON file; {arg!r} is none of these")
    templates = json.loads(path.read_text())
    if not (isinstance(templates, list) and templates and all("{}" in t for t in templates)):
        raise ValueError(f"{arg} must hold a non-empty JSON list of templates, each with '{{}}'")
    return templates


IMAGENET_SHIFTS = ("imagenetv2", "imagenet-r", "imagenet_sketch", "objectnet", "imagenet-a")


def get_dataset(name: str) -> DatasetSpec:
    """Look a dataset up by its CLIP_benchmark name or its TFDS name (with an optional '/config')."""
    if name in DATASETS:
        return DATASETS[name]
    base = name.split("/")[0]
    for spec in DATASETS.values():
        if spec.tfds_name == name:
            return spec
        if spec.tfds_name == base:
            return dataclasses.replace(spec, tfds_name=name)
    raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
