"""RLOO and GRPO: critic-free policy optimisers on K samples per prompt (issue 19 §2). Being written."""

from __future__ import annotations

from rlhf.config import RunConfig
from rlhf.run import RunDir


def train_rloo(run: RunDir, cfg: RunConfig) -> dict:
    raise NotImplementedError("rloo: not written yet")


def train_grpo(run: RunDir, cfg: RunConfig) -> dict:
    raise NotImplementedError("grpo: not written yet")
