"""EMA of the parameters (config.ema_decay, clip_jax/train/ema.py): the jitted step's update against numpy,
training itself unchanged by it, the state layout without EMA that of older checkpoints, an interrupted and
resumed run equal to an uninterrupted one bitwise (params and EMA), evaluations on the EMA params under
eval_ema/, and init_from / restore_params taking either. Tiny in-process runs on random batches."""

from __future__ import annotations

import json

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip_jax.checkpoint import Checkpointer, abstract_layout, abstract_like, restore_params
from clip_jax.models import init_params
from clip_jax.models.clip import CLIP
from clip_jax.models.config import get_model_config
from clip_jax.train.config import default_config, validate_config
from clip_jax.train.loop import TrainLoop, train
from clip_jax.train.optim import make_optimizer
from clip_jax.train.step import TrainState, init_train_state, make_train_step

DECAY, STEPS = 0.9, 4


def tiny_config(**changes):
    c = default_config()
    settings = {
        "model": "tiny",
        "batch_size": 8,
        "total_steps": STEPS,
        "checkpoint_every": 2,
        "log_every": 1,
        "lr": 1e-3,
        "warmup_steps": 1,
        "schedule": "const",
        "report_to": (),
        "ema_decay": DECAY,
        "ema_warmup": True,
        **changes,
    }
    for k, v in settings.items():
        c[k] = v
    return c


