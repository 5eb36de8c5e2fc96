"""Linear probe (the CLIP paper's protocol): multinomial logistic regression on frozen image features.

Features are extracted once (and cached as .npz). The probe minimises scikit-learn's objective for
`LogisticRegression(C=C)` divided by C*n, which has the same minimiser and is better scaled:

    mean_i CE(x_i W + b, y_i) + ||W||^2 / (2 C n)          (the bias is not penalised)

with L-BFGS on the full batch (optax.lbfgs with a zoom line search inside one jitted while_loop), stopping
when the largest entry of the gradient in (W, b) falls below `tol` (scikit-learn's criterion) or after
`max_iter` steps. The solver's variables are the weights in the eigenbasis of the feature covariance, each
direction scaled by an estimate of its curvature (see `ProbeData`): the same minimiser, reached in several
times fewer iterations than in the raw coordinates that scikit-learn uses.

C is chosen on a validation split carved from train with the paper's parametric binary search: start with
C in {1e-6, 1e-4, ..., 1e6}, then repeatedly halve the step (in log10 C) around the best value until the
resolution is 8 steps per decade. The probe is then refitted on train+validation and scored on test.

    python -m clip_jax.eval.linear_probe --model ViT-B-32-quickgelu --weights ViT-B-32.pt \
        --dataset cifar10 --data-dir ~/tensorflow_datasets --feature-cache /tmp/feats --output lp.json
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clip_jax.eval import metadata
from clip_jax.eval.cache import cached_features, slug
from clip_jax.eval.common import DataConfig, Evaluator
from clip_jax.eval.datasets import eval_dataset
from clip_jax.eval.features import extract_image_features
from clip_jax.eval.metrics import classification_metrics
from clip_jax.inputs import ModelInputs
from clip_jax.models.clip import CLIP


@dataclasses.dataclass
class LogisticRegression:
    """A fitted probe: logits = x @ w + b."""

    w: np.ndarray  # [D, K]
    b: np.ndarray  # [K]
    C: float
    iterations: int
    grad_max: float

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float32) @ self.w + self.b

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.logits(x).argmax(-1)


PAD_ROWS_TO = 1024


def _pad_rows(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pad to a multiple of PAD_ROWS_TO rows with weight 0, so that the train, validation-sweep and refit
    sets (all of different sizes) share one compilation of the solver."""
    n = x.shape[0]
    total = -(-n // PAD_ROWS_TO) * PAD_ROWS_TO
    weight = np.zeros(total, np.float32)
    weight[:n] = 1.0
    xp = np.zeros((total, x.shape[1]), np.float32)
    xp[:n] = x
    yp = np.zeros(total, np.int32)
    yp[:n] = y
    return xp, yp, weight


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["xhat", "y", "weight", "basis", "eigvals", "mean", "n"],
    meta_fields=["num_classes"],
)
@dataclasses.dataclass(frozen=True)
class ProbeData:
    """Training features prepared once for any number of fits (several C, warm starts).

    The solver works in the eigenbasis of the feature covariance, scaled per direction by the inverse
    square root of an estimate of the objective's curvature there (a change of variables, so the minimiser
    is unchanged). Raw CLIP features are strongly correlated; in the original coordinates L-BFGS needs
    hundreds to a thousand iterations, in these a few dozen.
    """

    xhat: jax.Array  # [N, D] centred features in the eigenbasis, padding rows zero
    y: jax.Array  # [N]
    weight: jax.Array  # [N], 0 for padding rows
    basis: jax.Array  # [D, D] eigenvectors of the covariance (columns)
    eigvals: jax.Array  # [D]
    mean: jax.Array  # [D]
    n: int  # real (unpadded) rows; a traced leaf so that sets of different sizes share one compilation
    num_classes: int


@jax.jit
def _prepare(x, weight):
    n = jnp.sum(weight)
    mean = weight @ x / n
    xc = (x - mean) * weight[:, None]
    eigvals, basis = jnp.linalg.eigh(xc.T @ xc / n)
    return xc @ basis, basis, jnp.maximum(eigvals, 0.0), mean


