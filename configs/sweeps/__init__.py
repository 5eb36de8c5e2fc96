"""Sweep config files: each has get_config(arg) (usually a config it imports) and sweep(add)."""
