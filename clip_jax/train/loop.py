"""The training run (`python -m clip_jax.train`, clip_jax/train/cli.py): `train(config, workdir)`.

Reads top to bottom in the order things happen: processes, config, mesh, model, data, state (restored or
initialised straight into its shardings), the jitted step, and the loop with logging, evaluation,
checkpoints and preemption handling.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from clip_jax import sharding
from clip_jax.checkpoint import Checkpointer, CheckpointMismatch, abstract_like, latest_complete_step
from clip_jax.models.clip import CLIP
from clip_jax.train.branch import restore_branch_point, same_workdir
from clip_jax.train.config import check_batch_fits_devices, validate_config
from clip_jax.train.distill import load_teacher
from clip_jax.train.optim import make_optimizer
from clip_jax.train.prefetch import Prefetcher
from clip_jax.train.progress import Progress
from clip_jax.train.report import Reporters
from clip_jax.train.resume_config import ConfigChanges, check_resume_config, describe, record_start
from clip_jax.train.step import (
    EmaTrainState,
    TrainState,
    init_rngs,
    init_train_state,
    make_train_step,
    nonfinite_quantities,
)

log = logging.getLogger("clip_jax.train")


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
) -> None:
    """Join a multi-process run. Arguments fall back to the CLIP_JAX_COORDINATOR_ADDRESS,
    CLIP_JAX_NUM_PROCESSES and CLIP_JAX_PROCESS_ID variables; `auto` lets JAX detect a TPU pod or a
    SLURM/Open MPI cluster by itself."""
    env = os.environ
    coordinator_address = coordinator_address or env.get("CLIP_JAX_COORDINATOR_ADDRESS")
    if num_processes is None and "CLIP_JAX_NUM_PROCESSES" in env:
        num_processes = int(env["CLIP_JAX_NUM_PROCESSES"])
    if process_id is None and "CLIP_JAX_PROCESS_ID" in env:
        process_id = int(env["CLIP_JAX_PROCESS_ID"])
    if coordinator_address:
        jax.distributed.initialize(
            coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
        )
    elif auto:
        jax.distributed.initialize()


def train(config: ml_collections.ConfigDict, workdir: str, *, devices: list | None = None) -> TrainState:
    """Run (or resume) the training described by `config` in `workdir`; returns the final state."""
    model_cfg = validate_config(config)
    # orbax reads no metadata from a relative path; every path the run keeps is made absolute once here.
    workdir = os.path.abspath(workdir)
    if config.branch_from and same_workdir(config.branch_from, workdir):
        raise ValueError(
            f"config.branch_from={config.branch_from!r} is this run's --workdir; branch into a new one"
        )
    # Mesh: (data, fsdp, tensor); the batch is split over data x fsdp. Mesh, batch and the config's
    # changes against the workdir's run are all checked before anything is written, so that a run
    # refused at start leaves the workdir as it was.
    mesh = sharding.make_mesh(**config.mesh, devices=devices)
    check_batch_fits_devices(config, _batch_devices(mesh))
    log.info("mesh %s over %d %s devices", dict(mesh.shape), mesh.devices.size, jax.default_backend())
    changes = check_resume_config(config, workdir, resuming=_has_checkpoint(workdir))
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        return _train_on_mesh(config, model_cfg, workdir, mesh, changes)


def _has_checkpoint(workdir: str) -> bool:
    try:
        latest_complete_step(os.path.join(workdir, "checkpoints"))
    except FileNotFoundError:
        return False
    return True


def _train_on_mesh(config, model_cfg, workdir, mesh, changes: ConfigChanges) -> TrainState:
    is_main = jax.process_index() == 0
    # Model.
    model = CLIP(
        model_cfg,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.float32,
        scan=config.scan,
        remat_policy=config.remat_policy,
        attention_impl=config.attention_impl or None,
        patch_dropout=config.patch_dropout,
    )

    # Data: each process reads its own slice of every global batch.
    data_iter = make_train_data(config, model_cfg)
    records = getattr(data_iter, "records_per_epoch", None)
    log.info(
        "data: source %s, %s, batch %d",
        config.data.source,
        f"{records} records per epoch on this process" if records else "size unknown",
        config.batch_size,
    )

    # State: shapes from eval_shape, shardings from the parameters' logical axis names, then a jitted
    # init that writes each shard straight onto its device (no full copy of the params on one host).
    def init_params(rng):
        img = jnp.zeros((1, model_cfg.vision.image_size, model_cfg.vision.image_size, 3), jnp.float32)
        txt = jnp.zeros((1, model_cfg.text.context_length), jnp.int32)
        return model.init(rng, img, txt)["params"]

    boxed = jax.eval_shape(init_params, jax.random.PRNGKey(0))
    param_shardings = sharding.logical_to_mesh_sharding(boxed, mesh)
    abstract_params = sharding.strip_boxes(boxed)
    tx, schedule = make_optimizer(
        abstract_params,
        lr=config.lr,
        total_steps=config.total_steps,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        b1=config.b1,
        b2=config.b2,
        eps=config.eps,
        grad_clip_norm=config.grad_clip_norm or None,
        freeze=tuple(config.freeze),
        lr_mults=tuple(tuple(x) for x in config.lr_mults),
        end_lr_ratio=config.end_lr_ratio,
        no_decay=tuple(config.no_decay),
        schedule=config.schedule,
        cooldown_steps=config.cooldown_steps,
        cooldown_power=config.cooldown_power,
        rsqrt_timescale=config.rsqrt_timescale,
    )
    param_rng, state_rng = init_rngs(config.seed)

    def init_state(params):
        return init_train_state(params, tx, state_rng, ema=config.ema_decay > 0)

    abstract_state = jax.eval_shape(init_state, abstract_params)
    state_shardings = sharding.shardings_by_param_path(abstract_state, param_shardings, mesh)

    state, data_state = None, None
    if _has_checkpoint(workdir):
        # Whether the state fits is read from the newest step's metadata before the Checkpointer (which
        # sets incomplete steps aside) touches the workdir; a damaged step is dealt with by the restore.
        _check_newest_fits(os.path.join(workdir, "checkpoints"), abstract_state, changes)
    os.makedirs(workdir, exist_ok=True)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints)
    try:
        start, state, data_state = ckpt.restore_newest(
            abstract_like(abstract_state, state_shardings), check_data=_own_data_state
        )
    except CheckpointMismatch as e:
        ckpt.close()
        raise _mismatch_error(e, changes) from e
    if start is not None:
        _resume_data(data_iter, _own_data_state(data_state), changes)
        log.info("resumed from step %d of %s", start, ckpt.directory)
    elif config.branch_from:
        # A cooldown branch: the parent's state and data position, as if the parent went on (branch.py).
        start, state, data_state = restore_branch_point(
            config.branch_from, abstract_like(abstract_state, state_shardings)
        )
        _resume_data(data_iter, _own_data_state(data_state), changes)
        log.info("branched from step %d of %s", start, config.branch_from)
    else:
        params = _initial_params(config, model, init_params, param_rng, param_shardings)
        state = jax.jit(init_state, out_shardings=state_shardings)(params)
        log.info("starting from step 0 (%s)", config.init_from or "fresh parameters")
    if is_main:
        record_start(workdir, config, changes, start or 0)

    # Distillation: a frozen teacher on the same mesh, an argument of the step beside the state.
    teacher = load_teacher(config, model_cfg, mesh) if config.distill.teacher else None
    if teacher:
        log.info("distilling from %s (weight %g)", config.distill.teacher, config.distill.weight)

    # The step: jitted with explicit shardings and a donated state.
    use_sharded_loss = config.sharded_loss and _batch_devices(mesh) > 1
    step_fn = make_train_step(
        model,
        tx,
        loss=config.loss,
        mesh=mesh if use_sharded_loss else None,
        batch_axes=sharding.BATCH_AXES,
        accum_steps=config.accum_steps,
        schedule=schedule,
        teacher=teacher.model if teacher else None,
        distill_weight=config.distill.weight,
        ema_decay=config.ema_decay,
        ema_warmup=config.ema_warmup,
    )
    batch_sharding = sharding.batch_sharding(mesh)
    step_fn = jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_sharding, *([teacher.shardings] if teacher else [])),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )
    if teacher:
        step_fn = teacher.bind(step_fn)

    loop = TrainLoop(config, workdir, is_main, ckpt, model, data_iter)
    try:
        return loop.run(state, step_fn, batch_sharding)
    finally:
        ckpt.close()
        loop.close()


def _check_newest_fits(directory: str, abstract_state, changes: ConfigChanges) -> None:
    """Refuse a checkpoint laid out for another state (model, scan, freezing ...) before anything in the
    workdir is written; a step whose metadata does not read is left to the restore, which sets it aside."""
    from clip_jax.checkpoint import abstract_layout, check_fits

    step_dir, _ = latest_complete_step(directory)
    try:
        check_fits(step_dir, abstract_layout(abstract_state))
    except CheckpointMismatch as e:
        raise _mismatch_error(e, changes) from e
    except Exception:  # noqa: BLE001 - damaged metadata: restore_newest names it and moves it aside
        pass


def _mismatch_error(error: CheckpointMismatch, changes: ConfigChanges) -> ValueError:
    fields = describe(changes.changes) if changes.changes else "none found (was config.json replaced?)"
    return ValueError(
        f"cannot resume: {error}; config fields that differ from the run's config.json: {fields}; "
        "start a new --workdir to train a different config"
    )


def _resume_data(data_iter, own_state: dict, changes: ConfigChanges) -> None:
    """Continue the input where the checkpoint left it. A position saved under another batch size, seed
    or data config would not mean the same batches: refused, unless the config's changes say so (then
    the saved epoch and position are taken as they are, and the log says it)."""
    import inspect

    try:
        data_iter.set_state(own_state)
    except ValueError as e:
        lenient = "strict" in inspect.signature(data_iter.set_state).parameters
        if not (changes.training and lenient):
            raise ValueError(f"cannot resume the input where the checkpoint left it: {e}") from e
        log.warning("the data position was saved with another config (%s); continuing from it as is", e)
        data_iter.set_state(own_state, strict=False)


def _initial_params(config, model, init_params, rng, param_shardings):
    if not config.init_from:
        return _fresh_params(config, model, init_params, rng, param_shardings)
    params = _pretrained_params(config, model)
    if config.init_from_only:
        # LiT and friends: only the matching parameters come from init_from, the rest start fresh.
        from clip_jax.train.optim import path_mask

        take = path_mask(params, config.init_from_only)
        if not any(jax.tree.leaves(take)):
            raise ValueError(f"config.init_from_only {list(config.init_from_only)} matches no parameter")
        fresh = jax.device_get(_fresh_params(config, model.clone(scan=False), init_params, rng, None))
        params = jax.tree.map(lambda t, p, f: p if t else f, take, params, fresh)
    if config.scan:
        from clip_jax.models import stack_layers

        params = stack_layers(params)
    return jax.device_put(params, param_shardings)


def _fresh_params(config, model, init_params, rng, param_shardings):
    if model.scan:
        # The unrolled model's initial values, stacked: scan is a layout, so a scanned run starts
        # from (and trains) exactly the model of the same run without scan.
        from clip_jax.models import init_params as init_unrolled
        from clip_jax.models import stack_layers

        unrolled = model.clone(scan=False)
        return jax.jit(lambda r: stack_layers(init_unrolled(unrolled, r)), out_shardings=param_shardings)(rng)
    if param_shardings is None:
        from clip_jax.models import init_params as init_unrolled

        return init_unrolled(model, rng)
    return jax.jit(lambda r: nn.unbox(init_params(r)), out_shardings=param_shardings)(rng)


def _pretrained_params(config, model) -> dict:
    """Unrolled params from config.init_from: a clip_jax training run (its newest complete checkpoint) or
    any weights file/directory clip_jax loads."""
    from clip_jax.checkpoint import restore_params

    path = Path(os.path.abspath(config.init_from))
    if (
        (path / "checkpoints").is_dir()
        or (path / "state").is_dir()
        or (path / "_CHECKPOINT_METADATA").is_file()
    ):
        expected = jax.eval_shape(
            lambda: _fresh_params(config, model.clone(scan=False), None, jax.random.key(0), None)
        )
        which = "ema_params" if config.init_from_ema else "params"
        params, step_dir = restore_params(path, expected=expected, which=which)
        log.info("init_from: %s of %s", which, step_dir)
        return params
    if config.init_from_ema:
        raise ValueError(
            f"config.init_from_ema is set but config.init_from={config.init_from!r} is not a clip_jax "
            "training run (only runs keep EMA params)"
        )
    from clip_jax.weights import load_pretrained

    loaded_model, params = load_pretrained(config.init_from_model or None, str(path))
    if loaded_model.cfg != model.cfg:
        raise ValueError(
            f"config.init_from={config.init_from!r} holds model {loaded_model.cfg} but config.model is {model.cfg}"
        )
    return jax.device_get(params)


def _all_data_states(data_iter) -> dict:
    """Every process's input position, so each can resume its own slice (process 0 writes the JSON)."""
    own = json.dumps(data_iter.get_state()).encode()
    if jax.process_count() == 1:
        return {"processes": [json.loads(own)]}
    from jax.experimental import multihost_utils

    size = int(np.max(multihost_utils.process_allgather(np.array([len(own)]))))
    padded = np.frombuffer(own.ljust(size, b" "), np.uint8)
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(jax.process_count(), size)
    return {"processes": [json.loads(bytes(r).decode()) for r in rows]}


