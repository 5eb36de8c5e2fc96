"""Evaluation: zero-shot classification, distribution-shift robustness, linear probe, retrieval.

Each evaluation is one class with the interface of `clip_jax.eval.common.Evaluator` (built from its config
and the model, then `run(params) -> metrics`), run by the trainer (`config.evals`), by its command line
(`python -m clip_jax.eval.<task>`) and by the experiments alike; results are written as CLIP_benchmark
JSON records (`clip_jax.eval.results`).
"""
