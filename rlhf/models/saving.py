"""Saving trained models as plain Hugging Face folders, written atomically: a policy with its adapter merged into
the base, and the reward model as a transformers sequence classifier."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from transformers import AutoModelForSequenceClassification

from rlhf.models.roles import Backbone, ScalarRole


def merge_adapter(backbone: Backbone, adapter: str | None):
    """The causal LM with `adapter` merged into the base weights (in place; the backbone then holds the merged
    model and no adapters). Without an adapter (full fine-tuning, or adapters off) the model as it is."""
    if adapter is None:
        return backbone.model
    merged = backbone.model.merge_and_unload(adapter_names=[adapter])
    backbone.model, backbone.adapters = merged, []
    return merged


def save_hf_folder(model, tokenizer, folder: Path) -> None:
    """`save_pretrained` of model and tokenizer into a temporary folder renamed over `folder`: a reader finds the
    old folder or the new one, never half of one."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def save_merged(backbone: Backbone, adapter: str | None, folder: Path) -> None:
    """The policy `adapter` of `backbone` as a plain HF causal-LM folder (adapter merged into the base)."""
    save_hf_folder(merge_adapter(backbone, adapter), backbone.tokenizer, folder)


def export_reward_model(role: ScalarRole, folder: Path) -> None:
    """Save the reward model as a plain transformers sequence classifier (`AutoModelForSequenceClassification`,
    adapter merged, num_labels=1). transformers reads the score at the last non-pad token, so append EOS to each
    response as `ScalarRole.tokenize` does; the normalised reward is `logits * 1 + config.rlhf_reward_bias`."""
    lm = merge_adapter(role.backbone, role.adapter)
    config = lm.config.to_dict()
    bias = role.gain * float(role.head.bias.detach()) + role.bias
    config.update(num_labels=1, rlhf_reward_bias=bias, rlhf_append_eos=True)
    classifier = AutoModelForSequenceClassification.from_config(type(lm.config).from_dict(config))
    trunk_prefix = lm.base_model_prefix
    trunk = {k: v for k, v in lm.state_dict().items() if k.startswith(trunk_prefix + ".")}
    missing = classifier.load_state_dict(trunk, strict=False)
    assert all(k.startswith("score") for k in missing.missing_keys), missing.missing_keys
    classifier.score.weight.data.copy_(role.gain * role.head.weight.detach())
    save_hf_folder(classifier, role.backbone.tokenizer, folder)
