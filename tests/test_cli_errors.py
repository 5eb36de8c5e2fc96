"""Every command-line tool but the trainer ends an expected error in one line (clip_jax/cli_errors.py).

A table of bad inputs to convert, predict, the four eval CLIs, the sweep launcher and the data tools: each
must exit with status 2, print exactly one line `<tool>: error: ...` naming the bad file, flag or value,
and no traceback. They run in-process through `run_cli` (fast); three subprocesses check the
`python -m` wiring and that `--debug` shows the traceback. The trainer's table is tests/test_train*.py's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from safetensors.numpy import save_file
from test_weights import random_tiny_params

from clip_jax import convert, predict
from clip_jax.cli_errors import run_cli
from clip_jax.data import synthetic, write_webdataset
from clip_jax.eval import linear_probe, retrieval, robustness, zeroshot
from clip_jax.sweep import cli as sweep_cli
from clip_jax.weights.open_clip import params_to_state_dict

ROOT = Path(__file__).resolve().parents[1]
PROG = {
    convert: "clip_jax.convert",
    predict: "clip_jax.predict",
    zeroshot: "clip_jax.eval.zeroshot",
    linear_probe: "clip_jax.eval.linear_probe",
    retrieval: "clip_jax.eval.retrieval",
    robustness: "clip_jax.eval.robustness",
    sweep_cli: "clip_jax.sweep",
    synthetic: "clip_jax.data.synthetic",
    write_webdataset: "clip_jax.data.write_webdataset",
}

SWEEP = """
from clip_jax.sweep import product
from clip_jax.train.config import default_config as get_config

def sweep(add):
    for run in product(lr=[1e-3, 3e-4]):
        add(**run)
