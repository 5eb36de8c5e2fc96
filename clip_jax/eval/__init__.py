"""Evaluation: zero-shot classification, distribution-shift robustness, linear probe, retrieval.

Each task is a module with a library function and a command line (`python -m clip_jax.eval.<task>`);
results are written as CLIP_benchmark JSON records (`clip_jax.eval.results`).
"""
