"""Evaluation inputs: padding and masks count every example once on any host count; TFDS (mocked),
image folders, the synthetic set's labels, and retrieval batches."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from clip_jax.data import dataset_info, make_eval_dataset, make_retrieval_dataset, testing
from clip_jax.data.padding import host_shard
from clip_jax.data.synthetic import ClipSynthetic
from clip_jax.tokenizer import tokenize


@pytest.fixture(scope="module")
def synthetic_dir() -> str:
    return testing.tiny_synthetic_data_dir()


def _collect(name, split, batch_size, process_count, **kwargs):
    """Run every simulated host; return (per-host batch counts, all real indices, all real labels)."""
    counts, indices, labels = [], [], []
    for index in range(process_count):
        ds = make_eval_dataset(
            name, split, batch_size=batch_size, process_index=index, process_count=process_count, **kwargs
        )
        batches = list(ds)
        counts.append(len(batches))
        assert len(batches) == ds.num_batches
        for b in batches:
            assert b["image"].shape == (
                batch_size // process_count,
                kwargs["image_size"],
                kwargs["image_size"],
                3,
            )
            assert b["image"].dtype == np.float32 and b["label"].dtype == np.int32 and b["mask"].dtype == bool
            # Padding rows are all-zero images with label -1 and index -1.
            assert np.all(b["label"][~b["mask"]] == -1) and np.all(b["index"][~b["mask"]] == -1)
            assert np.all(b["image"][~b["mask"]] == 0)
            indices += b["index"][b["mask"]].tolist()
            labels += b["label"][b["mask"]].tolist()
    return counts, indices, labels


def test_host_shard_covers_every_example_once():
    for n in range(0, 23):
        for process_count in (1, 2, 3, 4):
            for local in (1, 3, 5):
                shards = [
                    host_shard(n, local * process_count, i, process_count) for i in range(process_count)
                ]
                covered = sorted(x for s in shards for x in range(s.start, s.stop))
                assert covered == list(range(n))
                assert len({s.num_batches for s in shards}) == 1
                assert all(s.num_padding >= 0 for s in shards)
                # No host gets a whole batch of padding.
                assert max(s.stop - s.start for s in shards) > (shards[0].num_batches - 1) * local


@pytest.mark.parametrize("process_count, batch_size", [(1, 5), (2, 6), (3, 3), (3, 12)])
def test_synthetic_split_counted_once_on_any_host_count(synthetic_dir, process_count, batch_size):
    counts, indices, labels = _collect(
        "clip_synthetic/tiny",
        "test",
        batch_size,
        process_count,
        image_size=32,
        data_dir=synthetic_dir,
        label_key="color",
    )
    assert len(set(counts)) == 1
    assert sorted(indices) == list(range(32))
    # The labels are the split's own, in the order of its examples.
    builder = ClipSynthetic(config="tiny", data_dir=synthetic_dir)
    expected = [int(ex["color"]) for ex in builder.as_dataset(split="test", shuffle_files=False)]
    assert [label for _, label in sorted(zip(indices, labels, strict=True))] == expected


def test_synthetic_dataset_info(synthetic_dir):
    info = dataset_info("clip_synthetic/tiny", "heldout", data_dir=synthetic_dir, label_key="shape")
    assert info.num_classes == 8 and info.class_names[:3] == ("circle", "square", "triangle")
    assert info.num_examples == 32
    with pytest.raises(ValueError, match="ClassLabel"):
        dataset_info("clip_synthetic/tiny", data_dir=synthetic_dir, label_key="label")


def test_image_folder(tmp_path):
    testing.write_class_folder(str(tmp_path), "val", {"cat": 3, "dog": 2, "emu": 4})
    info = dataset_info(f"folder:{tmp_path}", "val")
    assert info.class_names == ("cat", "dog", "emu") and info.num_examples == 9
    counts, indices, labels = _collect(str(tmp_path), "val", 4, 2, image_size=16)
    assert sorted(indices) == list(range(9)) and counts == [3, 3]
    assert sorted(labels) == [0, 0, 0, 1, 1, 2, 2, 2, 2]


@pytest.mark.parametrize("name, split", [("imagenet2012", "validation"), ("imagenet_r", "test")])
def test_mock_tfds_imagenet_variants(name, split):
    with tfds.testing.mock_data(num_examples=7):
        info = dataset_info(name, split)
        counts, indices, labels = _collect(name, split, 4, 2, image_size=24)
    # ImageNet-R keeps its labels in the 1000-class ImageNet space, as TFDS stores them.
    assert info.num_classes == 1000 and info.num_examples == 7
    assert sorted(indices) == list(range(7)) and counts == [2, 2]
    assert all(0 <= label < 1000 for label in labels)


def test_retrieval_batches_align_images_with_their_captions(synthetic_dir):
    ds = make_retrieval_dataset(
        "clip_synthetic/tiny",
        "test",
        batch_size=12,
        image_size=32,
        context_length=20,
        data_dir=synthetic_dir,
        process_index=1,
        process_count=2,
    )
    assert ds.captions_per_image == 3 and ds.num_batches == 3
    builder = ClipSynthetic(config="tiny", data_dir=synthetic_dir)
    captions = [
        [c.decode() for c in ex["captions"]] for ex in tfds.as_numpy(builder.as_dataset(split="test"))
    ]
    seen = []
    for b in ds:
        assert b["text"].shape == (6, 3, 20) and b["text_mask"].shape == (6, 3)
        assert np.all(b["text_mask"] == b["mask"][:, None])
        for row in np.flatnonzero(b["mask"]):
            index = int(b["index"][row])
            np.testing.assert_array_equal(b["text"][row], tokenize(captions[index], 20))
            seen.append(index)
    assert seen == list(range(16, 32))
