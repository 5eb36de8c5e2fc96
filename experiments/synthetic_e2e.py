"""The main job: build the synthetic dataset, train a tiny CLIP on it, evaluate before and after training.

    python experiments/synthetic_e2e.py --workdir runs/synthetic_tiny [--update-readme]

Evaluations (each on the randomly initialised model and on the trained one, same config):
  zero-shot shape/colour classification on `test` (prompt templates never seen in training captions),
  on `heldout` (shape-colour combinations never seen in training), on the shifted renderings
  (sketch, new_background, noise, new_texture; the ImageNet-Sketch/-R role), a linear probe (logistic
  regression on frozen image features of `train`, scored on `test`), and image-text retrieval on `test`.
Writes CLIP_benchmark-style records to WORKDIR/results.json and the table to WORKDIR/results.md.

A WORKDIR that already holds a run's checkpoints is resumed, as the trainer resumes any run, and the table
says so (its training time then covers only the remaining steps); `--fresh` first renames such a
WORKDIR to WORKDIR.previous-TIMESTAMP (nothing is deleted) and trains from scratch. `--update-readme`
refuses a resumed run: the README's table is of a run from scratch.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import time
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHIFTS = ("sketch", "new_background", "noise", "new_texture")
TASKS = ("shape", "color")
# The tasks the job's pass/fail check is on: colour (learned in ~100 steps) and shape, the part that
# needs a real model (experiments/ablations/main_recipe has the search for a recipe that learns it in
# the job's budget).
REQUIRED_TASKS = ("shape", "color")
README_MARKERS = ("<!-- main-job-results:start -->", "<!-- main-job-results:end -->")


def load_config(workdir: str, data_dir: str, steps: int | None):
    spec = importlib.util.spec_from_file_location("synthetic_tiny", REPO / "configs" / "synthetic_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.data.data_dir = data_dir
    if steps is not None:
        config.total_steps = steps
    return config


def evaluate(model, params, data_dir: str, batch_size: int = 250) -> dict[str, dict]:
    """All evaluations of one set of params: {row name: {"value": ..., "chance": ..., "record": ...}}.

    Through the same evaluators that the trainer and the evaluation scripts run (clip_jax/eval/common.py).
    """
    from clip_jax.data import zeroshot_tasks
    from clip_jax.eval.linear_probe import LinearProbe
    from clip_jax.eval.retrieval import Retrieval
    from clip_jax.eval.robustness import Robustness

    data = {"dataset": "clip_synthetic", "data_dir": data_dir, "batch_size": batch_size}
    rows: dict[str, dict] = {}
    for task in TASKS:
        chance = 1.0 / len(zeroshot_tasks()[task][0])
        splits = ",".join(("test", "heldout", *SHIFTS))
        res = Robustness(data | {"task": task, "splits": splits}, model).run(params)
        for split, metrics in res["datasets"].items():
            rows[f"zero-shot {task}, {split}"] = {
                "value": metrics["acc1"],
                "chance": chance,
                "metrics": metrics,
            }
        shift_mean = float(np.mean([res["datasets"][s]["acc1"] for s in SHIFTS]))
        rows[f"zero-shot {task}, mean of shifts"] = {"value": shift_mean, "chance": chance, "metrics": {}}

        # 2,000 training images (8 batches) are plenty for 8 classes and keep the job short; the test
        # split has 4 batches, all read.
        probe = LinearProbe(data | {"task": task, "max_batches": 8}, model).run(params)
        rows[f"linear probe {task}, test"] = {"value": probe["acc1"], "chance": chance, "metrics": probe}

    ret = Retrieval(data | {"split": "test"}, model).run(params)
    num_images = 1000  # the test split's size; chance of recall@1 for image->text is 1 / #images
    rows["retrieval text->image R@1, test"] = {
        "value": ret["image_retrieval_recall@1"],
        "chance": 1.0 / num_images,
        "metrics": ret,
    }
    rows["retrieval image->text R@1, test"] = {
        "value": ret["text_retrieval_recall@1"],
        "chance": None,
        "metrics": ret,
    }
    return rows


def learning_checks(init: dict, trained: dict) -> tuple[list[str], bool]:
    """One line per task: zero-shot test accuracy vs chance and vs the initialised model, and whether the
    required tasks passed (each at least 3x chance and above its accuracy at initialisation)."""
    lines, ok = [], True
    for task in TASKS:
        name = f"zero-shot {task}, test"
        acc, before, chance = trained[name]["value"], init[name]["value"], trained[name]["chance"]
        learned = acc >= 3 * chance and acc > before
        verdict = "learned" if learned else "not learned at this budget"
        if task in REQUIRED_TASKS:
            ok = ok and learned
            verdict = (
                "PASS" if learned else "FAIL"
            ) + f" (the job's check: >= 3x chance, above init): {verdict}"
        lines.append(
            f"{name}: {100 * acc:.1f}% = {acc / chance:.1f}x chance ({100 * chance:.1f}%), "
            f"at init {100 * before:.1f}% -> {verdict}"
        )
    return lines, ok


def markdown_table(init: dict, trained: dict, info: str) -> str:
    lines = [
        "| evaluation | chance | at init | trained |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, row in trained.items():
        chance = "-" if row["chance"] is None else f"{100 * row['chance']:.1f}"
        lines.append(f"| {name} | {chance} | {100 * init[name]['value']:.1f} | {100 * row['value']:.1f} |")
    return "\n".join(lines) + f"\n\nAccuracies and recalls in %. {info}\n"


def records(rows: dict, model_name: str, pretrained: str) -> list[dict]:
    from clip_jax.eval.results import make_record

    out = []
    for name, row in rows.items():
        if not row["metrics"]:
            continue
        task = "linear_probe" if name.startswith("linear") else "zeroshot_classification"
        if name.startswith("retrieval"):
            if "image->text" in name:
                continue  # the same record as text->image
            task = "zeroshot_retrieval"
        split = name.split(", ")[-1]
        label = None if task == "zeroshot_retrieval" else name.split(",")[0].split()[-1]
        metrics = {k: v for k, v in row["metrics"].items() if isinstance(v, (int, float))}
        out.append(make_record(f"clip_synthetic/{split}", model_name, pretrained, task, metrics, label=label))
    return out


def previous_step(workdir: Path) -> int | None:
    """The step the trainer would resume the run in `workdir` from (its newest complete checkpoint), if any."""
    from clip_jax.checkpoint import latest_complete_step

    try:
        return int(latest_complete_step(workdir / "checkpoints")[0].name)
    except FileNotFoundError:
        return None


def set_aside(workdir: Path) -> Path:
    """Rename a previous run's workdir out of the way (never delete a user's checkpoints)."""
    target = workdir.with_name(f"{workdir.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
    workdir.rename(target)
    return target


def update_readme(table: str) -> None:
    readme = REPO / "README.md"
    text = readme.read_text()
    start, end = README_MARKERS
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {start} ... {end} block to update")
    readme.write_text(pattern.sub(lambda _: f"{start}\n{table}{end}", text))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=str(REPO / "runs" / "synthetic_tiny"))
    parser.add_argument("--data-dir", default=str(REPO / "runs" / "tensorflow_datasets"))
    parser.add_argument("--steps", type=int, default=None, help="override config.total_steps")
    parser.add_argument("--update-readme", action="store_true", help="write the table into README.md")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="rename a previous run's WORKDIR to WORKDIR.previous-TIMESTAMP and train from scratch",
    )
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    resumed_from = previous_step(workdir)
    if resumed_from is not None and args.fresh:
        print(f"[0/4] set aside the previous run: {workdir} -> {set_aside(workdir)}", flush=True)
        resumed_from = None
    if resumed_from is not None and args.update_readme:
        raise SystemExit(
            f"--update-readme needs a run from scratch, but {workdir} holds a run at step {resumed_from}: "
            "add --fresh (it renames that workdir, deleting nothing) or pass another --workdir"
        )

    from clip_jax.data import prepare_synthetic
    from clip_jax.machine import cpu_name
    from clip_jax.models import CLIP, init_params
    from clip_jax.train.config import resolve_model_config
    from clip_jax.train.loop import train
    from clip_jax.train.step import init_rngs

    t0 = time.perf_counter()
    print(f"[1/4] building the synthetic dataset in {args.data_dir}", flush=True)
    prepare_synthetic(args.data_dir)
    config = load_config(args.workdir, args.data_dir, args.steps)
    model = CLIP(resolve_model_config(config.model))

    print("[2/4] evaluating the randomly initialised model", flush=True)
    # The very model that training starts from (the trainer's own key for the parameters).
    init = evaluate(model, init_params(model, init_rngs(config.seed)[0]), args.data_dir)

    if resumed_from is not None:
        print(
            f"[3/4] resuming the run in {workdir} from step {resumed_from} of {config.total_steps} "
            "(--fresh trains from scratch)",
            flush=True,
        )
    else:
        print(f"[3/4] training for {config.total_steps} steps (workdir {workdir})", flush=True)
    t_train = time.perf_counter()
    state = train(config, args.workdir)
    t_train = time.perf_counter() - t_train
    params = jax.device_get(state.params)

    print("[4/4] evaluating the trained model", flush=True)
    trained = evaluate(model, params, args.data_dir)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    origin = "from scratch" if resumed_from is None else f"resumed from step {resumed_from}"
    info = (
        f"Tiny CLIP ({n_params / 1e6:.2f}M params, configs/synthetic_tiny.py), {config.total_steps} steps "
        f"of batch {config.batch_size} {origin} ({t_train:.0f} s of training; whole job "
        f"{time.perf_counter() - t0:.0f} s on {os.cpu_count()} cores of an {cpu_name()})."
    )
    checks, ok = learning_checks(init, trained)
    table = markdown_table(init, trained, info) + "\n" + "".join(f"- {line}\n" for line in checks)
    print("\n" + table)
    (workdir / "results.md").write_text(table)
    all_records = records(init, "synthetic_tiny", "init") + records(trained, "synthetic_tiny", "trained")
    (workdir / "results.json").write_text(json.dumps(all_records, indent=2) + "\n")
    if args.update_readme:
        update_readme(table)
    if not ok:
        raise SystemExit(f"the trained model did not learn every required task ({REQUIRED_TASKS}); see above")


if __name__ == "__main__":
    main()
