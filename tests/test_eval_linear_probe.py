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


# fit_logistic_regression's default tol: it stops once max |gradient| in (W, b) <= TOL (scikit-learn's test).
TOL = 1e-4
U32 = 2.0**-24  # float32 unit roundoff


@pytest.mark.parametrize("C", [0.003, 0.3])
def test_matches_sklearn_at_the_same_C(features, C):
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    xtr, ytr, _, _ = features
    n = len(ytr)
    ours = lp.fit_logistic_regression(xtr, ytr, 10, C, tol=TOL)
    assert ours.grad_max <= TOL and ours.iterations < 1000
    # The oracle is scikit-learn's minimiser converged far below TOL, so that the comparison does not depend on
    # where an unconverged solver happens to stop on a given machine. float64 features: on float32 ones
    # sklearn's own gradient carries float32 noise and it stops above TOL. newton-cg stops on max |gradient|
    # <= tol itself (lbfgs stops on a relative decrease of the objective first, at 4e-8 to 4e-7 here).
    # One BLAS thread: on the shared 2-core CI machine more threads make scikit-learn ~10x slower.
    with threadpool_limits(1):
        ref = LogisticRegression(C=C, solver="newton-cg", tol=1e-8, max_iter=1000).fit(
            xtr.astype(np.float64), ytr
        )
    f_ref, gw_ref, gb_ref, _ = _objective_and_grad(xtr, ytr, ref.coef_.T, ref.intercept_, C)
    # _objective_and_grad is sklearn's objective: at sklearn's minimiser its gradient vanishes (to sklearn's
    # tol; re-evaluating it here moves it by float64 rounding, ~1e-13).
    tol_ref = 1e-3 * TOL
    assert max(np.abs(gw_ref).max(), np.abs(gb_ref).max()) <= tol_ref
    # Ours converged on the same objective: the float64 gradient at our (W, b) is within TOL up to the float32
    # rounding of the sums over n rows in the solver's own evaluation of it.
    f_ours, gw, gb, rounding = _objective_and_grad(xtr, ytr, ours.w, ours.b, C)
    tol_ours = TOL + rounding
    assert max(np.abs(gw).max(), np.abs(gb).max()) <= tol_ours, (np.abs(gw).max(), np.abs(gb).max(), tol_ours)

    # What follows for the objective and the weights. f is convex in z = (W, b): f(z) - f(z') <= <grad f(z),
    # z - z'> <= max|grad f(z)| * ||z - z'||_1. Shifting b by a constant changes nothing and the b-gradient
    # sums to zero, so the b difference is taken up to a shift (its median, the smallest ||.||_1).
    dw = ours.w.astype(np.float64) - ref.coef_.T
    db = ours.b.astype(np.float64) - ref.intercept_
    dz1 = np.abs(dw).sum() + np.abs(db - np.median(db)).sum()
    assert f_ours <= f_ref + tol_ours * dz1, (f_ours, f_ref)
    assert f_ours >= f_ref - tol_ref * dz1, (f_ours, f_ref)  # an unconverged oracle fails here
    # f is (1/(C n))-strongly convex in W (the penalty), convex in b: summing the two inequalities above,
    # ||W - W_ref||^2 / (C n) <= <grad f(z) - grad f(z'), z - z'> <= (tol_ours + tol_ref) * ||z - z'||_1.
    assert np.sum(dw**2) <= C * n * (tol_ours + tol_ref) * dz1, (np.sum(dw**2), dz1)
    # No test accuracy comparison: at C=0.3 the weight bound times ||x|| exceeds every test point's margin, so
    # the tolerance says nothing about which near-tie points flip (2 of 600 here; which ones is up to rounding).


def _objective_and_grad(x, y, w, b, C):
    """sklearn's objective divided by C*n (mean CE + ||W||^2 / (2Cn), bias unpenalised) and its gradient in
    (W, b), in float64; and the float32 rounding expected of the gradient's sums over n rows (sqrt(n) * u *
    sum |terms|, the standard estimate for a length-n float32 sum)."""
    x, w, b = x.astype(np.float64), np.asarray(w, np.float64), np.asarray(b, np.float64)
    n, k = x.shape[0], w.shape[1]
    logits = x @ w + b
    logits -= logits.max(1, keepdims=True)
    s = np.exp(logits).sum(1)
    f = np.mean(np.log(s) - logits[np.arange(n), y]) + np.sum(w**2) / (2 * C * n)
    r = (np.exp(logits) / s[:, None] - np.eye(k)[y]) / n  # d mean CE / d logits
    rounding = np.sqrt(n) * U32 * max((np.abs(x).T @ np.abs(r)).max(), np.abs(r).sum(0).max())
    return f, x.T @ r + w / (C * n), r.sum(0), rounding


def test_regularisation_matters_and_bias_is_unpenalised(features):
    xtr, ytr, _, _ = features
    c_strong = 1e-8
    strong = lp.fit_logistic_regression(xtr, ytr, 10, c_strong, tol=TOL)
    weak = lp.fit_logistic_regression(xtr, ytr, 10, 1.0, tol=TOL)
    # Stationarity, X^T (P - Y) / n + W / (C n) = grad_W with |grad_W| <= TOL, gives
    # |W| <= C (max_j sum_i |x_ij| + n TOL) (|P - Y| <= 1 entrywise): ~1.6e-4 here, against ~0.5 at C=1.
    w_bound = c_strong * (np.abs(xtr.astype(np.float64)).sum(0).max() + len(ytr) * TOL)
    assert np.abs(strong.w).max() <= w_bound < 1e-3 * np.abs(weak.w).max()
    # The unpenalised bias fits the class frequencies: grad_b = mean_i softmax(x_i W + b) - priors, within
    # TOL, and softmax is 1/2-Lipschitz in the max norm, so |softmax(b) - priors| <= TOL + max |x_i W| / 2.
    # (A penalised bias would give softmax(b) ~ uniform, off the priors by ~1e-2.)
    priors = np.bincount(ytr, minlength=10) / len(ytr)
    p = np.exp(strong.b - strong.b.max())
    atol = TOL + 0.5 * np.abs(xtr @ strong.w).max()
    np.testing.assert_allclose(p / p.sum(), priors, atol=atol)


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
