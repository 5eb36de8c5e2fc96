"""Training input: shapes and ranges, determinism, exact resume, per-host shards, corrupt records, sources."""

from __future__ import annotations

import json
import logging
import os
import threading

import numpy as np
import pytest

from clip_jax.data import make_train_iterator, testing
from clip_jax.data.iterator import TrainIterator
from clip_jax.preprocess import OPENAI_MEAN, OPENAI_STD
from clip_jax.tokenizer import EOT_TOKEN, SOT_TOKEN, tokenize

CONTEXT = 8


def _caption_ids(text: np.ndarray, num_examples: int) -> list[int]:
    """Map token rows back to i of "caption {i}" (the test shards' captions)."""
    table = {
        tuple(row): i
        for i, row in enumerate(tokenize([f"caption {i}" for i in range(num_examples)], CONTEXT))
    }
    return [table[tuple(row)] for row in text]


def _take(iterator, n: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(n)]


@pytest.fixture(scope="module")
def synthetic_dir() -> str:
    return testing.tiny_synthetic_data_dir()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    directory = str(tmp_path_factory.mktemp("shards"))
    testing.write_caption_shards(directory, 24, 4)
    return directory


def _synthetic(synthetic_dir: str, seed: int = 0, batch: int = 16):
    config = {"source": "synthetic", "name": "tiny", "data_dir": synthetic_dir, "shuffle_buffer": 64}
    return make_train_iterator(
        config,
        global_batch_size=batch,
        image_size=32,
        context_length=CONTEXT,
        seed=seed,
        process_index=0,
        process_count=1,
    )


def _records(
    path: str, seed: int = 0, batch: int = 4, process_index: int = 0, process_count: int = 1, **extra
):
    config = {"source": "tfrecord", "path": path, "shuffle_buffer": 8, **extra}
    return make_train_iterator(
        config,
        global_batch_size=batch,
        image_size=24,
        context_length=CONTEXT,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
    )


def test_synthetic_batches_are_model_inputs_and_seeded(synthetic_dir):
    batch, same, other = (next(_synthetic(synthetic_dir, seed)) for seed in (0, 0, 1))
    assert set(batch) == {"image", "text"}
    assert batch["image"].shape == (16, 32, 32, 3) and batch["image"].dtype == np.float32
    assert batch["text"].shape == (16, CONTEXT) and batch["text"].dtype == np.int32
    # Normalised pixels lie between (0 - mean) / std and (1 - mean) / std, per channel.
    low = (0.0 - np.array(OPENAI_MEAN)) / np.array(OPENAI_STD)
    high = (1.0 - np.array(OPENAI_MEAN)) / np.array(OPENAI_STD)
    pixels = batch["image"].reshape(-1, 3)
    assert np.all(pixels >= low - 1e-5) and np.all(pixels <= high + 1e-5)
    assert pixels.std() > 0.3  # actual images, not padding
    assert np.all(batch["text"][:, 0] == SOT_TOKEN)
    assert np.all((batch["text"] == EOT_TOKEN).sum(axis=1) == 1)
    # The same seed gives the same batch (order, crops and caption choice); another seed does not.
    np.testing.assert_array_equal(batch["image"], same["image"])
    np.testing.assert_array_equal(batch["text"], same["text"])
    assert not np.array_equal(batch["image"], other["image"])


def test_resumed_iterator_continues_exactly(synthetic_dir):
    # 128 training examples in batches of 16: 8 batches per epoch, so the comparison crosses an epoch.
    original = _synthetic(synthetic_dir)
    _take(original, 6)
    state = json.loads(json.dumps(original.get_state()))
    expected = _take(original, 4)
    assert original.epoch == 1

    resumed = _synthetic(synthetic_dir)
    resumed.set_state(state)
    for want, got in zip(expected, _take(resumed, 4), strict=True):
        np.testing.assert_array_equal(want["image"], got["image"])
        np.testing.assert_array_equal(want["text"], got["text"])
    assert resumed.get_state() == original.get_state()


def test_next_epoch_is_opened_ahead_and_gives_the_same_batches(synthetic_dir, monkeypatch):
    # 8 batches per epoch: the next epoch's pipeline is opened (warm-started) well before each boundary.
    ahead = _synthetic(synthetic_dir)
    first = _take(ahead, 7)
    assert ahead._ahead is not None and ahead._ahead[0] == 1
    pulled = ahead._ahead[2]
    for _ in range(600):  # its own tf.data threads read ahead, without a next() on it
        if int(pulled.numpy()) > 0:
            break
        threading.Event().wait(0.05)
    assert int(pulled.numpy()) > 0
    got = first + _take(ahead, 17)
    assert ahead.epoch == 2  # the last batch of epoch 2: two boundaries crossed

    monkeypatch.setattr(TrainIterator, "_near_epoch_end", lambda self: False)
    plain = _synthetic(synthetic_dir)
    want = _take(plain, 24)
    assert plain._ahead is None
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(w["image"], g["image"])
        np.testing.assert_array_equal(w["text"], g["text"])
    assert ahead.get_state() == plain.get_state()


