"""Image preprocessing for CLIP: the eval transforms (PIL) and tf.data eval/train transforms.

Outputs are float32 HWC arrays (channels last), as the Flax vision tower takes them. Which eval transform
a model needs is a property of its weights (`EvalTransform`): OpenAI's (resize the shortest side, centre
crop, OpenAI's mean/std) for CLIP models, SigLIP's (a plain resize to the square, values in [-1, 1]) for
SigLIP's; `clip_jax.inputs.model_inputs` picks it from the config's family. SigLIP's published numbers
were made with big_vision's pp ops (`decode|resize(S)|value_range(-1, 1)`: TF's bilinear resize without
antialiasing), which `SIGLIP_TRANSFORM` computes exactly; HF's PIL backend (bicubic) is the other SigLIP
transform of `NAMED_TRANSFORMS`; docs/preprocessing.md measures them and HF's torchvision backend.

The PIL path reproduces OpenAI's / open_clip's eval preprocess bit for bit: the same PIL calls in the same
order (resize the shortest side with PIL bicubic, center crop, convert to RGB, scale to [0, 1], normalise).
Like the reference it converts to RGB *after* resizing, so RGBA images are resized with PIL's
premultiplied alpha and palette images with nearest neighbour, exactly as the pretrained models saw them.

The tf.data path imports tensorflow inside the functions only, so model code that imports this module never
pulls tensorflow in. tf.image's antialiased bicubic differs slightly from PIL's fixed-point bicubic; the
measured gap is in docs/preprocessing.md, and its bounds (asserted by the tests) in `TF_EVAL_GAP`. The
evaluation pipelines use the PIL path by default (`preprocess_encoded` inside tf.data), so their batches
equal open_clip's; the tf.data transform is their opt-in fast path.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:
    import tensorflow as tf

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

ImageLike = Image.Image | np.ndarray | str | os.PathLike

# |tf eval path - open_clip's preprocess| after normalisation, bounded over RGB and grayscale photos at 224
# and 336 (the tests assert these bounds; docs/preprocessing.md has the measured table). Palette and RGBA
# files differ more: PIL resizes them in their own mode, tf.image after converting to RGB.
TF_EVAL_GAP = {
    "max_abs": 0.15,
    "mean_abs": 0.005,
    "applies_to": "RGB and grayscale photos; palette (P) and RGBA files differ by up to ~3.7",
    "source": "docs/preprocessing.md",
}


RESIZE_MODES = ("shortest_side", "square")
# Which library resizes: PIL (OpenAI's and open_clip's preprocess, HF's PIL backend) or TF as big_vision's pp
# ops do it. HF's default (torchvision) backend is measured (docs/preprocessing.md), not offered: torch
# imported after tensorflow, as an evaluation would, crashes the process on this stack.
LIBRARIES = ("pil", "tf")
# PIL filters by name, and the numbers HF's preprocessor_config.json gives them (PILImageResampling).
_PIL_FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}
_HF_RESAMPLE = {2: "bilinear", 3: "bicubic"}


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """A model's eval image transform: what its weights were trained to see.

    resize: "shortest_side" (the shortest side to S, then the centre S x S: OpenAI's, open_clip's) or
    "square" (the whole image to S x S, the aspect ratio not kept: SigLIP's, HF's SiglipImageProcessor);
    resample: the filter, "bicubic" or "bilinear"; rgb_first: convert to RGB before resizing,
    transparency composited onto white, as HF's image processors do (False: after resizing, as OpenAI's
    preprocess does, which resizes RGBA premultiplied); mean, std: per channel, of pixels in [0, 1];
    library: "pil" (PIL's antialiased filters) or "tf" (big_vision's `decode|resize(S)|value_range`: TF's
    decoder, which drops alpha, and `tf.image.resize(method=resample, antialias=False)` clipped and cast
    to uint8, which truncates). "tf" resizes to the square only.
    """

    resize: str = "shortest_side"
    resample: str = "bicubic"
    rgb_first: bool = False
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    library: str = "pil"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize={self.resize!r}; choose from {RESIZE_MODES}")
        if self.library not in LIBRARIES:
            raise ValueError(f"library={self.library!r}; choose from {LIBRARIES}")
        if self.library != "pil" and self.resize != "square":
            raise ValueError(
                f"library={self.library!r} resizes to the square only, not resize={self.resize!r}"
            )
        if self.resample not in _PIL_FILTERS:
            raise ValueError(f"resample={self.resample!r}; choose from {tuple(_PIL_FILTERS)}")
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"{name} needs one value per RGB channel, got {value}")
            object.__setattr__(self, name, value)
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")

    @classmethod
    def from_hf(cls, config: Mapping[str, Any], image_size: int, where: str) -> EvalTransform:
        """The transform of a HF SigLIP `preprocessor_config.json` (its dict), for a model of `image_size`.

        Options it cannot follow (a centre crop, a size other than the model's, a rescale other than
        1/255, no RGB conversion, another filter) raise a ValueError naming `where` and the option.
        """

        def bad(option: str, why: str) -> ValueError:
            return ValueError(f"{where}: {option}={config.get(option)!r} {why}")

        if config.get("do_center_crop"):
            raise bad("do_center_crop", "is not supported: SigLIP's transform resizes the whole image")
        if not config.get("do_resize", True):
            raise bad("do_resize", "is not supported: the model needs its own image size")
        size = config.get("size", {"height": image_size, "width": image_size})
        if not isinstance(size, Mapping) or (size.get("height"), size.get("width")) != (image_size,) * 2:
            raise bad("size", f"is not the model's {{'height': {image_size}, 'width': {image_size}}}")
        if config.get("do_rescale", True) is False or config.get("rescale_factor", 1 / 255) != 1 / 255:
            raise bad("rescale_factor", "is not supported: pixels are scaled by 1/255")
        if config.get("do_convert_rgb") is False:
            raise bad("do_convert_rgb", "is not supported: the model reads RGB")
        resample = config.get("resample", 3)  # SiglipImageProcessor's default, BICUBIC
        if resample not in _HF_RESAMPLE:
            raise bad("resample", f"is not supported: choose from {_HF_RESAMPLE} (PILImageResampling)")
        normalize = config.get("do_normalize", True)
        return cls(
            resize="square",
            resample=_HF_RESAMPLE[resample],
            rgb_first=True,
            mean=tuple(config.get("image_mean", (0.5,) * 3)) if normalize else (0.0,) * 3,
            std=tuple(config.get("image_std", (0.5,) * 3)) if normalize else (1.0,) * 3,
        )


OPENAI_TRANSFORM = EvalTransform()
_HALF = (0.5, 0.5, 0.5)
# SigLIP's as big_vision evaluates it: `resize(S)|value_range(-1, 1)` is the default pp_img of its
# zero-shot evaluator (evaluators/proj/image_text/discriminative_classifier.py) and of the SigLIP demo
# colabs; get_resize's defaults are method="bilinear", antialias=False (big_vision/pp/ops_image.py).
SIGLIP_BIG_VISION_TRANSFORM = EvalTransform("square", "bilinear", False, _HALF, _HALF, library="tf")
# HF's approximation of it in SiglipImageProcessorPil (PIL bicubic; its SiglipImageProcessor, in
# transformers 5 the torchvision backend, resizes with torch's antialiased bicubic instead).
SIGLIP_HF_PIL_TRANSFORM = EvalTransform("square", "bicubic", True, _HALF, _HALF)
# The SigLIP family's default: the transform its published numbers were made with.
SIGLIP_TRANSFORM = SIGLIP_BIG_VISION_TRANSFORM
# The transforms a user may name (--transform); the model's own is the default.
NAMED_TRANSFORMS = {
    "openai": OPENAI_TRANSFORM,
    "siglip-bigvision": SIGLIP_BIG_VISION_TRANSFORM,
    "siglip-hf-pil": SIGLIP_HF_PIL_TRANSFORM,
}
HF_PREPROCESSOR_CONFIG = "preprocessor_config.json"


def named_transform(name: str) -> EvalTransform:
    """The transform called `name` in `NAMED_TRANSFORMS`; a ValueError listing them otherwise."""
    if name not in NAMED_TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; choose from {', '.join(NAMED_TRANSFORMS)}")
    return NAMED_TRANSFORMS[name]


def transform_name(transform: EvalTransform) -> str | None:
    """The name of `transform` in `NAMED_TRANSFORMS`, or None for another (e.g. a preprocessor_config's)."""
    return next((name for name, t in NAMED_TRANSFORMS.items() if t == transform), None)


def read_hf_transform(directory: str | os.PathLike, image_size: int) -> EvalTransform | None:
    """The `EvalTransform` of a HF model directory's preprocessor_config.json, or None without one."""
    path = os.path.join(directory, HF_PREPROCESSOR_CONFIG)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return EvalTransform.from_hf(json.load(f), image_size, path)


# --------------------------------------------------------------------------------------------------------------
# PIL / numpy path
# --------------------------------------------------------------------------------------------------------------


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file, so that a corrupt file fails here and names itself."""
    try:
        with Image.open(path) as image:
            image.load()
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        # PIL reports truncated/corrupt data as OSError or SyntaxError without the file name.
        raise ValueError(f"cannot decode image file {os.fspath(path)!r}: {e}") from e
    return image


def _to_pil(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            # Float arrays are ambiguous ([0, 1] or [0, 255]); make the caller say which.
            raise TypeError(f"numpy images must be uint8 HxW or HxWxC, got dtype {image.dtype}")
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
            raise ValueError(f"numpy images must be HxW, HxWx1, HxWx3 or HxWx4, got shape {image.shape}")
        return Image.fromarray(image)
    raise TypeError(f"expected a PIL image, a uint8 numpy array or a path, got {type(image).__name__}")


def _resized_shortest_side(height: int, width: int, size: int) -> tuple[int, int]:
    """(new_h, new_w) with the shortest side at `size`; the long side is truncated, as torchvision does."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


def _center_crop_offset(length: int, size: int) -> int:
    # torchvision rounds half-way offsets with Python's round (half to even), not floor.
    return int(round((length - size) / 2.0))


def _rgb_on_white(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white (how HF's image processors convert)."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def preprocess_image(
    image: ImageLike, image_size: int = 224, transform: EvalTransform = OPENAI_TRANSFORM
) -> np.ndarray:
    """A model's eval transform (OpenAI CLIP's by default): float32 [S, S, 3], normalised."""
    pil = _to_pil(image)
    if transform.library == "tf":
        # What big_vision's decode(channels=3) gives: RGB, alpha dropped (not composited).
        rgb = np.asarray(pil.convert("RGB"), dtype=np.uint8)
        return np.asarray(_tf_square_resize_to_normalized(rgb, image_size, transform))
    resample = _PIL_FILTERS[transform.resample]
    if transform.rgb_first:
        pil = _rgb_on_white(pil)
    if transform.resize == "square":
        pil = pil.resize((image_size, image_size), resample)
    else:
        new_h, new_w = _resized_shortest_side(pil.height, pil.width, image_size)
        # PIL's bicubic always antialiases when downsampling; torchvision's Resize passes PIL images through.
        pil = pil.resize((new_w, new_h), resample)
        top = _center_crop_offset(new_h, image_size)
        left = _center_crop_offset(new_w, image_size)
        pil = pil.crop((left, top, left + image_size, top + image_size))
    if pil.mode != "RGB":
        pil = pil.convert("RGB")
    # x / 255 in float32 equals HF's float64 x * (1/255) rounded to float32 for every uint8 x.
    pixels = np.asarray(pil, dtype=np.float32) / np.float32(255.0)
    return (pixels - np.asarray(transform.mean, np.float32)) / np.asarray(transform.std, np.float32)


def preprocess_encoded(
    data: bytes, image_size: int = 224, transform: EvalTransform = OPENAI_TRANSFORM
) -> np.ndarray:
    """`preprocess_image` of encoded image bytes (JPEG, PNG, ... in any PIL mode), decoded by PIL as
    open_clip's loaders decode files: what the exact evaluation pipelines run inside tf.data."""
    import io

    if transform.library == "tf":  # big_vision decodes with TF (its default JPEG DCT), not PIL
        import tensorflow as tf

        try:
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
        except (tf.errors.InvalidArgumentError, ValueError) as e:
            raise ValueError(f"cannot decode image ({len(data)} bytes): {e.__class__.__name__}") from e
        return np.asarray(_tf_square_resize_to_normalized(image, image_size, transform))
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot decode image ({len(data)} bytes): {e}") from e
    return preprocess_image(image, image_size, transform)


def preprocess_batch(
    images: Sequence[ImageLike], image_size: int = 224, transform: EvalTransform = OPENAI_TRANSFORM
) -> np.ndarray:
    """`preprocess_image` over a sequence, stacked into float32 [N, S, S, 3]."""
    if len(images) == 0:
        return np.zeros((0, image_size, image_size, 3), np.float32)
    return np.stack([preprocess_image(image, image_size, transform) for image in images])


# --------------------------------------------------------------------------------------------------------------
# tf.data path (tensorflow imported lazily)
# --------------------------------------------------------------------------------------------------------------


def _tf_check_channels(image: Any) -> tf.Tensor:
    """uint8 [H, W, C] with C in {1, 3, 4} (statically known) -> uint8 [H, W, 3 or 4]."""
    import tensorflow as tf

    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        raise TypeError(f"expected a uint8 image tensor, got {image.dtype}")
    channels = image.shape[-1]
    if channels == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif channels not in (3, 4):
        raise ValueError(f"expected an image with 1, 3 or 4 (static) channels, got shape {image.shape}")
    return image


def _tf_resize_to_normalized(
    image: tf.Tensor, height: Any, width: Any, transform: EvalTransform = OPENAI_TRANSFORM
) -> tf.Tensor:
    """Antialiased resize (the transform's filter), then PIL's uint8 rounding/clamping, then [0, 1] and
    the transform's mean/std.

    RGBA is resized premultiplied and the alpha dropped afterwards, as PIL (hence OpenAI's reference) does
    it: fully transparent regions come out black; with `rgb_first` it is composited onto white first.
    """
    import tensorflow as tf

    def resize(x: tf.Tensor) -> tf.Tensor:
        x = tf.image.resize(x, tf.stack([height, width]), method=transform.resample, antialias=True)
        # PIL returns uint8: clamp the bicubic overshoot (and round, below), which brings tf closer to PIL.
        return tf.clip_by_value(x, 0.0, 255.0)

    if image.shape[-1] == 4 and transform.rgb_first:
        pixels = tf.cast(image, tf.float32)
        alpha = pixels[..., 3:] / 255.0
        image = tf.round(pixels[..., :3] * alpha + 255.0 * (1.0 - alpha))
    if image.shape[-1] == 4:
        # PIL's 8-bit "RGBa" round trip: premultiply with rounding, resize, unpremultiply with floor
        # division (left as is at alpha 0 and 255). At low alpha this quantisation dominates the result.
        pixels = tf.cast(image, tf.float32)
        alpha = pixels[..., 3:]
        premultiplied = tf.concat([tf.round(pixels[..., :3] * alpha / 255.0), alpha], axis=-1)
        resized = tf.round(resize(premultiplied))
        rgb, alpha = resized[..., :3], resized[..., 3:]
        keep = (alpha == 0.0) | (alpha == 255.0)
        rgb = tf.where(keep, rgb, tf.minimum(tf.floor(255.0 * rgb / tf.maximum(alpha, 1.0)), 255.0))
    else:
        rgb = resize(image)
    pixels = tf.round(rgb) / 255.0
    return (pixels - tf.constant(transform.mean, tf.float32)) / tf.constant(transform.std, tf.float32)


def _tf_square_resize_to_normalized(image: Any, image_size: int, transform: EvalTransform) -> tf.Tensor:
    """big_vision's `resize(S)|value_range(...)` of a uint8 [H, W, 3] image, op for op: tf.image.resize
    (the transform's method, antialias=False: get_resize's default), clipped to uint8's range and cast,
    which truncates, then x / 255 and the mean/std. value_range(-1, 1) computes -1 + 2 (x / 255) in
    float32; (x / 255 - 0.5) / 0.5 is the same float: halving is exact, so both round 2 (x / 255) - 1 once.
    """
    import tensorflow as tf

    resized = tf.image.resize(image, [image_size, image_size], method=transform.resample, antialias=False)
    pixels = tf.cast(tf.cast(tf.clip_by_value(resized, 0.0, 255.0), tf.uint8), tf.float32) / 255.0
    out = (pixels - tf.constant(transform.mean, tf.float32)) / tf.constant(transform.std, tf.float32)
    out.set_shape([image_size, image_size, 3])
    return out


def tf_eval_transform(image: Any, image_size: int, transform: EvalTransform = OPENAI_TRANSFORM) -> tf.Tensor:
    """tf.data version of `preprocess_image`: uint8 [H, W, 3] (or 1 or 4 channels) -> float32 [S, S, 3].

    A "tf" transform (big_vision's) is computed exactly, alpha dropped as its decode(channels=3) does.
    A "pil" one keeps the PIL path's geometry (truncated long side, half-to-even crop offsets); the
    resize is tf.image's antialiased filter, close to, but not bit-equal with, PIL's.
    """
    import tensorflow as tf

    image = _tf_check_channels(image)
    if transform.library == "tf":
        return _tf_square_resize_to_normalized(image[..., :3], image_size, transform)
    if transform.resize == "square":
        out = _tf_resize_to_normalized(image, image_size, image_size, transform)
        out.set_shape([image_size, image_size, 3])
        return out
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    short = tf.minimum(height, width)
    long = tf.maximum(height, width)
    # int(size * long / short) in float64, as torchvision computes it in Python.
    new_long = tf.cast(
        tf.floor(tf.cast(image_size * long, tf.float64) / tf.cast(short, tf.float64)), tf.int32
    )
    portrait = width <= height
    new_h = tf.where(portrait, new_long, image_size)
    new_w = tf.where(portrait, image_size, new_long)
    # Crop before normalising but after resizing, as the reference does; tf.round is half to even.
    normalized = _tf_resize_to_normalized(image, new_h, new_w, transform)
    top = tf.cast(tf.round(tf.cast(new_h - image_size, tf.float64) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - image_size, tf.float64) / 2.0), tf.int32)
    cropped = normalized[top : top + image_size, left : left + image_size]
    cropped.set_shape([image_size, image_size, 3])
    return cropped


def _tf_random_resized_crop_box(
    height: tf.Tensor,
    width: tf.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    seed: Any | None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """(top, left, crop_h, crop_w) drawn as torchvision's RandomResizedCrop.get_params draws them.

    The ten attempts are drawn at once and the first valid one is taken; if none fits, the fallback is
    torchvision's central crop with the aspect ratio clamped to `ratio`.
    """
    import tensorflow as tf

    attempts = 10
    if seed is None:
        u = tf.random.uniform([attempts, 4], dtype=tf.float64)
    else:
        u = tf.random.stateless_uniform([attempts, 4], seed=seed, dtype=tf.float64)
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    target_area = h * w * (scale[0] + (scale[1] - scale[0]) * u[:, 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    crop_w = tf.round(tf.sqrt(target_area * aspect))
    crop_h = tf.round(tf.sqrt(target_area / aspect))
    valid = (crop_w > 0) & (crop_w <= w) & (crop_h > 0) & (crop_h <= h)
    first = tf.argmax(tf.cast(valid, tf.int32), output_type=tf.int32)
    # Offsets uniform over the integers [0, size - crop]; min() guards u == 1 - eps rounding up.
    top = tf.minimum(tf.floor(u[first, 2] * (h - crop_h[first] + 1)), h - crop_h[first])
    left = tf.minimum(tf.floor(u[first, 3] * (w - crop_w[first] + 1)), w - crop_w[first])

    in_ratio = w / h
    lo_ratio, hi_ratio = min(ratio), max(ratio)
    fb_w = tf.where(in_ratio > hi_ratio, tf.round(h * hi_ratio), w)
    fb_h = tf.where(in_ratio < lo_ratio, tf.round(w / lo_ratio), h)
    fb_top = tf.floor((h - fb_h) / 2)
    fb_left = tf.floor((w - fb_w) / 2)

    any_valid = tf.reduce_any(valid)
    box = [
        tf.where(any_valid, top, fb_top),
        tf.where(any_valid, left, fb_left),
        tf.where(any_valid, crop_h[first], fb_h),
        tf.where(any_valid, crop_w[first], fb_w),
    ]
    return tuple(tf.cast(v, tf.int32) for v in box)


def tf_train_transform(
    image: Any,
    image_size: int,
    scale: tuple[float, float] = (0.9, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    seed: Any | None = None,
) -> tf.Tensor:
    """open_clip's train transform for tf.data: RandomResizedCrop (bicubic) then mean/std normalisation.

    `seed` is a shape-[2] integer tensor for stateless sampling (the same seed gives the same crop, so a
    pipeline can be made deterministic, e.g. by zipping with `tf.data.Dataset.random(seed).batch(2)`);
    None uses TF's global stateful RNG.
    """
    import tensorflow as tf

    image = _tf_check_channels(image)
    shape = tf.shape(image)
    top, left, crop_h, crop_w = _tf_random_resized_crop_box(shape[0], shape[1], scale, ratio, seed)
    cropped = image[top : top + crop_h, left : left + crop_w]
    out = _tf_resize_to_normalized(cropped, image_size, image_size)
    out.set_shape([image_size, image_size, 3])
    return out
