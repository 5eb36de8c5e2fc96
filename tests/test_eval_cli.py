"""The evaluation commands end to end on the synthetic dataset and mock ImageNet with a tiny random model,
result records in CLIP_benchmark's schema, and the tables built from them. Each command's numbers are
recomputed here from the model's own outputs on the same batches, with numpy (and scikit-learn for the
probe), independently of clip_jax.eval.metrics; each table row is checked against its record."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from clip_jax.eval import linear_probe, metadata, retrieval, zeroshot
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


def _tiny():
    """The model and params that the commands build for --model tiny (random, seed 0)."""
    from clip_jax.models import CLIP, get_model_config, random_params

    model = CLIP(get_model_config("tiny"))
    return model, random_params(model, 0)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _image_features(model, params, images) -> np.ndarray:
    from clip_jax.models.clip import CLIP

    return np.asarray(
        model.apply({"params": params}, np.asarray(images, np.float32), method=CLIP.encode_image)
    )


def _text_features(model, params, tokens) -> np.ndarray:
    from clip_jax.models.clip import CLIP

    return np.asarray(model.apply({"params": params}, np.asarray(tokens, np.int32), method=CLIP.encode_text))


def _ranks(scores: np.ndarray, positive: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """(rank, near-tie) per row: rank = number of negatives scoring >= the best positive (ties count against
    the model); near-tie: some negative within `tol` of it, where two float32 paths may disagree (1e-6 of a
    cosine is some 16 float32 steps; a random model's scores lie within 1e-5 of each other)."""
    best = np.where(positive, scores, -np.inf).max(axis=1, keepdims=True)
    rank = ((scores >= best) & ~positive).sum(axis=1)
    near = ((np.abs(scores - best) < tol) & ~positive).any(axis=1)
    return rank, near


def _check_classification(metrics: dict, logits: np.ndarray, labels: np.ndarray) -> None:
    """acc1, acc5 and mean per-class recall of a record against numpy's, up to rows with near ties."""
    rank, near = _ranks(logits, labels[:, None] == np.arange(logits.shape[1]), tol=1e-4)  # logits: 100 cos
    n = len(labels)
    assert metrics["num_examples"] == n
    for k in (1, 5):
        assert abs(metrics[f"acc{k}"] * n - (rank < k).sum()) <= near.sum(), (k, metrics, near.sum())
    if not near.any():
        recall = [np.mean(rank[labels == c] == 0) for c in np.unique(labels)]
        assert metrics["mean_per_class_recall"] == pytest.approx(np.mean(recall), abs=1e-12)


def test_zeroshot_cli_on_synthetic(synth_dir, tmp_path):
    from clip_jax.data.synthetic import zeroshot_tasks
    from clip_jax.eval.common import DataConfig
    from clip_jax.eval.datasets import eval_dataset
    from clip_jax.tokenizer import tokenize

    out = tmp_path / "zs.json"
    record = zeroshot.main(_common(synth_dir, out) + ["--dataset", SYNTH, "--task", "color"])
    assert read_records([out]) == [record]
    assert set(record) >= {"dataset", "model", "pretrained", "task", "metrics"}
    assert record["dataset"] == "clip_synthetic" and record["task"] == "zeroshot_classification"
    m = record["metrics"]
    assert m["num_examples"] == 32  # the tiny config's test split, padding rows not counted
    # A random model is near chance, not perfect: the CLI does not leak labels into predictions.
    assert m["acc1"] < 0.9 and len(zeroshot_tasks()["color"][0]) > 2

    # The same numbers from the model's own outputs with numpy: CLIP's classifier (mean of the unit prompt
    # embeddings, renormalised) and 100 * unit image features @ classifier on the same batches.
    model, params = _tiny()
    classnames, templates = zeroshot_tasks()["color"]
    prompts = tokenize([t.format(c) for c in classnames for t in templates], model.cfg.text.context_length)
    emb = _unit(_text_features(model, params, prompts)).reshape(len(classnames), len(templates), -1)
    classifier = _unit(emb.mean(axis=1)).T
    data = DataConfig(dataset=SYNTH, data_dir=synth_dir, batch_size=16, task="color")
    logits, labels = [], []
    for b in eval_dataset(data, model.cfg.vision.image_size):
        keep = np.asarray(b["mask"], bool)
        logits.append(100 * _unit(_image_features(model, params, b["image"]))[keep] @ classifier)
        labels.append(np.asarray(b["label"])[keep])
    _check_classification(m, np.concatenate(logits), np.concatenate(labels))


def test_linear_probe_cli_caches_features(synth_dir, tmp_path, monkeypatch):
    from sklearn.linear_model import LogisticRegression

    from clip_jax.eval.common import DataConfig
    from clip_jax.eval.datasets import eval_dataset

    out, cache = tmp_path / "lp.json", tmp_path / "features"
    args = _common(synth_dir, out) + ["--dataset", SYNTH, "--C", "1.0", "--feature-cache", str(cache)]
    record = linear_probe.main(args)
    m = record["metrics"]
    assert record["task"] == "linear_probe" and m["C"] == 1.0 and m["num_examples"] == 32
    assert len(list(cache.glob("*.npz"))) == 2  # train and test features
    assert read_records([out]) == [record]

    # The cached features are the model's raw image features of the split's real rows ...
    model, params = _tiny()
    features = {}
    for split in ("train", "test"):
        data = DataConfig(dataset=SYNTH, data_dir=synth_dir, batch_size=16)
        feats, labels = [], []
        for b in eval_dataset(data, model.cfg.vision.image_size, split=split):
            keep = np.asarray(b["mask"], bool)
            feats.append(_image_features(model, params, b["image"])[keep])
            labels.append(np.asarray(b["label"])[keep])
        features[split] = (np.concatenate(feats), np.concatenate(labels))
    cached = {}
    for f in cache.glob("*.npz"):
        with np.load(f) as z:
            cached[len(z["labels"])] = (z["features"], z["labels"])
    for x, y in features.values():
        cx, cy = cached[len(y)]
        assert np.array_equal(cy, y) and np.allclose(cx, x, rtol=1e-4, atol=1e-5)
    # ... and the record's accuracies are scikit-learn's LogisticRegression(C=1) on them (the same
    # minimiser), up to rows whose sklearn margin is within the probe's stopping tolerance.
    (xtr, ytr), (xte, yte) = features["train"], features["test"]
    ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=100_000).fit(xtr, ytr)
    for (x, y), key in (((xte, yte), "acc1"), ((xtr, ytr), "train_acc1")):
        scores = ref.decision_function(x)
        top2 = np.sort(scores, axis=1)[:, -2:]
        unsure = int((top2[:, 1] - top2[:, 0] < 1e-2).sum())
        assert abs(m[key] * len(y) - (ref.classes_[scores.argmax(1)] == y).sum()) <= unsure, (key, unsure)

    # A second run reads the cached features instead of running the model.
    def fail(*a, **k):
        raise AssertionError("features were extracted again")

    monkeypatch.setattr(linear_probe, "extract_image_features", fail)
    assert linear_probe.main(args)["metrics"]["acc1"] == m["acc1"]