def _own_data_state(saved: dict) -> dict:
    """This process's input position in a checkpoint's data item: another process count is a config
    mismatch (refused); anything but a list of positions is a damaged item."""
    states = saved.get("processes") if isinstance(saved, dict) else None
    if not isinstance(states, list) or not all(isinstance(s, dict) for s in states):
        raise ValueError(f"the data position is not a list of per-process positions: {str(saved)[:100]}")
    if len(states) != jax.process_count():
        raise CheckpointMismatch(
            f"the checkpoint's data positions are for {len(states or [])} processes but this run has "
            f"{jax.process_count()}; resume with the same number of processes"
        )
    return states[jax.process_index()]


def _batch_devices(mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in sharding.BATCH_AXES]))


def make_train_data(config, model_cfg):
    """The training input named by config.data.source."""
    common = dict(
        global_batch_size=config.batch_size,
        image_size=model_cfg.vision.image_size,
        context_length=model_cfg.text.context_length,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    if config.data.source == "random":
        from clip_jax.train.random_batches import RandomBatches

        return RandomBatches(
            vocab_size=model_cfg.text.vocab_size,
            distinct_batches=int(config.data.get("distinct_batches", 0)),
            **common,
        )
    from clip_jax.data import make_train_iterator
    from clip_jax.inputs import train_inputs

    # The model's own tokenizer (config.tokenizer / init_from's; CLIP's BPE for clip towers).
    tokenizer = train_inputs(model_cfg, config.tokenizer, config.init_from).tokenizer
    return make_train_iterator(config.data, tokenizer=tokenizer, **common)


class TrainLoop:
    """The loop and its side jobs: progress bar, metrics files, evaluation, checkpoints, SIGTERM."""

    def __init__(self, config, workdir, is_main, ckpt, model, data_iter):
        self.config, self.workdir, self.is_main = config, workdir, is_main
        self.ckpt, self.model, self.data_iter = ckpt, model, data_iter
        self.preempted = False
        self._stop_agreed = False  # multi-process: every process has agreed to stop at this step
        self.evaluators = None  # built at the first evaluation
        # With several processes, JAX's preemption service (started by jax.distributed.initialize) takes
        # SIGTERM itself and agrees on a step to stop at (see _stop_requested); a handler of ours would
        # take the signal away from it.
        self._sync_manager = _preemption_sync_manager()
        self._old_handler = None
        if self._sync_manager is None:
            self._old_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        self.metrics_file = open(os.path.join(workdir, "metrics.jsonl"), "a") if is_main else None
        # config.report_to's writers (TensorBoard, wandb), on the process that writes the logs.
        self.report = Reporters(config, workdir) if is_main else None

    def _on_sigterm(self, signum, frame):
        log.warning("SIGTERM received: saving a checkpoint and stopping")
        self.preempted = True

    def run(self, state: TrainState, step_fn, batch_sharding) -> TrainState:
        config = self.config
        step = int(jax.device_get(state.step))
        progress = Progress(config.total_steps, step, config.batch_size, enabled=self.is_main)
        feed = self._feed(batch_sharding)
        pending = None  # (step, metrics) of the last step not yet checked for non-finite values
        try:
            while step < config.total_steps and not self._stop_requested(step):
                state, metrics = step_fn(state, next(feed))
                step += 1
                # A background checkpoint write that failed (disk full, permissions) stops the run here,
                # with the last complete checkpoint intact, rather than at the next save.
                self.ckpt.raise_if_save_failed()
                # Check the previous step while this one runs, so the check costs no pipelining.
                if pending is not None:
                    self._check_finite(*pending)
                pending = (step, metrics)
                progress.step_done(step)
                if step % config.log_every == 0 or step == config.total_steps:
                    self._log(step, jax.device_get(metrics), progress, feed)
                if (
                    config.evals
                    and config.eval_every
                    and step % config.eval_every == 0
                    and step < config.total_steps
                ):
                    self._check_finite(*pending)
                    self._evaluate(step, state, progress)
                if step % config.checkpoint_every == 0 or step == config.total_steps:
                    self._check_finite(*pending)
                    self._save(step, state, feed, progress)
            if self.preempted and step < config.total_steps:
                if pending is not None:
                    self._check_finite(*pending)
                # The step may just have been saved periodically; orbax refuses a second save of a step.
                if self.ckpt.latest_step() != step:
                    self._save(step, state, feed, progress, force=True)
                log.warning("preempted at step %d; checkpoint saved", step)
            elif config.evals:
                if pending is not None:
                    self._check_finite(*pending)
                self._evaluate(step, state, progress)
        finally:
            progress.close()
            if isinstance(feed, Prefetcher):
                feed.close()
        self.ckpt.wait()
        return state

    def _feed(self, batch_sharding):
        """The batches, placed on the mesh. A tf.data input is read and placed `config.prefetch` batches
        ahead in a thread (its epoch boundaries and the host-to-device copies overlap the steps); random
        batches cost nothing and are made in the loop."""

        def place(batch):
            return {
                k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v))
                for k, v in batch.items()
            }

        if getattr(self.data_iter, "prefetch", True) and self.config.prefetch > 0:
            return Prefetcher(self.data_iter, place, size=self.config.prefetch)
        return _Placed(self.data_iter, place)

    def _save(self, step: int, state: TrainState, feed, progress: Progress, force: bool = False) -> None:
        start = time.perf_counter()
        self.ckpt.save(step, state, _all_data_states(feed), force=force)
        # orbax writes in the background; this is the part the loop waits for (the device-to-host copy).
        progress.note(f"step {step}: checkpoint started ({time.perf_counter() - start:.1f} s blocking)")
        progress.pause_rate()

    def _stop_requested(self, step: int) -> bool:
        """True once this run must stop for a SIGTERM, at the same step on every process.

        A signal may reach the processes at different steps, and they must all save the same step and
        stop together. With several processes JAX's preemption service propagates the notice in the
        background and names the step to stop at: asking it is a local read, not a collective, so it
        costs the step loop nothing. Without the service (jax_enable_preemption_service off) the
        processes agree by an allgather, only on log and checkpoint steps, where the host waits for
        the step anyway.
        """
        if jax.process_count() == 1 or self._stop_agreed:
            return self.preempted
        from jax.experimental import multihost_utils

        # self.preempted alone (our handler, fallback path) is this process's notice, not an agreement:
        # stopping on it would leave the other processes waiting in the next step's collectives.
        if self._sync_manager is not None:
            agreed = bool(multihost_utils.reached_preemption_sync_point(step))
        elif step % self.config.log_every == 0 or step % self.config.checkpoint_every == 0:
            agreed = bool(np.any(multihost_utils.process_allgather(np.array([self.preempted]))))
        else:
            agreed = False
        if agreed:
            self.preempted = self._stop_agreed = True
            log.warning("preemption notice: stopping at step %d", step)
        return agreed

    def _check_finite(self, step: int, metrics: dict) -> None:
        """Stop at the first step whose loss, gradient norm or updated parameters are NaN or infinite
        (the step's fused `nonfinite` flag), before anything saves or evaluates that state."""
        code = int(jax.device_get(metrics["nonfinite"]))
        if code:
            values = {k: float(jax.device_get(metrics[k])) for k in ("loss", "grad_norm")}
            raise FloatingPointError(
                f"non-finite {' and '.join(nonfinite_quantities(code))} at step {step} (loss {values['loss']}, "
                f"gradient norm {values['grad_norm']}); stopping. Nothing of this step was saved: "
                + (
                    f"the last good checkpoint in {self.ckpt.directory} (step {last}) is kept."
                    if (last := self.ckpt.latest_step()) is not None
                    else f"no checkpoint saved yet in {self.ckpt.directory}."
                )
            )

    def _log(self, step: int, metrics: dict, progress: Progress, feed) -> None:
        ips = progress.images_per_sec()
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        if ips is not None:  # over the recent steps, compilation excluded
            record["images_per_sec"] = ips
        skipped = getattr(feed, "num_skipped", None)
        if skipped is not None:  # corrupt or unreadable records dropped by the input pipeline so far
            record["records_skipped"] = int(skipped)
        progress.report(step, record["loss"])
        if not self.is_main:
            return
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        self.report.scalars(step, {f"train/{k}": v for k, v in record.items() if k != "step"})

    def _evaluate(self, step: int, state: TrainState, progress: Progress) -> None:
        """Every evaluation of config.evals on the current params, logged as eval/<name>/<metric>, and
        with EMA (config.ema_decay) on the EMA params too, logged as eval_ema/<name>/<metric>."""
        self._evaluate_params(step, state.params, "eval", progress)
        if isinstance(state, EmaTrainState):
            self._evaluate_params(step, state.ema_params, "eval_ema", progress)

    def _evaluate_params(self, step: int, params, prefix: str, progress: Progress) -> None:
        from clip_jax.eval.common import flat_scalars, make_evaluators

        if self.evaluators is None:
            from clip_jax.inputs import train_inputs

            # The contrastive validation scores the run's own loss unless its config names one.
            defaults = {"data_dir": self.config.data.get("data_dir"), "loss": self.config.loss}
            # Prompts tokenized as the training captions are.
            inputs = train_inputs(self.model.cfg, self.config.tokenizer, self.config.init_from)
            self.evaluators = make_evaluators(self.config.evals, self.model, defaults=defaults, inputs=inputs)
        results = {}
        for name, evaluator in self.evaluators.items():
            start = time.perf_counter()
            metrics = flat_scalars(evaluator.run(params), f"{name}/")
            results.update(metrics)
            headline = {k: round(v, 4) for k, v in metrics.items() if k.endswith(("acc1", "recall@1"))}
            seconds = time.perf_counter() - start
            line = f"step {step}: {prefix.replace('_', ' ')} {name} ({seconds:.1f} s) {headline}"
            # One line each: through the progress bar on the main process, the log on the others.
            if progress.enabled:
                progress.note(line)
            else:
                log.info(line)
        progress.pause_rate()
        if not self.is_main:
            return
        record = {"step": step, **{f"{prefix}/{k}": v for k, v in results.items()}}
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        self.report.scalars(step, {f"{prefix}/{k}": v for k, v in results.items()})
        log.debug("step %d eval: %s", step, results)

    def close(self) -> None:
        if self._old_handler is not None:
            signal.signal(signal.SIGTERM, self._old_handler)
        if self.metrics_file:
            self.metrics_file.close()
        if self.report:
            self.report.close()


class _Placed:
    """`place(batch)` for each batch of `source`, in the loop (the state passes through)."""

    def __init__(self, source, place) -> None:
        self.source, self.place = source, place

    def __next__(self):
        return self.place(next(self.source))

    def get_state(self):
        return self.source.get_state()

    @property
    def num_skipped(self):
        return getattr(self.source, "num_skipped", None)


def _preemption_sync_manager():
    """JAX's preemption sync manager in a multi-process run that has one, else None."""
    if jax.process_count() == 1:
        return None
    from jax._src import distributed

    return distributed.global_state.preemption_sync_manager
