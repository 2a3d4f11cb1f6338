"""What the roles need to know about a causal LM's layout, found through transformers' generic accessors
(`get_decoder`, `get_input_embeddings`, `get_output_embeddings`, `config.num_hidden_layers`) rather than per-architecture tables:
its decoder layers, peft's `all-linear` as module names, and its logits from final hidden states."""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

log = logging.getLogger("rlhf")

ALL_LINEAR = "all-linear"  # peft's shorthand: every linear layer but the output layer

# Decoder-only models whose forward takes `inputs_embeds` unchanged (no embedding scaling or position embeddings
# added) and keeps its layers in `trunk.layers` and final norm in `trunk.norm`, so that running a slice of the
# layers on cached hidden states is exact. Others (GPT-2 adds position embeddings, Gemma scales the embeddings,
# GPT-NeoX and Phi name their final norm otherwise) run every layer on every forward.
SPLITTABLE_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3"}

_logged: set[str] = set()


def log_once(message: str) -> None:
    """`message` in the log the first time it is given in this process, never again."""
    if message not in _logged:
        _logged.add(message)
        log.info(message)


def trunk_of(lm) -> nn.Module:
    """The decoder stack under the LM head (`model`, `transformer`, `gpt_neox`...), whose output is the final
    hidden states: transformers' `get_decoder`."""
    return lm.get_decoder()


def decoder_layers(lm) -> tuple[str, nn.ModuleList] | None:
    """(attribute name, list) of the decoder layers: the first ModuleList in the model with one entry per hidden
    layer (`model.layers`, `transformer.h`, `gpt_neox.layers`...); None when there is no such list."""
    n = lm.config.num_hidden_layers
    for name, module in lm.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return name.rsplit(".", 1)[-1], module
    return None


def lora_targets(lm, target_modules) -> tuple[list[str], list[str]]:
    """(target module names, full names to exclude) for peft's LoraConfig. `["all-linear"]` (or the string)
    becomes the last name of every Linear or Conv1D layer but the output embedding, as peft's `all-linear`
    selects them; as names rather than peft's shorthand so that `layers_to_transform` works with it (peft
    rejects the two together). The output layer is excluded by its full name if another layer shares its name."""
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    if ALL_LINEAR not in targets:
        return targets, []
    if len(targets) != 1:
        raise ValueError(f"model.lora_target_modules: '{ALL_LINEAR}' stands alone, got {targets}")
    output = lm.get_output_embeddings()
    names, output_name = [], None
    for full, module in lm.named_modules():
        if module is output:
            output_name = full
        elif isinstance(module, (nn.Linear, Conv1D)) and full.rsplit(".", 1)[-1] not in names:
            names.append(full.rsplit(".", 1)[-1])
    if not names:
        raise ValueError(f"model.lora_target_modules: '{ALL_LINEAR}' found no linear layer in {type(lm).__name__}")
    exclude = [output_name] if output_name and output_name.rsplit(".", 1)[-1] in names else []
    return names, exclude


def logits_from_hidden(lm, hidden: torch.Tensor) -> torch.Tensor:
    """The LM's logits from its final hidden states, as its own forward computes them: the output embedding, then
    the final soft-capping of the models that have one (Gemma 2 and 3: cap * tanh(logits / cap))."""
    logits = lm.get_output_embeddings()(hidden)
    cap = getattr(lm.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits
