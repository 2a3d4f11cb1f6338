"""Opening the models a stage needs from a run directory. In a LoRA run a stage's model folder holds an adapter
(rlhf/models/saving.py): it is opened as the model it sits on with the adapter merged in memory, the same merge of
the same weights that a merged copy on disk would hold."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import PeftModel

from rlhf.config import RunConfig
from rlhf.models.device import Placement, resolve_placement
from rlhf.models.provision import load_causal_lm, load_tokenizer, resolve_model
from rlhf.models.roles import Backbone, ScalarRole
from rlhf.models.saving import ADAPTER_NOTE, ON_BASE, ON_SFT
from rlhf.models.threads import CPU_THREADS
from rlhf.run import RunDir


def set_threads(cfg: RunConfig) -> None:
    CPU_THREADS.configure(cfg.model.threads)


def base_model_path(cfg: RunConfig) -> str:
    return resolve_model(cfg.model.name_or_path, cfg.model.cache_dir)


def sft_model_path(run: RunDir, cfg: RunConfig) -> str:
    """The SFT policy: RUN_DIR/sft/model (its adapter in a LoRA run), or the base model when SFT was skipped
    (n_demonstrations: 0)."""
    info = run.done_info("sft") if run.is_done("sft") else None
    if info is None:
        run.require("sft")
    return str(run.root / "sft" / "model") if info.get("trained") else base_model_path(cfg)


def model_chain(cfg: RunConfig, path: str) -> tuple[str, list[Path]]:
    """The model at `path` as (a plain model's path or hub id, the adapter folders to merge into it in order): a
    stage's adapter folder sits on the base model or on the run's SFT model (which may itself be an adapter on the
    base); any other path is a plain model."""
    folder = Path(path)
    note = folder / ADAPTER_NOTE
    if not note.exists():
        return path, []
    on = json.loads(note.read_text()).get("on")
    if on == ON_BASE:
        return base_model_path(cfg), [folder]
    if on == ON_SFT:
        base, adapters = model_chain(cfg, sft_model_path(RunDir(folder.parent.parent), cfg))
        return base, adapters + [folder]
    raise ValueError(f"{note}: field 'on' must be '{ON_BASE}' or '{ON_SFT}', got {on!r}")


@contextmanager
def rng_kept(device: torch.device):
    """Random draws inside come from seed 0 and leave the global generators (CPU and `device`'s) as they were."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(0)
        if devices:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(0)
        yield


def merge_adapter_folders(model, folders: list[Path]):
    """`model` with each peft adapter folder merged into its weights in turn (W += scaling * B @ A, peft's merge),
    frozen and in eval mode."""
    for i, folder in enumerate(folders):
        model = PeftModel.from_pretrained(model, str(folder), adapter_name=f"merged{i}").merge_and_unload()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def open_causal_lm(cfg: RunConfig, path: str, placement: Placement):
    """(tokenizer, causal LM) of the model at `path` (a plain model, or a stage's adapters merged into the model
    they sit on) on `placement`, frozen and in eval mode."""
    base, adapters = model_chain(cfg, path)
    tokenizer = load_tokenizer(base)
    # Attaching an adapter draws LoRA's initial weights (then replaced by the saved ones), and a base without a pad
    # token gets new embedding rows drawn at random: the same rows at every opening, and the RNG left untouched.
    with rng_kept(torch.device(placement.device)):
        model = load_causal_lm(base, tokenizer, placement.device, placement.dtype)
        return tokenizer, merge_adapter_folders(model, adapters)


def check_policy_adapter(m) -> None:
    """The policy adapter's own settings (model.policy_lora_r, model.policy_lora_top_layers) need adapters at all."""
    if m.policy_lora_r < 0 or m.policy_lora_top_layers < 0:
        raise ValueError(
            "model.policy_lora_r, model.policy_lora_top_layers: expected >= 0 (0 = model.lora_r, "
            f"model.lora_top_layers), got {m.policy_lora_r}, {m.policy_lora_top_layers}"
        )
    if m.lora_r == 0 and (m.policy_lora_r or m.policy_lora_top_layers):
        raise ValueError(
            "model.policy_lora_r, model.policy_lora_top_layers: set with model.lora_r: 0 (full fine-tuning, no "
            "adapters); set model.lora_r > 0 or leave them at 0"
        )


def open_backbone(cfg: RunConfig, path: str, placement: Placement | None = None) -> Backbone:
    """The model at `path` (see `open_causal_lm`) on `placement` (default: the config's model.device and
    model.dtype), with the config's adapter settings."""
    check_policy_adapter(cfg.model)
    set_threads(cfg)
    placement = placement or resolve_placement(cfg.model)
    tokenizer, model = open_causal_lm(cfg, path, placement)
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
