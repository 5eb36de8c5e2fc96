"""The embedded synthetic dataset: determinism, rendering, captions vs prompts, splits, docs."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from clip_jax.data import synthetic, testing
from clip_jax.data import synthetic_scenes as scenes

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "synthetic_dataset.md")


@pytest.fixture(scope="module")
def tiny() -> tfds.core.DatasetBuilder:
    return synthetic.ClipSynthetic(config="tiny", data_dir=testing.tiny_synthetic_data_dir())


def _split(builder, name):
    return list(tfds.as_numpy(builder.as_dataset(split=name, shuffle_files=False)))


def test_examples_are_deterministic_and_distinct():
    a = synthetic.generate_example("train", 5, 32)
    assert a == synthetic.generate_example("train", 5, 32)
    assert a["image"] != synthetic.generate_example("train", 6, 32)["image"]
    assert a["image"] != synthetic.generate_example("test", 5, 32)["image"]
    assert a["image"] != synthetic.generate_example("train", 5, 32, seed=1)["image"]


def test_rendering_puts_the_object_where_and_as_the_scene_says():
    scene = scenes.Scene("circle", "red", "large", "center", "solid", "dark")
    image = scenes.render_scene(scene, 64, np.random.default_rng(0))
    centre, corner = image[32, 32].astype(int), image[2, 2].astype(int)
    assert centre[0] > 150 and centre[1] < 100 and centre[2] < 100  # red object
    assert corner.max() < 110  # dark background
    # The sketch style draws only the outline: the centre of the same circle shows the white background.
    sketch = scenes.render_scene(
        scenes.Scene("circle", "red", "large", "center", "outline", "white"),
        64,
        np.random.default_rng(0),
        "sketch",
    )
    assert sketch[32, 32].min() > 220
    assert (np.abs(sketch.astype(int) - [220, 40, 40]).sum(axis=-1) < 120).any()


def test_prompts_never_occur_in_training_captions():
    rng = np.random.default_rng(0)
    captions = []
    for _ in range(3000):
        scene = scenes.sample_scene(rng, "standard", scenes.seen_pairs())
        captions += [c.lower() for c in scenes.make_captions(scene, rng, synthetic.CAPTIONS_PER_IMAGE)]
    text = "\n".join(captions)
    assert all(word not in text for word in scenes.PROMPT_ONLY_WORDS)
    for classes, templates in synthetic.zeroshot_tasks().values():
        for template in templates:
            for name in classes:
                assert template.format(name).lower().rstrip(".") not in text
    # Captions name the labelled attributes, so the tasks are learnable from them.
    assert all(
        any(s in c for s in scenes.SHAPES) and any(k in c for k in scenes.COLOR_NAMES) for c in captions
    )


def test_heldout_pairs_are_unseen_but_their_attributes_are_seen():
    held, seen = set(scenes.heldout_pairs()), set(scenes.seen_pairs())
    assert held and not held & seen
    assert {s for s, _ in seen} == set(scenes.SHAPES) and {c for _, c in seen} == set(scenes.COLOR_NAMES)


def test_tiny_build_has_every_split_with_its_documented_size(tiny):
    config = tiny.builder_config
    assert {name: split.num_examples for name, split in tiny.info.splits.items()} == config.split_sizes
    shapes, colors, textures, backgrounds = (
        tiny.info.features[k].names for k in ("shape", "color", "texture", "background")
    )
    heldout = set(scenes.heldout_pairs())
    for name in ("train", "heldout", "sketch", "new_texture", "new_background"):
        examples = _split(tiny, name)
        pairs = {(shapes[e["shape"]], colors[e["color"]]) for e in examples}
        assert (pairs <= heldout) if name == "heldout" else not (pairs & heldout)
        assert examples[0]["image"].shape == (config.image_size, config.image_size, 3)
        assert len(examples[0]["captions"]) == synthetic.CAPTIONS_PER_IMAGE
        used_textures = {textures[e["texture"]] for e in examples}
        used_backgrounds = {backgrounds[e["background"]] for e in examples}
        if name == "new_texture":
            assert used_textures <= set(scenes.SHIFT_TEXTURES)
        elif name == "new_background":
            assert used_backgrounds <= set(scenes.SHIFT_BACKGROUNDS)
        elif name == "sketch":
            assert used_textures == {scenes.SKETCH_TEXTURE} and used_backgrounds == {scenes.SKETCH_BACKGROUND}
        else:
            assert used_textures <= set(scenes.TRAIN_TEXTURES)
            assert used_backgrounds <= set(scenes.TRAIN_BACKGROUNDS)


def test_docs_are_generated_from_the_builder():
    with open(DOCS) as f:
        assert f.read() == synthetic.describe_markdown(), (
            "regenerate: python -m clip_jax.data.synthetic --write_docs docs/synthetic_dataset.md"
        )
