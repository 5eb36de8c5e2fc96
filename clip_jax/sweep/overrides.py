"""Moved to clip_jax.train.overrides (the config-override mechanism belongs with the config schema); this
name stays importable for code and pickled sweep jobs written before the move."""

from clip_jax.train.overrides import DROP, apply_overrides, cli_overrides, format_value, parse_value

__all__ = ["DROP", "apply_overrides", "cli_overrides", "format_value", "parse_value"]