def prepare(x: np.ndarray, y: np.ndarray, num_classes: int) -> ProbeData:
    """Centre, rotate and pad the training features (one pass over them)."""
    n = np.shape(x)[0]
    xp, yp, weight = _pad_rows(np.asarray(x, np.float32), np.asarray(y, np.int32))
    xhat, basis, eigvals, mean = _prepare(jnp.asarray(xp), jnp.asarray(weight))
    return ProbeData(xhat, jnp.asarray(yp), jnp.asarray(weight), basis, eigvals, mean, n, num_classes)


def _loss(p: dict, data: ProbeData, scale: jax.Array, l2: jax.Array) -> jax.Array:
    u = scale[:, None] * p["z"]  # the weights in the eigenbasis
    logits = data.xhat @ u + p["b"]
    logz = jax.nn.logsumexp(logits, axis=-1)
    ce = logz - jnp.take_along_axis(logits, data.y[:, None], axis=-1)[:, 0]
    # Rows of weight 0 are padding (see _pad_rows): the mean runs over the real rows only. The penalty is
    # taken on W = basis @ u itself, so the objective is exactly sklearn's whatever the rounding of `basis`.
    penalty = jnp.sum(jnp.square(data.basis @ u))
    return jnp.sum(data.weight * ce) / jnp.sum(data.weight) + 0.5 * l2 * penalty


def _to_original(p: dict, data: ProbeData, scale: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(W, b) of the original problem, logits = x @ W + b, from the solver's variables."""
    w = data.basis @ (scale[:, None] * p["z"])
    return w, p["b"] - data.mean @ w


def _original_grad_max(g: dict, data: ProbeData, scale: jax.Array) -> jax.Array:
    """max |gradient| of the original objective in (W, b): the stopping test scikit-learn applies."""
    g_w = data.basis @ (g["z"] / scale[:, None]) + data.mean[:, None] * g["b"][None, :]
    return jnp.maximum(jnp.max(jnp.abs(g_w)), jnp.max(jnp.abs(g["b"])))


@jax.jit
def _fit(data, l2, w0, b0, tol, max_iter):
    # Curvature of the softmax cross-entropy per class is about p(1 - p) with p ~ 1/K at the start.
    k = data.num_classes
    scale = jax.lax.rsqrt((1.0 / k) * (1.0 - 1.0 / k) * data.eigvals + l2)
    loss = functools.partial(_loss, data=data, scale=scale, l2=l2)
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)
    # Warm start: the solver's variables of (w0, b0).
    params = {"z": (data.basis.T @ w0) / scale[:, None], "b": b0 + data.mean @ w0}

    def cond(carry):
        _, _, it, gmax = carry
        return (it < max_iter) & (gmax > tol)

    def body(carry):
        p, state, it, _ = carry
        value, grad = value_and_grad(p, state=state)
        updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=loss)
        p = optax.apply_updates(p, updates)
        # The line search leaves the gradient at the accepted point in the state: the stopping test is free.
        return p, state, it + 1, _original_grad_max(optax.tree_utils.tree_get(state, "grad"), data, scale)

    _, g0 = jax.value_and_grad(loss)(params)
    carry = (params, opt.init(params), jnp.asarray(0), _original_grad_max(g0, data, scale))
    p, _, it, gmax = jax.lax.while_loop(cond, body, carry)
    w, b = _to_original(p, data, scale)
    return w, b, it, gmax