def test_state_from_another_configuration_is_refused(synthetic_dir):
    state = _synthetic(synthetic_dir, seed=0).get_state()
    with pytest.raises(ValueError, match="seed"):
        _synthetic(synthetic_dir, seed=1).set_state(state)
    _synthetic(synthetic_dir, seed=1).set_state(state, strict=False)


def test_every_record_once_per_epoch_and_epochs_reshuffled(shards):
    iterator = _records(shards)
    epochs = [sum((_caption_ids(b["text"], 24) for b in _take(iterator, 6)), []) for _ in range(2)]
    assert sorted(epochs[0]) == list(range(24)) and sorted(epochs[1]) == list(range(24))
    assert epochs[0] != epochs[1]


@pytest.mark.parametrize("num_shards, process_count", [(4, 2), (2, 3)])
def test_hosts_read_disjoint_shares(tmp_path, num_shards, process_count):
    # 4 shards over 2 hosts: whole files per host; 2 shards over 3 hosts: records are dealt out instead.
    testing.write_caption_shards(str(tmp_path), 24, num_shards)
    seen = []
    for index in range(process_count):
        iterator = _records(
            str(tmp_path), batch=2 * process_count, process_index=index, process_count=process_count
        )
        per_epoch = 24 // process_count // 2
        batches = _take(iterator, per_epoch)
        assert batches[0]["image"].shape == (2, 24, 24, 3)
        seen.append(set(sum((_caption_ids(b["text"], 24) for b in batches), [])))
    assert sum(len(s) for s in seen) == 24 and set.union(*seen) == set(range(24))


def test_corrupt_records_are_skipped_and_counted(tmp_path, caplog):
    defects = {
        3: "truncated_jpeg",
        7: "empty_caption",
        11: "missing_caption",
        12: "blank_caption",
        15: "not_an_image",
    }
    testing.write_caption_shards(str(tmp_path), 20, 2, corrupt=defects)
    iterator = _records(str(tmp_path), batch=3)
    ids = sum((_caption_ids(b["text"], 20) for b in _take(iterator, 5)), [])
    assert sorted(ids) == sorted(set(range(20)) - set(defects))
    with caplog.at_level(logging.WARNING):
        next(iterator)  # ends epoch 0, which warns with its exact count
    assert "epoch 0 skipped 5 corrupt records" in " ".join(r.getMessage() for r in caplog.records)
    state = iterator.get_state()
    assert state["epoch"] == 1 and iterator.num_skipped == state["skipped"] >= 5
    with caplog.at_level(logging.WARNING):
        iterator.close()
    assert f"skipped {state['skipped']} corrupt records in total" in caplog.records[-1].getMessage()


def _damaged_shards(directory: str) -> tuple[set[int], dict[str, str]]:
    """24 examples over 4 shards (example i is record i // 4 of shard i % 4), three files damaged: shard 0
    is cut in the middle of its record 4, shard 1's record 2 has a bad CRC, and 00004.tfrecord is not a
    TFRecord at all. Returns the examples still readable and {damaged file: the error its warning names}."""
    paths = testing.write_caption_shards(directory, 24, 4)
    testing.damage_tfrecord(paths[0], 4, "truncate")  # loses examples 16, 20
    testing.damage_tfrecord(paths[1], 2, "bad_crc")  # loses examples 9, 13, 17, 21
    junk = os.path.join(directory, "00004.tfrecord")
    with open(junk, "w") as f:
        f.write("key,url,caption\n0,https://example.com/0.jpg,a csv file misnamed\n")
    readable = set(range(24)) - {16, 20, 9, 13, 17, 21}
    errors = {paths[0]: "truncated record", paths[1]: "corrupted record", junk: "Is this even a TFRecord"}
    return readable, errors


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_damaged_tfrecord_files_are_counted_and_named(tmp_path, caplog):
    readable, errors = _damaged_shards(str(tmp_path))
    iterator = _records(str(tmp_path), batch=3)
    with caplog.at_level(logging.WARNING):
        # The 18 readable examples are 6 full batches: every record before the damage is used, once.
        ids = sum((_caption_ids(b["text"], 24) for b in _take(iterator, 6)), [])
        assert sorted(ids) == sorted(readable)
        next(iterator)  # ends epoch 0
    messages = _warnings(caplog)
    # One skipped record per damaged file: how many records a damaged tail held is unknowable.
    assert "epoch 0 skipped 3 corrupt records" in " ".join(messages)
    assert iterator.num_skipped == iterator.get_state()["skipped"] >= 3
    for path, error in errors.items():
        assert any(path in m and error in m for m in messages), (path, messages)
    intact = [os.path.join(tmp_path, f"{s:05d}.tfrecord") for s in (2, 3)]
    assert not any(path in m for path in intact for m in messages)


