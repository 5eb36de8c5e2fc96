"""The benchmarks' plumbing: run_all.py's bookkeeping (what results.json keeps, refusing a Python without
the extras, which module renders each section), child-process results, and the GPU benchmark's sweep
variants, FLOP count and imports."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN_ALL = REPO / "benchmarks" / "run_all.py"


@pytest.fixture
def run_all(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("run_all_under_test", RUN_ALL)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setattr(sys, "path", list(sys.path))  # run_all puts benchmarks/ on it
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RESULTS_JSON", tmp_path / "results.json")
    monkeypatch.setattr(module, "RESULTS_MD", tmp_path / "RESULTS.md")
    monkeypatch.setattr(module, "RESULTS_GPU_MD", tmp_path / "RESULTS_GPU.md")
    return module


GOOD = {
    "quick": False,
    "date": "2026-01-01 00:00 UTC",
    "wall_s": 60.0,
    "load_before": 0.5,
    "load_after": 0.6,
    "xla_flags": "",
    "result": {
        "name": "tokenize 80k ImageNet prompts",
        "ours_per_s": 9e4,
        "theirs_per_s": 4e3,
        "ratio": 22.5,
    },
}


def _failure(quick: bool) -> dict:
    """What run_worker returns for a benchmark that failed: no result, an error."""
    record = {k: v for k, v in GOOD.items() if k != "result"}
    return {**record, "quick": quick, "date": "2026-01-02 00:00 UTC", "error": "exit status 1"}


def test_stored_record_never_loses_figures(run_all):
    failed = _failure(False)
    kept = run_all.stored_record(GOOD, failed)
    assert kept["result"] == GOOD["result"] and kept["date"] == GOOD["date"]
    assert kept["failed_attempt"] == {
        "date": "2026-01-02 00:00 UTC",
        "quick": False,
        "error": "exit status 1",
    }
    quick_ok = {**GOOD, "quick": True, "date": "2026-01-03 00:00 UTC"}
    assert run_all.stored_record(GOOD, quick_ok) is GOOD
    newer = {**GOOD, "date": "2026-01-04 00:00 UTC"}
    assert run_all.stored_record(kept, newer) is newer  # a success clears the noted failure
    assert run_all.stored_record(None, failed) is failed  # nothing to keep: the failure is the record


def test_failed_run_keeps_results_and_says_so(run_all, monkeypatch):
    run_all.RESULTS_JSON.write_text(json.dumps({"tokenizer": GOOD}))
    failure = _failure(True)
    monkeypatch.setattr(run_all, "run_worker", lambda name, quick: dict(failure))
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--quick", "--only", "tokenizer"])
    with pytest.raises(SystemExit, match="failed: tokenizer"):
        run_all.main()
    stored = json.loads(run_all.RESULTS_JSON.read_text())["tokenizer"]
    assert stored["result"] == GOOD["result"]
    assert stored["failed_attempt"]["error"] == "exit status 1"
    md = run_all.RESULTS_MD.read_text()
    assert "22.50x" in md and "FAILED and kept these figures" in md


def test_refuses_python_without_the_extras(run_all, monkeypatch):
    run_all.RESULTS_JSON.write_text(json.dumps({"tokenizer": GOOD}))
    before = run_all.RESULTS_JSON.read_text()
    monkeypatch.setattr(run_all, "REQUIRED_MODULES", ("jax", "no_such_module_for_this_test"))
    monkeypatch.setattr(run_all, "run_worker", lambda name, quick: pytest.fail("ran a benchmark"))
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--only", "tokenizer"])
    with pytest.raises(SystemExit, match="lacks no_such_module_for_this_test.*scripts/bench.sh"):
        run_all.main()
    assert run_all.RESULTS_JSON.read_text() == before and not run_all.RESULTS_MD.exists()


def test_cpu_sweep_and_model_rows_render_with_their_modules(run_all):
    """RESULTS.md's cpu_variants section comes from cpu_sweep.to_markdown, the inference one from
    bench_models.to_markdown (neither falls back to the generic table)."""
    row = {
        "name": "ViT-B-32 image tower, batch 4",
        "unit": "images/s",
        "ours_s": 0.5,
        "theirs_s": 1.0,
        "ours_per_s": 8.0,
        "theirs_per_s": 4.0,
        "ratio": 2.0,
        "cpu_ratio": 1.5,
        "compile_s": 3.0,
        "max_abs_diff": 1e-6,
        "torch_threads": 2,
        "xla_flags": "",
        "target": "image",
    }
    record = {**GOOD, "result": [{**row, "setting": "one core (taskset -c 0)"}]}
    section = run_all._section_markdown(run_all.BENCHMARKS["cpu_variants"], record)
    assert "renderer unavailable" not in section
    assert (
        "| one core (taskset -c 0) | ViT-B-32 image tower, batch 4 | 2.00x | 0.500 / 1.000 | 1.50x |"
        in section
    )
    section = run_all._section_markdown(run_all.BENCHMARKS["inference"], {**GOOD, "result": [row]})
    assert "renderer unavailable" not in section
    assert "max |ours - open_clip| = 1.0e-06" in section and ">= 1.2x met" in section


def test_child_results_and_failures():
    """A benchmark child's result comes back through its RESULT_JSON line; a failure as a record of why."""
    from benchmarks.common import run_child

    def child(code: str, timeout: float = 60.0) -> dict:
        return run_child([sys.executable, "-c", code], {}, timeout)

    emit = f"import sys; sys.path.insert(0, {str(REPO)!r}); from benchmarks.common import emit_result; "
    assert child(emit + "print('noise'); emit_result({'loss': 1.5})") == {"loss": 1.5}
    oom = child("import sys; sys.exit('RESOURCE_EXHAUSTED: Out of memory while trying to allocate')")
    assert oom["error"] == "OOM" and oom["rc"] == 1
    failed = child("raise ValueError('bad config')")
    assert failed["error"] == "failed" and "ValueError: bad config" in failed["stderr_tail"]
    assert child("import time; time.sleep(30)", timeout=1) == {"error": "timeout after 1 s"}


