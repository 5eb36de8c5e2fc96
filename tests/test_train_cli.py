"""`python -m clip_jax.train`: --help, --help_config, and bad inputs that end in one line and exit status 2.

The table runs in-process through `clip_jax.train.cli.run` (fast: the config files load once, training
never starts); two subprocesses check what a user sees at the real command line.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clip_jax.cli_errors import UserError
from clip_jax.train import cli, loop
from clip_jax.train.config import default_config, describe_fields, field_docs

REPO = Path(__file__).resolve().parents[1]
RANDOM = "configs/default.py:data=random,steps=4"  # the default config on noise batches: no tensorflow


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# (id, flags before --workdir, text the one-line error must contain). "{tmp}" is the test's tmp_path.
BAD_INPUTS = [
    ("no_config", [], "--config is required"),
    ("missing_config_file", ["--config", "{tmp}/nope.py"], "nope.py"),
    ("config_syntax_error", ["--config", "{tmp}/syntax.py"], "syntax.py"),
    ("config_without_get_config", ["--config", "{tmp}/empty.py"], "get_config"),
    ("config_import_error", ["--config", "{tmp}/imports.py"], "imports.py: No module named 'clip_jaxx'"),
    ("config_arg_unknown_key", ["--config", "configs/default.py:stepz=3"], "stepz=3"),
    ("config_arg_bad_value", ["--config", "configs/default.py:steps=ten"], "steps='ten'"),
    ("unknown_field", ["--config", RANDOM, "--config.lrr=3"], "lrr"),
    ("unknown_nested_field", ["--config", RANDOM, "--config.mesh.pipeline=2"], "pipeline"),
    ("bad_value_type", ["--config", RANDOM, "--config.lr=abc"], "--config.lr=abc"),
    ("unknown_flag", ["--config", RANDOM, "--bogus"], "bogus"),
    ("set_without_value", ["--config", RANDOM, "--set", "lr"], "--set 'lr'"),
    ("set_unknown_section", ["--config", RANDOM, "--set", "optim.lr=1"], "config.optim"),
    ("set_wrong_type", ["--config", RANDOM, "--set", "batch_size='big'"], "config.batch_size"),
    ("drop_missing_entry", ["--config", RANDOM, "--drop", "evals.nope"], "evals.nope"),
    ("no_data_source", ["--config", "configs/default.py"], "config.data.source"),
    ("unknown_data_source", ["--config", RANDOM, "--config.data.source=laion"], "config.data.source='laion'"),
    ("webdataset_without_path", ["--config", "configs/default.py:data=webdataset"], "'path'"),
    ("unknown_data_field", ["--config", "configs/default.py:data=tfds", "--set", "data.colour=1"], "colour"),
    ("bad_loss", ["--config", RANDOM, "--config.loss=hinge"], "config.loss"),
    ("bad_dtype", ["--config", RANDOM, "--config.dtype=int8"], "config.dtype"),
    ("warmup_longer_than_run", ["--config", RANDOM, "--config.warmup_steps=50"], "config.warmup_steps=50"),
    ("zero_batch", ["--config", RANDOM, "--config.batch_size=0"], "config.batch_size"),
    ("patch_dropout_one", ["--config", RANDOM, "--config.patch_dropout=1.0"], "config.patch_dropout"),
    ("bad_freeze_regex", ["--config", RANDOM, "--set", "freeze=('([',)"], "config.freeze"),
    (
        "unknown_model",
        ["--config", RANDOM, "--config.model=ViT-Q-99"],
        "config.model: unknown model 'ViT-Q-99'",
    ),
    ("missing_init_from", ["--config", RANDOM, "--config.init_from={tmp}/run0"], "config.init_from="),
    ("bad_report_to", ["--config", RANDOM, "--set", "report_to=('mlflow',)"], "config.report_to"),
    ("unknown_eval_type", ["--config", RANDOM, "--set", "evals.x={'type': 'nope'}"], "config.evals.x"),
    ("mesh_larger_than_devices", ["--config", RANDOM, "--config.mesh.data=3"], "config.mesh"),
]


@pytest.fixture
def config_files(tmp_path):
    write(tmp_path / "syntax.py", "def get_config(:\n")
    write(tmp_path / "empty.py", "X = 1\n")
    write(tmp_path / "imports.py", "import clip_jaxx\n")
    return tmp_path


@pytest.mark.parametrize("flags, named", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_ends_in_one_line_and_exit_2(flags, named, config_files, capsys):
    tmp = config_files
    workdir = tmp / "run"
    argv = [f.replace("{tmp}", str(tmp)) for f in flags] + (["--workdir", str(workdir)] if flags else [])
    assert cli.run(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("clip_jax.train: error: "), err
    assert named.replace("{tmp}", str(tmp)) in lines[0], err
    assert "Traceback" not in err
    assert not workdir.exists()  # every one of these is refused before the run writes anything


def test_unreadable_init_from_is_named(tmp_path, capsys):
    """A weights file that is not one fails when the run loads it (after the checkpoint directory is
    opened): one line naming the file and what it holds."""
    garbage = tmp_path / "weights.pt"
    garbage.write_text("garbage\n")
    argv = ["--config", RANDOM, "--config.model=tiny", "--config.batch_size=8"]
    argv += [f"--config.init_from={garbage}", "--workdir", str(tmp_path / "run")]
    assert cli.run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(garbage) in err[0] and "not a weights file" in err[0], err


def test_missing_workdir_is_named(capsys):
    assert cli.run(["--config", RANDOM]) == 2
    assert "--workdir is required" in capsys.readouterr().err


def test_debug_shows_the_exception(capsys):
    with pytest.raises(ValueError, match="config.loss"):
        cli.run(["--debug", "--config", RANDOM, "--config.loss=hinge", "--workdir", "/nonexistent/w"])
    with pytest.raises(UserError, match="lrr"):
        cli.run(["--config", RANDOM, "--config.lrr=1", "--workdir", "w", "--debug"])


def test_help_lists_the_flags_and_exits_0(capsys):
    assert cli.run(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--config", "--workdir", "--set", "--drop", "--help_config", "--verbose_libs", "--debug"):
        assert flag in out


def test_help_config_lists_every_field_with_its_default_and_meaning(capsys):
    """Generated from default_config's comments: a field added without one fails here."""
    docs = field_docs()
    config = default_config()
    expected = {
        f"{k}.{sub}" if isinstance(v, type(config)) and v else k: None
        for k, v in config.items()
        for sub in (v.keys() if isinstance(v, type(config)) and v else [None])
    }
    assert set(docs) == set(expected)
    undocumented = [name for name, doc in docs.items() if not doc.strip()]
    assert not undocumented, f"add a comment to default_config() for {undocumented}"
    assert cli.run(["--help_config"]) == 0
    out = capsys.readouterr().out
    assert out == describe_fields() + "\n"
    assert "  lr = 0.0005: peak learning rate" in out
    assert "  mesh.fsdp = 1: " in out and "  report_to = ('tensorboard',): " in out
    assert "data.source = 'random': " in out and "benchmark source" in out


