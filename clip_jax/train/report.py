"""Where a run's metrics go besides WORKDIR/metrics.jsonl: `config.report_to`, as open_clip's --report-to.

- "tensorboard": event files in WORKDIR/tensorboard (tensorboardX; `tensorboard --logdir WORKDIR`).
- "wandb": a Weights & Biases run named after the workdir, with the resolved config. Its id is derived
  from the workdir's absolute path, so a resumed run appends to the same wandb run; WANDB_MODE=offline
  writes it under WORKDIR/wandb for a later `wandb sync`.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Mapping
from typing import Any

import ml_collections


class Reporters:
    """The writers of config.report_to, each given every scalar as {"train/loss": value, ...} at a step."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str) -> None:
        self.writers: list[Any] = []
        report_to = tuple(config.get("report_to", ("tensorboard",)))
        if "tensorboard" in report_to:
            self.writers.append(_TensorBoard(workdir))
        if "wandb" in report_to:
            self.writers.append(_WandB(config, workdir))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for writer in self.writers:
            writer.scalars(step, values)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers = []


class _TensorBoard:
    def __init__(self, workdir: str) -> None:
        import_tensorboardx_without_torch()
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, config: ml_collections.ConfigDict, workdir: str) -> None:
        try:
            import wandb
        except ImportError as e:
            raise ImportError(
                "config.report_to has 'wandb' but wandb is not installed: pip install -e '.[wandb]' "
                "(or drop it: --set report_to=\"('tensorboard',)\")"
            ) from e
        path = os.path.abspath(workdir)
        self.run = wandb.init(
            project=config.get("wandb_project", "clip_jax"),
            name=os.path.basename(path.rstrip("/")),
            id=hashlib.sha1(path.encode()).hexdigest()[:16],
            resume="allow",
            dir=workdir,
            config=config.to_dict(),
        )

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def close(self) -> None:
        self.run.finish()


def import_tensorboardx_without_torch() -> None:
    """tensorboardX imports torch, when installed, only to accept torch tensors: seconds of CPU at the
    start of every run. Loaded with torch hidden, it takes numpy arrays alone; torch stays importable
    (e.g. for config.init_from of a .pt file)."""
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        return
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        import tensorboardX  # noqa: F401
    finally:
        del sys.modules["torch"]
