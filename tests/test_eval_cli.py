"""The evaluation commands end to end on the synthetic dataset and mock ImageNet with a tiny random model,
result records in CLIP_benchmark's schema, and the tables built from them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from clip_jax.eval import linear_probe, retrieval, zeroshot
from clip_jax.eval.results import make_record, read_records, write_records

ROOT = Path(__file__).resolve().parents[1]
SYNTH = "clip_synthetic/tiny"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    from clip_jax.data import prepare_synthetic

    path = tmp_path_factory.mktemp("tfds")
    prepare_synthetic(path, config="tiny")
    return str(path)


def _common(synth_dir, out):
    return ["--model", "tiny", "--data-dir", synth_dir, "--batch-size", "16", "--output", str(out)]


def test_zeroshot_cli_on_synthetic(synth_dir, tmp_path):
    from clip_jax.data.synthetic import zeroshot_tasks

    out = tmp_path / "zs.json"
    record = zeroshot.main(_common(synth_dir, out) + ["--dataset", SYNTH, "--task", "color"])
    assert read_records([out]) == [record]
    assert set(record) >= {"dataset", "model", "pretrained", "task", "metrics"}
    assert record["dataset"] == "clip_synthetic" and record["task"] == "zeroshot_classification"
    m = record["metrics"]
    assert m["num_examples"] == 32  # the tiny config's test split, padding rows not counted
    assert 0 <= m["acc1"] <= m["acc5"] <= 1 and 0 <= m["mean_per_class_recall"] <= 1
    # A random model is near chance, not perfect: the CLI does not leak labels into predictions.
    assert m["acc1"] < 0.9 and len(zeroshot_tasks()["color"][0]) > 2


def test_linear_probe_cli_caches_features(synth_dir, tmp_path, monkeypatch):
    out, cache = tmp_path / "lp.json", tmp_path / "features"
    args = _common(synth_dir, out) + ["--dataset", SYNTH, "--C", "1.0", "--feature-cache", str(cache)]
    record = linear_probe.main(args)
    m = record["metrics"]
    assert record["task"] == "linear_probe" and m["C"] == 1.0 and m["num_examples"] == 32
    assert len(list(cache.glob("*.npz"))) == 2  # train and test features

    # A second run reads the cached features instead of running the model.
    def fail(*a, **k):
        raise AssertionError("features were extracted again")

    monkeypatch.setattr(linear_probe, "extract_image_features", fail)
    assert linear_probe.main(args)["metrics"]["acc1"] == m["acc1"]


def test_retrieval_cli_on_synthetic(synth_dir, tmp_path):
    out = tmp_path / "ret.json"
    record = retrieval.main(_common(synth_dir, out) + ["--dataset", SYNTH, "--split", "test"])
    m = record["metrics"]
    assert record["task"] == "zeroshot_retrieval"
    assert m["num_images"] == 32 and m["num_captions"] == 96  # 3 captions per image
    for d in ("image", "text"):
        r = [m[f"{d}_retrieval_recall@{k}"] for k in (1, 5, 10)]
        assert 0 <= r[0] <= r[1] <= r[2] <= 1


def test_retrieval_metrics_succeed_and_fail():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(50, 16))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    t2i = np.repeat(np.arange(50), 3)
    txt = img[t2i] + 0.05 * rng.normal(size=(150, 16))
    m = retrieval.retrieval_metrics(img, txt, t2i)
    assert all(v == 1.0 for v in m.values())
    shuffled = retrieval.retrieval_metrics(img, txt, rng.permutation(t2i))
    assert shuffled["image_retrieval_recall@1"] < 0.1 and shuffled["text_retrieval_recall@10"] < 0.7
    # Hand-made case (scores are plain dot products).
    img2 = np.array([[1.0, 0.0], [0.0, 1.0]])
    txt2 = np.array([[0.6, 0.8], [0.7, 0.71], [0.0, 1.0]])  # captions of images 0, 0, 1
    m2 = retrieval.retrieval_metrics(img2, txt2, np.array([0, 0, 1]), ks=(1, 2))
    # text->image: caption 0 prefers image 1 (wrong), caption 1 prefers image 1 by a hair, caption 2 right.
    assert m2["image_retrieval_recall@1"] == pytest.approx(1 / 3) and m2["image_retrieval_recall@2"] == 1.0
    # image->text: image 0's best caption (1) ranks first; image 1's caption (2) ranks first.
    assert m2["text_retrieval_recall@1"] == 1.0


def test_tables_put_published_numbers_beside_ours(tmp_path):
    records = [
        make_record(
            "imagenet1k",
            "ViT-B-32-quickgelu",
            "openai",
            "zeroshot_classification",
            {"acc1": 0.631, "acc5": 0.88, "mean_per_class_recall": 0.63},
        ),
        make_record(
            "imagenet-r", "ViT-L-14-336-quickgelu", "openai", "zeroshot_classification", {"acc1": 0.885}
        ),
        make_record("imagenet1k", "ViT-B-32", "laion2b", "zeroshot_classification", {"acc1": 0.66}),
        make_record("imagenet1k", "ViT-B-32-quickgelu", "openai", "linear_probe", {"acc1": 0.76, "C": 3.16}),
        make_record(
            "mscoco_captions",
            "tiny",
            "random",
            "zeroshot_retrieval",
            {f"{d}_retrieval_recall@{k}": 0.1 * k for d in ("image", "text") for k in (1, 5, 10)},
        ),
    ]
    write_records(tmp_path / "a" / "one.json", records[0])
    write_records(tmp_path / "b.json", records[1:])
    md, csv = tmp_path / "t.md", tmp_path / "t.csv"
    rows = _script("make_tables").main(
        [str(tmp_path / "a"), str(tmp_path / "b.json"), "--markdown", str(md), "--csv", str(csv)]
    )
    by_key = {(r["model"], r["pretrained"], r["task"], r["dataset"], r["metric"]): r for r in rows}
    zs = by_key[("ViT-B-32-quickgelu", "openai", "zeroshot_classification", "imagenet1k", "acc1")]
    assert zs["ours"] == 63.1 and zs["paper"] == 63.2 and zs["delta"] == pytest.approx(-0.1)
    assert (
        by_key[("ViT-L-14-336-quickgelu", "openai", "zeroshot_classification", "imagenet-r", "acc1")]["paper"]
        == 88.9
    )
    assert by_key[("ViT-B-32-quickgelu", "openai", "linear_probe", "imagenet1k", "acc1")]["paper"] == 76.1
    # Not OpenAI's weights: no paper number to compare with.
    assert by_key[("ViT-B-32", "laion2b", "zeroshot_classification", "imagenet1k", "acc1")]["paper"] is None
    text = md.read_text()
    assert "63.1 (63.2)" in text and "| ViT-B-32 | laion2b | 66.0 |" in text
    assert "zeroshot_retrieval: image_retrieval_recall@1" in text
    lines = csv.read_text().splitlines()
    assert lines[0] == "model,pretrained,task,dataset,metric,ours,paper,delta" and len(lines) == 1 + len(rows)


def test_reproduce_clip_on_mock_imagenet(tmp_path):
    import tensorflow_datasets as tfds

    templates = tmp_path / "templates.json"
    templates.write_text(json.dumps(["a photo of a {}."]))
    out = tmp_path / "repro"
    with tfds.testing.mock_data(num_examples=16):
        records = _script("reproduce_clip").main(
            [
                "--weights",
                "tiny=random",
                "--output-dir",
                str(out),
                "--templates",
                str(templates),
                "--batch-size",
                "8",
                "--C",
                "1.0",
                "--linear-probe-datasets",
                "imagenet1k",
            ]
        )
    names = {(r["task"], r["dataset"]) for r in records}
    # ObjectNet has no folder here and is skipped; the TFDS sets run on mock data.
    assert ("zeroshot_classification", "objectnet") not in names
    assert {
        ("zeroshot_classification", d) for d in ("imagenet1k", "imagenetv2", "imagenet-r", "imagenet-a")
    } <= names
    assert ("linear_probe", "imagenet1k") in names
    assert (out / "tables.md").exists() and (out / "tables.csv").exists()
    assert (out / "effective_robustness.png").stat().st_size > 1000
    assert len(read_records([out / "tiny-random"])) == len(records)


def test_checkpoint_of_a_training_run_loads_its_params(tmp_path):
    """--checkpoint WORKDIR reads the latest TrainState saved by the trainer (scanned layers unstacked)."""
    import argparse

    import jax
    import optax

    from clip_jax.checkpoint import Checkpointer
    from clip_jax.eval import cli
    from clip_jax.models import CLIP, get_model_config, random_params, stack_layers
    from clip_jax.train.step import init_train_state

    params = random_params(CLIP(get_model_config("tiny")), seed=3)
    state = init_train_state(
        stack_layers(jax.tree.map(np.asarray, params)), optax.sgd(0.1), jax.random.key(0)
    )
    ckpt = Checkpointer(tmp_path / "checkpoints", async_save=False)
    for step in (2, 10):
        ckpt.save(step, state, {}, force=True)
    ckpt.close()
    args = argparse.Namespace(
        model="tiny", weights=None, checkpoint=str(tmp_path), pretrained=None, quick_gelu=None
    )
    model, loaded, ident = cli.load_model(args)
    assert ident.pretrained == f"{tmp_path.name}@10" and model.cfg == get_model_config("tiny")
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    assert all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True)
    )


def test_checkpoint_dir_skips_an_incomplete_step_and_refuses_another_model(tmp_path, capsys, caplog):
    """--checkpoint takes the newest complete step, names a newer incomplete one it skipped, and a
    checkpoint of another model than --model fails before reading arrays, naming the first differing key."""
    import argparse
    import logging

    import jax
    import optax

    from clip_jax.checkpoint import Checkpointer
    from clip_jax.eval import cli
    from clip_jax.models import CLIP, get_model_config, random_params, stack_layers
    from clip_jax.train.step import init_train_state

    params = random_params(CLIP(get_model_config("tiny")), seed=1)
    state = init_train_state(
        stack_layers(jax.tree.map(np.asarray, params)), optax.sgd(0.1), jax.random.key(0)
    )
    ckpt = Checkpointer(tmp_path / "checkpoints", async_save=False)
    ckpt.save(4, state, {}, force=True)
    ckpt.close()
    # A step whose copy was cut off: the folder exists, its state never arrived.
    (tmp_path / "checkpoints" / "8" / "state").mkdir(parents=True)

    def args(model):
        return argparse.Namespace(
            model=model, weights=None, checkpoint=str(tmp_path), pretrained=None, quick_gelu=None
        )

    with caplog.at_level(logging.WARNING, logger="clip_jax.checkpoint"):
        _, loaded, ident = cli.load_model(args("tiny"))
    assert ident.pretrained == f"{tmp_path.name}@4"
    assert "step 4" in capsys.readouterr().out
    assert "skipped incomplete ['8']" in caplog.text
    assert all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True)
    )

    with pytest.raises(
        SystemExit,
        match=r"does not hold this model: \S+ has shape \([\d, ]+\) in the checkpoint, \([\d, ]+\) in the",
    ):
        cli.load_model(args("ViT-B-32"))
