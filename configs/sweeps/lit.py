"""Ablation: LiT (Zhai et al. 2022), a locked pretrained image tower, against it unlocked and from scratch.

    python experiments/ablations/run.py lit        # trains the tower's source run first
    python -m clip_jax.train --config configs/sweeps/lit.py:lit=locked,tower=DIR --workdir DIR  # one run

The argument adds two variables to configs/synthetic_tiny.py's: `lit` = scratch (both towers fresh),
unlocked (the image tower initialised from `tower`, every parameter trained) or locked (the same, the
image tower frozen: LiT), and `tower`, a clip_jax training run whose newest checkpoint gives the image
tower (default runs/ablations/lit/tower, which experiments/ablations/run.py trains). The text tower is
always fresh.
"""

from pathlib import Path

import ml_collections

from clip_jax.train.config import split_top_level
from configs.synthetic_tiny import get_config as tiny_config

MODES = ("scratch", "unlocked", "locked")
TOWER = str(Path(__file__).resolve().parents[2] / "runs" / "ablations" / "lit" / "tower")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    own = {"lit": "scratch", "tower": TOWER}
    rest = []
    for item in split_top_level(arg or ""):
        key, _, value = item.partition("=")
        if key.strip() in own:
            own[key.strip()] = value.strip().strip("'\"")
        else:
            rest.append(item)
    if own["lit"] not in MODES:
        raise ValueError(f"config argument lit={own['lit']!r}: choose from {MODES}")
    c = tiny_config(",".join(rest) or None)
    if own["lit"] != "scratch":
        c.init_from = own["tower"]
        c.init_from_only = ("^visual/",)
    if own["lit"] == "locked":
        c.freeze = ("^visual/",)
    return c


def sweep(add):
    for mode in MODES:
        add(**{"arg.lit": mode})
