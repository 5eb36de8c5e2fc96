"""The one factory of evaluation datasets, used by every evaluator (and so by the trainer, the scripts and
the sweeps alike): which source a registered dataset is read from, which label feature is scored, and the
per-process sharding of its batches; and `check_available`, which says in one line what is missing and the
command that prepares it (`clip_jax.eval.prepare`) before an evaluation loads any weights.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jax

from clip_jax.cli_errors import UserError
from clip_jax.eval import metadata
from clip_jax.eval.common import DataConfig
from clip_jax.eval.runtime import Batch
from clip_jax.preprocess import EvalTransform


def eval_dataset(
    data: DataConfig,
    image_size: int,
    *,
    dataset: str | None = None,
    split: str | None = None,
    transform: EvalTransform | None = None,
) -> Iterable[Batch]:
    """Padded image-label batches of a registered dataset at `image_size` in the model's eval `transform`
    (default OpenAI's), sharded over processes.

    `dataset` and `split` override the config's (the robustness evaluation reads several datasets, the
    linear probe two splits). `data.batch_size` is global: each process reads batch_size / process_count
    images per batch. The label is `metadata.label_feature` (clip_synthetic: the task's).
    """
    spec = metadata.get_dataset(dataset or data.dataset)
    split = split or data.split or spec.split
    if spec.head == "objectnet":  # read with PIL whatever `data.preprocess` says
        from clip_jax.data.objectnet import objectnet_dataset

        if not data.objectnet_dir:
            raise ValueError("ObjectNet is read from a local folder: set objectnet_dir (--objectnet-dir)")
        folders = [c["folder"] for c in metadata.objectnet_classes()]
        return objectnet_dataset(
            data.objectnet_dir,
            folders,
            batch_size=data.batch_size,
            image_size=image_size,
            transform=transform,
        )
    from clip_jax.data import make_eval_dataset

    return make_eval_dataset(
        spec.tfds_name,
        split,
        batch_size=data.batch_size,
        image_size=image_size,
        data_dir=data.data_dir,
        label_key=metadata.label_feature(spec, data.task),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        preprocess=data.preprocess,
        transform=transform,
    )


def retrieval_dataset(
    data: DataConfig, image_size: int, context_length: int, **kwargs: Any
) -> Iterable[Batch]:
    """Padded batches of images with their captions (a TFDS name or a source the data module reads);
    `kwargs` go to `clip_jax.data.make_retrieval_dataset` (the model's transform and tokenizer)."""
    from clip_jax.data import make_retrieval_dataset

    return make_retrieval_dataset(
        data.dataset,
        data.split or "test",
        batch_size=data.batch_size,
        image_size=image_size,
        context_length=context_length,
        data_dir=data.data_dir,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        preprocess=data.preprocess,
        **kwargs,
    )


PREPARE_COMMAND = "python -m clip_jax.eval.prepare"
PREPARE_DOC = "docs/evaluation_data.md"
_FOLDER_PREFIXES = ("folder:", "image_folder:")


def tfds_data_dir(data_dir: str | None) -> str:
    """The TFDS data dir that `data_dir` means: itself, or TFDS's default when None ($TFDS_DATA_DIR,
    else ~/tensorflow_datasets), so that messages name the folder actually looked at."""
    if data_dir:
        return str(Path(data_dir).expanduser())
    from tensorflow_datasets.core.constants import get_default_data_dir

    return get_default_data_dir()


def tfds_builder(name: str, data_dir: str | None) -> tuple[Any, bool]:
    """(`tfds.builder(name, data_dir=data_dir)`, whether it is prepared) without TFDS's warning that an
    unprepared dataset's folder has no dataset_info.json (the caller says so itself, in its one line); an
    unknown name is a UserError."""
    import tensorflow_datasets as tfds

    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        return builder, builder.is_prepared()
    except tfds.core.registered.DatasetNotFoundError as e:
        raise UserError(
            f"unknown dataset {name!r}: not one of {sorted(metadata.DATASETS)}, an image folder "
            f"(folder:<dir>) or a TFDS name ({PREPARE_DOC})"
        ) from e
    finally:
        absl_logger.setLevel(level)


def image_folder_path(name: str) -> Path | None:
    """The directory an image-folder dataset name points at ("folder:<dir>", "image_folder:<dir>" or an
    existing directory, as `clip_jax.data.builders.get_builder` reads them), else None."""
    for prefix in _FOLDER_PREFIXES:
        if name.startswith(prefix):
            return Path(name[len(prefix) :]).expanduser()
    path = Path(name).expanduser()
    return path if path.is_dir() else None


def check_image_folder(root: str | Path, split: str | None = None) -> dict[str, int]:
    """{split: number of class folders} of an image folder laid out as tfds.ImageFolder reads it,
    <root>/<split>/<class>/<image>; UserError naming the folder when it is not."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist; lay it out as {root}/<split>/<class>/<image>")
    splits = {d.name: sum(c.is_dir() for c in d.iterdir()) for d in sorted(root.iterdir()) if d.is_dir()}
    splits = {k: n for k, n in splits.items() if n}
    if not splits:
        raise UserError(
            f"image folder {root} has no <split>/<class>/ folders; lay it out as {root}/test/<class>/<image>"
        )
    if split is not None and split not in splits:
        raise UserError(f"image folder {root} has splits {sorted(splits)}, not {split!r}")
    return splits


def check_objectnet_dir(objectnet_dir: str | None) -> int:
    """Number of CLIP's 113 ObjectNet classes whose folders exist under `objectnet_dir` (or its images/);
    UserError naming the folder and the prepare command when none does."""
    prepare = f"{PREPARE_COMMAND} objectnet --objectnet-dir DIR"
    if not objectnet_dir:
        raise UserError(f"objectnet is read from a local folder: pass --objectnet-dir (made by `{prepare}`)")
    root = Path(objectnet_dir).expanduser()
    images = root / "images" if (root / "images").is_dir() else root
    found = sum((images / c["folder"]).is_dir() for c in metadata.objectnet_classes())
    if not found:
        raise UserError(
            f"objectnet: no class folders (e.g. {images}/alarm_clock) in {root}; "
            f"unpack objectnet-1.0.zip there with `{prepare.replace('DIR', str(root))}` ({PREPARE_DOC})"
        )
    return found


def _base_split(split: str) -> str:
    """The split that a sliced split name reads from: "train" for "train[:10%]"."""
    return re.split(r"[\[+]", split, maxsplit=1)[0]


def check_available(
    datasets: str | Sequence[str],
    data_dir: str | None = None,
    *,
    splits: Sequence[str | None] = (None,),
    objectnet_dir: str | None = None,
) -> None:
    """Raise UserError, in one line, unless every dataset in `datasets` can be read with `splits` (None:
    the dataset's own test split): TFDS datasets prepared in `data_dir`, image folders laid out, ObjectNet
    unpacked. Reads metadata only, so an evaluation calls it before loading any weights. The datasets that
    are not prepared are named together, with the one `clip_jax.eval.prepare` command that prepares them.
    """
    names = [datasets] if isinstance(datasets, str) else list(datasets)
    unprepared: list[str] = []
    root = None
    for name in names:
        try:
            spec = metadata.get_dataset(name)
        except ValueError:  # retrieval reads any TFDS name or image folder
            spec = None
        folder = image_folder_path(name) if spec is None else None
        if folder is not None:
            for split in splits:
                check_image_folder(folder, split)
            continue
        if spec is not None and spec.head == "objectnet":
            check_objectnet_dir(objectnet_dir)
            continue
        tfds_name = spec.tfds_name if spec is not None else name
        if tfds_name.split("/")[0] == "clip_synthetic":  # generated on first use
            continue
        builder, prepared = tfds_builder(tfds_name, data_dir)
        root = tfds_data_dir(data_dir)
        if not prepared:
            unprepared.append(name)
            continue
        have = set(builder.info.splits.keys())
        for split in splits:
            split = split or (spec.split if spec is not None else "test")
            if _base_split(split) not in have:
                # A prepared dataset is never rebuilt in place, hence the deletion.
                raise UserError(
                    f"{name} in {root} has splits {sorted(have)}, not {_base_split(split)!r}; put that split's "
                    f"archive in the manual dir, delete {Path(root) / builder.name} and rerun "
                    f"`{PREPARE_COMMAND} {tfds_name} --data-dir {root}` ({PREPARE_DOC})"
                )
    if unprepared:
        raise UserError(
            f"{', '.join(unprepared)} not prepared in the TFDS data dir {root}; prepare with "
            f"`{PREPARE_COMMAND} {' '.join(unprepared)} --data-dir {root}` ({PREPARE_DOC})"
        )


def check_cli_data(args: Any) -> None:
    """`check_available` for an eval CLI's parsed flags (--dataset or --datasets, --split, --train-split,
    --data-dir, --objectnet-dir), called before its weights load. ObjectNet without --objectnet-dir is left
    out of --datasets, as the robustness evaluation skips it."""
    names = getattr(args, "datasets", None)
    if names:
        names = [n.strip() for n in names.split(",") if n.strip()]
        if not getattr(args, "objectnet_dir", None):
            names = [n for n in names if n != "objectnet"]
        splits: list[str | None] = [None]
    elif getattr(args, "dataset", None):
        names = [args.dataset]
        splits = [getattr(args, "split", None)]
        if getattr(args, "train_split", None):
            splits.append(args.train_split)
    else:
        return
    check_available(
        names,
        getattr(args, "data_dir", None),
        splits=splits,
        objectnet_dir=getattr(args, "objectnet_dir", None),
    )
