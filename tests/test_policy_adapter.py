"""The policy adapter's own rank and layers (model.policy_lora_r, model.policy_lora_top_layers): the adapter peft
builds, the merged model, the checks before a model opens, the model card's line."""

from __future__ import annotations

import pytest
import torch

from rlhf.models.encoding import encode_queries
from rlhf.models.provision import load_causal_lm, load_tokenizer
from rlhf.models.roles import Backbone, position_ids_from_mask


def test_an_adapter_of_its_own_rank_on_fewer_top_layers_merges_to_what_it_computed(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlhf.models.saving import save_merged

    tok = load_tokenizer(str(tiny_model_dir))
    bb = Backbone(load_causal_lm(str(tiny_model_dir), tok), tok, 4, 8, ["q_proj", "v_proj"], top_layers=2)
    bb.add_adapter("reward")
    bb.add_adapter("policy", rank=2, top_layers=1)  # model.policy_lora_r: 2, model.policy_lora_top_layers: 1
    shapes = {k: tuple(p.shape) for k, p in bb.model.named_parameters() if ".policy." in k}
    assert shapes and all(".layers.1." in k for k in shapes)  # the top layer only
    assert all(s[0] == 2 for k, s in shapes.items() if "lora_A" in k)  # rank 2 where the backbone's is 4
    reward_ranks = {p.shape[0] for k, p in bb.model.named_parameters() if ".reward." in k and "lora_A" in k}
    assert reward_ranks == {4}  # the backbone's rank for the adapter that asked for none
    with pytest.raises(ValueError, match="more than the backbone's 2"):
        bb.add_adapter("wide", top_layers=3)
    for p in bb.adapter_parameters("policy"):
        p.data.normal_(0, 0.5)
    ids, mask = encode_queries(tok, ["a short one", "a much longer prompt with several more words"])
    with torch.no_grad():
        expected = bb.lm_head(bb.hidden_states("policy", ids, mask))
    save_merged(bb, "policy", tmp_path / "model")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    with torch.no_grad():
        logits = merged(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    assert torch.allclose(logits[mask.bool()], expected[mask.bool()], atol=1e-4)


def test_the_policy_adapter_settings_are_checked_before_a_model_is_opened():
    from rlhf.config import ModelConfig
    from rlhf.models.loading import check_policy_adapter

    check_policy_adapter(ModelConfig(policy_lora_r=4, policy_lora_top_layers=2))
    with pytest.raises(ValueError, match="expected >= 0"):
        check_policy_adapter(ModelConfig(policy_lora_r=-1))
    with pytest.raises(ValueError, match="model.lora_r: 0"):
        check_policy_adapter(ModelConfig(lora_r=0, policy_lora_r=4))


def test_the_model_card_names_the_policy_adapter_only_when_it_differs():
    from rlhf.config import RunConfig
    from rlhf.models.model_card import config_highlights

    cfg = RunConfig()
    cfg.model.lora_r, cfg.model.lora_top_layers = 16, 8
    assert "policy's adapter" not in config_highlights(cfg)[0]
    cfg.model.policy_lora_r = 4
    assert config_highlights(cfg)[0].endswith("top 8 layers; the policy's adapter r=4, top 8 layers")
    cfg.model.lora_top_layers, cfg.model.policy_lora_r, cfg.model.policy_lora_top_layers = 0, 0, 2
    assert config_highlights(cfg)[0].endswith("; the policy's adapter r=16, top 2 layers")
    cfg.model.policy_lora_top_layers, cfg.model.policy_lora_r = 0, 8
    assert config_highlights(cfg)[0].endswith("; the policy's adapter r=8")


def test_a_graph_built_before_a_reference_pass_still_reaches_every_trainable_adapter(tiny_model_dir):
    # PPO's first epoch keeps the policy's and the value's forward passes from before the reference's (adapters
    # off) pass: leaving peft's disable_adapter must not turn the inactive trainable adapter's gradients off
    tok = load_tokenizer(str(tiny_model_dir))
    bb = Backbone(load_causal_lm(str(tiny_model_dir), tok), tok, 4, 8, ["q_proj", "v_proj"], top_layers=2)
    for name in ("policy", "value"):
        bb.add_adapter(name)
        for p in bb.mark_trainable(name):
            p.data.normal_(0, 0.1)
    ids, mask = encode_queries(tok, ["a short one", "a much longer prompt"])
    loss = bb.hidden_states("policy", ids, mask).square().mean() + bb.hidden_states("value", ids, mask).mean()
    with torch.no_grad():
        bb.hidden_states(None, ids, mask)  # the reference
    assert all(p.requires_grad for name in ("policy", "value") for p in bb.adapter_parameters(name))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in bb.adapter_parameters("policy"))