def fit_logistic_regression(
    x: np.ndarray | ProbeData,
    y: np.ndarray | None,
    num_classes: int,
    C: float,
    *,
    max_iter: int = 1000,
    tol: float = 1e-4,
    init: LogisticRegression | None = None,
) -> LogisticRegression:
    """L2-regularised multinomial logistic regression, the minimiser of sklearn's objective for this C.

    `x` may be a `ProbeData` from `prepare` (then `y` is ignored), to share that work between fits.
    """
    data = x if isinstance(x, ProbeData) else prepare(x, y, num_classes)
    if data.num_classes != num_classes:
        raise ValueError(f"prepared for {data.num_classes} classes, asked for {num_classes}")
    d = data.basis.shape[0]
    w0 = jnp.zeros((d, num_classes), jnp.float32) if init is None else jnp.asarray(init.w)
    b0 = jnp.zeros((num_classes,), jnp.float32) if init is None else jnp.asarray(init.b)
    l2 = 1.0 / (C * data.n)
    w, b, it, gmax = _fit(data, jnp.float32(l2), w0, b0, jnp.float32(tol), jnp.int32(max_iter))
    return LogisticRegression(np.asarray(w), np.asarray(b), float(C), int(it), float(gmax))


def _accuracy(model: LogisticRegression, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(model.predict(x) == y))


def select_C(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    num_classes: int,
    *,
    log10_range: tuple[float, float] = (-6.0, 6.0),
    steps_per_decade: int = 8,
    max_iter: int = 1000,
    tol: float = 1e-4,
) -> tuple[float, list[dict[str, float]]]:
    """The paper's parametric binary search for C on a validation set. Returns (best C, sweep history)."""
    lo, hi = log10_range
    data = prepare(x_train, y_train, num_classes)  # shared by all fits of the sweep
    fitted: dict[float, tuple[float, LogisticRegression]] = {}

    def evaluate(e: float) -> float:
        e = round(min(max(e, lo), hi), 6)
        if e not in fitted:
            # Warm start from the nearest C already fitted: neighbouring solutions are close.
            near = min(fitted, key=lambda k: abs(k - e)) if fitted else None
            init = fitted[near][1] if near is not None else None
            m = fit_logistic_regression(
                data, None, num_classes, 10.0**e, max_iter=max_iter, tol=tol, init=init
            )
            fitted[e] = (_accuracy(m, x_val, y_val), m)
        return e

    def best() -> float:
        # Highest validation accuracy; ties go to the stronger regularisation (smaller C).
        return max(sorted(fitted), key=lambda k: fitted[k][0])

    for e in np.arange(lo, hi + 1e-9, 2.0):
        evaluate(float(e))
    step = 2.0
    while step > 1.0 / steps_per_decade + 1e-9:
        step /= 2
        centre = best()
        evaluate(centre - step)
        evaluate(centre + step)
    history = [
        {"C": 10.0**k, "val_acc1": fitted[k][0], "iterations": fitted[k][1].iterations}
        for k in sorted(fitted)
    ]
    return 10.0 ** best(), history


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random disjoint index sets (train, validation) of a training set of n examples."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int | None = None,
    C: float | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 1000,
    tol: float = 1e-4,
) -> dict[str, Any]:
    """Choose C on a validation split of train (unless given), refit on all of train, score on test."""
    xtr, ytr = np.asarray(train_features, np.float32), np.asarray(train_labels, np.int64)
    xte, yte = np.asarray(test_features, np.float32), np.asarray(test_labels, np.int64)
    if num_classes is None:
        num_classes = int(max(ytr.max(), yte.max()) + 1)
    history: list[dict[str, float]] = []
    if C is None:
        tr, va = split_train_val(xtr.shape[0], val_fraction, seed)
        C, history = select_C(xtr[tr], ytr[tr], xtr[va], ytr[va], num_classes, max_iter=max_iter, tol=tol)
    model = fit_logistic_regression(xtr, ytr, num_classes, C, max_iter=max_iter, tol=tol)
    metrics = classification_metrics(model.logits(xte), yte)
    metrics.update(C=float(C), iterations=model.iterations, train_acc1=_accuracy(model, xtr, ytr))
    if history:
        metrics["sweep"] = history
    return metrics


@dataclasses.dataclass(frozen=True)
class LinearProbeConfig(DataConfig):
    """train_split: the probe's training split (C is chosen on a validation part of it unless given);
    split: the test split; normalize: L2-normalise the features first; feature_cache: a folder caching
    extracted features (.npz, used when `run` gets a checkpoint_id)."""

    train_split: str = "train"
    C: float | None = None
    val_fraction: float = 0.2
    max_iter: int = 1000
    normalize: bool = False
    seed: int = 0
    feature_cache: str | None = None


