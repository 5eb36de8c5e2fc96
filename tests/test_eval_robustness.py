"""Distribution-shift evaluation: class-subset heads, ObjectNet mapping, and the CLI end to end on mock TFDS
ImageNet-family data with a tiny random model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clip_jax.eval import metadata, robustness
from clip_jax.eval.classifier import evaluate_logits, head_for

# Spot checks from the datasets' own class lists (hendrycks/imagenet-r and /natural-adv-examples).
R_MEMBERS = ("n01443537", "n01833805", "n02085620", "n04552348", "n07720875", "n12267677")
A_MEMBERS = ("n01498041", "n01558993", "n02099601", "n04606251", "n09229709", "n12144580")


def test_subset_heads_select_the_right_wnids():
    import tensorflow_datasets as tfds

    for name, members, other in (("imagenet_r", R_MEMBERS, A_MEMBERS), ("imagenet_a", A_MEMBERS, R_MEMBERS)):
        wnids = metadata.subset_wnids(name)
        assert len(wnids) == len(set(wnids)) == 200 and set(members) <= set(wnids)
        mask = metadata.subset_mask(name)
        assert mask.sum() == 200
        # The mask is over the label space of the TFDS dataset itself: its ClassLabel names are WNIDs.
        tfds_names = tfds.builder(name).info.features["label"].names
        assert len(tfds_names) == 1000
        assert sorted(np.asarray(tfds_names)[mask]) == sorted(wnids)
        assert not set(other) <= set(wnids)
    # The two subsets overlap but are different sets.
    r, a = set(metadata.subset_wnids("imagenet_r")), set(metadata.subset_wnids("imagenet_a"))
    assert 0 < len(r & a) < 200


def test_subset_indices_match_timm_index_lists():
    """An independently shipped list of the same subsets (indices, not WNIDs)."""
    timm = pytest.importorskip("timm")
    from pathlib import Path

    info = Path(timm.__file__).parent / "data" / "_info"
    for name in ("imagenet_r", "imagenet_a"):
        want = sorted(int(i) for i in (info / f"{name}_indices.txt").read_text().split())
        assert metadata.subset_indices(name).tolist() == want


def test_objectnet_classes_map_to_the_right_imagenet_classes():
    classes = metadata.objectnet_classes()
    assert len(classes) == 113 and len({c["folder"] for c in classes}) == 113
    names = metadata.imagenet_classnames()
    by_folder = {c["folder"]: [names[i] for i in c["imagenet_indices"]] for c in classes}
    assert by_folder["alarm_clock"] == ["analog clock", "digital clock"]
    assert by_folder["banana"] == ["banana"]
    assert all(0 <= i < 1000 for c in classes for i in c["imagenet_indices"])


def _logit_batches(logits, labels):
    yield {"image": logits, "label": labels, "mask": np.ones(len(labels), bool)}


def test_subset_and_objectnet_heads_score_within_their_classes():
    head = head_for("imagenet_r")
    idx = metadata.subset_indices("imagenet_r")
    out_of_subset = int(np.flatnonzero(~metadata.subset_mask("imagenet_r"))[0])
    logits = np.zeros((2, 1000), np.float32)
    logits[:, out_of_subset] = 10.0  # the 1000-way argmax is outside the 200 classes ...
    logits[0, idx[5]] = 5.0  # ... but within them, row 0 picks its label and row 1 a wrong class
    logits[1, idx[7]] = 5.0
    labels = np.array([idx[5], idx[6]])  # labels in the 1000-class space, as TFDS stores them
    m = evaluate_logits(lambda x: x, _logit_batches(logits, labels), head)
    assert m["acc1"] == 0.5 and m["num_examples"] == 2

    head = head_for("objectnet")
    classes = metadata.objectnet_classes()
    clock = next(i for i, c in enumerate(classes) if c["folder"] == "alarm_clock")
    logits = np.zeros((2, 1000), np.float32)
    logits[0, 530] = 9.0  # 'digital clock' counts for ObjectNet's alarm clock
    logits[1, 409] = 9.0  # 'analog clock' too
    logits[:, 3] = 20.0  # a shark: not an ObjectNet class, so it cannot be predicted
    m = evaluate_logits(lambda x: x, _logit_batches(logits, np.array([clock, clock])), head)
    assert m["acc1"] == 1.0


def test_robustness_eval_on_named_splits():
    """The in-memory API the trainer / synthetic job uses: any (name, dataset) pairs."""
    from clip_jax.models import CLIP, get_model_config, random_params

    model = CLIP(get_model_config("tiny"))
    params = random_params(model, seed=0)
    rng = np.random.default_rng(0)

    def ds(n):
        # Batches of 8 with padding rows and six classes, as in test_eval_zeroshot: one compilation.
        images = rng.normal(size=(8, 32, 32, 3)).astype(np.float32)
        return [{"image": images, "label": rng.integers(0, 6, 8), "mask": np.arange(8) < n}]

    report = robustness.robustness_eval(
        model,
        params,
        [("test", ds(8)), ("sketch", ds(6)), ("noise", ds(4))],
        classnames=["circle", "square", "star", "heart", "cross", "ring"],
        templates=["a {} shape."],
    )
    per = report["datasets"]
    assert report["reference"] == "test" and per["sketch"]["num_examples"] == 6
    assert report["average_shift_acc1"] == pytest.approx((per["sketch"]["acc1"] + per["noise"]["acc1"]) / 2)


def test_robustness_cli_end_to_end_on_mock_imagenet_family(tmp_path):
    import tensorflow_datasets as tfds
    from PIL import Image

    from clip_jax.data import make_eval_dataset
    from clip_jax.eval.results import read_records

    n = 16
    rng = np.random.default_rng(0)
    objectnet = tmp_path / "objectnet-1.0" / "images"
    for folder in ("alarm_clock", "banana", "not_an_overlapping_class"):
        (objectnet / folder).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(
                objectnet / folder / f"{i}.png"
            )
    templates = tmp_path / "templates.json"
    templates.write_text(json.dumps(["a photo of a {}."]))
    out, plot = tmp_path / "rob.json", tmp_path / "rob.png"
    with tfds.testing.mock_data(num_examples=n):
        robustness.main(
            [
                "--model",
                "tiny",
                "--batch-size",
                "8",
                "--templates",
                str(templates),
                "--output",
                str(out),
                "--plot",
                str(plot),
                "--objectnet-dir",
                str(objectnet.parent),
            ]
        )
        r_labels = np.concatenate(
            [
                b["label"][b["mask"]]
                for b in make_eval_dataset("imagenet_r", "test", batch_size=8, image_size=32)
            ]
        )
    records = {r["dataset"]: r for r in read_records([out])}
    assert set(records) == {"imagenet1k", *metadata.IMAGENET_SHIFTS, "imagenet_shift_average"}
    for name in ("imagenet1k", "imagenetv2", "imagenet_sketch"):
        assert records[name]["metrics"]["num_examples"] == n
        assert records[name]["task"] == "zeroshot_classification" and records[name]["pretrained"] == "random"
    # ImageNet-R is scored only on examples whose (1000-space) label is one of its 200 classes.
    in_subset = int(metadata.subset_mask("imagenet_r")[r_labels].sum())
    m = records["imagenet-r"]["metrics"]
    assert m["num_examples"] == in_subset and m["num_examples"] + m.get("num_outside_head", 0) == n
    # ObjectNet: only the folders of the 113 overlapping classes are read.
    assert records["objectnet"]["metrics"]["num_examples"] == 6
    shifts = [records[s]["metrics"]["acc1"] for s in metadata.IMAGENET_SHIFTS]
    assert records["imagenet_shift_average"]["metrics"]["acc1"] == pytest.approx(np.mean(shifts))
    with Image.open(plot) as im:
        assert im.format == "PNG" and im.size[0] > 300
