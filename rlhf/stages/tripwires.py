"""Tripwires: checks that stop a training stage when its numbers go wrong (docs/faults.md).

A NaN or inf in a loss, reward, advantage, gradient norm or weight; the KL to the reference above
`tripwires.kl_ceiling`; the policy's mean per-token entropy below `tripwires.entropy_floor`. A stage calls the checks
before it steps, logs or saves, so when one fires nothing of the faulty step is written: the checkpoint on disk is the
last one the stage saved, with finite weights (every save is checked). The KL and entropy are measured on the policy a
step starts from, which the last checkpoint may hold: then it is rolled back to the one before (`check_policy`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import torch

from rlhf.config_methods import TripwireConfig
from rlhf.processes import Processes
from rlhf.run import RunDir


def unit_of(stage: str) -> str:
    """What a stage counts its progress in: PPO, RLOO and GRPO iterations, the others optimiser steps."""
    return "iteration" if stage in ("ppo", "rloo", "grpo") else "step"


class TripwireFired(RuntimeError):
    """A tripwire stopped stage `stage` at `step` (its iteration or optimiser step, 1-based): `tripwire` names the
    check, `value` the number it saw, `detail` what it is; `note` what became of the stage's checkpoint."""

    def __init__(self, stage: str, tripwire: str, step: int, value: float, detail: str = "", note: str = ""):
        self.stage, self.tripwire, self.step, self.value = stage, tripwire, step, value
        self.detail, self.note = detail, note
        unit = unit_of(stage)
        super().__init__(
            f"{stage}: tripwire '{tripwire}' fired at {unit} {step}: {detail or tripwire} = {value!r}; the stage "
            f"stopped without saving this {unit}; {note or 'its checkpoint, if any, is the last one saved before it'}"
        )

    def with_note(self, note: str) -> TripwireFired:
        return TripwireFired(self.stage, self.tripwire, self.step, self.value, self.detail, note)


def first_non_finite(value: torch.Tensor | float) -> float | None:
    """The first NaN or inf in `value` (a tensor or a number), or None when every element is finite."""
    if isinstance(value, torch.Tensor):
        bad = ~torch.isfinite(value.detach())
        return float(value.detach()[bad].flatten()[0]) if bool(bad.any()) else None
    return None if math.isfinite(value) else float(value)


def check_finite(
    stage: str, name: str, step: int, value: torch.Tensor | float, processes: Processes | None = None
) -> None:
    """Raise TripwireFired('non_finite', ...) when `value` holds a NaN or inf. With several `processes` the check is
    collective (every process calls it, and all raise when any saw one), so none is left waiting for the others."""
    bad = first_non_finite(value)
    if processes is not None and processes.parallel:
        flag = processes.max(0.0 if bad is None else 1.0)
        bad = (float("nan") if bad is None else bad) if flag > 0 else None
    if bad is not None:
        raise TripwireFired(stage, "non_finite", step, bad, f"{name} is not finite")


def check_kl(stage: str, step: int, kl: float, tc: TripwireConfig) -> None:
    """Raise TripwireFired('kl_ceiling', ...) when the mean KL to the reference `kl` (nats per response) exceeds
    tc.kl_ceiling (0 = off); a NaN KL raises the 'non_finite' one."""
    check_finite(stage, "kl to the reference", step, kl)
    if tc.kl_ceiling > 0 and kl > tc.kl_ceiling:
        raise TripwireFired(stage, "kl_ceiling", step, kl, f"KL to the reference above {tc.kl_ceiling}")


def check_entropy(stage: str, step: int, entropy: float, tc: TripwireConfig) -> None:
    """Raise TripwireFired('entropy_floor', ...) when the policy's mean per-token entropy `entropy` (nats) is below
    tc.entropy_floor (0 = off); a NaN entropy raises the 'non_finite' one."""
    check_finite(stage, "policy entropy", step, entropy)
    if entropy < tc.entropy_floor:
        raise TripwireFired(stage, "entropy_floor", step, entropy, f"policy entropy below {tc.entropy_floor}")


