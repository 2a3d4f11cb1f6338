"""Where the models run and in which dtype: `model.device` and `model.dtype` resolved once into a Placement."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from rlhf.config import ModelConfig
from rlhf.processes import current_processes

log = logging.getLogger("rlhf")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Placement:
    """The device every model and tensor of a stage lives on, and the dtype of the models' weights."""

    device: torch.device
    dtype: torch.dtype
    world_size: int = 1
    launcher: str = ""

    def describe(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        launched = f" (accelerate: {self.launcher})" if self.launcher else ""
        return f"device {self.device}, dtype {dtype}, world size {self.world_size}{launched}"


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


def cpu_computes_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX, through oneDNN), where
    bfloat16 weights run faster than float32 ones; elsewhere torch emulates it, slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private op: a torch without it is taken to have no such support
        return False


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` = bfloat16 on a CUDA GPU that supports it, else float32."""
    if name == "bfloat16" and device.type == "cpu" and not cpu_computes_bfloat16():
        log.warning(
            "model.dtype=bfloat16 on a CPU without bfloat16 arithmetic (AVX512-BF16 or AMX): torch emulates it, "
            "slower than float32; set model.dtype=float32 (or auto)"
        )
    if name != "auto":
        return DTYPES[name]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def resolve_placement(model_cfg: ModelConfig) -> Placement:
    """The device and dtype of this process's models. With several processes on CUDA, `auto` and `cuda` mean
    this process's own GPU (cuda:LOCAL_RANK), as accelerate assigns them."""
    processes = current_processes()
    device = resolve_device(model_cfg.device)
    if processes.parallel and device.type == "cuda" and device.index is None:
        device = resolve_device(f"cuda:{processes.local_rank}")
    return Placement(device, resolve_dtype(model_cfg.dtype, device), processes.world_size, processes.launcher)


def model_device(module: torch.nn.Module) -> torch.device:
    """The device of a model's parameters."""
    return next(module.parameters()).device
