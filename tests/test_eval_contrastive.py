"""The contrastive validation evaluator: its losses equal the trainer's dense losses on the same features,
its in-batch accuracies a direct numpy argmax, fixed batches drop the partial one, and a run through
make_evaluators and through the command line on the synthetic dataset's tiny split agrees with the model's
own features scored in numpy."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from clip_jax.eval.common import check_evals_config, make_evaluators
from clip_jax.eval.contrastive import LOSS_KINDS, batch_metrics, fixed_batches, main
from clip_jax.models import CLIP, get_model_config, random_params
from clip_jax.train import losses

SYNTH = "clip_synthetic/tiny"
SYNTH_TEST_SIZE = 32  # examples in clip_synthetic/tiny's test split


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    from clip_jax.data import prepare_synthetic

    path = tmp_path_factory.mktemp("tfds")
    prepare_synthetic(path, config="tiny")
    return str(path)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _pairs(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit features where the first half of the texts sit near their images, the rest are random."""
    rng = np.random.default_rng(seed)
    img = _unit(rng.normal(size=(n, dim)))
    txt = _unit(rng.normal(size=(n, dim)))
    txt[: n // 2] = _unit(img[: n // 2] + 0.3 * txt[: n // 2])
    return img.astype(np.float32), txt.astype(np.float32)


def test_loss_kinds_are_the_trainers():
    assert LOSS_KINDS == losses.LOSS_KINDS


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_loss_equals_the_trainers_dense_loss(kind):
    img, txt = _pairs(24, 16, seed=1)
    scale, bias = np.float32(12.0), np.float32(-4.0)
    got = float(batch_metrics(img, txt, scale, bias if kind == "sigmoid" else None, kind=kind)["loss"])
    want = float(losses.contrastive_loss(kind, img, txt, scale, bias))
    assert got == pytest.approx(want, rel=1e-6)
    # Not a constant: other features give another loss.
    other = float(batch_metrics(*_pairs(24, 16, seed=2), scale, bias, kind=kind)["loss"])
    assert other != pytest.approx(got, rel=1e-3)


def test_accuracies_equal_a_numpy_argmax():
    img, txt = _pairs(20, 8, seed=3)
    out = batch_metrics(img, txt, np.float32(5.0), None, kind="softmax")
    cos = img.astype(np.float64) @ txt.T.astype(np.float64)
    i2t = np.mean(cos.argmax(axis=1) == np.arange(20))
    t2i = np.mean(cos.argmax(axis=0) == np.arange(20))
    assert 0.4 <= i2t < 1 and 0.4 <= t2i < 1  # the near half is found, the random half mostly not
    assert float(out["image_to_text_acc1"]) == pytest.approx(i2t)
    assert float(out["text_to_image_acc1"]) == pytest.approx(t2i)


def test_fixed_batches_keep_order_and_drop_the_partial_batch():
    rows = np.arange(12, dtype=np.float32)[:, None]
    chunks = [(rows[a:b], -rows[a:b]) for a, b in ((0, 3), (3, 8), (8, 12))]
    out = list(fixed_batches(chunks, 5))
    assert [b[0][:, 0].tolist() for b in out] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert all(np.array_equal(i, -t) for i, t in out)


def _direct(model, params, synth_dir: str, batch_size: int) -> dict[str, float]:
    """The metrics scored in numpy from the model's own features of (image, first caption) pairs."""
    from clip_jax.data import make_retrieval_dataset

    ds = make_retrieval_dataset(
        SYNTH, "test", batch_size=16, image_size=32, data_dir=synth_dir, captions_per_image=1
    )
    imgs, txts = [], []
    for batch in ds:
        keep = np.asarray(batch["mask"], bool)
        imgs.append(model.apply({"params": params}, batch["image"], method=CLIP.encode_image)[keep])
        txts.append(model.apply({"params": params}, batch["text"][:, 0], method=CLIP.encode_text)[keep])
    img = _unit(np.concatenate(imgs).astype(np.float64))
    txt = _unit(np.concatenate(txts).astype(np.float64))
    scale = float(np.exp(params["logit_scale"]))
    sums = {"loss": 0.0, "image_to_text_acc1": 0.0, "text_to_image_acc1": 0.0, "near_ties": 0.0}
    n = img.shape[0] // batch_size
    for k in range(n):
        i, t = img[k * batch_size : (k + 1) * batch_size], txt[k * batch_size : (k + 1) * batch_size]
        logits = scale * i @ t.T
        lse1 = np.log(np.exp(logits).sum(axis=1))
        lse0 = np.log(np.exp(logits).sum(axis=0))
        sums["loss"] += np.mean(0.5 * ((lse1 - np.diag(logits)) + (lse0 - np.diag(logits))))
        target = np.arange(batch_size)
        sums["image_to_text_acc1"] += np.mean(logits.argmax(axis=1) == target)
        sums["text_to_image_acc1"] += np.mean(logits.argmax(axis=0) == target)
        # A random model's cosines lie close together: rows whose top two are within float32 noise may
        # rank differently in two float32 paths.
        top2 = np.sort(np.concatenate([logits, logits.T]), axis=1)[:, -2:]
        sums["near_ties"] += np.sum(top2[:, 1] - top2[:, 0] < 1e-4 * scale) / batch_size
    return {k: v / n for k, v in sums.items()} | {"num_examples": n * batch_size}


def test_make_evaluators_runs_it_on_the_synthetic_tiny_split(synth_dir):
    model = CLIP(get_model_config("tiny"))
    params = random_params(model, seed=0)
    evals = {"val": {"type": "contrastive", "dataset": SYNTH, "data_dir": synth_dir, "batch_size": 12}}
    check_evals_config(evals)
    out = make_evaluators(evals, model)["val"].run(params)
    want = _direct(model, params, synth_dir, 12)
    assert out["num_examples"] == 24 == want["num_examples"]  # 32 pairs: two batches of 12, 8 dropped
    assert out["loss"] == pytest.approx(want["loss"], rel=1e-5)
    for key in ("image_to_text_acc1", "text_to_image_acc1"):
        assert abs(out[key] - want[key]) <= want["near_ties"] + 1e-9, (key, out[key], want)


def test_config_errors_name_the_field(synth_dir):
    model = CLIP(get_model_config("tiny"))
    base = {"type": "contrastive", "dataset": SYNTH, "data_dir": synth_dir}
    with pytest.raises(ValueError, match=r"config\.evals\.val\.loss='sigmoid' needs a model with a logit"):
        make_evaluators({"val": base | {"loss": "sigmoid"}}, model)
    with pytest.raises(ValueError, match=r"config\.evals\.val\.loss='l2'; choose"):
        make_evaluators({"val": base | {"loss": "l2"}}, model)
    with pytest.raises(ValueError, match=r"config\.evals\.val\.batch_size=64 is more than the 32 pairs"):
        make_evaluators({"val": base | {"batch_size": 64}}, model)


def test_command_line_record_and_one_line_error(synth_dir, tmp_path, capsys):
    from clip_jax.cli_errors import run_cli
    from clip_jax.eval.results import read_records

    out = tmp_path / "val.json"
    common = ["--model", "tiny", "--dataset", SYNTH, "--data-dir", synth_dir, "--output", str(out)]
    record = main([*common, "--batch-size", "16", "--max-batches", "1"])
    assert record["task"] == "contrastive" and record["loss"] == "softmax" and record["batch_size"] == 16
    assert record["metrics"]["num_examples"] == 16 and np.isfinite(record["metrics"]["loss"])
    assert read_records([out])[0]["metrics"] == record["metrics"]
    assert run_cli(main, "clip_jax.eval.contrastive", [*common, "--batch-size", "40"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"clip_jax.eval.contrastive: error: --batch-size=40 is more than the {SYNTH_TEST_SIZE} pairs read "
        f"from {SYNTH}; lower it or read more (split, max_batches)"
    ]


def test_softmax_and_sigmoid_differ_on_a_siglip_model(synth_dir):
    """A model with a logit bias defaults to the sigmoid loss; loss="softmax" scores the other one."""
    model = CLIP(dataclasses.replace(get_model_config("tiny"), init_logit_bias=-10.0))
    params = random_params(model, seed=0)
    data = {
        "type": "contrastive",
        "dataset": SYNTH,
        "data_dir": synth_dir,
        "batch_size": 16,
        "max_batches": 1,
    }
    evaluators = make_evaluators({"sig": data, "soft": data | {"loss": "softmax"}}, model)
    assert evaluators["sig"].loss == "sigmoid"
    sig, soft = evaluators["sig"].run(params), evaluators["soft"].run(params)
    assert np.isfinite(sig["loss"]) and np.isfinite(soft["loss"]) and sig["loss"] != soft["loss"]
    assert sig["image_to_text_acc1"] == soft["image_to_text_acc1"]  # the bias does not change rankings


def test_the_trainer_scores_its_own_loss(synth_dir, tmp_path):
    """In training the evaluation's loss defaults to config.loss, not to the model's: a softmax run of a
    model with a logit bias (whose own default would be sigmoid) logs the softmax validation loss."""
    from clip_jax.eval.contrastive import Contrastive
    from clip_jax.train.config import default_config
    from clip_jax.train.loop import train
    from clip_jax.weights.training_run import load_training_run

    c = default_config()
    with c.ignore_type():
        c.model = {"base": "tiny", "init_logit_bias": -10.0}
    c.loss, c.batch_size, c.total_steps, c.warmup_steps = "softmax", 8, 2, 1
    c.log_every = c.checkpoint_every = 2
    fields = {"dataset": SYNTH, "data_dir": synth_dir, "batch_size": 16}
    c.evals.val = {"type": "contrastive", **fields}
    train(c, str(tmp_path), devices=jax.devices()[:1])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "eval/val/loss" in r]
    assert [r["step"] for r in logged] == [2] and logged[0]["eval/val/num_examples"] == SYNTH_TEST_SIZE
    cfg, params, _ = load_training_run(str(tmp_path), None, None)
    model = CLIP(cfg)
    softmax = Contrastive(fields | {"loss": "softmax"}, model).run(params)
    sigmoid = Contrastive(fields, model).run(params)
    assert logged[0]["eval/val/loss"] == pytest.approx(softmax["loss"], rel=1e-6)
    assert sigmoid["loss"] != pytest.approx(softmax["loss"], rel=1e-2)
    assert logged[0]["eval/val/image_to_text_acc1"] == softmax["image_to_text_acc1"]
