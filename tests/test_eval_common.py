"""The evaluator interface: configs checked with errors that name the field, every type built from its
config and run on params with the same results as the library functions, and all four run by the trainer
from `config.evals`."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from clip_jax.eval.common import check_evals_config, flat_scalars, make_evaluators
from clip_jax.models import CLIP, get_model_config, random_params

SYNTH = "clip_synthetic/tiny"


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    from clip_jax.data import prepare_synthetic

    path = tmp_path_factory.mktemp("tfds")
    prepare_synthetic(path, config="tiny")
    return str(path)


@pytest.fixture(scope="module")
def tiny():
    model = CLIP(get_model_config("tiny"))
    return model, random_params(model, seed=0)


def evals(synth_dir: str) -> dict:
    data = {"dataset": SYNTH, "data_dir": synth_dir, "batch_size": 16}
    return {
        "shape": {"type": "zeroshot", "task": "shape", **data},
        "shift": {"type": "robustness", "splits": "test,sketch", "task": "color", **data},
        "probe": {"type": "linear_probe", "task": "color", "C": 1.0, **data},
        "ret": {"type": "retrieval", "split": "test", **data},
    }


@pytest.mark.parametrize(
    "evals_config, message",
    [
        (
            {"a": {"type": "zeroshoot", "dataset": "imagenet1k"}},
            r"config\.evals\.a\.type='zeroshoot'; choose",
        ),
        ({"a": {"dataset": "imagenet1k"}}, r"config\.evals\.a\.type is required"),
        ({"a": {"type": "zeroshot", "datset": "x"}}, r"unknown field config\.evals\.a\.datset"),
        ({"a": {"type": "linear_probe"}}, r"config\.evals\.a\.dataset is required"),
        ({"a": {"type": "zeroshot", "dataset": "x", "batch_size": 0}}, r"config\.evals\.a\.batch_size"),
        ({"a": "zeroshot"}, r"config\.evals\.a must be a dict"),
    ],
)
def test_eval_config_errors_name_the_field(evals_config, message):
    with pytest.raises(ValueError, match=message):
        check_evals_config(evals_config)


def test_a_task_on_a_single_label_dataset_is_an_error(tiny):
    with pytest.raises(ValueError, match="single label"):
        make_evaluators({"a": {"type": "zeroshot", "dataset": "cifar10", "task": "shape"}}, tiny[0])


def test_every_type_runs_and_agrees_with_the_library_functions(synth_dir, tiny):
    from clip_jax.data import make_eval_dataset, zeroshot_tasks
    from clip_jax.eval.zeroshot import zeroshot_eval

    model, params = tiny
    check_evals_config(evals(synth_dir))
    evaluators = make_evaluators(evals(synth_dir), model)
    out = {name: e.run(params) for name, e in evaluators.items()}

    def direct(split: str, task: str) -> dict:
        ds = make_eval_dataset(SYNTH, split, batch_size=16, image_size=32, data_dir=synth_dir, label_key=task)
        return zeroshot_eval(model, params, ds, *zeroshot_tasks()[task])

    assert out["shape"] == direct("test", "shape")
    assert out["shift"]["datasets"]["sketch"] == direct("sketch", "color")
    assert (
        out["shift"]["reference"] == "test"
        and out["shift"]["average_shift_acc1"] == direct("sketch", "color")["acc1"]
    )
    assert 0 <= out["probe"]["acc1"] <= 1 and out["probe"]["C"] == 1.0
    assert out["ret"]["num_images"] == 32 and "image_retrieval_recall@1" in out["ret"]
    flat = flat_scalars(out["shift"], "shift/")
    assert flat["shift/datasets/sketch/acc1"] == out["shift"]["datasets"]["sketch"]["acc1"]
    assert not any("sweep" in k for k in flat_scalars(out["probe"]))  # lists are left out


def test_the_trainer_runs_every_type_from_config_evals(synth_dir, tmp_path):
    from clip_jax.train.config import default_config
    from clip_jax.train.loop import train

    c = default_config()
    c.model, c.batch_size, c.total_steps, c.warmup_steps = "tiny", 8, 2, 1
    c.log_every = c.checkpoint_every = 2
    for name, fields in evals(synth_dir).items():
        c.evals[name] = dict(fields, max_batches=1)
    train(c, str(tmp_path), devices=jax.devices()[:1])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if any(k.startswith("eval/") for k in r)]
    assert len(final) == 1 and final[0]["step"] == 2
    keys = set(final[0])
    for key in ("shape/acc1", "shift/datasets/sketch/acc1", "shift/average_shift_acc1", "probe/acc1"):
        assert f"eval/{key}" in keys, sorted(keys)
    assert "eval/ret/image_retrieval_recall@1" in keys
    assert all(np.isfinite(v) for k, v in final[0].items() if k.startswith("eval/"))
