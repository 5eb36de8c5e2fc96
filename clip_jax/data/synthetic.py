"""The embedded synthetic image-text dataset as a TFDS builder: "clip_synthetic".

Generated offline in seconds from `synthetic_scenes` (numpy rendering, captions from sentence patterns),
deterministic from the config's seed: example i of a split is drawn from its own generator seeded by
(seed, split, i), so it does not depend on generation order. The split table below is the single source of
docs/synthetic_dataset.md, which `python -m clip_jax.data.synthetic --write_docs` regenerates.

    builder = prepare_synthetic(data_dir)             # builds once, then reuses the prepared files
    ds = builder.as_dataset(split="test")

Usage from the command line: `python -m clip_jax.data.synthetic --data_dir DIR [--config tiny]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import sys
import time
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from tensorflow_datasets.core.utils import tqdm_utils

from clip_jax.cli_errors import UserError
from clip_jax.data import synthetic_scenes as scenes

CAPTIONS_PER_IMAGE = 3
DEFAULT_SEED = 0


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """How one split is drawn: rendering style, which (shape, color) pairs, and what it is for."""

    style: str
    pairs: str  # "seen" or "heldout"
    purpose: str


SPLITS = {
    "train": SplitSpec("standard", "seen", "contrastive training (image, 3 captions)"),
    "test": SplitSpec("standard", "seen", "zero-shot classification and linear probe (labels: shape, color)"),
    "heldout": SplitSpec("standard", "heldout", "(shape, color) combinations never seen in train/test"),
    "sketch": SplitSpec("sketch", "seen", "outline-only drawings on white (ImageNet-Sketch's role)"),
    "new_background": SplitSpec(
        "new_background", "seen", "pastel, checkerboard and colorful clutter backgrounds"
    ),
    "noise": SplitSpec(
        "noise", "seen", f"Gaussian pixel noise, std {scenes.NOISE_STD} of the intensity range"
    ),
    "new_texture": SplitSpec("new_texture", "seen", "checkered and wavy textures, never seen in training"),
}


class ClipSyntheticConfig(tfds.core.BuilderConfig):
    """Image size, split sizes and seed of one variant of the dataset."""

    def __init__(self, *, image_size: int, split_sizes: dict[str, int], seed: int = DEFAULT_SEED, **kwargs):
        super().__init__(**kwargs)
        if set(split_sizes) != set(SPLITS):
            raise ValueError(f"split_sizes must name exactly the splits {sorted(SPLITS)}")
        self.image_size = image_size
        self.split_sizes = dict(split_sizes)
        self.seed = seed


_DEFAULT_SIZES = {
    "train": 6000,
    "test": 1000,
    "heldout": 500,
    "sketch": 500,
    "new_background": 500,
    "noise": 500,
    "new_texture": 500,
}
_TINY_SIZES = {"train": 128, **{name: 32 for name in SPLITS if name != "train"}}

BUILDER_CONFIGS = (
    ClipSyntheticConfig(
        name="default",
        description="64x64 images; the main job trains on it in minutes on 2 CPU cores.",
        image_size=64,
        split_sizes=_DEFAULT_SIZES,
    ),
    ClipSyntheticConfig(
        name="tiny",
        description="32x32 images, a few examples per split: for tests.",
        image_size=32,
        split_sizes=_TINY_SIZES,
    ),
)

_LABELS = {
    "shape": scenes.SHAPES,
    "color": scenes.COLOR_NAMES,
    "size": scenes.SIZES,
    "position": scenes.POSITIONS,
    "texture": scenes.TEXTURES,
    "background": scenes.BACKGROUNDS,
}


# Under `python -m clip_jax.data.synthetic` this file runs a second time as __main__, after the package
# import registered the builder; registering the name twice would fail.
class ClipSynthetic(tfds.core.GeneratorBasedBuilder, skip_registration=__name__ == "__main__"):
    """Procedural shapes with captions; labels shape/color/size/position/texture/background."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "First version.",
        "1.1.0": "Larger objects (radius 0.14/0.19/0.25 of the side), so shapes stay legible at 32 px.",
    }
    BUILDER_CONFIGS = list(BUILDER_CONFIGS)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's default resolves the package through `importlib_resources` (a backport this stack lacks)
        # when the builder lives in a package; the file itself is all it needs (to look for checksums).
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        features = {
            "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
            "captions": tfds.features.Sequence(tfds.features.Text(), length=CAPTIONS_PER_IMAGE),
        }
        features.update({key: tfds.features.ClassLabel(names=names) for key, names in _LABELS.items()})
        # Built directly (not from a README/metadata folder next to the module), which TFDS requires of a
        # builder that lives inside a Python package rather than in a dataset folder of its own.
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict(features),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        del dl_manager  # nothing to download
        return {name: self._generate_examples(name) for name in SPLITS}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
        config = self.builder_config
        for index in range(config.split_sizes[split]):
            yield index, generate_example(split, index, config.image_size, config.seed)


