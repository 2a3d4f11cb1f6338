"""A batch of experience as every role reads it: queries, sampled responses, their masks, and what the sampling loop
kept for the other roles (the frozen bottom layers' output, the sampled tokens' log-probs, the reward model's
input). Made by rlhf/models/sampling.py, read by the roles in rlhf/models/roles.py."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.models.encoding import ScoringInputs


@dataclass
class Episodes:
    """A batch of queries and sampled responses: query [B,Q] left-padded, response [B,R] padded after its stop."""

    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    has_stop: torch.Tensor
    prefix: torch.Tensor | None = None  # frozen bottom-layer hidden states shared by all roles (see Backbone)
    sample_logprobs: torch.Tensor | None = None  # [B,R] log-probs of the sampled tokens, read off the sampling loop
    scoring: ScoringInputs | None = None  # the reward model's input, kept by the sampling loop (scoring_inputs)

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.query_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask, self.response_mask.long()], dim=1)

    def to(self, device: torch.device) -> "Episodes":
        """The same episodes with every tensor on `device` (themselves where they are there already)."""
        moved = {f: getattr(self, f) for f in ("query_ids", "query_mask", "response_ids", "response_mask", "has_stop")}
        return Episodes(
            **{f: t.to(device) for f, t in moved.items()},
            prefix=None if self.prefix is None else self.prefix.to(device),
            sample_logprobs=None if self.sample_logprobs is None else self.sample_logprobs.to(device),
            scoring=None if self.scoring is None else self.scoring.to(device),
        )

    def select(self, idx) -> "Episodes":
        return Episodes(
            self.query_ids[idx],
            self.query_mask[idx],
            self.response_ids[idx],
            self.response_mask[idx],
            self.has_stop[idx],
            None if self.prefix is None else self.prefix[idx],
            None if self.sample_logprobs is None else self.sample_logprobs[idx],
            None if self.scoring is None else self.scoring.select(idx),
        )
