"""A bound the trainer tests hold two runs' parameters to, when their gradients differ only by rounding."""


def adam_drift_bound(steps: int, lr: float, b1: float = 0.9, b2: float = 0.98) -> float:
    """How far one parameter can drift between two runs whose gradients differ only by rounding: Adam's
    bias-corrected update at step t is lr * m_t / sqrt(v_t) with m_t = sum_i w_i g_i and
    v_t = sum_i u_i g_i^2, so by Cauchy-Schwarz |m_t / sqrt(v_t)| <= sqrt(sum_i w_i^2 / u_i) whatever the
    gradients; two runs' updates differ by at most twice that. (eps only shrinks the update; weight
    decay scales both runs' parameters alike.)"""
    total = 0.0
    for t in range(1, steps + 1):
        w = [(1 - b1) * b1 ** (t - i) / (1 - b1**t) for i in range(1, t + 1)]
        u = [(1 - b2) * b2 ** (t - i) / (1 - b2**t) for i in range(1, t + 1)]
        total += 2 * lr * sum(wi * wi / ui for wi, ui in zip(w, u, strict=True)) ** 0.5
    return total