def test_retrieval_cli_on_synthetic(synth_dir, tmp_path):
    from clip_jax.eval.datasets import retrieval_dataset
    from clip_jax.eval.retrieval import RetrievalConfig

    out = tmp_path / "ret.json"
    record = retrieval.main(_common(synth_dir, out) + ["--dataset", SYNTH, "--split", "test"])
    m = record["metrics"]
    assert record["task"] == "zeroshot_retrieval" and read_records([out]) == [record]
    assert m["num_images"] == 32 and m["num_captions"] == 96  # 3 captions per image

    # Recall@k from the model's unit features of the same images and captions, with numpy.
    model, params = _tiny()
    data = RetrievalConfig(dataset=SYNTH, split="test", data_dir=synth_dir, batch_size=16)
    images, captions = [], []  # captions: per image, its present captions' tokens
    for b in retrieval_dataset(data, model.cfg.vision.image_size, model.cfg.text.context_length):
        keep = np.asarray(b["mask"], bool)
        images.append(_unit(_image_features(model, params, b["image"]))[keep])
        for tokens, present in zip(
            np.asarray(b["text"])[keep], np.asarray(b["text_mask"])[keep], strict=True
        ):
            captions.append(tokens[present])
    img = np.concatenate(images)
    caps_per_image = [len(c) for c in captions]
    t2i = np.repeat(np.arange(len(captions)), caps_per_image)
    txt = _unit(_text_features(model, params, np.concatenate(captions)))
    assert len(img) == m["num_images"] and len(txt) == m["num_captions"]
    scores = txt @ img.T  # [captions, images]
    rank_t2i, near_t2i = _ranks(scores, t2i[:, None] == np.arange(len(img)), tol=1e-6)
    rank_i2t, near_i2t = _ranks(scores.T, np.arange(len(img))[:, None] == t2i[None, :], tol=1e-6)
    for k in (1, 5, 10):
        for key, rank, near in (("image", rank_t2i, near_t2i), ("text", rank_i2t, near_i2t)):
            got = m[f"{key}_retrieval_recall@{k}"] * len(rank)
            assert abs(got - (rank < k).sum()) <= near.sum(), (key, k, got, (rank < k).sum())
    assert m["text_retrieval_recall@10"] > m["text_retrieval_recall@1"]  # not all-or-nothing


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