class LinearProbe(Evaluator):
    """Logistic regression on frozen image features of a registered dataset's train split, scored on test."""

    config_class = LinearProbeConfig

    def __init__(
        self, config, model: CLIP, *, where: str = "linear_probe", inputs: ModelInputs | None = None
    ) -> None:
        super().__init__(config, model, where=where, inputs=inputs)
        c = self.config
        if not 0 < c.val_fraction < 1:
            raise ValueError(f"{where}.val_fraction must be in (0, 1), got {c.val_fraction}")
        if c.C is not None and not c.C > 0:  # sklearn's C: the inverse regularisation strength
            raise ValueError(f"{where}.C must be > 0, got {c.C}")
        if c.max_iter < 1:
            raise ValueError(f"{where}.max_iter must be >= 1, got {c.max_iter}")
        self.spec = metadata.get_dataset(c.dataset)
        self.num_classes = len(metadata.classnames_and_templates(self.spec.name, c.task)[0])
        size, transform = model.cfg.vision.image_size, self.inputs.transform
        self.splits = {
            "train": (c.train_split, eval_dataset(c, size, split=c.train_split, transform=transform)),
            "test": (c.split or self.spec.split, eval_dataset(c, size, transform=transform)),
        }

    def _features(self, params: Any, which: str, checkpoint_id: str | None) -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        split, dataset = self.splits[which]
        path = None
        if c.feature_cache and checkpoint_id:
            kind = "norm" if c.normalize else "raw"
            key = slug(f"{checkpoint_id}-{self.spec.name}-{c.task}-{split}-{c.max_batches}-{kind}")
            path = os.path.join(c.feature_cache, f"{key}.npz")
        return cached_features(
            path,
            lambda: extract_image_features(
                self.model,
                params,
                dataset,
                normalize=c.normalize,
                max_batches=c.max_batches,
                progress=f"{self.spec.name}/{split}",
            ),
        )

    def run(self, params: Any, *, checkpoint_id: str | None = None) -> dict[str, Any]:
        c = self.config
        xtr, ytr = self._features(params, "train", checkpoint_id)
        xte, yte = self._features(params, "test", checkpoint_id)
        return linear_probe(
            xtr,
            ytr,
            xte,
            yte,
            num_classes=self.num_classes,
            C=c.C,
            val_fraction=c.val_fraction,
            seed=c.seed,
            max_iter=c.max_iter,
        )


def main(argv: Sequence[str] | None = None) -> dict:
    from clip_jax.eval import cli

    parser = argparse.ArgumentParser(description="Linear probe on frozen CLIP image features.")
    cli.add_common_args(parser)
    parser.add_argument("--dataset", required=True, help="CLIP_benchmark or TFDS name, e.g. cifar10")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--split", default=None, help="test split (default: the dataset's test split)")
    parser.add_argument("--C", type=float, default=None, help="fixed C (skips the validation sweep)")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--normalize", action="store_true", help="L2-normalise features before the probe")
    parser.add_argument("--feature-cache", default=None, help="folder caching extracted features (.npz)")
    args = parser.parse_args(argv)

    model, params, ident = cli.load_model(args)
    fields = cli.data_fields(args) | {
        "train_split": args.train_split,
        "C": args.C,
        "val_fraction": args.val_fraction,
        "max_iter": args.max_iter,
        "normalize": args.normalize,
        "seed": args.seed,
        "feature_cache": args.feature_cache,
    }
    evaluator = cli.build(LinearProbe, fields, model, ident.inputs)
    metrics = evaluator.run(params, checkpoint_id=ident.checkpoint_id)
    return cli.write_result(args, ident, evaluator.spec.name, "linear_probe", metrics)


if __name__ == "__main__":
    from clip_jax.cli_errors import run_cli

    raise SystemExit(run_cli(main, "clip_jax.eval.linear_probe"))
