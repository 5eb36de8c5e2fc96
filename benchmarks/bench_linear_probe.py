"""Linear-probe fit time: clip_jax's jitted full-batch L-BFGS vs scikit-learn's LogisticRegression(lbfgs).

    python benchmarks/bench_linear_probe.py [--repeats 3] [--quick]

Same features, same C, same tolerance (max |gradient| <= 1e-4) and iteration cap (1000). Features are
512-d make_classification data with many classes (a stand-in for frozen CLIP features). In one process the
two fits alternate (ours, sklearn, ours, ...); reported are medians over repeats and the ratio
sklearn / ours (> 1: ours is faster). Our first fit, which compiles the solver, is timed separately
(`compile_s`) and excluded. scikit-learn is timed with 1 BLAS thread and with all cores, and the faster
setting is the reference (on a busy machine extra BLAS threads can make it much slower, not faster).
Test accuracies of both fits are reported too: they should agree within 0.3 points.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

CONFIGS = (
    # (train examples, feature dim, classes, C)
    (5000, 512, 10, 0.1),
    (10000, 512, 100, 0.1),
)
QUICK_CONFIGS = ((2000, 512, 10, 0.1),)


def make_features(n: int, dim: int, classes: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test): n train and n/4 test rows."""
    from sklearn.datasets import make_classification

    n_test = max(n // 4, 200)
    x, y = make_classification(
        n_samples=n + n_test,
        n_features=dim,
        n_informative=min(dim // 4, 128),
        n_redundant=dim // 8,
        n_classes=classes,
        n_clusters_per_class=1,
        class_sep=1.5,
        flip_y=0.01,
        random_state=seed,
    )
    x = x.astype(np.float32)
    return x[:n], y[:n], x[n:], y[n:]


def _time(fn, *args, **kwargs) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def run(configs=CONFIGS, repeats: int = 3, sklearn_threads: tuple[int, ...] | None = None) -> list[dict]:
    """Time both fits on each config; one dict per config."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    from clip_jax.eval.linear_probe import fit_logistic_regression

    sklearn_threads = sklearn_threads or tuple(sorted({1, os.cpu_count() or 1}))
    rows = []
    for n, dim, classes, C in configs:
        xtr, ytr, xte, yte = make_features(n, dim, classes)
        compile_s, _ = _time(fit_logistic_regression, xtr, ytr, classes, C, max_iter=2)
        ours_t, sk_t = [], {t: [] for t in sklearn_threads}
        ours = sk = None
        for _ in range(repeats):
            dt, ours = _time(fit_logistic_regression, xtr, ytr, classes, C, max_iter=1000, tol=1e-4)
            ours_t.append(dt)
            for threads in sklearn_threads:
                with threadpool_limits(threads):
                    dt, sk = _time(LogisticRegression(C=C, max_iter=1000, tol=1e-4).fit, xtr, ytr)
                sk_t[threads].append(dt)
        sk_med = {t: statistics.median(v) for t, v in sk_t.items()}
        best_threads = min(sk_med, key=sk_med.get)
        ours_med = statistics.median(ours_t)
        rows.append(
            {
                "n_train": n,
                "dim": dim,
                "classes": classes,
                "C": C,
                "repeats": repeats,
                "ours_s": ours_med,
                "ours_compile_s": compile_s,
                "ours_iterations": ours.iterations,
                "sklearn_s": sk_med[best_threads],
                "sklearn_threads": best_threads,
                "sklearn_s_by_threads": sk_med,
                "sklearn_iterations": int(sk.n_iter_[0]),
                "speedup": sk_med[best_threads] / ours_med,
                "ours_test_acc": float(np.mean(ours.predict(xte) == yte)),
                "sklearn_test_acc": float(sk.score(xte, yte)),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one small config")
    parser.add_argument("--configs", default=None, help="'n,dim,classes,C;...' instead of the defaults")
    parser.add_argument("--sklearn-threads", default=None, help="comma-separated BLAS thread counts to try")
    args = parser.parse_args()
    import jax

    configs = QUICK_CONFIGS if args.quick else CONFIGS
    if args.configs:
        configs = [
            (int(n), int(d), int(k), float(c))
            for n, d, k, c in (x.split(",") for x in args.configs.split(";"))
        ]
    threads = tuple(int(t) for t in args.sklearn_threads.split(",")) if args.sklearn_threads else None
    rows = run(configs, args.repeats, threads)
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, cpu cores: {os.cpu_count()}")
    print(
        "| n | dim | classes | C | ours s (iters) | sklearn s (iters, threads) | speedup | acc ours / sklearn |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['n_train']} | {r['dim']} | {r['classes']} | {r['C']} | {r['ours_s']:.2f} ({r['ours_iterations']}) "
            f"| {r['sklearn_s']:.2f} ({r['sklearn_iterations']}, {r['sklearn_threads']}) | {r['speedup']:.1f}x "
            f"| {100 * r['ours_test_acc']:.2f} / {100 * r['sklearn_test_acc']:.2f} |"
        )


if __name__ == "__main__":
    main()