def floating_tensors(state, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(dotted key, tensor) of every floating-point tensor in a nested dict/list state (a checkpoint's)."""
    if isinstance(state, torch.Tensor):
        if state.is_floating_point():
            yield prefix, state
    elif isinstance(state, dict):
        for key, value in state.items():
            yield from floating_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            yield from floating_tensors(value, f"{prefix}.{i}")


def check_finite_state(stage: str, step: int, state: dict) -> None:
    """Raise TripwireFired('non_finite', ...) naming the first weight or optimiser-state tensor of `state` that holds a
    NaN or inf: a poisoned state is never saved."""
    for key, tensor in floating_tensors(state):
        check_finite(stage, key, step, tensor)


def keeps_previous(tc: TripwireConfig) -> bool:
    """Whether a stage keeps the checkpoint before its last (checkpoint.prev.pt): while a KL or entropy tripwire is
    on, which may roll the last one back."""
    return tc.kl_ceiling > 0 or tc.entropy_floor > 0


def save_checked_checkpoint(run: RunDir, stage: str, step: int, state: dict, tc: TripwireConfig | None = None) -> None:
    """`run.save_checkpoint`, after checking every tensor of `state` is finite; keeping the previous one while a KL or
    entropy tripwire of `tc` is on."""
    check_finite_state(stage, step, state)
    run.save_checkpoint(stage, state, keep_previous=tc is not None and keeps_previous(tc))


def roll_back(run: RunDir, stage: str, measured: int, step_key: str) -> str:
    """After a KL or entropy tripwire fired on the policy that `measured` steps (or iterations) of training made:
    when the stage's checkpoint holds that policy (its `step_key` is `measured`), put the previous checkpoint in its
    place, or remove it when there is none (the stage then restarts from its beginning). Returns what was done."""
    path, unit = run.root / stage / "checkpoint.pt", unit_of(stage)
    previous = path.with_name("checkpoint.prev.pt")
    if not path.exists():
        return "no checkpoint had been saved"
    saved = torch.load(path, map_location="cpu", weights_only=False).get(step_key)
    if saved != measured:  # an older one (checkpoint_every > 1), whose policy passed
        return f"{path} holds {unit} {saved}, from before the policy that tripped it"
    if not run.writer:
        return f"{path} held the policy that tripped it; the main process rolls it back"
    if previous.exists():
        os.replace(previous, path)
        back = torch.load(path, map_location="cpu", weights_only=False).get(step_key)
        return f"{path}, which held the policy that tripped it ({unit} {saved}), was rolled back to {unit} {back}"
    path.unlink()
    return (
        f"{path} held the policy that tripped it ({unit} {saved}) and no earlier one was kept, so it was removed: "
        "the stage restarts from its beginning"
    )


def check_policy(
    run: RunDir, stage: str, step: int, kl: float | None, entropy: float | None, tc: TripwireConfig, step_key: str
) -> None:
    """The KL and entropy tripwires on figures measured at `step` (1-based) on the policy the step started from,
    the one its previous step's checkpoint holds; when one fires, that checkpoint is rolled back (`roll_back`) and
    the TripwireFired says so. None skips a figure."""
    try:
        if kl is not None:
            check_kl(stage, step, kl, tc)
        if entropy is not None:
            check_entropy(stage, step, entropy, tc)
    except TripwireFired as fired:
        raise fired.with_note(roll_back(run, stage, step - 1, step_key)) from None


def checked_loss(stage: str, step: int, loss: torch.Tensor, processes: Processes) -> torch.Tensor:
    """`loss`, after checking it is finite (before its backward pass). With several processes a micro-batch's loss
    is not checked here (processes may hold different numbers of micro-batches, so a collective check could hang);
    the stage checks the step's summed loss after it, which every process holds."""
    if not processes.parallel:
        check_finite(stage, "loss", step, loss)
    return loss
