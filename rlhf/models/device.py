"""Where the models run and in which dtype: `model.device` and `model.dtype` resolved once into a Placement."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.config import ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Placement:
    """The device every model and tensor of a stage lives on, and the dtype of the models' weights."""

    device: torch.device
    dtype: torch.dtype
    world_size: int = 1

    def describe(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"device {self.device}, dtype {dtype}, world size {self.world_size}"


def resolve_device(name: str) -> torch.device:
    """`auto` = CUDA if available, else MPS, else CPU; a device asked for by name must be there."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"model.device: {name} requested but torch.cuda.is_available() is False")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"model.device: {name} requested but only {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"model.device: {name} requested but torch.backends.mps.is_available() is False")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` = bfloat16 on a CUDA GPU that supports it, else float32."""
    if name != "auto":
        return DTYPES[name]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def world_size() -> int:
    """Processes in this run: accelerate's count when a launcher started several, else 1."""
    try:
        from accelerate import PartialState  # lazy: optional, and only its process count is read
    except ImportError:
        return 1
    return PartialState().num_processes


def resolve_placement(model_cfg: ModelConfig) -> Placement:
    device = resolve_device(model_cfg.device)
    return Placement(device, resolve_dtype(model_cfg.dtype, device), world_size())


def model_device(module: torch.nn.Module) -> torch.device:
    """The device of a model's parameters."""
    return next(module.parameters()).device
