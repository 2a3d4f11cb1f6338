"""The pairwise judge of a config's `judge` section."""

from __future__ import annotations

from rlhf.config import JudgeConfig
from rlhf.judges.llm import LLMJudge
from rlhf.judges.lm import LMPairwiseJudge
from rlhf.models.device import Placement


def make_judge(config: JudgeConfig, placement: Placement | None = None) -> LMPairwiseJudge | LLMJudge:
    """`kind: lm`, the zero-shot judge read from a local model (on `placement`, default `model.device: auto`), or
    `kind: llm`, an OpenAI-compatible endpoint."""
    if config.kind == "lm":
        return LMPairwiseJudge(
            config.lm_model or None,
            config.lm_margin,
            config.lm_batch_size,
            order_rule=config.lm_order_rule,
            placement=placement,
        )
    if config.kind == "llm":
        return LLMJudge(config.llm)
    raise ValueError(f"judge.kind: expected lm or llm, got {config.kind!r}")
