"""The webdataset source: shard lists, the reader against open_clip's, every sample once per epoch, exact
resume, hosts, skipped samples and damaged shards, key and .json filters, object stores, the writer."""

from __future__ import annotations

import collections
import io
import json
import logging
import os
import re
import tarfile
import threading

import numpy as np
import pytest
import tensorflow as tf

from clip_jax.data import image_text, make_train_iterator, synthetic, testing, webdataset, write_webdataset
from clip_jax.tokenizer import tokenize

CONTEXT = 8


def _iterator(
    path: str, batch: int = 4, seed: int = 0, process_index: int = 0, process_count: int = 1, **extra
):
    config = {"source": "webdataset", "path": path, "shuffle_buffer": 8, **extra}
    return make_train_iterator(
        config,
        global_batch_size=batch,
        image_size=24,
        context_length=CONTEXT,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
    )


def _take(iterator, n: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(n)]


def _ids(batches, num_examples: int) -> list[int]:
    return sum((testing.caption_ids(b["text"], num_examples, CONTEXT) for b in batches), [])


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """24 examples in 4 shards of 6: shard s holds examples 6s..6s+5."""
    directory = str(tmp_path_factory.mktemp("wds"))
    testing.write_webdataset_shards(directory, 24, 4)
    return directory


def test_shard_lists_are_expanded_as_open_clip_expands_them(shards, caplog):
    import webdataset as wds

    names = [os.path.join(shards, f"{s:05d}.tar") for s in range(4)]
    brace = os.path.join(shards, "{00000..00003}.tar")
    assert image_text._list_files(brace, ".tar") == wds.shardlists.expand_urls(brace) == names
    two = os.path.join(shards, "{00000,00002}.tar") + "::" + os.path.join(shards, "{00003..00003}.tar")
    assert wds.shardlists.expand_urls(two) == [names[0], names[2], names[3]]
    spellings = {
        two: [names[0], names[2], names[3]],
        os.path.join(shards, "*.tar"): names,
        shards: names,  # a directory: its .tar files (not sizes.json)
        f"{names[3]}, {names[1]}": [names[1], names[3]],
        os.path.join(shards, "0000[12].tar") + "," + os.path.join(shards, "{00000,00003}.tar"): names,
    }
    for spec, want in spellings.items():
        assert image_text._list_files(spec, ".tar") == want, spec
    # Named shards that do not exist are left out, with a warning that names them.
    with caplog.at_level(logging.WARNING):
        assert image_text._list_files(os.path.join(shards, "{00002..00005}.tar"), ".tar") == names[2:]
    assert "2 of the files" in caplog.text and "00005.tar" in caplog.text


