"""Config files use their argument (`--config FILE:key=value,...`), and every shipped config validates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from clip_jax.train.config import parse_arg, validate_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("[!_]*.py"))


def load_config_module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parse_arg_reads_each_value_as_its_defaults_type():
    a = parse_arg(
        "steps=10, lr=1, name=b, flag=false, shape=(4, 8), items=[1,2]",
        steps=200,
        lr=1e-3,
        name="a",
        flag=True,
        shape=(1, 2),
        items=[0],
    )
    assert a.to_dict() == {
        "steps": 10,
        "lr": 1.0,
        "name": "b",
        "flag": False,
        "shape": (4, 8),
        "items": [1, 2],
    }
    assert isinstance(a.lr, float)
    assert parse_arg(None, steps=3).steps == 3 and parse_arg("", steps=3).steps == 3


@pytest.mark.parametrize(
    "arg, message",
    [
        ("stepz=3", "stepz=3"),
        ("steps", "expected key=value"),
        ("steps=ten", "not a int"),
        ("flag=2", "true or false"),
    ],
)
def test_parse_arg_names_the_bad_item(arg, message):
    with pytest.raises(ValueError, match=message):
        parse_arg(arg, steps=200, flag=True)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_validate_with_and_without_an_argument(path):
    module = load_config_module(path)
    if path.stem == "default":  # names no training data: the error says which field to set
        for config in (module.get_config(), module.get_config(None)):
            with pytest.raises(ValueError, match=r"config\.data\.source='': set it .*'random'"):
                validate_config(config)
        validate_config(module.get_config("data=random,steps=20"))
        return
    validate_config(module.get_config())
    validate_config(module.get_config(None))


def test_synthetic_tiny_argument_changes_the_run():
    module = load_config_module(next(p for p in CONFIGS if p.stem == "synthetic_tiny"))
    base = module.get_config()
    c = module.get_config("steps=10,loss=sigmoid,patch=4,width=64")
    model = validate_config(c)
    assert (c.total_steps, c.warmup_steps, c.loss) == (10, 10, "sigmoid")
    assert model.vision.patch_size == 4 and model.embed_dim == 64 and model.text.heads == 2
    assert model.init_logit_bias == -10.0
    # Unchanged fields keep the defaults.
    assert c.batch_size == base.batch_size and c.lr == base.lr
    assert validate_config(base).init_logit_bias is None
