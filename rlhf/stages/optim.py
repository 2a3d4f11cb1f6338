"""What every training stage shares: which parameters train, their state for checkpoints, one optimiser step."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from rlhf.models.roles import Backbone
from rlhf.processes import Processes


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
    clip_groups: list[list[torch.nn.Parameter]] | None = None,
) -> None:
    """Backward (none for loss None: the gradients are there already); then, unless `step` is False (gradients of
    more batches are still to be added), clip the gradient norm (one norm over `params`, or with `clip_groups` each
    group's own norm), step the optimiser and the learning-rate schedule, and clear the gradients."""
    if loss is not None:
        loss.backward()
    if not step:
        return
    for group in clip_groups or [params]:
        torch.nn.utils.clip_grad_norm_(group, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def micro_batches(items: list, parts: int) -> list[list]:
    """`items` in at most `parts` consecutive micro-batches of nearly equal size (all of them in one for parts 1)."""
    size = max(1, math.ceil(len(items) / parts))
    return [items[i : i + size] for i in range(0, len(items), size)]


def accumulated_step(
    batch: list,
    loss_of: Callable[[list], torch.Tensor],
    params: list[torch.nn.Parameter],
    optimizer,
    scheduler,
    parts: int = 1,
    processes: Processes = Processes(),
    weight_of: Callable[[list], float] = len,
    max_grad_norm: float = 1.0,
) -> torch.Tensor:
    """One optimiser step on `batch`, whose mean loss is `loss_of(batch)`, a mean over units `weight_of` counts
    (examples by default, tokens for SFT). With parts > 1 (gradient accumulation) each process's rows go through in
    micro-batches, and with several processes each takes its rows of the batch (`processes.shard`): each part's
    loss is weighted by its share of the batch's units and backpropagated before the next runs (one micro-batch's
    activations are held), and the gradients are summed over the processes, so the step is the one taken on the
    whole batch at once, its gradient norm clipped to `max_grad_norm`. Returns the batch's loss (detached unless
    one process took it in one part)."""
    if parts == 1 and not processes.parallel:
        loss = loss_of(batch)
        optimizer_step(loss, params, optimizer, scheduler, max_grad_norm)
        return loss
    total_weight = weight_of(batch)
    total = 0.0
    for part in micro_batches(processes.shard(batch), parts):
        loss = loss_of(part) * (weight_of(part) / total_weight)
        loss.backward()
        total += loss.item()
    processes.sum_gradients(params)
    optimizer_step(None, params, optimizer, scheduler, max_grad_norm)
    return torch.tensor(processes.sum(total))