def test_a_shard_list_that_matches_nothing_fails_at_start_naming_it(tmp_path):
    for pattern in (str(tmp_path / "{00000..00009}.tar"), str(tmp_path / "*.tar"), str(tmp_path)):
        with pytest.raises(ValueError, match=re.escape(repr(pattern))):
            _iterator(pattern)
    (tmp_path / "00000.tar.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="compressed"):
        _iterator(str(tmp_path / "*.tar.gz"))


def test_samples_are_grouped_as_open_clip_groups_them(tmp_path):
    from open_clip_train.data import tarfile_to_samples_nothrow

    members = [
        ("d/", None),  # a directory entry
        ("d/000.jpg", b"a"),
        ("d/000.txt", b"b"),
        ("d/000.seg.png", b"c"),  # the field is everything after the first dot
        ("d/001.JPG", b"d"),  # fields are lowercased
        ("d/001.Txt", b"e"),
        ("README", b"f"),  # no field: not part of a sample
        ("__index__", b"g"),  # webdataset's metadata names are skipped
        ("d/002.txt", b"h"),
        ("d/002.txt", b"i"),  # a repeated field starts a new sample with the same key
        ("d/003.json", b"{}"),
    ]
    path = str(tmp_path / "00000.tar")
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with open(path, "rb") as f:
        ours = list(webdataset.iter_samples(f))
    theirs = [
        (s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")})
        for s in tarfile_to_samples_nothrow([{"url": path}])
    ]
    assert ours == theirs
    assert [key for key, _ in ours] == ["d/000", "d/001", "d/002", "d/002", "d/003"]
    # Only the fields asked for are read; the others are there, empty.
    with open(path, "rb") as f:
        assert next(webdataset.iter_samples(f, {"txt"})) == (
            "d/000",
            {"jpg": b"", "txt": b"b", "seg.png": b""},
        )


def test_every_sample_once_per_epoch_epochs_reshuffled_and_seeded(shards):
    iterator = _iterator(os.path.join(shards, "{00000..00003}.tar"))
    epochs = [_ids(_take(iterator, 6), 24) for _ in range(2)]
    assert sorted(epochs[0]) == list(range(24)) and sorted(epochs[1]) == list(range(24))
    assert epochs[0] != epochs[1]
    first, same, other = (next(_iterator(shards, seed=seed)) for seed in (0, 0, 1))
    np.testing.assert_array_equal(first["image"], same["image"])
    assert not np.array_equal(first["image"], other["image"])
    assert first["image"].shape == (4, 24, 24, 3) and first["text"].shape == (4, CONTEXT)


def test_resumed_iterator_continues_exactly(shards):
    # 6 batches per epoch: the comparison crosses into epoch 1.
    original = _iterator(shards)
    _take(original, 4)
    state = json.loads(json.dumps(original.get_state()))
    expected = _take(original, 5)
    assert original.epoch == 1
    resumed = _iterator(shards)
    resumed.set_state(state)
    for want, got in zip(expected, _take(resumed, 5), strict=True):
        np.testing.assert_array_equal(want["image"], got["image"])
        np.testing.assert_array_equal(want["text"], got["text"])
    assert resumed.get_state() == original.get_state()


@pytest.mark.parametrize("num_shards, process_count", [(4, 2), (2, 3)])
def test_hosts_read_disjoint_shares(tmp_path, num_shards, process_count):
    # 4 shards over 2 hosts: whole shards per host; 2 shards over 3 hosts: samples are dealt out instead.
    testing.write_webdataset_shards(str(tmp_path), 24, num_shards)
    seen = []
    for index in range(process_count):
        iterator = _iterator(
            str(tmp_path), batch=2 * process_count, process_index=index, process_count=process_count
        )
        seen.append(set(_ids(_take(iterator, 24 // process_count // 2), 24)))
    assert sum(len(s) for s in seen) == 24 and set.union(*seen) == set(range(24))


def test_corrupt_samples_are_skipped_and_counted(tmp_path, caplog):
    defects = {
        3: "truncated_jpeg",
        7: "empty_caption",
        11: "missing_caption",
        12: "blank_caption",
        15: "not_an_image",
        18: "missing_image",
    }
    testing.write_webdataset_shards(str(tmp_path), 21, 3, corrupt=defects)
    iterator = _iterator(str(tmp_path), batch=3)
    assert sorted(_ids(_take(iterator, 5), 21)) == sorted(set(range(21)) - set(defects))
    with caplog.at_level(logging.WARNING):
        next(iterator)  # ends epoch 0, which warns with its exact count
    assert "epoch 0 skipped 6 corrupt records" in " ".join(_warnings(caplog))
    assert iterator.num_skipped == iterator.get_state()["skipped"] >= 6


def _damaged_shards(directory: str) -> tuple[set[int], dict[str, str]]:
    """30 examples in 5 shards of 6 (shard s holds 6s..6s+5), four of them damaged, and a sixth "shard"
    that is a CSV file. Returns the examples still usable and {damaged file: the error its warning names}.

    Shard 0 is cut inside example 4's image (4 and 5 are lost); shard 1 ends at a member boundary before
    example 8 and shard 2 has a corrupt header at example 15's first member, both places where tarfile
    itself stops without an error; shard 3 is cut inside example 23's caption, so 23 comes through without
    one and is skipped and counted. Every damaged file also counts as one skipped record per epoch.
    """
    paths = testing.write_webdataset_shards(directory, 30, 5)
    testing.damage_tar(paths[0], 4, "truncate")
    testing.damage_tar(paths[1], 2, "cut")
    testing.damage_tar(paths[2], 3, "bad_header")
    testing.damage_tar(paths[3], 5, "truncate", member=1)
    junk = os.path.join(directory, "00005.tar")
    with open(junk, "w") as f:
        f.write("key,url,caption\n0,https://example.com/0.jpg,a csv file misnamed\n")
    usable = set(range(30)) - {4, 5, 8, 9, 10, 11, 15, 16, 17, 23}
    marker = "end-of-archive marker"
    errors = {
        paths[0]: "unexpected end of data",
        paths[1]: marker,
        paths[2]: marker,
        paths[3]: "unexpected end of data",
        junk: "ReadError",
    }
    return usable, errors


def test_damaged_shards_are_counted_and_named(tmp_path, caplog):
    usable, errors = _damaged_shards(str(tmp_path))
    iterator = _iterator(str(tmp_path), batch=4)
    with caplog.at_level(logging.WARNING):
        # The 20 usable examples are 5 full batches: every sample before the damage is used, once.
        assert sorted(_ids(_take(iterator, 5), 30)) == sorted(usable)
        next(iterator)  # ends epoch 0
    messages = _warnings(caplog)
    # One per damaged file (how many samples a damaged tail held is unknowable), and example 23.
    assert "epoch 0 skipped 6 corrupt records" in " ".join(messages)
    for path, error in errors.items():
        assert any(path in m and error in m for m in messages), (path, error, messages)
    intact = os.path.join(tmp_path, "00004.tar")
    assert not any(intact in m for m in messages)


def test_resume_between_damaged_shards_continues_exactly(tmp_path):
    _damaged_shards(str(tmp_path))
    original = _iterator(str(tmp_path), batch=4)
    states, batches, counts = [], [], []
    for _ in range(10):  # two epochs of 5 batches
        states.append(original.get_state())
        batches.append(next(original))
        counts.append(original.num_skipped)
    # The count is a function of the data: a second uninterrupted run counts the same after every batch.
    again = _iterator(str(tmp_path), batch=4)
    assert [(next(again), again.num_skipped)[1] for _ in range(10)] == counts
    between = [i for i, s in enumerate(states) if s["epoch"] == 0 and 0 < s["skipped"] < 6]
    assert between, [s["skipped"] for s in states]
    k = between[0]
    resumed = _iterator(str(tmp_path), batch=4)
    resumed.set_state(json.loads(json.dumps(states[k])))
    for i in range(k, 10):
        got = next(resumed)
        np.testing.assert_array_equal(batches[i]["image"], got["image"])
        np.testing.assert_array_equal(batches[i]["text"], got["text"])
        assert resumed.num_skipped == counts[i]
    assert resumed.get_state() == original.get_state()
    assert original.num_skipped > 6  # epoch 0's six, and epoch 1's so far


def test_unopenable_shard_is_reported_not_dropped(tmp_path, caplog):
    # A shard deleted after the listing and, unless running as root, one without read permission.
    paths = testing.write_webdataset_shards(str(tmp_path), 12, 4)
    iterator = _iterator(str(tmp_path), batch=3)
    os.remove(paths[0])
    unreadable = {paths[0]: "No such file"}
    if os.geteuid() != 0:
        os.chmod(paths[1], 0)
        unreadable[paths[1]] = "Permission denied"
    per_epoch = 4 - len(unreadable)  # each readable shard holds one batch of 3
    taken = []
    with caplog.at_level(logging.WARNING):
        worker = threading.Thread(target=lambda: taken.append(_take(iterator, per_epoch + 1)), daemon=True)
        worker.start()
        worker.join(timeout=300)
        assert not worker.is_alive(), "reading hung on a shard that cannot be opened"
    assert taken, "reading failed"
    messages = _warnings(caplog)
    for path, error in unreadable.items():
        assert any(path in m and error in m for m in messages), (path, messages)
    assert f"epoch 0 skipped {len(unreadable)} corrupt records" in " ".join(messages)


KEEP = [2, 3, 5, 7, 11, 13, 17, 19, 23]  # 9 of the 24 examples: 3 batches of 3


def _selected(path: str, batches: int = 3, **filters) -> list[int]:
    """The examples of one epoch of `batches` batches of 3 under `filters`; none may count as skipped."""
    iterator = _iterator(path, batch=3, **filters)
    ids = _ids(_take(iterator, batches), 24)
    next(iterator)  # into epoch 1: epoch 0's count is final
    assert iterator.num_skipped == 0, "filtered samples are not corrupt ones"
    return sorted(ids)


def test_keys_files_select_samples(shards, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("\n".join(f"{i:09d}" for i in reversed(KEEP)) + "\n\nnot-a-key\n")
    uids = tmp_path / "uids.txt"
    uids.write_text("\n".join(testing.webdataset_uid(i) for i in KEEP))
    # DataComp's subset files: uids as pairs of uint64, matched against the .json's "uid".
    pairs = [(int(u[:16], 16), int(u[16:], 16)) for u in map(testing.webdataset_uid, reversed(KEEP))]
    subset = tmp_path / "subset.npy"
    np.save(subset, np.array(pairs, dtype="u8,u8"))
    assert _selected(shards, keys_file=str(keys)) == KEEP
    assert _selected(shards, keys_file=str(uids), keys_field="uid") == KEEP
    assert _selected(shards, keys_file=str(subset)) == KEEP
    # Keys are looked up exactly: prefixes, case and other spellings are not members.
    key_set = webdataset.KeySet.from_bytes(subset.read_bytes(), "subset.npy")
    uid = testing.webdataset_uid(KEEP[0])
    assert uid in key_set and uid.upper() in key_set and testing.webdataset_uid(4) not in key_set
    assert uid[:-1] not in key_set and None not in key_set and len(key_set) == len(KEEP)
    text_set = webdataset.KeySet.from_bytes(keys.read_bytes(), "keys.txt")
    assert "000000002" in text_set and "00000002" not in text_set and "0000000023" not in text_set


def test_json_filter_selects_samples(shards):
    assert _selected(shards, json_filter="i>=12, status==success, i<21") == list(range(12, 21))
    assert _selected(shards, json_filter="i<=2,width>=48", batches=1) == [0, 1, 2]
    meta = {"a": {"b": "7"}, "flag": True, "name": "x", "n": 3}
    cases = {
        "a/b>6.5": True,  # a number in a string compares as a number
        "a/b==7": True,
        "a/c==7": False,  # missing field
        "flag==true": True,  # JSON spelling
        "flag>0": False,  # booleans are not numbers
        "name!=y,n<4": True,
        "name==x,n>3": False,
        "name>1": False,  # not a number
    }
    for spec, passes in cases.items():
        assert webdataset.JsonFilter(spec)(meta) is passes, spec
    assert not webdataset.JsonFilter("n>1")(None)  # no .json


def test_unreadable_json_is_skipped_and_counted_when_filtering(tmp_path):
    testing.write_webdataset_shards(str(tmp_path), 12, 2, corrupt={4: "bad_json"})
    iterator = _iterator(str(tmp_path), batch=3, json_filter="i>=2")  # 2..11 less 4: 9 samples
    assert sorted(_ids(_take(iterator, 3), 12)) == [2, 3, 5, 6, 7, 8, 9, 10, 11]
    next(iterator)  # into epoch 1
    assert iterator.num_skipped == 1  # the bad .json; the samples filtered out do not count


@pytest.mark.parametrize(
    "config, field",
    [
        ({"source": "webdataset"}, "path"),
        ({"source": "webdataset", "path": "x", "json_filter": "width=>224"}, "json_filter"),
        ({"source": "webdataset", "path": "x", "json_filter": "NSFW>UNLIKELY"}, "json_filter"),
        ({"source": "webdataset", "path": "x", "keys_field": "uid"}, "keys_file"),
        ({"source": "tfrecord", "path": "x", "keys_file": "k.txt"}, "keys_file"),
        ({"source": "folder", "path": "x", "resampled": True}, "resampled"),
    ],
)
def test_config_mistakes_name_the_field(config, field):
    with pytest.raises(ValueError, match=field):
        image_text.data_config(config)


def test_object_store_paths_are_read_in_place(shards):
    # fsspec's memory:// stands in for s3:// (which tf.io.gfile lacks) and tf.io.gfile's ram:// for gs://.
    import fsspec

    memory = fsspec.filesystem("memory")
    for name in sorted(os.listdir(shards)):
        with open(os.path.join(shards, name), "rb") as f:
            data = f.read()
        memory.pipe(f"/wds_test/{name}", data)
        with tf.io.gfile.GFile(f"ram://wds_test/{name}", "wb") as out:
            out.write(data)
    local = _take(_iterator(shards), 6)
    for path in ("memory://wds_test/{00000..00003}.tar", "ram://wds_test/*.tar", "memory://wds_test"):
        assert image_text._list_files(path, ".tar"), path
        for want, got in zip(local, _take(_iterator(path), 6), strict=True):
            np.testing.assert_array_equal(want["image"], got["image"])
            np.testing.assert_array_equal(want["text"], got["text"])


def test_resampled_epochs_draw_shards_with_replacement(shards):
    iterator = _iterator(shards, batch=2, resampled=True)
    states, epochs = [], []
    for _ in range(3):  # an epoch is 4 shards drawn with replacement: 24 samples, 12 batches
        states.append(iterator.get_state())
        epochs.append(_take(iterator, 12))
    draws = [collections.Counter(i // 6 for i in _ids(batches, 24)) for batches in epochs]
    for counts in draws:
        assert sum(counts.values()) == 24 and all(c % 6 == 0 for c in counts.values()), counts
    assert any(len(counts) < 4 for counts in draws), draws  # some shard drawn twice in an epoch
    resumed = _iterator(shards, batch=2, resampled=True)
    resumed.set_state(states[1])
    for want, got in zip(epochs[1], _take(resumed, 12), strict=True):
        np.testing.assert_array_equal(want["image"], got["image"])


def test_write_webdataset_writes_the_synthetic_split(tmp_path, capsys):
    from open_clip_train.data import get_dataset_size

    write_webdataset.main(["--output_dir", str(tmp_path), "--config", "tiny", "--samples_per_shard", "50"])
    assert "{00000..00002}.tar" in capsys.readouterr().out
    with open(tmp_path / "sizes.json") as f:
        assert json.load(f) == {"00000.tar": 50, "00001.tar": 50, "00002.tar": 28}
    pattern = str(tmp_path / "{00000..00002}.tar")
    assert get_dataset_size(pattern) == (128, 3)  # open_clip finds the sample count itself
    # The samples are clip_synthetic's train split, in order.
    with open(tmp_path / "00001.tar", "rb") as f:
        key, fields = next(webdataset.iter_samples(f))
    example = synthetic.generate_example("train", 50, 32)
    meta = json.loads(fields.pop("json"))
    assert key == "000000050" and fields == {"png": example["image"], "txt": example["captions"][0].encode()}
    assert meta["captions"] == example["captions"] and meta["shape"] == example["shape"]
    assert re.fullmatch(r"[0-9a-f]{32}", meta["uid"])
    # And they train: one epoch of 4 batches of 32 holds every example once, with its first caption.
    captions = [synthetic.generate_example("train", i, 32)["captions"][0] for i in range(128)]
    config = {"source": "webdataset", "path": pattern, "shuffle_buffer": 64}
    iterator = make_train_iterator(
        config, global_batch_size=32, image_size=32, context_length=20, process_index=0, process_count=1
    )
    batches = _take(iterator, 4)
    rows = sorted(tuple(row) for b in batches for row in b["text"])
    assert rows == sorted(tuple(row) for row in tokenize(captions, 20))
    assert batches[0]["image"].shape == (32, 32, 32, 3)
