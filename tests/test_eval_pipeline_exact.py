"""The evaluation pipelines feed the model exactly what open_clip's `preprocess` makes of the same files.

Images are written by the test in varied sizes, aspect ratios and modes (RGB, L, P, RGBA, CMYK JPEG,
progressive JPEG, upsampled); the batches of the image-label factory that the ImageNet, shift and
linear-probe evaluations read (`clip_jax.eval.datasets.eval_dataset`), and of the retrieval pipeline,
must equal open_clip's eval transform of the same encoded bytes with max abs difference 0.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

open_clip = pytest.importorskip("open_clip")

SIZE = 224


def _images() -> dict[str, bytes]:
    """{file name: encoded bytes}: photographs in the modes and formats real datasets hold."""
    import skimage.data

    out = {}

    def save(name: str, image: Image.Image, fmt: str, **kw) -> None:
        buf = io.BytesIO()
        image.save(buf, fmt, **kw)
        out[name] = buf.getvalue()

    coffee, chelsea = Image.fromarray(skimage.data.coffee()), Image.fromarray(skimage.data.chelsea())
    astronaut = Image.fromarray(skimage.data.astronaut())
    save("rgb_landscape.jpg", coffee, "JPEG", quality=90)  # 400 x 600
    save("gray_portrait.jpg", coffee.transpose(Image.Transpose.TRANSPOSE).convert("L"), "JPEG")
    save("palette_odd.png", chelsea.convert("P"), "PNG")  # 300 x 451: the long side truncates
    rgba = astronaut.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 512, dtype=np.uint8), (512, 1))))
    save("rgba_square.png", rgba, "PNG")
    save("cmyk.jpg", chelsea.convert("CMYK"), "JPEG")
    save("progressive.jpg", Image.fromarray(skimage.data.rocket()), "JPEG", progressive=True)
    save("small_upsampled.png", chelsea.resize((61, 40)), "PNG")
    save("offset_half.png", astronaut.crop((0, 0, 229, 224)), "PNG")  # crop offset 2.5 rounds to 2
    return out


def _reference(data: bytes) -> np.ndarray:
    transform = open_clip.image_transform(SIZE, is_train=False)
    return transform(Image.open(io.BytesIO(data))).permute(1, 2, 0).numpy()


def _match_exactly(rows: list[np.ndarray], references: dict[str, np.ndarray]) -> None:
    """Every batch row equals one reference exactly, and every reference is fed once."""
    unmatched = dict(references)
    for row in rows:
        hit = next((n for n, ref in unmatched.items() if np.array_equal(row, ref)), None)
        if hit is None:
            gaps = {n: float(np.abs(row - ref).max()) for n, ref in unmatched.items()}
            raise AssertionError(f"a batch row equals no reference; smallest max abs diffs: {gaps}")
        del unmatched[hit]
    assert not unmatched, f"never fed: {sorted(unmatched)}"


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    images = _images()
    for i, (name, data) in enumerate(images.items()):
        sub = root / "test" / f"class{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / name).write_bytes(data)
    return root, {name: _reference(data) for name, data in images.items()}


def test_the_eval_dataset_factory_is_exact_by_default(image_folder, monkeypatch):
    from clip_jax.eval import datasets, metadata
    from clip_jax.eval.common import DataConfig

    root, references = image_folder
    # A registered ImageNet-like set served from the test's folder: the factory path every image-label
    # evaluation (zero-shot, shifts, linear probe) takes.
    spec = metadata.DatasetSpec("folder_set", f"folder:{root}", "test", "imagenet")
    monkeypatch.setattr(metadata, "get_dataset", lambda name: spec)
    ds = datasets.eval_dataset(DataConfig(dataset="folder_set", batch_size=3), SIZE)
    rows = [b["image"][i] for b in ds for i in np.flatnonzero(b["mask"])]
    _match_exactly(rows, references)


def test_the_tf_fast_path_is_not_exact_and_stays_within_its_stated_gap(image_folder):
    from clip_jax.data import make_eval_dataset
    from clip_jax.preprocess import TF_EVAL_GAP

    root, references = image_folder
    ds = make_eval_dataset(f"folder:{root}", "test", batch_size=8, image_size=SIZE, preprocess="tf")
    rows = [b["image"][i] for b in ds for i in np.flatnonzero(b["mask"])]
    exact = sum(any(np.array_equal(r, ref) for ref in references.values()) for r in rows)
    assert exact < len(references)  # the fast path is a different resampler, hence the opt-in
    # RGB and grayscale photos (what the stated bound applies to) are within it.
    for name in (
        "rgb_landscape.jpg",
        "progressive.jpg",
        "gray_portrait.jpg",
        "cmyk.jpg",
        "small_upsampled.png",
    ):
        gaps = [np.abs(r - references[name]) for r in rows]
        best = min(gaps, key=lambda g: g.mean())
        assert best.max() < TF_EVAL_GAP["max_abs"] and best.mean() < TF_EVAL_GAP["mean_abs"], (
            name,
            best.max(),
        )


def test_the_retrieval_pipeline_is_exact(tmp_path):
    import tensorflow_datasets as tfds

    from clip_jax.data import make_retrieval_dataset, testing
    from clip_jax.data.builders import get_builder

    data_dir = testing.tiny_synthetic_data_dir()
    builder = get_builder("clip_synthetic/tiny", data_dir)
    raw = builder.as_dataset(split="test", decoders={"image": tfds.decode.SkipDecoding()})
    references = {str(i): _reference(ex["image"].numpy()) for i, ex in enumerate(raw)}
    ds = make_retrieval_dataset(
        "clip_synthetic/tiny", "test", batch_size=8, image_size=SIZE, data_dir=data_dir
    )
    rows = [b["image"][i] for b in ds for i in np.flatnonzero(b["mask"])]
    _match_exactly(rows, references)


def test_unknown_preprocess_is_refused():
    from clip_jax.eval.common import check_evals_config

    with pytest.raises(ValueError, match=r"config\.evals\.a\.preprocess='pill'"):
        check_evals_config({"a": {"type": "zeroshot", "dataset": "imagenet1k", "preprocess": "pill"}})
