"""DPO and IPO on the run's comparisons (issue 19 §2). Being written."""

from __future__ import annotations

from rlhf.config import RunConfig
from rlhf.run import RunDir


def train_dpo(run: RunDir, cfg: RunConfig) -> dict:
    raise NotImplementedError("dpo: not written yet")