"""


@pytest.fixture(scope="module")
def f(tmp_path_factory) -> SimpleNamespace:
    """The files the bad inputs point at: good ones beside damaged ones, made once."""
    from PIL import Image

    d = tmp_path_factory.mktemp("cli_errors")
    sd = params_to_state_dict(random_tiny_params())
    save_file(sd, str(d / "tiny.safetensors"))
    data = (d / "tiny.safetensors").read_bytes()
    (d / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (d / "empty.safetensors").write_bytes(b"")
    (d / "html.safetensors").write_text("<!DOCTYPE html><html>404 Not Found</html>\n")
    (d / "model.bin").write_bytes(b"PK\x03\x04 not really a zip")
    (d / "no_weights").mkdir()
    (d / "bad_json").mkdir()
    save_file(sd, str(d / "bad_json" / "open_clip_model.safetensors"))
    (d / "bad_json" / "open_clip_config.json").write_text('{"model_cfg": {"embed_dim": 64,')
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(d / "cat.png")
    png = (d / "cat.png").read_bytes()
    (d / "cut.png").write_bytes(png[: len(png) // 2])
    (d / "notes.png").write_text("not an image\n")
    (d / "a_file").write_text("a file, where a folder is expected\n")
    (d / "orbax" / "params").mkdir(parents=True)  # an existing params checkpoint
    # Training runs: config.json as the trainer writes it, without a finished step.
    for name, model in (("run_tiny", "tiny"), ("run_broken", None)):
        run = d / name
        (run / "checkpoints").mkdir(parents=True)
        (run / "metrics.jsonl").write_text("")
        text = json.dumps({"model": model, "total_steps": 3}) if model else '{"model": "tiny", '
        (run / "config.json").write_text(text)
    (d / "run_no_config" / "checkpoints").mkdir(parents=True)
    (d / "sweep.py").write_text(SWEEP)
    (d / "syntax_error.py").write_text("def sweep(add):\n    add(lr=\n")
    (d / "no_sweep.py").write_text("def get_config():\n    return None\n")
    (d / "sweep_fails.py").write_text("def sweep(add):\n    add(**[1])\n")
    return SimpleNamespace(**{p.name.replace(".", "_"): str(p) for p in d.iterdir()}, dir=str(d))


TINY = ["--model", "tiny"]
# A dataset the eval CLIs' data check passes (clip_synthetic is generated on first use, after the weights
# load): the weights' own errors come first. Its --data-dir is never written: every case fails before.
SYNTH = ["--dataset", "clip_synthetic", "--data-dir", "/nonexistent/tfds"]

# (tool, argv from the files `f`, what the message must name). One row per bad input.
# fmt: off
CASES = [
    # convert
    (convert, lambda f: ["--input", f.dir + "/missing.safetensors", "--output", f.dir + "/o"], ["missing.safetensors", "does not exist"]),
    (convert, lambda f: ["--input", f.cut_safetensors, "--model", "tiny", "--output", f.dir + "/o"], ["cut.safetensors", "truncated"]),
    (convert, lambda f: ["--input", f.empty_safetensors, "--model", "tiny", "--output", f.dir + "/o"], ["empty.safetensors", "0 bytes"]),
    (convert, lambda f: ["--input", f.html_safetensors, "--model", "tiny", "--output", f.dir + "/o"], ["html.safetensors", "not a safetensors file"]),
    (convert, lambda f: ["--input", f.tiny_safetensors, "--model", "nope", "--output", f.dir + "/o"], ["--model", "'nope'"]),
    (convert, lambda f: ["--input", f.tiny_safetensors, "--model", "ViT-B-32", "--output", f.dir + "/o"], ["tiny.safetensors", "ViT-B-32"]),
    (convert, lambda f: ["--input", f.tiny_safetensors, "--output", f.dir + "/o"], ["tiny.safetensors", "QuickGELU"]),
    (convert, lambda f: ["--input", f.tiny_safetensors, "--model", "tiny", "--output", "/proc/x.safetensors"], ["--output /proc/x.safetensors", "cannot write"]),
    (convert, lambda f: ["--input", f.tiny_safetensors, "--model", "tiny", "--output", "/proc/ckpt"], ["--output /proc/ckpt", "cannot write"]),
    (convert, lambda f: ["--input", f.tiny_safetensors, "--model", "tiny", "--output", f.a_file + "/x.safetensors"], ["a_file", "is a file"]),
    (convert, lambda f: ["--input", f.tiny_safetensors, "--model", "tiny", "--output", f.orbax], ["--output", "orbax", "--force"]),
    (convert, lambda f: ["--input", f.no_weights, "--output", f.dir + "/o"], ["no_weights", "no unique weights file"]),
    (convert, lambda f: ["--checkpoint", f.run_tiny, "--output", f.dir + "/o.safetensors"], ["run_tiny", "no complete checkpoint step"]),
    (convert, lambda f: ["--checkpoint", f.run_tiny, "--model", "ViT-B-32", "--output", f.dir + "/o.safetensors"], ["--model ViT-B-32", "config.json"]),
    (convert, lambda f: ["--checkpoint", f.run_broken, "--output", f.dir + "/o.safetensors"], ["run_broken/config.json", "--model"]),
    (convert, lambda f: ["--checkpoint", f.run_no_config, "--output", f.dir + "/o.safetensors"], ["run_no_config", "pass --model"]),
    # predict
    (predict, lambda f: ["--weights", f.tiny_safetensors, *TINY, "--image", f.dir + "/dog.png", "--labels", "a,b"], ["--image", "dog.png", "No such file"]),
    (predict, lambda f: ["--weights", f.tiny_safetensors, *TINY, "--image", f.notes_png, "--labels", "a,b"], ["notes.png", "cannot decode"]),
    (predict, lambda f: ["--weights", f.tiny_safetensors, *TINY, "--image", f.cut_png, "--labels", "a,b"], ["cut.png", "cannot decode"]),
    (predict, lambda f: ["--weights", f.tiny_safetensors, *TINY, "--image", f.dir, "--labels", "a,b"], ["cli_errors", "Is a directory"]),
    (predict, lambda f: ["--weights", f.tiny_safetensors, *TINY, "--image", f.cat_png, "--labels", " , ,"], ["--labels", "holds no label"]),
    (predict, lambda f: ["--weights", f.tiny_safetensors, *TINY, "--image", f.cat_png, "--labels", ""], ["--labels", "holds no label"]),
    (predict, lambda f: ["--weights", f.tiny_safetensors, "--model", "ViT-B-99", "--image", f.cat_png, "--labels", "a"], ["--model", "'ViT-B-99'"]),
    (predict, lambda f: ["--weights", f.dir + "/gone.pt", *TINY, "--image", f.cat_png, "--labels", "a"], ["gone.pt", "does not exist"]),
    (predict, lambda f: ["--weights", f.cut_safetensors, *TINY, "--image", f.cat_png, "--labels", "a"], ["cut.safetensors", "truncated"]),
    (predict, lambda f: ["--weights", f.model_bin, *TINY, "--image", f.cat_png, "--labels", "a"], ["model.bin", "cannot read"]),
    (predict, lambda f: ["--weights", f.bad_json, "--image", f.cat_png, "--labels", "a"], ["open_clip_config.json", "not valid JSON"]),
    (predict, lambda f: ["--checkpoint", f.run_tiny, "--model", "tiny-quickgelu", "--image", f.cat_png, "--labels", "a"], ["--model tiny-quickgelu", "config.json", "quick_gelu"]),
    # the eval CLIs: flags checked before anything is read, then weights, then the evaluation's own fields
    (zeroshot, lambda f: ["--weights", f.tiny_safetensors, "--checkpoint", f.run_tiny, *SYNTH], ["--weights", "--checkpoint", "not both"]),
    (zeroshot, lambda f: [*SYNTH], ["--weights", "--model"]),
    (zeroshot, lambda f: ["--model", "tiny-huge", *SYNTH], ["--model", "'tiny-huge'"]),
    (zeroshot, lambda f: ["--weights", f.dir + "/gone.safetensors", *SYNTH], ["gone.safetensors", "does not exist"]),
    (zeroshot, lambda f: ["--weights", f.html_safetensors, *TINY, *SYNTH], ["html.safetensors", "not a safetensors file"]),
    (zeroshot, lambda f: ["--checkpoint", f.dir + "/no_such_run", *SYNTH], ["no_such_run", "does not exist"]),
    (zeroshot, lambda f: ["--checkpoint", f.run_no_config, *SYNTH], ["run_no_config", "config.json", "pass --model"]),
    (zeroshot, lambda f: ["--checkpoint", f.run_tiny, "--model", "ViT-B-16", *SYNTH], ["--model ViT-B-16", "run_tiny/config.json"]),
    (zeroshot, lambda f: ["--checkpoint", f.run_tiny, "--quick-gelu", *SYNTH], ["--quick-gelu", "run_tiny/config.json"]),
    (zeroshot, lambda f: [*TINY, "--dataset", "no_such_set"], ["no_such_set"]),
    (zeroshot, lambda f: [*TINY, *SYNTH, "--batch-size", "0"], ["--batch-size", "0"]),
    (zeroshot, lambda f: [*TINY, *SYNTH, "--max-batches", "0"], ["--max-batches", "0"]),
    (linear_probe, lambda f: [*TINY, *SYNTH, "--C", "-1"], ["--C", "-1"]),
    (linear_probe, lambda f: [*TINY, *SYNTH, "--val-fraction", "1.5"], ["--val-fraction", "1.5"]),
    (linear_probe, lambda f: [*TINY, *SYNTH, "--max-iter", "0"], ["--max-iter", "0"]),
    (linear_probe, lambda f: ["--weights", f.empty_safetensors, *TINY, *SYNTH], ["empty.safetensors", "0 bytes"]),
    (retrieval, lambda f: [*TINY, "--dataset", "no_such_captions"], ["no_such_captions"]),
    (retrieval, lambda f: ["--checkpoint", f.run_broken, "--dataset", "clip_synthetic"], ["run_broken/config.json"]),
    (robustness, lambda f: [*TINY, "--datasets", "imagenet1k,no_such_shift"], ["no_such_shift"]),
    (robustness, lambda f: [*TINY, "--plot", f.dir + "/p.png", "--published", f.dir + "/gone.json"], ["--published", "gone.json"]),
    (robustness, lambda f: ["--model", "ViT-Q-1", "--datasets", "imagenet1k"], ["--model", "'ViT-Q-1'"]),
    # sweep: impossible launcher values are refused in the dry run too
    (sweep_cli, lambda f: ["--config", f.sweep_py, "--workdir", f.dir + "/sw", "--dry-run", "--parallel", "0"], ["--parallel 0", ">= 1"]),
    (sweep_cli, lambda f: ["--config", f.sweep_py, "--workdir", f.dir + "/sw", "--parallel", "-2"], ["--parallel -2"]),
    (sweep_cli, lambda f: ["--config", f.sweep_py, "--workdir", f.dir + "/sw", "--dry-run", "--cpus-per-run", "-1"], ["--cpus-per-run -1"]),
    (sweep_cli, lambda f: ["--config", f.sweep_py, "--workdir", f.dir + "/sw", "--dry-run", "--timeout-min", "0"], ["--timeout-min 0"]),
    (sweep_cli, lambda f: ["--config", f.sweep_py, "--workdir", f.dir + "/sw", "--dry-run", "--poll-s", "0"], ["--poll-s 0"]),
    (sweep_cli, lambda f: ["--config", f.sweep_py, "--workdir", f.dir + "/sw", "--dry-run", "--nodes", "0"], ["--nodes 0"]),
    (sweep_cli, lambda f: ["--config", f.sweep_py, "--workdir", f.dir + "/sw", "--dry-run", "--mem-gb", "-4"], ["--mem-gb -4"]),
    (sweep_cli, lambda f: ["--config", f.sweep_py, "--workdir", f.dir + "/sw", "--dry-run", "--time", "1"], ["--signal-delay-s 120", "--time 1"]),
    (sweep_cli, lambda f: ["--config", f.sweep_py, "--workdir", f.dir + "/sw", "--dry-run", "--sbatch", "=gpu"], ["--sbatch", "KEY=VALUE"]),
    (sweep_cli, lambda f: ["--config", f.sweep_py, "--workdir", f.dir + "/sw", "--dry-run", "--set", "lr"], ["--set 'lr'", "FIELD=VALUE"]),
    (sweep_cli, lambda f: ["--config", f.sweep_py, "--workdir", f.dir + "/sw", "--dry-run", "--only", "lr=9"], ["--only", "lr=9"]),
    (sweep_cli, lambda f: ["--config", f.dir + "/gone.py", "--workdir", f.dir + "/sw", "--dry-run"], ["gone.py", "does not exist"]),
    (sweep_cli, lambda f: ["--config", f.syntax_error_py, "--workdir", f.dir + "/sw", "--dry-run"], ["syntax_error.py", "SyntaxError"]),
    (sweep_cli, lambda f: ["--config", f.no_sweep_py, "--workdir", f.dir + "/sw", "--dry-run"], ["no_sweep.py", "no sweep(add)"]),
    (sweep_cli, lambda f: ["--config", f.sweep_fails_py, "--workdir", f.dir + "/sw", "--dry-run"], ["sweep_fails.py", "TypeError"]),
    # the data tools
    (synthetic, lambda f: ["--data_dir", f.a_file + "/tfds", "--config", "tiny"], ["--data_dir", "a_file/tfds"]),
    (synthetic, lambda f: ["--write_docs", "/proc/no/docs.md"], ["--write_docs /proc/no/docs.md"]),
    (write_webdataset, lambda f: ["--output_dir", f.dir + "/shards", "--config", "tiny", "--samples_per_shard", "0"], ["--samples_per_shard 0"]),
    (write_webdataset, lambda f: ["--output_dir", f.a_file + "/shards", "--config", "tiny", "--split", "test"], ["--output_dir", "a_file/shards"]),
]
# fmt: on


def _id(case) -> str:
    tool, argv, names = case
    return f"{PROG[tool].rsplit('.', 1)[-1]}-{names[-1]}"


@pytest.mark.parametrize("case", CASES, ids=[f"{i:02d}-{_id(c)}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_naming_it(case, f, capsys):
    tool, argv, names = case
    prog = PROG[tool]
    status = run_cli(getattr(tool, "exit_status", tool.main), prog, argv(f))
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}: ")]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: ") and err.endswith("\n"), err
    for name in names:
        assert name in lines[0], (name, lines[0])


def test_the_table_covers_every_tool():
    counts = {PROG[tool]: sum(t is tool for t, _, _ in CASES) for tool in PROG}
    assert len(CASES) >= 45 and min(counts.values()) >= 2, counts


def test_reading_a_torch_file_without_torch_says_so(f, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    argv = ["--input", f.model_bin, "--model", "tiny", "--output", f.dir + "/o"]
    assert run_cli(convert.main, "clip_jax.convert", argv) == 2
    assert capsys.readouterr().err == (
        f"clip_jax.convert: error: reading {f.model_bin} needs PyTorch (it is a torch pickle or "
        "TorchScript file); install torch, or convert the checkpoint to .safetensors where torch is available\n"
    )


def test_a_damaged_step_is_named_with_what_to_do(tmp_path, capsys, monkeypatch):
    """A step whose array data was cut short: orbax/tensorstore's error becomes one line naming the run,
    given relative."""
    import jax
    import optax

    from clip_jax.checkpoint import Checkpointer
    from clip_jax.models import stack_layers
    from clip_jax.train.step import init_train_state

    state = init_train_state(stack_layers(random_tiny_params()), optax.sgd(0.1), jax.random.key(0))
    ckpt = Checkpointer(tmp_path / "run" / "checkpoints", async_save=False)
    ckpt.save(1, state, {}, force=True)
    ckpt.close()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": "tiny"}))
    data = [p for p in (tmp_path / "run" / "checkpoints" / "1" / "state").rglob("*") if p.is_file()]
    for p in sorted(data, key=lambda p: p.stat().st_size)[-2:]:  # the largest files: the arrays
        p.write_bytes(p.read_bytes()[:100])
    monkeypatch.chdir(tmp_path)
    assert (
        run_cli(convert.main, "clip_jax.convert", ["--checkpoint", "run", "--output", "o.safetensors"]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("clip_jax.convert: error: cannot restore the params of training run run (")
    assert "name an older step folder" in err and err.count("\n") == 1 and "Traceback" not in err


def _python_m(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("CLIP_JAX_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_python_m_wiring_and_debug(f):
    """`python -m` goes through run_cli: one line and status 2; with --debug the traceback instead."""
    bad = ["--input", f.dir + "/missing.pt", "--output", f.dir + "/o"]
    done = _python_m("clip_jax.convert", *bad)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"clip_jax.convert: error: checkpoint {f.dir}/missing.pt does not exist"
    )
    debug = _python_m("clip_jax.convert", *bad, "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "FileNotFoundError" in debug.stderr
    sweep = _python_m(
        "clip_jax.sweep", "--config", f.sweep_py, "--workdir", f.dir + "/sw", "--dry-run", "--parallel", "0"
    )
    assert sweep.returncode == 2
    assert sweep.stderr.strip().splitlines()[-1] == "clip_jax.sweep: error: --parallel 0: must be >= 1"
