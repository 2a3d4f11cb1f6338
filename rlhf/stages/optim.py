"""What every training stage shares: which parameters train, their state for checkpoints, one optimiser step."""

from __future__ import annotations

import math
from collections.abc import Callable

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
    loss: torch.Tensor | None,
    params: list[torch.nn.Parameter],
    optimizer,
    scheduler,
    max_grad_norm: float = 1.0,
    step: bool = True,
) -> None:
    """Backward (none for loss None: the gradients are there already); then, unless `step` is False (gradients of
    more batches are still to be added), clip the gradient norm, step the optimiser and the learning-rate schedule,
    and clear the gradients."""
    if loss is not None:
        loss.backward()
    if not step:
        return
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def micro_batches(items: list, parts: int) -> list[list]:
    """`items` in at most `parts` consecutive micro-batches of nearly equal size (all of them in one for parts 1)."""
    size = math.ceil(len(items) / parts)
    return [items[i : i + size] for i in range(0, len(items), size)]


def accumulated_step(
    batch: list,
    loss_of: Callable[[list], torch.Tensor],
    params: list[torch.nn.Parameter],
    optimizer,
    scheduler,
    parts: int = 1,
) -> torch.Tensor:
    """One optimiser step on `batch`, whose mean loss is `loss_of(batch)`. With parts > 1 (gradient accumulation)
    the batch goes through in micro-batches, each one's loss weighted by its share of the batch and backpropagated
    before the next runs, so only one micro-batch's activations are held. Returns the batch's loss (detached when
    accumulated)."""
    if parts == 1:
        loss = loss_of(batch)
        optimizer_step(loss, params, optimizer, scheduler)
        return loss
    total = torch.zeros(())
    for part in micro_batches(batch, parts):
        loss = loss_of(part) * (len(part) / len(batch))
        loss.backward()
        total = total + loss.detach().cpu()
    optimizer_step(None, params, optimizer, scheduler)
    return total
