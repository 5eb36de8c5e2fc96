"""Image preprocessing: the PIL path against open_clip's eval preprocess, and the tf.data transforms.

Run as a script (`python tests/test_preprocess.py`) to re-measure the tf.data-vs-PIL deviation and rewrite
the table in docs/preprocessing.md.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

try:
    # torchvision's C extension segfaults when it is loaded after tensorflow (torchvision 0.29.1 with
    # tensorflow 2.21), so load it before any test here imports tensorflow.
    import torchvision  # noqa: F401
except ImportError:
    pass

from clip_jax.preprocess import (
    OPENAI_MEAN,
    OPENAI_STD,
    TF_EVAL_GAP,
    _tf_random_resized_crop_box,
    load_image,
    preprocess_batch,
    preprocess_image,
    tf_eval_transform,
    tf_train_transform,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "preprocessing.md"

# Documented bounds (docs/preprocessing.md; what results records of the tf path state) on
# |tf_eval_transform - preprocess_image| after normalisation.
TF_MAX_ABS_BOUND = TF_EVAL_GAP["max_abs"]
TF_MEAN_ABS_BOUND = TF_EVAL_GAP["mean_abs"]
# RGBA goes through PIL's 8-bit premultiplied alpha, where one level of difference at alpha 1 becomes 255
# levels after unpremultiplying: only the mean is bounded there.
TF_RGBA_MEAN_ABS_BOUND = 0.01

# Normalised values can only lie between what pixel values 0 and 255 map to.
NORM_LO = (0.0 - np.asarray(OPENAI_MEAN)) / np.asarray(OPENAI_STD)
NORM_HI = (1.0 - np.asarray(OPENAI_MEAN)) / np.asarray(OPENAI_STD)


def load_photos() -> dict[str, np.ndarray]:
    """Real photographs shipped with scikit-image / scikit-learn, in several shapes and modes (uint8)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    coffee = skimage.data.coffee()  # 400 x 600 landscape
    chelsea = skimage.data.chelsea()  # 300 x 451: the long side 336.75 truncates to 336
    astronaut = skimage.data.astronaut()  # 512 x 512
    alpha = np.linspace(0, 255, astronaut.shape[1], dtype=np.float64).astype(np.uint8)
    return {
        "astronaut_square": astronaut,
        "coffee_landscape": coffee,
        "coffee_portrait": np.ascontiguousarray(coffee.transpose(1, 0, 2)),
        "chelsea_odd": chelsea,
        "rocket": skimage.data.rocket(),
        "china": load_sample_images().images[0],
        "chelsea_small_upsampled": np.ascontiguousarray(chelsea[::3, ::3]),  # 100 x 151
        "camera_grayscale": skimage.data.camera(),  # 2-D, PIL mode "L"
        # Half-way crop offsets 1.5 and 2.5: torchvision's round-half-to-even gives 2 for both.
        "astronaut_offset_1.5": np.ascontiguousarray(astronaut[:227, :224]),
        "astronaut_offset_2.5": np.ascontiguousarray(astronaut[:224, :229]),
        # A varying alpha channel: the reference resizes in RGBA (premultiplied) and converts afterwards.
        "astronaut_rgba": np.dstack([astronaut, np.broadcast_to(alpha, astronaut.shape[:2])]),
    }


def measure_tf_deviation(photos: dict[str, np.ndarray], sizes=(224, 336)) -> list[dict]:
    """|tf_eval_transform - preprocess_image| per photo and size, after normalisation."""
    import tensorflow as tf

    rows = []
    for name, photo in photos.items():
        for size in sizes:
            pil = preprocess_image(photo, size)
            rgb = photo if photo.ndim == 3 else photo[..., None]
            out = tf_eval_transform(tf.constant(rgb), size).numpy()
            diff = np.abs(out - pil)
            rows.append(
                {
                    "photo": name,
                    "shape": "x".join(map(str, photo.shape)),
                    "size": size,
                    "max_abs": float(diff.max()),
                    "mean_abs": float(diff.mean()),
                }
            )
    return rows


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return load_photos()