def generate_example(split: str, index: int, image_size: int, seed: int = DEFAULT_SEED) -> dict:
    """Example `index` of `split`: PNG image bytes, captions and every attribute's label (class name)."""
    spec = SPLITS[split]
    # Each example has its own generator, so examples do not depend on the order they are generated in.
    rng = np.random.default_rng([seed, list(SPLITS).index(split), index])
    pairs = scenes.heldout_pairs() if spec.pairs == "heldout" else scenes.seen_pairs()
    scene = scenes.sample_scene(rng, spec.style, pairs)
    example = {
        "image": _png_bytes(scenes.render_scene(scene, image_size, rng, spec.style)),
        "captions": scenes.make_captions(scene, rng, CAPTIONS_PER_IMAGE),
    }
    example.update(dataclasses.asdict(scene))
    return example


def _png_bytes(image: np.ndarray) -> bytes:
    # PIL's fast PNG setting: about 100x cheaper than letting TFDS encode the array through tensorflow.
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="png", compress_level=1)
    return buffer.getvalue()


def zeroshot_tasks() -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """{task: (class names, prompt templates)}; the task name is the label feature to evaluate against."""
    return scenes.zeroshot_tasks()


def prepare_synthetic(data_dir: str | os.PathLike | None = None, config: str = "default") -> ClipSynthetic:
    """Generate the dataset into `data_dir` (TFDS's default when None) unless it is there; return the builder."""
    builder = ClipSynthetic(config=config, data_dir=None if data_dir is None else os.fspath(data_dir))
    # Statistics over 10k tiny images are not worth the seconds they cost on every fresh build.
    download_config = tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)
    # Quiet: TFDS's per-split progress bars would drown a training log (restored afterwards).
    was_active = tqdm_utils._active
    tqdm_utils.display_progress_bar(False)
    try:
        builder.download_and_prepare(download_config=download_config)
    finally:
        tqdm_utils.display_progress_bar(was_active)
    return builder