def host(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def assert_bitwise(a, b) -> None:
    a, b = host(a), host(b)
    assert len(a) == len(b) > 10
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def random_batch(i: int, cfg) -> dict:
    rng = np.random.default_rng(i)
    size = cfg.vision.image_size
    return {
        "image": jnp.asarray(rng.normal(size=(8, size, size, 3)), jnp.float32),
        "text": jnp.asarray(rng.integers(1, cfg.text.vocab_size, (8, cfg.text.context_length)), jnp.int32),
    }


def run_steps(ema_decay: float, ema_warmup: bool, steps: int = 3):
    """The jitted step `steps` times from the same start: the states after each step."""
    cfg = get_model_config("tiny")
    model = CLIP(cfg)
    params = init_params(model, jax.random.PRNGKey(0))
    tx, _ = make_optimizer(params, lr=1e-2, total_steps=10, warmup_steps=0, schedule="const")
    step = jax.jit(make_train_step(model, tx, ema_decay=ema_decay, ema_warmup=ema_warmup))
    state = init_train_state(params, tx, jax.random.PRNGKey(1), ema=ema_decay > 0)
    states, metrics = [jax.device_get(state)], {}
    for i in range(steps):
        state, metrics = step(state, random_batch(i, cfg))
        states.append(jax.device_get(state))
    return states, jax.device_get(metrics)


@pytest.mark.parametrize("warmup", [False, True])
def test_step_updates_the_ema_as_numpy_computes_it(warmup):
    states, metrics = run_steps(DECAY, warmup)
    ema = [np.asarray(p, np.float32) for p in host(states[0].params)]
    for t, state in enumerate(states[1:]):
        decay = min(DECAY, (1 + t) / (10 + t)) if warmup else DECAY
        ema = [e - np.float32(1 - decay) * (e - p) for e, p in zip(ema, host(state.params), strict=True)]
        for want, got in zip(ema, host(state.ema_params), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert float(metrics["ema_decay"]) == pytest.approx(min(DECAY, 3 / 12) if warmup else DECAY)
    # The EMA has moved away from both the initial and the current params (the test can fail).
    assert not np.allclose(host(states[-1].ema_params)[0], host(states[-1].params)[0])


def test_ema_leaves_training_unchanged_and_is_absent_when_off():
    with_ema, _ = run_steps(DECAY, True)
    without, metrics = run_steps(0.0, False)
    assert_bitwise(with_ema[-1].params, without[-1].params)
    assert_bitwise(with_ema[-1].opt_state, without[-1].opt_state)
    assert type(without[-1]) is TrainState and "ema_decay" not in metrics
    layout = abstract_layout(without[-1])
    assert not any(k.startswith("ema_params") for k in layout)
    assert {k for k in abstract_layout(with_ema[-1]) if k.startswith("ema_params/")} == {
        f"ema_params/{k.split('/', 1)[1]}" for k in layout if k.startswith("params/")
    }


@flax.struct.dataclass
class StateBeforeEma:
    """TrainState as it was before EMA existed: the layout of the checkpoints written then."""

    step: jax.Array
    params: dict
    opt_state: dict
    rng: jax.Array


def test_a_checkpoint_from_before_ema_restores_into_the_state_without_ema(tmp_path):
    (state,), _ = run_steps(0.0, False, steps=0)
    old = StateBeforeEma(state.step, state.params, state.opt_state, state.rng)
    ckpt = Checkpointer(tmp_path / "checkpoints", async_save=False)
    ckpt.save(1, jax.device_put(old), {"processes": []})
    ckpt.wait()
    abstract = jax.eval_shape(lambda s: s, state)
    replicated = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
    step, restored, _ = ckpt.restore_newest(abstract_like(abstract, replicated))
    ckpt.close()
    assert step == 1 and type(restored) is TrainState
    assert_bitwise(restored, state)


class ParamSum:
    """An evaluator whose metric is the sum of the params it is given: shows which params it ran on."""

    def run(self, params, *, checkpoint_id=None):
        return {"param_sum": float(sum(np.sum(np.asarray(x, np.float64)) for x in jax.tree.leaves(params)))}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """An EMA run of STEPS steps with checkpoints at 2 and 4, evaluated (ParamSum) at the end."""
    workdir = tmp_path_factory.mktemp("ema") / "run"
    config = tiny_config()
    config.evals.sums = {"type": "zeroshot", "dataset": "clip_synthetic"}
    patch = pytest.MonkeyPatch()
    patch.setattr("clip_jax.eval.common.make_evaluators", lambda *a, **k: {"sums": ParamSum()})
    try:
        state = train(config, str(workdir))
    finally:
        patch.undo()
    return workdir, jax.device_get(state)


def test_evaluators_run_on_the_ema_params_under_their_own_prefix(uninterrupted):
    workdir, state = uninterrupted
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = {k: v for r in records for k, v in r.items() if k.startswith("eval")}
    assert evals["eval/sums/param_sum"] == pytest.approx(ParamSum().run(state.params)["param_sum"])
    assert evals["eval_ema/sums/param_sum"] == pytest.approx(ParamSum().run(state.ema_params)["param_sum"])
    assert evals["eval/sums/param_sum"] != evals["eval_ema/sums/param_sum"]
    assert [r["ema_decay"] for r in records if "loss" in r] == pytest.approx(
        [min(DECAY, (1 + t) / (10 + t)) for t in range(STEPS)]
    )


def test_interrupted_and_resumed_run_equals_the_uninterrupted_one_bitwise(
    uninterrupted, tmp_path, monkeypatch
):
    _, want = uninterrupted
    workdir = tmp_path / "run"

    def preempt_at_2(loop, step):
        loop.preempted = loop.preempted or step >= 2
        return loop.preempted

    with monkeypatch.context() as m:
        m.setattr(TrainLoop, "_stop_requested", preempt_at_2)
        first = train(tiny_config(), str(workdir))
    assert int(first.step) == 2
    got = jax.device_get(train(tiny_config(), str(workdir)))
    assert int(got.step) == STEPS
    assert_bitwise(got.params, want.params)
    assert_bitwise(got.ema_params, want.ema_params)
    assert_bitwise(got.opt_state, want.opt_state)


def test_init_from_and_restore_params_take_either(uninterrupted, tmp_path):
    workdir, state = uninterrupted
    params, _ = restore_params(workdir)
    ema, _ = restore_params(workdir, which="ema_params")
    assert_bitwise(params, state.params)
    assert_bitwise(ema, state.ema_params)
    # A run started from the EMA params: one step at a negligible lr (a run takes at least one) leaves
    # its params at them, and away from the run's final params.
    child = train(
        tiny_config(init_from=str(workdir), init_from_ema=True, total_steps=1, lr=1e-30, ema_decay=0.0),
        str(tmp_path / "child"),
    )
    for a, b in zip(host(child.params), host(ema), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not all(np.allclose(a, b) for a, b in zip(host(child.params), host(params), strict=True))


def test_convert_exports_either(uninterrupted, tmp_path):
    from clip_jax.convert import main as convert
    from clip_jax.weights import params_io

    workdir, state = uninterrupted
    for flags, want in (([], state.params), (["--ema"], state.ema_params)):
        out = convert(["--input", str(workdir), *flags, "--output", str(tmp_path / f"out{len(flags)}")])
        assert_bitwise(params_io.load_params(out)[1], want)


def test_a_run_without_ema_has_no_ema_to_restore_or_export(tmp_path):
    from clip_jax.cli_errors import UserError
    from clip_jax.convert import main as convert

    train(tiny_config(ema_decay=0.0, total_steps=1, checkpoint_every=1), str(tmp_path / "plain"))
    with pytest.raises(ValueError, match=r"checkpoints/1 holds no ema_params: .*config.ema_decay"):
        restore_params(tmp_path / "plain", which="ema_params", expected=None)
    with pytest.raises(ValueError, match=r"checkpoints/1 holds no ema_params"):
        convert(["--input", str(tmp_path / "plain"), "--ema", "--output", str(tmp_path / "out")])
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(UserError, match="--ema: .*w.safetensors is not a clip_jax training run"):
        convert(["--input", str(weights), "--ema", "--output", str(tmp_path / "out")])


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("ema_decay", 1.0, r"config.ema_decay=1.0 must be in \[0, 1\)"),
        ("ema_decay", -0.1, r"config.ema_decay=-0.1 must be in \[0, 1\)"),
        ("init_from_ema", True, "config.init_from_ema is set but config.init_from is empty"),
    ],
)
def test_config_errors_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        validate_config(tiny_config(**{field: value}))


def test_init_from_ema_of_a_weights_file_is_an_error(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    config = tiny_config(init_from=str(weights), init_from_ema=True, total_steps=1)
    with pytest.raises(
        ValueError, match="config.init_from_ema is set but config.init_from=.* is not a clip_jax"
    ):
        train(config, str(tmp_path / "w"))