@pytest.fixture(scope="module")
def reference_transforms():
    """open_clip's eval preprocess for ViT-B-32 (224) and for L/14@336's image size."""
    open_clip = pytest.importorskip("open_clip")
    _, _, preprocess_224 = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    size_336 = open_clip.get_model_config("ViT-L-14-336")["vision_cfg"]["image_size"]
    assert size_336 == 336
    # Building the 428M-parameter L/14 only to get its transform is slow; open_clip derives it from this call.
    return {224: preprocess_224, 336: open_clip.image_transform(size_336, is_train=False)}


def test_constants_match_open_clip():
    open_clip = pytest.importorskip("open_clip")
    assert OPENAI_MEAN == tuple(open_clip.OPENAI_DATASET_MEAN)
    assert OPENAI_STD == tuple(open_clip.OPENAI_DATASET_STD)


@pytest.mark.parametrize("size", [224, 336])
def test_pil_path_matches_open_clip(photos, reference_transforms, size):
    for name, photo in photos.items():
        pil = Image.fromarray(photo)
        expected = reference_transforms[size](pil).permute(1, 2, 0).numpy()
        got = preprocess_image(pil, size)
        assert got.shape == (size, size, 3) and got.dtype == np.float32, name
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5, err_msg=name)
    # Other PIL modes: the reference resizes in the native mode (palette: nearest) and converts afterwards.
    for mode in ("P", "LA", "CMYK"):
        pil = Image.fromarray(photos["chelsea_odd"]).convert(mode)
        expected = reference_transforms[size](pil).permute(1, 2, 0).numpy()
        np.testing.assert_allclose(preprocess_image(pil, size), expected, rtol=0, atol=1e-5, err_msg=mode)


def test_input_types_and_batch_agree(photos, tmp_path):
    photo = photos["chelsea_odd"]
    path = tmp_path / "chelsea.png"
    Image.fromarray(photo).save(path)
    expected = preprocess_image(Image.fromarray(photo), 224)
    np.testing.assert_array_equal(preprocess_image(photo, 224), expected)
    np.testing.assert_array_equal(preprocess_image(path, 224), expected)
    np.testing.assert_array_equal(preprocess_image(str(path), 224), expected)

    gray = photos["camera_grayscale"]
    np.testing.assert_array_equal(preprocess_image(gray[..., None]), preprocess_image(gray))

    batch = preprocess_batch([photo, path, gray], 64)
    assert batch.shape == (3, 64, 64, 3) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[1], preprocess_image(path, 64))
    assert preprocess_batch([], 32).shape == (0, 32, 32, 3)
    assert np.all(batch >= NORM_LO - 1e-6) and np.all(batch <= NORM_HI + 1e-6)


