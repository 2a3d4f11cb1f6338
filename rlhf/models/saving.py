"""Saving trained models, written atomically. A LoRA run keeps its adapters, each a standard peft adapter folder
(adapter_config.json + adapter_model.safetensors) with a note of the model it sits on; full fine-tuning keeps
plain Hugging Face folders. Merged folders are made on demand (`rlhf export`, rlhf/models/export.py)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from rlhf.data.faults import fault_point
from rlhf.data.io import os_error_in, write_fault
from rlhf.models.roles import Backbone

# Beside a stage's adapter folder: which model the adapter sits on, "base" (the config's base model) or "sft" (the
# run's SFT model, its own adapter merged into the base). Read by loading.model_chain.
ADAPTER_NOTE = "rlhf_adapter.json"
ON_BASE, ON_SFT = "base", "sft"


def merge_adapter(backbone: Backbone, adapter: str | None):
    """The causal LM with `adapter` merged into the base weights (in place; the backbone then holds the merged
    model and no adapters). Without an adapter (full fine-tuning, or adapters off) the model as it is."""
    if adapter is None:
        return backbone.model
    merged = backbone.model.merge_and_unload(adapter_names=[adapter])
    backbone.model, backbone.adapters = merged, []
    return merged


def write_folder(folder: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` into a temporary folder renamed over `folder`: a reader finds the old folder or the new one,
    never half of one. A failed write (a full disk) removes the temporary folder and raises FileFault naming
    `folder`; the old folder stays."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        cause = os_error_in(error)
        if cause is not None:
            raise write_fault(folder, cause) from error
        raise
    fault_point(f"before rename {folder}")
    shutil.rmtree(folder, ignore_errors=True)
    fault_point(f"removed {folder}")
    os.replace(tmp, folder)
    fault_point(f"after rename {folder}")


def save_hf_folder(model, tokenizer, folder: Path) -> None:
    """`save_pretrained` of model and tokenizer, atomically."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    write_folder(folder, write)


def save_merged(backbone: Backbone, adapter: str | None, folder: Path) -> None:
    """The policy `adapter` of `backbone` as a plain HF causal-LM folder (adapter merged into the base)."""
    save_hf_folder(merge_adapter(backbone, adapter), backbone.tokenizer, folder)


def write_adapter_files(tmp: Path, config, state: dict, base_name: str | None) -> None:
    """A standard peft adapter folder's two files: `config` (a peft LoraConfig) and the tensors of `state` (keys as
    peft saves them, without an adapter name)."""
    config = config.__class__(**{**config.to_dict(), "base_model_name_or_path": base_name})
    config.save_pretrained(str(tmp))
    # peft writes a set-valued field (target_modules) as a list in set order, which follows the process's string
    # hashing: sorted, the same adapter is the same file in every process
    path, sets = tmp / "adapter_config.json", [k for k, v in config.to_dict().items() if isinstance(v, set)]
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, **{k: sorted(saved[k]) for k in sets}}, indent=2, sort_keys=True))
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})


def save_adapter(backbone: Backbone, adapter: str, folder: Path, on: str, base_name: str | None = None) -> None:
    """`adapter` of `backbone` as a standard peft adapter folder (loadable with `PeftModel.from_pretrained(model,
    folder)` on the model it sits on), with ADAPTER_NOTE saying which model that is (`on`: ON_BASE or ON_SFT).
    `base_name` goes into adapter_config.json's base_model_name_or_path."""
    assert backbone.is_lora and adapter in backbone.adapters and on in (ON_BASE, ON_SFT)
    state = get_peft_model_state_dict(backbone.model, adapter_name=adapter, save_embedding_layers=False)

    def write(tmp: Path) -> None:
        write_adapter_files(tmp, backbone.model.peft_config[adapter], state, base_name)
        (tmp / ADAPTER_NOTE).write_text(json.dumps({"on": on}) + "\n")

    write_folder(folder, write)


def save_policy(backbone: Backbone, adapter: str | None, folder: Path, on: str, base_name: str | None = None) -> None:
    """A trained policy: its adapter (`save_adapter`) in a LoRA run, the full model (a plain HF folder) otherwise."""
    if adapter is None:
        save_merged(backbone, None, folder)
    else:
        save_adapter(backbone, adapter, folder, on, base_name)