def test_gpu_sweep_variants_from_the_command_line():
    """--variants overrides the single-run options per variant; without it the --sweep-* lists form a grid."""
    from benchmarks.gpu_sweep import sweep_variants
    from benchmarks.gpu_train_step import parse_args

    args = parse_args(
        ["--sweep", "--batch", "256", "--variants", "batch=512;batch=768,ln=custom_vjp,scan=1,flags=lhs"]
    )
    base = {"attention": "auto", "remat": "none", "scan": False, "flags": "default", "ln": "model"}
    assert sweep_variants(args) == [
        {**base, "batch": 512},
        {**base, "batch": 768, "ln": "custom_vjp", "scan": True, "flags": "lhs"},
    ]
    grid = sweep_variants(parse_args(["--sweep", "--sweep-batch", "4,8", "--sweep-attention", "xla,cudnn"]))
    assert [(v["batch"], v["attention"]) for v in grid] == [
        (4, "xla"),
        (4, "cudnn"),
        (8, "xla"),
        (8, "cudnn"),
    ]
    with pytest.raises(SystemExit, match="unknown key 'heads'"):
        sweep_variants(parse_args(["--sweep", "--variants", "heads=4"]))


def test_train_flops_matches_the_recorded_gpu_figures():
    """benchmarks/RESULTS_GPU.md: ViT-B-16 at batch 512, 58.94 TFLOP per step with the pooled last block,
    62.88 with every row (122.8 GFLOP per pair)."""
    from benchmarks.flops import peak_flops, train_flops
    from clip_jax.models import get_model_config

    cfg = get_model_config("ViT-B-16")
    assert train_flops(cfg, 512)["train"] / 1e12 == pytest.approx(58.94, abs=0.005)
    every_row = train_flops(cfg, 512, pooled_last=False)
    assert every_row["train"] / 1e12 == pytest.approx(62.88, abs=0.005)
    assert every_row["per_image_train"] / 1e9 == pytest.approx(122.8, abs=0.05)
    assert peak_flops("NVIDIA H100 PCIe") == 756.0e12 and peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert peak_flops("cpu") is None


def test_gpu_benchmark_imports_neither_tensorflow_nor_torch():
    """The GPU machine has jax, flax and optax but no tensorflow (torch only for --reference's child)."""
    import subprocess

    code = (
        "import sys; import benchmarks.gpu_train_step, benchmarks.model_variants, clip_jax.models, "
        "clip_jax.train.step, clip_jax.train.optim; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'torch'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_siglip_train_section_renders_with_its_module(run_all):
    """RESULTS.md's siglip_train section comes from bench_siglip_train.to_markdown: the ratio, the CPU,
    threads and load, and both sides' losses step by step."""
    row = {
        "name": "ViT-B-16-SigLIP train step, sigmoid loss (fp32, batch 8)",
        "unit": "images/s",
        "ours_s": 10.0,
        "theirs_s": 20.0,
        "ours_per_s": 0.8,
        "theirs_per_s": 0.4,
        "ratio": 2.0,
        "cpu_ratio": 1.8,
        "target": "train",
        "cpu": "AMD EPYC",
        "threads": 2,
        "torch_threads": 2,
        "load_before": 1.5,
        "load_after": 2.5,
        "compile_s": 24.0,
        "loss_tolerance": 1e-4,
        "first_loss_diff": 2e-6,
        "losses_ours": [10.3253, 8.4587],
        "losses_theirs": [10.3253, 8.4588],
    }
    section = run_all._section_markdown(run_all.BENCHMARKS["siglip_train"], {**GOOD, "result": row})
    assert "renderer unavailable" not in section
    assert "| 2.00x |  | 10.000 / 20.000 | 1.80x |" in section
    assert "CPU: AMD EPYC; 2 cores" in section and "load average 1.5 before, 2.5 after" in section
    assert "|diff| 2.0e-06, fp32 bound 1.0e-04" in section and "differ by at most 1.0e-04" in section


def test_siglip_train_loss_tolerance_is_fp32_rounding_sized():
    """The bound on the sigmoid loss holds when every unit feature moves by the fp32 error it assumes in
    the direction that moves the loss most (toward its positive), and is exceeded by 10 times that error:
    it allows rounding, not a different function."""
    import numpy as np

    from benchmarks.bench_siglip_train import FP32_UNIT_ROUNDOFF, loss_tolerance

    rng = np.random.default_rng(0)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    img, txt = unit(rng.standard_normal((8, 768))), unit(rng.standard_normal((8, 768)))
    txt[:4] = unit(img[:4] + 0.5 * txt[:4])  # some positives with a high cosine, as after training
    scale, bias, layers = 10.0, -10.0, 12

    def loss(i, t):
        z = scale * i @ t.T + bias
        y = 2 * np.eye(len(i)) - 1
        return np.sum(np.logaddexp(0, -y * z)) / len(i)

    tol = loss_tolerance(img, txt, scale, bias, layers)
    feature_err = 4 * np.sqrt(10 * layers + 10) * FP32_UNIT_ROUNDOFF
    for err, within in ((feature_err, True), (10 * feature_err, False)):
        diff = abs(loss(unit(img + err * txt), unit(txt + err * img)) - loss(img, txt))
        assert (diff <= tol) == within, (err, diff, tol)