def test_bad_inputs_raise_clear_errors(photos, tmp_path):
    garbage = tmp_path / "not_an_image.jpg"
    garbage.write_bytes(b"this is not a jpeg")
    with pytest.raises(ValueError, match="not_an_image.jpg"):
        load_image(garbage)

    truncated = tmp_path / "truncated.jpg"
    Image.fromarray(photos["coffee_landscape"]).save(tmp_path / "full.jpg")
    truncated.write_bytes((tmp_path / "full.jpg").read_bytes()[:2000])
    with pytest.raises(ValueError, match="truncated.jpg"):
        preprocess_image(truncated)

    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")
    with pytest.raises(TypeError, match="uint8"):
        preprocess_image(photos["chelsea_odd"].astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        preprocess_image(np.zeros((8, 8, 2), np.uint8))

    loaded = load_image(tmp_path / "full.jpg")  # usable after the file is closed
    assert loaded.size == (600, 400) and np.asarray(loaded).shape == (400, 600, 3)


def test_pil_path_imports_neither_torch_nor_tensorflow():
    code = (
        "import sys, numpy as np\n"
        "from clip_jax.preprocess import preprocess_image\n"
        "preprocess_image(np.zeros((40, 50, 3), np.uint8), 32)\n"
        "bad = [m for m in ('torch', 'tensorflow', 'open_clip') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_tf_eval_deviation_within_documented_bound(photos):
    rows = measure_tf_deviation(photos)
    assert {row["photo"] for row in rows} == set(photos)
    for row in rows:
        if row["shape"].endswith("x4"):
            assert row["mean_abs"] < TF_RGBA_MEAN_ABS_BOUND, row
        else:
            assert row["max_abs"] < TF_MAX_ABS_BOUND, row
            assert row["mean_abs"] < TF_MEAN_ABS_BOUND, row


def test_tf_eval_in_dataset_with_dynamic_shapes(photos):
    import tensorflow as tf

    images = [photos["coffee_portrait"], photos["chelsea_small_upsampled"], photos["astronaut_rgba"]]
    ds = tf.data.Dataset.from_generator(
        lambda: iter(images), output_signature=tf.TensorSpec([None, None, None], tf.uint8)
    )
    # Unknown channel count is rejected; the pipeline states the channels it decodes to.
    with pytest.raises(ValueError, match="channels"):
        ds.map(lambda x: tf_eval_transform(x, 96))
    ds = ds.map(lambda x: tf_eval_transform(tf.ensure_shape(x[..., :3], [None, None, 3]), 96))
    images[2] = images[2][..., :3]
    assert ds.element_spec.shape == (96, 96, 3) and ds.element_spec.dtype == tf.float32
    outs = list(ds.as_numpy_iterator())
    for image, out in zip(images, outs, strict=True):
        assert np.all(out >= NORM_LO - 1e-6) and np.all(out <= NORM_HI + 1e-6)
        assert np.abs(out - preprocess_image(image[..., :3], 96)).mean() < TF_MEAN_ABS_BOUND

    gray = photos["camera_grayscale"]
    out = tf_eval_transform(tf.constant(gray[..., None]), 64).numpy()
    np.testing.assert_array_equal(out, tf_eval_transform(tf.constant(np.dstack([gray] * 3)), 64).numpy())


def test_tf_train_transform_seeded_determinism_and_variation(photos):
    import tensorflow as tf

    # Square: with scale >= 0.9 a 3:2 photo never fits an attempt and always gets the central fallback crop.
    image = tf.constant(photos["astronaut_square"])
    seed = tf.constant([3, 7], tf.int64)
    a = tf_train_transform(image, 64, seed=seed).numpy()
    b = tf_train_transform(image, 64, seed=seed).numpy()
    assert a.shape == (64, 64, 3) and a.dtype == np.float32
    assert np.all(a >= NORM_LO - 1e-6) and np.all(a <= NORM_HI + 1e-6)
    np.testing.assert_array_equal(a, b)
    others = [tf_train_transform(image, 64, seed=tf.constant([s, 0])).numpy() for s in range(4)]
    assert all(np.abs(o - a).max() > 0 for o in others)
    assert tf_train_transform(image, 64).shape == (64, 64, 3)  # unseeded (stateful) sampling

    # In a pipeline: one stateless seed per element makes the epoch reproducible.
    def epoch():
        ds = tf.data.Dataset.from_tensors(image).repeat(3)
        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.random(seed=5).batch(2))
        return np.stack(list(ds.map(lambda x, s: tf_train_transform(x, 32, seed=s)).as_numpy_iterator()))

    first = epoch()
    np.testing.assert_array_equal(first, epoch())
    assert np.abs(first[0] - first[1]).max() > 0


def test_tf_random_resized_crop_box_follows_torchvision():
    import tensorflow as tf

    height, width = 300, 451
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    for s in range(40):
        top, left, h, w = (int(v) for v in _tf_random_resized_crop_box(height, width, scale, ratio, [s, 1]))
        assert 0 <= top <= height - h and 0 <= left <= width - w and h > 0 and w > 0
        # Rounding the sides to integers moves area and aspect a little beyond the sampled ranges.
        assert scale[0] * 0.9 <= h * w / (height * width) <= scale[1]
        assert ratio[0] * 0.9 <= w / h <= ratio[1] * 1.1

    # No attempt can fit a 10 x 1000 strip at scale >= 0.9: torchvision's fallback is a central crop
    # with the aspect ratio clamped to 4/3.
    box = [int(v) for v in _tf_random_resized_crop_box(10, 1000, (0.9, 1.0), ratio, tf.constant([0, 0]))]
    assert box == [0, (1000 - 13) // 2, 10, 13]
    # The same holds for any 3:2 landscape at open_clip's default scale; torchvision agrees.
    torchvision = pytest.importorskip("torchvision")
    expected = torchvision.transforms.RandomResizedCrop.get_params(
        Image.new("RGB", (600, 400)), [0.9, 1.0], ratio
    )
    box = [int(v) for v in _tf_random_resized_crop_box(400, 600, (0.9, 1.0), ratio, tf.constant([5, 5]))]
    assert box == list(expected) == [0, 33, 400, 533]


def test_tf_train_crop_resize_matches_pil_for_the_same_box(photos):
    import tensorflow as tf
    import torchvision.transforms.functional as TF

    photo = photos["rocket"]
    seed = tf.constant([11, 2])
    top, left, h, w = (
        int(v) for v in _tf_random_resized_crop_box(*photo.shape[:2], (0.3, 1.0), (0.75, 4 / 3), seed)
    )
    expected = TF.resized_crop(
        Image.fromarray(photo), top, left, h, w, [96, 96], interpolation=TF.InterpolationMode.BICUBIC
    )
    expected = preprocess_image(expected, 96)  # already 96 x 96: only converts and normalises
    got = tf_train_transform(tf.constant(photo), 96, scale=(0.3, 1.0), seed=seed).numpy()
    diff = np.abs(got - expected)
    assert diff.max() < TF_MAX_ABS_BOUND and diff.mean() < TF_MEAN_ABS_BOUND


def measure_pil_vs_open_clip(photos: dict[str, np.ndarray], sizes=(224, 336)) -> float:
    """Largest |preprocess_image - open_clip eval preprocess| over the photos and sizes."""
    import open_clip

    worst = 0.0
    for size in sizes:
        reference = open_clip.image_transform(size, is_train=False)
        for photo in photos.values():
            expected = reference(Image.fromarray(photo)).permute(1, 2, 0).numpy()
            worst = max(worst, float(np.abs(preprocess_image(photo, size) - expected).max()))
    return worst


def write_doc_table(rows: list[dict], pil_vs_open_clip: float) -> None:
    """Replace the text between the markers in docs/preprocessing.md with freshly measured figures."""
    import open_clip
    import tensorflow as tf
    from PIL import __version__ as pil_version

    lines = [
        f"PIL path against open_clip {open_clip.__version__}'s eval preprocess, same photos and sizes: "
        f"max abs {pil_vs_open_clip:.3g}.",
        "",
        f"Measured with tensorflow {tf.__version__}, Pillow {pil_version}; bounds asserted by the tests: "
        f"max abs < {TF_MAX_ABS_BOUND}, mean abs < {TF_MEAN_ABS_BOUND} (RGBA: mean abs < {TF_RGBA_MEAN_ABS_BOUND}).",
        "",
        "| photo | shape | size | max abs | mean abs |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['photo']} | {r['shape']} | {r['size']} | {r['max_abs']:.4f} | {r['mean_abs']:.5f} |"
        for r in rows
    ]
    opaque = [r for r in rows if not r["shape"].endswith("x4")]
    worst = max(r["max_abs"] for r in opaque)
    mean = float(np.mean([r["mean_abs"] for r in opaque]))
    lines += ["", f"Over the RGB and grayscale rows: worst max abs {worst:.4f}, average mean abs {mean:.5f}."]
    begin, end = "<!-- measured:begin -->", "<!-- measured:end -->"
    text = DOC.read_text()
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    DOC.write_text(head + begin + "\n" + "\n".join(lines) + "\n" + end + tail)


if __name__ == "__main__":
    photos = load_photos()
    write_doc_table(measure_tf_deviation(photos), measure_pil_vs_open_clip(photos))
    print(DOC.read_text())