def test_resume_between_damaged_files_continues_exactly(tmp_path):
    _damaged_shards(str(tmp_path))
    original = _records(str(tmp_path), batch=3)
    states, batches, counts = [], [], []
    for _ in range(12):  # two epochs of 6 batches
        states.append(original.get_state())
        batches.append(next(original))
        counts.append(original.num_skipped)
    # The count is a function of the data: a second uninterrupted run counts the same after every batch.
    again = _records(str(tmp_path), batch=3)
    assert [(next(again), again.num_skipped)[1] for _ in range(12)] == counts
    # Resume from a state that has counted some of epoch 0's damaged files but not all.
    between = [i for i, s in enumerate(states) if s["epoch"] == 0 and 0 < s["skipped"] < 3]
    assert between, [s["skipped"] for s in states]
    k = between[0]
    resumed = _records(str(tmp_path), batch=3)
    resumed.set_state(json.loads(json.dumps(states[k])))
    for i in range(k, 12):
        got = next(resumed)
        np.testing.assert_array_equal(batches[i]["image"], got["image"])
        np.testing.assert_array_equal(batches[i]["text"], got["text"])
        assert resumed.num_skipped == counts[i]
    assert resumed.get_state() == original.get_state()
    assert original.num_skipped >= 6  # epoch 0's three damaged files, and epoch 1's


def test_unopenable_tfrecord_file_is_reported_not_retried(tmp_path, caplog):
    # A shard deleted after the file listing (TFRecordDataset retries a file it cannot open for ever,
    # ignore_errors or not), and, unless running as root, one without read permission.
    paths = testing.write_caption_shards(str(tmp_path), 12, 4)
    iterator = _records(str(tmp_path), batch=3)
    os.remove(paths[0])
    unreadable = {paths[0]: "No such file"}
    if os.geteuid() != 0:
        os.chmod(paths[1], 0)
        unreadable[paths[1]] = "Permission denied"
    per_epoch = 4 - len(unreadable)  # each readable shard holds one batch of 3
    taken = []
    with caplog.at_level(logging.WARNING):
        # Into epoch 1, so that epoch 0 has ended and reported its count.
        worker = threading.Thread(target=lambda: taken.append(_take(iterator, per_epoch + 1)), daemon=True)
        worker.start()
        worker.join(timeout=300)
        assert not worker.is_alive(), "reading hung on a file that cannot be opened"
    assert taken, "reading failed"
    messages = _warnings(caplog)
    for path, error in unreadable.items():
        assert any(path in m and error in m for m in messages), (path, messages)
    assert f"epoch 0 skipped {len(unreadable)} corrupt records" in " ".join(messages)


def test_folder_source_pairs_images_with_captions(tmp_path):
    testing.write_caption_folder(str(tmp_path), 10)
    # An image without a caption is left out of the file list (with a warning), not counted as a record.
    with open(os.path.join(tmp_path, "00000", "orphan.jpg"), "wb") as f:
        f.write(testing.encode_image(np.zeros((8, 8, 3), np.uint8)))
    config = {"source": "folder", "path": str(tmp_path)}
    iterator = make_train_iterator(
        config, global_batch_size=5, image_size=16, context_length=CONTEXT, process_index=0, process_count=1
    )
    batches = _take(iterator, 2)
    assert sorted(sum((_caption_ids(b["text"], 10) for b in batches), [])) == list(range(10))
    assert batches[0]["image"].shape == (5, 16, 16, 3)


@pytest.mark.parametrize(
    "config, field",
    [
        ({"source": "webdatasets"}, "source"),
        ({"source": "synthetic", "shufle_buffer": 10}, "shufle_buffer"),
        ({"source": "tfrecord"}, "path"),
        ({"source": "tfds"}, "name"),
    ],
)
def test_config_mistakes_name_the_field(config, field):
    with pytest.raises(ValueError, match=field):
        make_train_iterator(config, global_batch_size=4, image_size=16, process_index=0, process_count=1)


def test_global_batch_must_split_over_hosts(shards):
    with pytest.raises(ValueError, match="divisible"):
        _records(shards, batch=5, process_index=0, process_count=2)


def test_tfds_source_samples_one_of_several_captions_per_epoch():
    # coco_captions' layout (captions/text, several per image), served by a mocked TFDS reader.
    import tensorflow as tf
    import tensorflow_datasets as tfds

    rng = np.random.default_rng(0)
    images = [testing.encode_image(testing.random_image(rng, 20, 24)) for _ in range(8)]

    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        texts = [[f"caption {i}", f"caption {i + 8}", f"caption {i + 16}"] for i in range(8)]
        return tf.data.Dataset.from_tensor_slices({"image": images, "captions": {"text": texts}})

    config = {"source": "tfds", "name": "coco_captions", "shuffle_buffer": 8}
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        iterator = make_train_iterator(
            config,
            global_batch_size=4,
            image_size=16,
            context_length=CONTEXT,
            process_index=0,
            process_count=1,
        )
        epochs = [sum((_caption_ids(b["text"], 24) for b in _take(iterator, 2)), []) for _ in range(3)]
    for ids in epochs:
        assert sorted(i % 8 for i in ids) == list(range(8))  # every image once per epoch
    # Across epochs images are paired with different ones of their captions.
    assert len({tuple(sorted(ids)) for ids in epochs}) > 1
    assert any(i >= 8 for ids in epochs for i in ids)