def describe_markdown() -> str:
    """docs/synthetic_dataset.md, generated from the constants of this module and of `synthetic_scenes`."""
    config_names = [c.name for c in BUILDER_CONFIGS]
    lines = [
        "# The embedded synthetic dataset: `clip_synthetic`",
        "",
        "<!-- Generated by `python -m clip_jax.data.synthetic --write_docs docs/synthetic_dataset.md`;",
        "     tests/test_data_synthetic.py checks that this file is up to date. Do not edit by hand. -->",
        "",
        "A TFDS builder inside the package (`clip_jax/data/synthetic.py`) that renders one object per image",
        "with numpy and describes it with captions from varied sentence patterns. It needs no download and",
        f"is deterministic from the config's seed (default {DEFAULT_SEED}): example *i* of a split is drawn",
        "from a generator seeded by (seed, split, *i*).",
        "",
        "```",
        "python -m clip_jax.data.synthetic --data_dir ~/tensorflow_datasets   # build (once), print sizes",
        "```",
        "",
        f"![The first {SAMPLES_PER_SPLIT} examples of each split, one split per row]({SAMPLES_FILE})",
        "",
        "Rows, top to bottom: " + ", ".join(f"`{name}`" for name in SPLITS) + ".",
        "",
        "## Splits",
        "",
        "| split | " + " | ".join(f"size (`{n}`)" for n in config_names) + " | style | pairs | purpose |",
        "|---|" + "---|" * len(config_names) + "---|---|---|",
    ]
    for name, spec in SPLITS.items():
        sizes = " | ".join(str(c.split_sizes[name]) for c in BUILDER_CONFIGS)
        lines.append(f"| `{name}` | {sizes} | {spec.style} | {spec.pairs} | {spec.purpose} |")
    lines += [
        "",
        "Image sizes: " + ", ".join(f"`{c.name}` {c.image_size}x{c.image_size}" for c in BUILDER_CONFIGS),
    ]
    lines += [
        "",
        "## Features",
        "",
        f"- `image`: uint8 RGB, PNG-encoded. `captions`: {CAPTIONS_PER_IMAGE} captions from distinct patterns.",
    ]
    for key, names in _LABELS.items():
        lines.append(f"- `{key}` (ClassLabel, {len(names)}): " + ", ".join(names))
    held = ", ".join(f"{c} {s}" for s, c in scenes.heldout_pairs())
    lines += [
        "",
        f"Train and test use {len(scenes.seen_pairs())} of the {len(scenes.SHAPES) * len(scenes.COLOR_NAMES)}"
        f" (shape, color) pairs; `heldout` uses only the other {len(scenes.heldout_pairs())}: {held}.",
        f"Train textures: {', '.join(scenes.TRAIN_TEXTURES)}; `new_texture` uses {', '.join(scenes.SHIFT_TEXTURES)}.",
        f"Train backgrounds: {', '.join(scenes.TRAIN_BACKGROUNDS)}; `new_background` uses "
        f"{', '.join(scenes.SHIFT_BACKGROUNDS)}; `sketch` draws outlines on {scenes.SKETCH_BACKGROUND}.",
        "",
        "## Captions",
        "",
        "Each caption fills one of these patterns (with synonyms for size, texture, position and background):",
        "",
    ]
    lines += [f"- `{p}`" for p in scenes.CAPTION_PATTERNS]
    lines += [
        "",
        "## Zero-shot tasks (`clip_jax.data.synthetic.zeroshot_tasks()`)",
        "",
        "The task name is the label feature. Prompts use words that no caption contains "
        f"({', '.join(scenes.PROMPT_ONLY_WORDS)}), so no prompt occurs verbatim in training captions.",
        "",
        "| task | classes | chance | templates |",
        "|---|---|---|---|",
    ]
    for task, (classes, templates) in zeroshot_tasks().items():
        chance = f"{100.0 / len(classes):.1f}%"
        lines.append(
            f"| `{task}` | {', '.join(classes)} | {chance} | " + "; ".join(f"`{t}`" for t in templates) + " |"
        )
    return "\n".join(lines) + "\n"


SAMPLES_FILE = "synthetic_dataset_samples.png"
SAMPLES_PER_SPLIT = 10


def sample_grid(
    image_size: int = 64, per_split: int = SAMPLES_PER_SPLIT, seed: int = DEFAULT_SEED
) -> np.ndarray:
    """uint8 image of the first `per_split` examples of every split (rows in SPLITS order)."""
    rows = []
    for split in SPLITS:
        images = [generate_example(split, i, image_size, seed)["image"] for i in range(per_split)]
        rows.append(np.concatenate([np.asarray(Image.open(io.BytesIO(png))) for png in images], axis=1))
    return np.concatenate(rows, axis=0)


def main(argv: list[str] | None = None) -> None:
    """Build the dataset (timed) and print its split sizes; optionally rewrite the docs file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data_dir", default=None, help="TFDS data dir (default: TFDS's, ~/tensorflow_datasets)"
    )
    parser.add_argument("--config", default="default", choices=[c.name for c in BUILDER_CONFIGS])
    parser.add_argument(
        "--write_docs", default=None, metavar="PATH", help="write the markdown description and a sample grid"
    )
    args = parser.parse_args(argv)
    if args.write_docs:
        samples = os.path.join(os.path.dirname(args.write_docs), SAMPLES_FILE)
        try:
            with open(args.write_docs, "w") as f:
                f.write(describe_markdown())
            Image.fromarray(sample_grid()).save(samples)
        except OSError as e:
            raise UserError(f"--write_docs {args.write_docs}: {e.strerror or e}") from e
        print(f"wrote {args.write_docs} and {samples}")
        return
    import tensorflow as tf  # TFDS writes through tf.io.gfile, whose errors are not OSErrors

    start = time.perf_counter()
    try:
        builder = prepare_synthetic(args.data_dir, args.config)
    except (OSError, tf.errors.OpError) as e:
        reason = getattr(e, "message", None) or getattr(e, "strerror", None) or str(e)
        raise UserError(f"--data_dir {args.data_dir}: cannot build the dataset there ({reason})") from e
    print(f"clip_synthetic/{args.config} ready in {builder.data_dir} ({time.perf_counter() - start:.1f} s)")
    for name, split in builder.info.splits.items():
        print(f"  {name}: {split.num_examples} examples")


if __name__ == "__main__":
    from clip_jax.cli_errors import run_cli

    sys.exit(run_cli(main, "clip_jax.data.synthetic"))
