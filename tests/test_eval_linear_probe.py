"""Linear probe: parity with scikit-learn's LogisticRegression(lbfgs) and the C search protocol."""

from __future__ import annotations

import numpy as np
import pytest

from clip_jax.eval import linear_probe as lp


@pytest.fixture(scope="module")
def features():
    """512-d features of 10 classes, hard enough that the regularisation strength matters."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=1600,
        n_features=512,
        n_informative=48,
        n_redundant=64,
        n_classes=10,
        n_clusters_per_class=2,
        class_sep=1.2,
        flip_y=0.02,
        random_state=0,
    )
    x = x.astype(np.float32)
    return x[:1000], y[:1000], x[1000:], y[1000:]


@pytest.mark.parametrize("C", [0.003, 0.3])
def test_matches_sklearn_at_the_same_C(features, C):
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    xtr, ytr, xte, yte = features
    ours = lp.fit_logistic_regression(xtr, ytr, 10, C)
    # One BLAS thread: on the shared 2-core CI machine more threads make scikit-learn ~10x slower.
    with threadpool_limits(1):
        ref = LogisticRegression(C=C, max_iter=1000).fit(xtr, ytr)
    acc_ours = float(np.mean(ours.predict(xte) == yte))
    acc_ref = ref.score(xte, yte)
    assert abs(acc_ours - acc_ref) <= 0.003, (acc_ours, acc_ref)
    assert ours.grad_max <= 1e-4 and ours.iterations < 1000
    # Same minimiser, not merely the same accuracy: equal weights up to both solvers' gradient tolerance
    # (redundant features leave directions that only the weak penalty pins down) ...
    np.testing.assert_allclose(ours.w, ref.coef_.T, atol=2e-2 * np.abs(ref.coef_).max())
    # ... and sklearn's objective (divided by C*n: mean CE + ||W||^2 / (2Cn)) as low as sklearn gets it.
    f_ours = _objective(xtr, ytr, ours.w, ours.b, C)
    f_ref = _objective(xtr, ytr, ref.coef_.T, ref.intercept_, C)
    assert f_ours <= f_ref + 1e-5 * abs(f_ref), (f_ours, f_ref)
    assert f_ours >= f_ref - 1e-3 * abs(f_ref), (f_ours, f_ref)


def _objective(x, y, w, b, C):
    logits = x.astype(np.float64) @ w.astype(np.float64) + b
    logits -= logits.max(1, keepdims=True)
    ce = np.log(np.exp(logits).sum(1)) - logits[np.arange(len(y)), y]
    return ce.mean() + np.sum(np.square(w.astype(np.float64))) / (2 * C * len(y))


def test_regularisation_matters_and_bias_is_unpenalised(features):
    xtr, ytr, _, _ = features
    strong = lp.fit_logistic_regression(xtr, ytr, 10, 1e-8)
    weak = lp.fit_logistic_regression(xtr, ytr, 10, 1.0)
    assert np.abs(strong.w).max() < 1e-3 * np.abs(weak.w).max()
    # With W ~ 0 the unpenalised bias alone fits the class frequencies: softmax(b) = priors.
    priors = np.bincount(ytr, minlength=10) / len(ytr)
    p = np.exp(strong.b - strong.b.max())
    np.testing.assert_allclose(p / p.sum(), priors, atol=2e-3)


def test_C_search_follows_the_paper_protocol(features):
    xtr, ytr, xte, yte = features
    tr, va = lp.split_train_val(len(ytr), 0.25, seed=0)
    assert not set(tr) & set(va) and len(tr) + len(va) == len(ytr)
    best, history = lp.select_C(xtr[tr], ytr[tr], xtr[va], ytr[va], 10)
    exps = np.log10([h["C"] for h in history])
    # Coarse decades 1e-6, 1e-4, ..., 1e6 first, then halving steps down to 1/8 decade around the best.
    assert set(np.round(np.arange(-6, 7, 2), 6)) <= set(np.round(exps, 6))
    assert len(history) <= 7 + 2 * 4
    steps = np.diff(np.sort(exps))
    assert np.isclose(steps.min(), 0.125)
    accs = {round(np.log10(h["C"]), 6): h["val_acc1"] for h in history}
    assert accs[round(np.log10(best), 6)] == max(accs.values())
    # The extremes are worse than the chosen C: the search had something to find.
    assert accs[-6.0] < max(accs.values()) and accs[6.0] <= max(accs.values())
    out = lp.linear_probe(xtr, ytr, xte, yte, num_classes=10, C=best)
    assert 0.3 < out["acc1"] <= 1.0 and out["C"] == best
