"""SigLIP evaluated as its authors evaluate it (issue 28 items 3 and 4): big_vision's eval transform,
computed exactly and chosen by default, the other transforms on request, big_vision's zero-shot prompts
selected through the model's inputs, and the reproduction table's SigLIP rows."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from clip_jax.eval import metadata
from clip_jax.inputs import model_inputs
from clip_jax.models import get_model_config
from clip_jax.preprocess import (
    NAMED_TRANSFORMS,
    OPENAI_TRANSFORM,
    SIGLIP_BIG_VISION_TRANSFORM,
    SIGLIP_HF_PIL_TRANSFORM,
    SIGLIP_TRANSFORM,
    EvalTransform,
    named_transform,
    preprocess_encoded,
    preprocess_image,
)

ROOT = Path(__file__).resolve().parents[1]


def big_vision_pp(image: tf.Tensor, size: int) -> np.ndarray:
    """big_vision's `resize(size)|value_range(-1, 1)`, written out as big_vision/pp/ops_image.py get_resize
    and ops_general.py get_value_range compute it."""
    dtype = image.dtype
    x = tf.image.resize(image, (size, size), method="bilinear", antialias=False)
    x = tf.cast(tf.clip_by_value(x, dtype.min, dtype.max), dtype)
    x = tf.cast(x, tf.float32)
    x = (x - tf.constant(0, tf.float32)) / (tf.constant(255.0, tf.float32) - tf.constant(0, tf.float32))
    return (-1 + x * (1 - -1)).numpy()


def photos() -> dict[str, np.ndarray]:
    from skimage import data

    return {
        "astronaut": data.astronaut(),
        "chelsea_odd": data.chelsea(),
        "coffee_small": data.coffee()[::5, ::3].copy(),  # upsampled to 224
        "camera_gray": data.camera(),
    }


def encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.mark.parametrize("size", [224, 37])
def test_big_vision_transform_equals_big_vision_pp_ops(size):
    """The default SigLIP transform is big_vision's pp bit for bit: from arrays (PIL path), from encoded
    JPEG/PNG bytes decoded as big_vision's decode does (TF, default DCT), and inside tf.data."""
    from clip_jax.data.tf_ops import eval_image

    assert SIGLIP_TRANSFORM == SIGLIP_BIG_VISION_TRANSFORM == named_transform("siglip-bigvision")
    for name, array in photos().items():
        rgb = array if array.ndim == 3 else np.repeat(array[..., None], 3, axis=-1)
        want = big_vision_pp(tf.constant(rgb), size)
        np.testing.assert_array_equal(preprocess_image(array, size, SIGLIP_TRANSFORM), want, err_msg=name)
        for fmt in ("JPEG", "PNG"):
            data = encode(array, fmt)
            decoded = tf.io.decode_image(data, channels=3, expand_animations=False)  # big_vision's decode
            want = big_vision_pp(decoded, size)
            np.testing.assert_array_equal(
                preprocess_encoded(data, size, SIGLIP_TRANSFORM), want, err_msg=name
            )
            for preprocess in ("pil", "tf"):  # the tf.data path runs big_vision's ops whatever it is asked
                got = eval_image(tf.constant(data), size, preprocess, SIGLIP_TRANSFORM).numpy()
                np.testing.assert_array_equal(got, want, err_msg=f"{name} {fmt} {preprocess}")


def test_big_vision_transform_drops_alpha_and_differs_from_hf_pil():
    """RGBA is read as big_vision's decode(channels=3) reads it (alpha dropped, not composited); HF's PIL
    transform is a different resize (antialiased bicubic), measurably apart on a photograph."""
    from skimage import data

    rgba = np.concatenate([data.astronaut(), np.full((512, 512, 1), 7, np.uint8)], axis=-1)
    want = big_vision_pp(tf.constant(rgba[..., :3]), 64)
    np.testing.assert_array_equal(preprocess_image(rgba, 64, SIGLIP_TRANSFORM), want)
    np.testing.assert_array_equal(preprocess_encoded(encode(rgba, "PNG"), 64, SIGLIP_TRANSFORM), want)
    hf_pil = preprocess_image(data.astronaut(), 224, SIGLIP_HF_PIL_TRANSFORM)
    bv = preprocess_image(data.astronaut(), 224, SIGLIP_TRANSFORM)
    assert 0.001 < np.abs(hf_pil - bv).mean() < 0.05


def test_transform_choices_and_their_errors():
    """Each named transform is an EvalTransform; the model's own is the default (OpenAI's for CLIP,
    big_vision's for SigLIP); --transform replaces it; an unknown name or a crop with the TF library is
    refused naming the value."""
    from clip_jax.eval import cli
    from clip_jax.eval.results import preprocess_note

    assert set(NAMED_TRANSFORMS) == {"openai", "siglip-bigvision", "siglip-hf-pil"}
    assert model_inputs(get_model_config("tiny-siglip")).transform == SIGLIP_BIG_VISION_TRANSFORM
    assert model_inputs(get_model_config("tiny")).transform == OPENAI_TRANSFORM
    with pytest.raises(ValueError, match="unknown transform 'bicubic'; choose from openai, siglip-bigvision"):
        named_transform("bicubic")
    with pytest.raises(ValueError, match="library='tf' resizes to the square only"):
        EvalTransform(library="tf")
    parser = argparse.ArgumentParser()
    cli.add_common_args(parser)
    inputs = model_inputs(get_model_config("tiny-siglip"))
    for name, transform in NAMED_TRANSFORMS.items():
        args = parser.parse_args(["--transform", name])
        assert cli.chosen_inputs(args, inputs) == dataclasses.replace(inputs, transform=transform)
    assert cli.chosen_inputs(parser.parse_args([]), inputs) == inputs
    with pytest.raises(SystemExit):
        parser.parse_args(["--transform", "siglip-hf-torchvision"])
    # Records say the big_vision transform ran TF's ops, exactly, whatever --preprocess asked for.
    note = preprocess_note("pil", SIGLIP_TRANSFORM)
    assert note["name"] == "tf" and note["exact"] and note["transform"]["library"] == "tf"
    assert preprocess_note("tf", SIGLIP_HF_PIL_TRANSFORM)["exact"] is False