def _markdown_cells(text: str) -> dict[tuple[str, str, str, str, str], str]:
    """{(task, metric, model, pretrained, dataset): cell} of make_tables' markdown (empty cells left out)."""
    cells = {}
    for section in text.split("### ")[1:]:
        title, *lines = [ln for ln in section.splitlines() if ln.strip()]
        task, metric = title.split(" (")[0].split(": ")
        split = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
        header, body = split[0], split[2:]
        assert header[:2] == ["model", "pretrained"] and set(split[1]) <= {"---"}
        for row in body:
            for dataset, cell in zip(header[2:], row[2:], strict=True):
                if cell:
                    cells[(task, metric, row[0], row[1], dataset)] = cell
    return cells


def _check_tables(rows: list[dict], records: list[dict], markdown: str, csv_text: str) -> None:
    """Each table row is its record's number in percent (one row per tabulated metric of each record), the
    CSV holds exactly those rows and each markdown cell is its row's 'ours (paper)'."""
    import csv
    import io

    tabulated = _script("make_tables").TASK_METRICS
    want = {}
    for r in records:
        for metric in tabulated.get(r["task"], ()):
            if r["metrics"].get(metric) is not None:
                key = (r["model"], r["pretrained"], r["task"], r["dataset"], metric)
                want[key] = round(100 * r["metrics"][metric], 2)
    got = {(r["model"], r["pretrained"], r["task"], r["dataset"], r["metric"]): r for r in rows}
    assert len(got) == len(rows) and set(got) == set(want)
    for key, row in got.items():
        assert row["ours"] == want[key], key
        if row["paper"] is None:
            assert row["delta"] is None
        else:  # delta is rounded from the unrounded difference
            assert row["delta"] == pytest.approx(row["ours"] - row["paper"], abs=0.0051)
    fields = ["model", "pretrained", "task", "dataset", "metric", "ours", "paper", "delta"]
    parsed = list(csv.DictReader(io.StringIO(csv_text)))
    assert [list(p) for p in parsed[:1]] == [fields] and len(parsed) == len(rows)
    by_key = {tuple(line[f] for f in fields[:5]): line for line in parsed}
    assert len(by_key) == len(parsed)
    for key, row in got.items():
        assert by_key[key] == {f: "" if row[f] is None else str(row[f]) for f in fields}
    cells = _markdown_cells(markdown)
    assert len(cells) == len(rows)
    for (model, pretrained, task, dataset, metric), row in got.items():
        paper = "" if row["paper"] is None else f" ({row['paper']:.1f})"
        assert cells[(task, metric, model, pretrained, dataset)] == f"{row['ours']:.1f}{paper}"


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
            "imagenet-r",
            "ViT-L-14-336-quickgelu",
            "openai",
            "zeroshot_classification",
            {"acc1": 0.885, "effective_robustness": 0.51234, "reference_acc1": 0.96},
        ),
        make_record(
            "imagenet_shift_average",
            "ViT-L-14-336-quickgelu",
            "openai",
            "zeroshot_classification",
            {"acc1": 0.737, "effective_robustness": 0.3001, "effective_robustness_of_average": None},
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
    # Effective robustness gets its own rows (no paper figure); a None metric gets none.
    er = by_key[
        ("ViT-L-14-336-quickgelu", "openai", "zeroshot_classification", "imagenet-r", "effective_robustness")
    ]
    assert er["ours"] == 51.23 and er["paper"] is None
    avg = ("ViT-L-14-336-quickgelu", "openai", "zeroshot_classification", "imagenet_shift_average")
    assert by_key[(*avg, "effective_robustness")]["ours"] == 30.01
    assert (*avg, "effective_robustness_of_average") not in by_key
    text = md.read_text()
    assert "63.1 (63.2)" in text and "| ViT-B-32 | laion2b | 66.0 |" in text
    assert "zeroshot_retrieval: image_retrieval_recall@1" in text
    assert "### zeroshot_classification: effective_robustness" in text
    lines = csv.read_text().splitlines()
    assert lines[0] == "model,pretrained,task,dataset,metric,ours,paper,delta" and len(lines) == 1 + len(rows)
    _check_tables(rows, records, text, csv.read_text())


def test_rn_rows_of_the_reproduction_table():
    """OpenAI's RN50 and RN101 records get their published zero-shot ImageNet numbers (open_clip's
    evaluation of OpenAI's weights: 59.8 and 62.3) beside ours in reproduce_clip's table, in the row
    of their model beside the ViTs'; numbers left null there (their linear probe) stay empty."""
    from clip_jax.eval.results import make_record

    published = json.loads(metadata.PUBLISHED_NUMBERS.read_text())
    assert "openclip_results.csv" in published["citations"]["zeroshot.imagenet1k of RN50 and RN101"]
    records = [
        make_record("imagenet1k", "RN50-quickgelu", "openai", "zeroshot_classification", {"acc1": 0.5979}),
        make_record("imagenet1k", "RN101-quickgelu", "openai", "zeroshot_classification", {"acc1": 0.6231}),
        make_record("imagenet1k", "ViT-B-32-quickgelu", "openai", "zeroshot_classification", {"acc1": 0.631}),
        make_record("imagenet1k", "RN50-quickgelu", "openai", "linear_probe", {"acc1": 0.73}),
    ]
    tables = _script("make_tables")
    rows = tables.table_rows(records, published)
    paper = {(r["model"], r["task"]): r["paper"] for r in rows}
    assert paper[("RN50-quickgelu", "zeroshot_classification")] == 59.8
    assert paper[("RN101-quickgelu", "zeroshot_classification")] == 62.3
    assert paper[("ViT-B-32-quickgelu", "zeroshot_classification")] == 63.2
    assert paper[("RN50-quickgelu", "linear_probe")] is None
    markdown = tables.to_markdown(rows)
    assert "| RN50-quickgelu | openai | 59.8 (59.8) |" in markdown
    assert "| RN101-quickgelu | openai | 62.3 (62.3) |" in markdown
    _check_tables(rows, records, markdown, tables.to_csv(rows))


def test_reproduce_clip_on_mock_imagenet(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    from clip_jax.eval import robustness

    templates = tmp_path / "templates.json"
    templates.write_text(json.dumps(["a photo of a {}."]))
    out = tmp_path / "repro"
    drawn = []
    plot_fn = robustness.plot_effective_robustness
    monkeypatch.setattr(
        robustness, "plot_effective_robustness", lambda *a, **k: drawn.append(plot_fn(*a, **k))
    )
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
    on_disk = read_records([out / "tiny-random"])
    assert sorted(map(json.dumps, on_disk)) == sorted(map(json.dumps, records))
    # Every shift with a baseline carries its effective robustness (None where the mock ImageNet sample
    # has no image of the shift's classes) and the baseline it was measured against.
    by_dataset = {r["dataset"]: r for r in records if r["task"] == "zeroshot_classification"}
    for shift in ("imagenetv2", "imagenet-r", "imagenet_sketch", "imagenet-a"):
        assert "effective_robustness" in by_dataset[shift]["metrics"]
        assert by_dataset[shift]["effective_robustness_baseline"]["num_models"] >= 70
    # The tables are the records on disk, row by row.
    tables = _script("make_tables")
    rows = tables.table_rows(on_disk, json.loads(metadata.PUBLISHED_NUMBERS.read_text()))
    _check_tables(rows, on_disk, (out / "tables.md").read_text(), (out / "tables.csv").read_text())
    # The plot: the model's point is its records' (ImageNet, shift average), over the fitted baseline.
    (d,) = drawn
    assert d["path"] == out / "effective_robustness.png" and d["path"].stat().st_size > 1000
    point = [
        by_dataset["imagenet1k"]["metrics"]["acc1"],
        by_dataset["imagenet_shift_average"]["metrics"]["acc1"],
    ]
    assert d["points"]["ours"].tolist() == [point] and d["labels"]["ours"] == ["tiny (random)"]
    fit = robustness.baseline_fits()["average"]
    assert np.allclose(d["baseline"][:, 1], fit.predict(d["baseline"][:, 0]), rtol=0, atol=1e-12)


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

    # No config.json beside these checkpoints: --model says what they hold, and is checked against them.
    with pytest.raises(
        ValueError,
        match=r"does not hold this model: \S+ has shape \([\d, ]+\) in the checkpoint, \([\d, ]+\) in the",
    ):
        cli.load_model(args("ViT-B-32"))


@pytest.fixture(scope="module")
def tiny_run(synth_dir, tmp_path_factory) -> Path:
    """A training workdir as the README's main job makes it (configs/synthetic_tiny.py, the model inline
    in its config.json), trained 2 steps on the tiny synthetic split at a smaller width."""
    from clip_jax.sweep.spec import load_module
    from clip_jax.train.loop import train

    config = load_module(str(ROOT / "configs" / "synthetic_tiny.py")).get_config(
        "steps=2,batch=8,warmup=1,width=32,layers=1"
    )
    config.data.name, config.data.data_dir, config.data.shuffle_buffer = "tiny", synth_dir, 16
    config.evals = {}
    workdir = tmp_path_factory.mktemp("runs") / "synthetic_tiny"
    train(config, str(workdir))
    return workdir


def _run_params(run: Path):
    """The run's model (from its config.json, by the trainer's own resolution) and its step-2 params."""
    from clip_jax.checkpoint import restore_params
    from clip_jax.models import CLIP
    from clip_jax.train.config import resolve_model_config

    cfg = resolve_model_config(json.loads((run / "config.json").read_text())["model"])
    params, step_dir = restore_params(run)
    assert step_dir.name == "2"
    return CLIP(cfg), params


@pytest.mark.parametrize(
    "tool, args",
    [
        (zeroshot, ["--dataset", SYNTH, "--task", "shape"]),
        (linear_probe, ["--dataset", SYNTH, "--task", "color", "--C", "1.0"]),
        (retrieval, ["--dataset", SYNTH, "--split", "test"]),
        ("robustness", ["--dataset", SYNTH, "--splits", "test,noise", "--task", "shape"]),
    ],
    ids=["zeroshot", "linear_probe", "retrieval", "robustness"],
)
def test_eval_clis_evaluate_a_training_workdir_without_model(tool, args, tiny_run, synth_dir, monkeypatch):
    """--checkpoint WORKDIR (relative, absolute, its checkpoints/ or its step folder): the model comes from
    the workdir's config.json (an inline model no --model names), and the numbers are the evaluator's on
    the run's own params."""
    from clip_jax.eval import robustness
    from clip_jax.eval.common import evaluator_class

    tool = robustness if tool == "robustness" else tool
    common = [*args, "--data-dir", synth_dir, "--batch-size", "16", "--max-batches", "2"]
    monkeypatch.chdir(tiny_run.parent)
    forms = ["synthetic_tiny", str(tiny_run)]
    if tool is zeroshot:
        forms += ["synthetic_tiny/checkpoints", str(tiny_run / "checkpoints" / "2")]
    results = [tool.main(["--checkpoint", form, *common]) for form in forms]
    results = [r if isinstance(r, list) else [r] for r in results]
    for records in results:
        assert [r["metrics"] for r in records] == [r["metrics"] for r in results[0]]
        assert {(r["model"], r["pretrained"]) for r in records} == {("custom", "synthetic_tiny@2")}

    # The same evaluation built from the run's config and params by hand.
    model, params = _run_params(tiny_run)
    kind = {zeroshot: "zeroshot", linear_probe: "linear_probe", retrieval: "retrieval"}.get(
        tool, "robustness"
    )
    parser_args = dict(zip(args[::2], args[1::2], strict=True))
    fields = {k.lstrip("-").replace("-", "_"): v for k, v in parser_args.items()}
    fields |= {"data_dir": synth_dir, "batch_size": 16, "max_batches": 2}
    if "C" in fields:
        fields["C"] = float(fields["C"])
    metrics = evaluator_class(kind)(fields, model).run(params)
    got = results[0][0]["metrics"] if tool is not robustness else {r["dataset"]: r for r in results[0]}
    if tool is robustness:
        for split, m in metrics["datasets"].items():
            assert got[split]["metrics"]["acc1"] == m["acc1"]
    else:
        assert {k: got[k] for k in metrics if not isinstance(metrics[k], (list, dict))} == {
            k: v for k, v in metrics.items() if not isinstance(v, (list, dict))
        }


def test_predict_and_convert_take_a_training_workdir(tiny_run, monkeypatch, capsys):
    """predict and convert read the run's model from its config.json, relative or absolute; convert's
    output holds exactly the run's params and loads back without --model."""
    import jax
    from PIL import Image

    from clip_jax import convert, predict
    from clip_jax.weights import load_pretrained

    model, params = _run_params(tiny_run)
    monkeypatch.chdir(tiny_run.parent)
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save("grey.png")
    labels = "a photo of a red circle,a photo of a blue square,a photo of a green triangle"
    want = predict.predict(model, params, "grey.png", labels.split(","))
    for form in ("synthetic_tiny", str(tiny_run / "checkpoints" / "2")):
        got = predict.main(["--checkpoint", form, "--image", "grey.png", "--labels", labels])
        assert np.array_equal(got, want)

    out = convert.main(["--checkpoint", "synthetic_tiny", "--output", "exported/tiny.safetensors"])
    assert "custom(vision 1x32 p8@32" in capsys.readouterr().out
    loaded_model, loaded = load_pretrained(None, out)  # its open_clip_config.json says the model
    assert loaded_model.cfg == model.cfg
    leaves = zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True)
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    assert all(np.array_equal(np.asarray(a), b) for a, b in leaves)
    orbax = convert.main(["--checkpoint", str(tiny_run), "--output", str(tiny_run.parent / "orbax_out")])
    assert load_pretrained(None, orbax)[0].cfg == model.cfg
