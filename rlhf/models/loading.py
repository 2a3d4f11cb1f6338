"""Opening the models a stage needs from a run directory."""

from __future__ import annotations

import torch

from rlhf.config import RunConfig
from rlhf.models.device import Placement, resolve_placement
from rlhf.models.provision import load_causal_lm, load_tokenizer, resolve_model
from rlhf.models.roles import Backbone, ScalarRole
from rlhf.run import RunDir


def set_threads(cfg: RunConfig) -> None:
    if cfg.model.threads > 0:
        torch.set_num_threads(cfg.model.threads)


def base_model_path(cfg: RunConfig) -> str:
    return resolve_model(cfg.model.name_or_path, cfg.model.cache_dir)


def sft_model_path(run: RunDir, cfg: RunConfig) -> str:
    """The SFT policy: RUN_DIR/sft/model, or the base model when SFT was skipped (n_demonstrations: 0)."""
    info = run.done_info("sft") if run.is_done("sft") else None
    if info is None:
        run.require("sft")
    return str(run.root / "sft" / "model") if info.get("trained") else base_model_path(cfg)


def open_backbone(cfg: RunConfig, path: str, placement: Placement | None = None) -> Backbone:
    """The model at `path` on `placement` (default: the config's model.device and model.dtype), with the config's
    adapter settings."""
    set_threads(cfg)
    placement = placement or resolve_placement(cfg.model)
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, tokenizer, placement.device, placement.dtype)
    m = cfg.model
    backbone = Backbone(model, tokenizer, m.lora_r, m.lora_alpha, m.lora_target_modules, m.lora_top_layers)
    if m.gradient_checkpointing:
        backbone.enable_gradient_checkpointing()
    return backbone


def load_reward_model(run: RunDir, backbone: Backbone, adapter: str = "reward") -> ScalarRole:
    """The trained RM on `backbone` (a new adapter of that name, loaded from RUN_DIR/reward)."""
    run.require("reward")
    if backbone.is_lora:
        backbone.add_adapter(adapter)
        rm = ScalarRole(backbone, adapter)
    else:
        rm = ScalarRole(backbone, None)
    rm.load(run.root / "reward", "reward")
    return rm