def test_big_vision_prompts():
    """big_vision's zero-shot prompts: its 81 'clip_paper' templates (OpenAI's 80, then '{}') and CLIP's
    class names, canonicalised as its prompt_engineering.canonicalize_text does."""
    classnames, templates = metadata.classnames_and_templates("imagenet1k", prompts="big_vision")
    openai_names, openai_templates = metadata.classnames_and_templates("imagenet1k")
    assert len(templates) == 81 and templates[-1] == "{}" and len(classnames) == 1000
    assert templates[:80] == [metadata.canonicalize_text(t, keep="{}") for t in openai_templates]
    assert "a closeup photo of a {}" in templates and "a bad photo of a {}" in templates
    assert all(t == t.lower() and "." not in t and t.count("{}") == 1 for t in templates)
    assert openai_names[21] == "kite (bird of prey)" and classnames[21] == "kite bird of prey"
    assert (
        metadata.canonicalize_text("Great_White  Shark, the fish!", keep=",") == "great white shark, the fish"
    )
    assert metadata.big_vision_classnames(["a, b"]) == ["a"]
    for name in ("imagenetv2", "imagenet-r", "cifar10"):  # big_vision's evaluator default for every dataset
        assert metadata.classnames_and_templates(name, prompts="big_vision")[1] == templates
    with pytest.raises(ValueError, match="prompt style 'clip'"):
        metadata.classnames_and_templates("imagenet1k", prompts="clip")


def test_zeroshot_takes_the_models_prompts():
    """The zero-shot evaluator asks the model's inputs for its prompt style: a SigLIP gets big_vision's
    canonicalised prompts, a CLIP OpenAI's as written; the evaluator knows no family."""
    from clip_jax.data import testing
    from clip_jax.eval.zeroshot import ZeroShot
    from clip_jax.models import CLIP

    config = {
        "dataset": "clip_synthetic/tiny",
        "data_dir": testing.tiny_synthetic_data_dir(),
        "task": "shape",
    }
    names, templates = metadata.classnames_and_templates("clip_synthetic", "shape")
    assert any(t != t.lower() or "." in t for t in templates + names)  # canonicalising changes something
    ids = lambda texts: np.zeros((len(texts), 64), np.int32)  # noqa: E731
    siglip = get_model_config("tiny-siglip")
    inputs = dataclasses.replace(model_inputs(siglip), tokenizer=ids)
    assert inputs.prompts == "big_vision"
    evaluator = ZeroShot(config, CLIP(siglip), inputs=inputs)
    assert evaluator.templates == [metadata.canonicalize_text(t, keep="{}") for t in templates]
    assert evaluator.classnames == metadata.big_vision_classnames(names)
    clip = ZeroShot(config, CLIP(get_model_config("tiny")))
    assert (clip.classnames, clip.templates) == (names, templates)


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reproduction_table_renders_siglip_rows():
    """The published table holds SigLIP B/16, L/16, So400m/14 and SigLIP 2 rows under their named
    configs, each with its source; fake records of those models render with the published ImageNet
    number beside ours (SigLIP 2 from big_vision's README_siglip2.md), an empty cell where none was read."""
    tables = load_script("make_tables")
    published = json.loads(metadata.PUBLISHED_NUMBERS.read_text())
    models = published["models"]
    siglip = {e["open_clip_name"]: e for e in models.values() if "SigLIP" in e["open_clip_name"]}
    for name in ("ViT-B-16-SigLIP", "ViT-L-16-SigLIP-256", "ViT-SO400M-14-SigLIP", "ViT-B-16-SigLIP2"):
        assert name in siglip and siglip[name]["source"], name
        get_model_config(name)  # every row is a named config
    assert all(get_model_config(name) for name in siglip)
    records = [
        {
            "dataset": "imagenet1k",
            "model": m,
            "pretrained": p,
            "task": "zeroshot_classification",
            "metrics": {"acc1": a},
        }
        for m, p, a in [
            ("ViT-B-16-SigLIP2", "siglip2-base-patch16-224", 0.5),
            ("ViT-SO400M-14-SigLIP2", "siglip2_so400m14_224.npz", 0.25),
            ("ViT-B-16-SigLIP", "siglip-base-patch16-224", 0.125),
            ("ViT-B-32-quickgelu", "openai", 0.625),
        ]
    ]
    rows = tables.table_rows(records, published)
    paper = {r["model"]: r["paper"] for r in rows if r["metric"] == "acc1"}
    assert paper["ViT-B-16-SigLIP2"] == 78.2 and paper["ViT-SO400M-14-SigLIP2"] == 83.2
    assert paper["ViT-B-32-quickgelu"] == 63.2
    assert paper["ViT-B-16-SigLIP"] == siglip["ViT-B-16-SigLIP"]["zeroshot"]["imagenet1k"]
    md = tables.to_markdown(rows)
    assert "| ViT-B-16-SigLIP2 | siglip2-base-patch16-224 | 50.0 (78.2) |" in md
    assert "| ViT-SO400M-14-SigLIP2 | siglip2_so400m14_224.npz | 25.0 (83.2) |" in md
