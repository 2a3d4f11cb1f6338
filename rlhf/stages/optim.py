"""What every training stage shares: which parameters train, their state for checkpoints, one optimiser step."""

from __future__ import annotations

import torch

from rlhf.models.roles import Backbone


def trainable_state(backbone: Backbone, adapter: str | None) -> dict[str, torch.Tensor]:
    if backbone.is_lora:
        return backbone.adapter_state(adapter)
    return {k: v.detach().clone() for k, v in backbone.model.state_dict().items()}


def load_trainable_state(backbone: Backbone, adapter: str | None, state: dict) -> None:
    if backbone.is_lora:
        backbone.load_adapter_state(adapter, state)
    else:
        backbone.model.load_state_dict(state)


def trainable_parameters(backbone: Backbone, adapter: str | None) -> list[torch.nn.Parameter]:
    if backbone.is_lora:
        return backbone.mark_trainable(adapter)
    params = list(backbone.model.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


def optimizer_step(
    loss: torch.Tensor, params: list[torch.nn.Parameter], optimizer, scheduler, max_grad_norm: float = 1.0
) -> None:
    """Backward, clip the gradient norm, step the optimiser and the learning-rate schedule, clear gradients."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