def test_flags_reach_train(monkeypatch, tmp_path):
    """--config.x, --set and --drop build the config train() gets; library INFO logs are off by default."""
    seen = {}
    monkeypatch.setattr(loop, "train", lambda config, workdir: seen.update(config=config, workdir=workdir))
    argv = ["--config", RANDOM, "--workdir", str(tmp_path / "w"), "--config.lr=0.01"]
    argv += ["--set", "freeze=['^visual/']", "--set", "evals.probe={'type': 'zeroshot', 'dataset': 'd'}"]
    assert cli.run(argv) == 0
    config = seen["config"]
    assert (config.lr, config.freeze, config.total_steps) == (0.01, ("^visual/",), 4)
    assert config.evals.probe.dataset == "d" and seen["workdir"] == str(tmp_path / "w")
    assert logging.getLogger("absl").level == logging.WARNING
    assert logging.getLogger("orbax").level == logging.WARNING
    assert logging.getLogger("clip_jax").getEffectiveLevel() == logging.INFO
    assert cli.run([*argv, "--verbose_libs"]) == 0
    assert logging.getLogger("absl").level == logging.INFO


@pytest.fixture(scope="module")
def env():
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        JAX_PLATFORMS="cpu",
    )


def test_command_line_help_and_error(env, tmp_path):
    """At the real command line: --help exits 0; a config without data ends in exactly one stderr line
    (TensorFlow's C++ banners, printed while the config file imports it, are silenced) and no workdir."""
    help_run = subprocess.run(
        [sys.executable, "-m", "clip_jax.train", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert help_run.returncode == 0 and "--help_config" in help_run.stdout, help_run.stderr[-2000:]
    workdir = tmp_path / "w"
    bad = subprocess.run(
        [sys.executable, "-m", "clip_jax.train", "--config", "configs/default.py", "--workdir", str(workdir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()], bad.stderr
    assert "config.data.source" in bad.stderr and "random" in bad.stderr
    assert not workdir.exists()


def tensorboard_scalars(directory: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of `tag` in the event files: TFRecord framing (length, its CRC, data, CRC) read
    here, so that the check needs neither tensorflow nor tensorboard's reader."""
    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (size,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event.FromString(data[i + 12 : i + 12 + size])
            i += 12 + size + 4
            out += [(event.step, v.simple_value) for v in event.summary.value if v.tag == tag]
    return out


def test_metrics_reach_tensorboard_and_wandb_offline(tmp_path, monkeypatch):
    """config.report_to=("tensorboard", "wandb"): both get the run's train/ scalars (wandb offline)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    c = default_config()
    c.model, c.batch_size, c.total_steps, c.warmup_steps, c.log_every = "tiny", 8, 2, 1, 1
    c.checkpoint_every, c.report_to = 2, ("tensorboard", "wandb")
    workdir = tmp_path / "run"
    loop.train(c, str(workdir))
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    board = tensorboard_scalars(workdir / "tensorboard", "train/loss")
    assert [step for step, _ in board] == [r["step"] for r in logged if "loss" in r] == [1, 2]
    np.testing.assert_allclose([v for _, v in board], [r["loss"] for r in logged if "loss" in r], rtol=1e-6)
    # wandb 0.31 keeps no Python reader of its .wandb record log: its history records hold each key
    # and value as JSON text, so the logged keys and the final loss must appear in the file's bytes.
    (records,) = workdir.glob("wandb/offline-run-*/run-*.wandb")
    data = records.read_bytes()
    last = [r for r in logged if "loss" in r][-1]
    for key in ("train/loss", "train/grad_norm"):
        assert key.encode() in data
    assert json.dumps(last["loss"]).encode() in data
