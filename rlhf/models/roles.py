"""The model roles of RLHF: policy, reference, reward model and value network.

With LoRA (the default) all roles share one frozen base model: the policy, value and reward are separate
adapters and the reference is the base with adapters disabled. With `lora_r: 0` each role is a full copy.
Sequences are laid out as [left-padded query | response padded on the right after its stop token].
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

from rlhf.data.io import atomic_write_json
from rlhf.losses import entropy_from_logits, logprobs_from_logits, reward_head_init_std
from rlhf.models.encoding import (
    EncodedSequence,
    length_sorted_batches,
    pad_encoded,
    pad_prompt_response,
    tokenize_prompt_response,
)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    # Left padding: positions count real tokens only (ppo-rlhf-details.md #4).
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose mask is 1, for left or right padding alike."""
    T = attention_mask.shape[1]
    flipped = attention_mask.flip(-1).long()
    assert bool((flipped.sum(-1) > 0).all()), "a row has no real token"
    return T - 1 - flipped.argmax(-1)


# Decoder-only models whose forward takes `inputs_embeds` unchanged (no embedding scaling or position embeddings
# added), so that running a slice of `model.layers` on cached hidden states is exact.
SPLITTABLE_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3"}


class Backbone:
    """A causal LM, optionally carrying named LoRA adapters; `use(name)` selects one (None = adapters off)."""

    def __init__(self, model, tokenizer, lora_r: int = 0, lora_alpha: int = 32, target_modules=(), top_layers: int = 0):
        self.model = model
        self.tokenizer = tokenizer
        self.lora_r = lora_r
        self.lora_alpha = lora_alpha
        self.target_modules = list(target_modules)
        self.top_layers = top_layers
        self.adapters: list[str] = []
        self.trainable_adapters: set[str] = set()
        self.hidden_size = model.config.hidden_size

    @property
    def is_lora(self) -> bool:
        return self.lora_r > 0

    def add_adapter(self, name: str) -> None:

        assert self.is_lora and name not in self.adapters
        n_layers = self.model.config.num_hidden_layers
        layers = list(range(n_layers - self.top_layers, n_layers)) if self.top_layers else None
        config = LoraConfig(
            r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=0.0, target_modules=self.target_modules,
            layers_to_transform=layers, bias="none",
        )
        if isinstance(self.model, PeftModel):
            self.model.add_adapter(name, config)
        else:
            self.model = get_peft_model(self.model, config, adapter_name=name)
        self.adapters.append(name)
        self.model.eval()

    def adapter_state(self, name: str) -> dict[str, torch.Tensor]:
        tag = f".{name}."
        return {k.replace(tag, ".ADAPTER."): v.detach().clone() for k, v in self.model.named_parameters() if tag in k and "lora_" in k}

    def load_adapter_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        tag = f".{name}."
        n = 0
        for k, v in state.items():
            params[k.replace(".ADAPTER.", tag)].data.copy_(v)
            n += 1
        expected = sum(1 for k in params if tag in k and "lora_" in k)
        assert n == expected, f"adapter '{name}': loaded {n} tensors, expected {expected}"

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        tag = f".{name}."
        return [p for k, p in self.model.named_parameters() if tag in k and "lora_" in k]

    def mark_trainable(self, name: str) -> list[nn.Parameter]:
        """Make an adapter trainable for good: peft's set_adapter turns requires_grad off on inactive adapters,
        which would silently drop their gradients when two adapters share one backward pass."""
        self.trainable_adapters.add(name)
        params = self.adapter_parameters(name)
        for p in params:
            p.requires_grad_(True)
        return params

    def _restore_requires_grad(self) -> None:
        for name in self.adapters:
            flag = name in self.trainable_adapters
            for p in self.adapter_parameters(name):
                p.requires_grad_(flag)

    def causal_lm(self):

        return self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model

    @contextmanager
    def use(self, adapter: str | None):
        if not self.adapters:
            assert adapter is None, f"no adapter '{adapter}' on this model"
            yield self.causal_lm()
            return
        if adapter is None:
            with self.model.disable_adapter():
                yield self.causal_lm()
        else:
            self.model.set_adapter(adapter)
            self._restore_requires_grad()
            yield self.causal_lm()

    @property
    def shares_frozen_prefix(self) -> bool:
        """True when adapters sit on the top layers only and the architecture lets us run a slice of its layers:
        then the frozen bottom layers are computed once per batch and shared by every role and PPO epoch."""
        return self.is_lora and 0 < self.top_layers < self.model.config.num_hidden_layers and self.model.config.model_type in SPLITTABLE_MODEL_TYPES

    @property
    def n_bottom(self) -> int:
        """The number of frozen bottom layers (those below the adapters)."""
        return self.model.config.num_hidden_layers - self.top_layers

    def same_frozen_prefix(self, other: "Backbone") -> bool:
        """Whether `other` computes the same bottom-layer hidden states (same embeddings and bottom-layer weights,
        e.g. the SFT model and a PPO policy merged from top-layer adapters), so one's prefix serves the other."""
        if other is self:
            return self.shares_frozen_prefix
        if not (self.shares_frozen_prefix and other.shares_frozen_prefix and self.n_bottom == other.n_bottom):
            return False
        mine, theirs = (getattr(b.causal_lm(), b.causal_lm().base_model_prefix) for b in (self, other))
        pairs = [(mine.embed_tokens, theirs.embed_tokens)] + list(zip(list(mine.layers)[: self.n_bottom], list(theirs.layers)[: self.n_bottom]))
        for a, b in pairs:
            sa, sb = a.state_dict(), b.state_dict()
            if sa.keys() != sb.keys() or not all(torch.equal(sa[k], sb[k]) for k in sa):
                return False
        return True

    @contextmanager
    def _layers(self, trunk, keep: slice, final_norm: bool):
        layers, norm = trunk.layers, trunk.norm
        trunk.layers = nn.ModuleList(list(layers)[keep])
        if not final_norm:
            trunk.norm = nn.Identity()
        try:
            yield trunk
        finally:
            trunk.layers, trunk.norm = layers, norm

    @torch.no_grad()
    def frozen_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states after the bottom layers, which carry no adapter and never train."""
        assert self.shares_frozen_prefix
        with self.use(None) as lm:
            with self._layers(getattr(lm, lm.base_model_prefix), slice(0, self.n_bottom), final_norm=False) as trunk:
                out = trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask))
        return out.last_hidden_state

    def hidden_states(self, adapter: str | None, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states [B, T, d]; with `prefix` (from `frozen_prefix`) only the top layers run."""
        position_ids = position_ids_from_mask(attention_mask)
        with self.use(adapter) as lm:
            trunk = getattr(lm, lm.base_model_prefix)
            if prefix is None:
                return trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
            with self._layers(trunk, slice(self.n_bottom, None), final_norm=True) as top:
                return top(inputs_embeds=prefix, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.causal_lm().get_output_embeddings()(hidden)


@dataclass
class Episodes:
    """A batch of queries and sampled responses: query [B,Q] left-padded, response [B,R] padded after its stop."""

    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    has_stop: torch.Tensor
    prefix: torch.Tensor | None = None  # frozen bottom-layer hidden states shared by all roles (see Backbone)
    sample_logprobs: torch.Tensor | None = None  # [B,R] log-probs of the sampled tokens, read off the sampling loop
    scoring: tuple | None = None  # (input_ids, attention_mask, prefix) the reward model scores (sampling.scoring_inputs)

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.query_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask, self.response_mask.long()], dim=1)

    def select(self, idx) -> "Episodes":
        return Episodes(self.query_ids[idx], self.query_mask[idx], self.response_ids[idx], self.response_mask[idx], self.has_stop[idx],
                        None if self.prefix is None else self.prefix[idx],
                        None if self.sample_logprobs is None else self.sample_logprobs[idx],
                        None if self.scoring is None else tuple(x[idx] for x in self.scoring))


class LanguageModelRole:
    """Policy (a trainable adapter) or reference (adapters off / frozen copy): samples and log-probabilities."""

    def __init__(self, backbone: Backbone, adapter: str | None, temperature: float):
        assert temperature > 0
        self.backbone = backbone
        self.adapter = adapter
        self.temperature = temperature

    def parameters(self) -> list[nn.Parameter]:
        if self.backbone.is_lora:
            return self.backbone.adapter_parameters(self.adapter)
        return list(self.backbone.model.parameters())

    def logits(self, episodes: Episodes) -> torch.Tensor:
        """Temperature-scaled logits predicting each response token: [B, R, V]."""
        Q, R = episodes.query_ids.shape[1], episodes.response_ids.shape[1]
        hidden = self.backbone.hidden_states(self.adapter, episodes.input_ids, episodes.attention_mask, episodes.prefix)
        return self.backbone.lm_head(hidden[:, Q - 1 : Q + R - 1]) / self.temperature

    def logprobs(self, episodes: Episodes, with_entropy: bool = False):
        """Log-probability [B, R] of each response token (and the entropy of its distribution), at the real
        positions only: padding after a stop gets 0 and costs no vocabulary projection, which over the full
        width would be as much compute as the top layers of a PPO step."""
        Q, R = episodes.query_ids.shape[1], episodes.response_ids.shape[1]
        hidden = self.backbone.hidden_states(self.adapter, episodes.input_ids, episodes.attention_mask, episodes.prefix)
        real = episodes.response_mask.bool()
        logits = (self.backbone.lm_head(hidden[:, Q - 1 : Q + R - 1][real]) / self.temperature).unsqueeze(0)  # [1, real, V]
        lp = hidden.new_zeros(real.shape).masked_scatter(real, logprobs_from_logits(logits, episodes.response_ids[real].unsqueeze(0))[0])
        if with_entropy:
            return lp, hidden.new_zeros(real.shape).masked_scatter(real, entropy_from_logits(logits)[0])
        return lp


class ScalarRole:
    """A trunk (adapter or full copy) with a scalar head: the reward model and the value network."""

    def __init__(self, backbone: Backbone, adapter: str | None, head: nn.Linear | None = None):
        self.backbone = backbone
        self.adapter = adapter
        d = backbone.hidden_size
        if head is None:
            head = nn.Linear(d, 1)
            nn.init.normal_(head.weight, std=reward_head_init_std(d))  # Stiennon/Ziegler: N(0, 1/sqrt(d+1))
            nn.init.zeros_(head.bias)
        self.head = head
        self.gain = 1.0
        self.bias = 0.0

    def parameters(self) -> list[nn.Parameter]:
        trunk = self.backbone.adapter_parameters(self.adapter) if self.backbone.is_lora else list(self.backbone.model.parameters())
        return trunk + list(self.head.parameters())

    def hidden_at_last(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Trunk output at each row's last real token (not the last padded position): [B, d]."""
        hidden = self.backbone.hidden_states(self.adapter, input_ids, attention_mask, prefix)
        return hidden[torch.arange(hidden.shape[0]), last_real_index(attention_mask)]

    def raw_scores_at_last(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Head output at each row's last real token: [B]."""
        return self.head(self.hidden_at_last(input_ids, attention_mask, prefix)).squeeze(-1)

    def values(self, episodes: Episodes) -> torch.Tensor:
        """Value of the state before each response token: [B, R]."""
        Q, R = episodes.query_ids.shape[1], episodes.response_ids.shape[1]
        hidden = self.backbone.hidden_states(self.adapter, episodes.input_ids, episodes.attention_mask, episodes.prefix)
        return self.head(hidden[:, Q - 1 : Q + R - 1]).squeeze(-1)

    def fold_normalization(self) -> None:
        """Fold gain and bias into the head, so the head alone outputs the normalised score: the value network
        starts from the reward model on the scale of the rewards it must predict (Stiennon §3.4)."""
        with torch.no_grad():
            self.head.weight.mul_(self.gain)
            self.head.bias.mul_(self.gain).add_(self.bias)
        self.gain, self.bias = 1.0, 0.0

    # text interface -------------------------------------------------------------------------------
    def tokenize(self, prompts: list[str], responses: list[str]) -> list[tuple[list[int], list[int]]]:
        """Prompt + response + EOS: the score is read at the EOS that ends every response (ppo-rlhf-details.md #9),
        the same token whether the response stopped at EOS, at the task's stop string, or not at all."""
        return tokenize_prompt_response(self.backbone.tokenizer, prompts, responses, append_eos=True)

    def encode(self, prompts: list[str], responses: list[str], padding_side: str = "left"):
        """`tokenize`, padded: (input_ids, attention_mask)."""
        return pad_prompt_response(self.tokenize(prompts, responses), self.backbone.tokenizer.pad_token_id, padding_side)[:2]

    def raw_score(self, prompts: list[str], responses: list[str], padding_side: str = "left") -> torch.Tensor:
        ids, mask = self.encode(prompts, responses, padding_side)
        return self.raw_scores_at_last(ids, mask)

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str], batch_size: int = 32) -> torch.Tensor:
        """Normalised reward gain*r + bias for each (prompt, response), in batches of similar lengths."""
        pairs = self.tokenize(prompts, responses)
        raw = torch.zeros(len(prompts))
        for rows in length_sorted_batches([len(q) + len(a) for q, a in pairs], batch_size):
            ids, mask, _ = pad_prompt_response([pairs[i] for i in rows], self.backbone.tokenizer.pad_token_id)
            raw[rows] = self.raw_scores_at_last(ids, mask)
        return raw * self.gain + self.bias

    @torch.no_grad()
    def score_episodes(self, episodes: Episodes, batch_size: int = 64) -> torch.Tensor:
        """`score` of sampled episodes from their token ids (not re-tokenised text) and the bottom layers' output
        kept by the sampling loop (`sample_episodes(for_scoring=True)`): only the top layers run."""
        assert episodes.scoring is not None, "sample with for_scoring=True"
        ids, mask, prefix = episodes.scoring
        raw = torch.cat([self.raw_scores_at_last(ids[i : i + batch_size], mask[i : i + batch_size], prefix[i : i + batch_size])
                         for i in range(0, len(ids), batch_size)])
        return raw * self.gain + self.bias

    @torch.no_grad()
    def score_encoded(self, seqs: list[EncodedSequence], batch_size: int = 64) -> torch.Tensor:
        """`score` for sequences already through `encode_for_scoring`: only the layers above the frozen prefix run."""
        pad_id = self.backbone.tokenizer.pad_token_id
        raw = torch.zeros(len(seqs))
        for rows in length_sorted_batches([len(s.ids) for s in seqs], batch_size):
            raw[rows] = self.raw_scores_at_last(*pad_encoded([seqs[i] for i in rows], pad_id))
        return raw * self.gain + self.bias

    # persistence -----------------------------------------------------------------------------------
    def save(self, folder, name: str) -> None:

        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"head.weight": self.head.weight.detach().contiguous(), "head.bias": self.head.bias.detach().contiguous()}
        if self.backbone.is_lora:
            tensors.update(self.backbone.adapter_state(self.adapter))
        else:
            prefix = self.backbone.causal_lm().base_model_prefix + "."  # the trunk only: the LM head is not used
            tensors.update({f"trunk.{k}": v.contiguous() for k, v in self.backbone.model.state_dict().items() if k.startswith(prefix)})
        tmp = folder / f".{name}.safetensors.tmp"
        save_file(tensors, str(tmp))
        tmp.replace(folder / f"{name}.safetensors")
        atomic_write_json(folder / f"{name}.json", {"gain": self.gain, "bias": self.bias, "lora": self.backbone.is_lora})

    def load(self, folder, name: str) -> None:

        tensors = load_file(str(folder / f"{name}.safetensors"))
        meta = json.loads((folder / f"{name}.json").read_text())
        self.head.weight.data.copy_(tensors.pop("head.weight"))
        self.head.bias.data.copy_(tensors.pop("head.bias"))
        if self.backbone.is_lora:
            self.backbone.load_adapter_state(self.adapter, tensors)
        else:
            result = self.backbone.model.load_state_dict({k[len("trunk."):]: v for k, v in tensors.items()}, strict=False)
            assert not result.unexpected_keys and all("lm_head" in k for k in result.missing_keys), result
        self.gain, self.bias = float(meta["gain"]), float(meta["bias"])


@torch.no_grad()
def encode_for_scoring(role: "ScalarRole", prompts: list[str], responses: list[str], chunk: int = 64) -> list[EncodedSequence]:
    """Tokenise (and run the frozen bottom layers once, in batches of similar lengths) so that many epochs over
    these sequences run the top layers only. One EncodedSequence per (prompt, response), in order."""
    pairs = role.tokenize(prompts, responses)
    out: list[EncodedSequence | None] = [None] * len(prompts)
    for rows in length_sorted_batches([len(q) + len(a) for q, a in pairs], chunk):
        ids, mask, _ = pad_prompt_response([pairs[i] for i in rows], role.backbone.tokenizer.pad_token_id)
        prefix = role.backbone.frozen_prefix(ids, mask) if role.backbone.shares_frozen_prefix else None
        for k, i in enumerate(rows):
            real = mask[k].bool()
            out[i] = EncodedSequence(ids[k][real], None if prefix is None else prefix[k][real])
    return out


def export_reward_model(role: ScalarRole, folder) -> None:
    """Save the reward model as a plain transformers sequence classifier (`AutoModelForSequenceClassification`,
    adapter merged, num_labels=1). transformers reads the score at the last non-pad token, so append EOS to each
    response as `ScalarRole.encode` does; the normalised reward is `logits * 1 + config.rlhf_reward_bias`."""

    folder = Path(folder)
    bb = role.backbone
    lm = bb.model.merge_and_unload(adapter_names=[role.adapter]) if bb.is_lora else bb.model
    if bb.is_lora:
        bb.model, bb.adapters = lm, []  # the backbone now holds the merged model
    config = lm.config.to_dict()
    config.update(num_labels=1, rlhf_reward_bias=role.gain * float(role.head.bias.detach()) + role.bias, rlhf_append_eos=True)
    cls_config = type(lm.config).from_dict(config)
    classifier = AutoModelForSequenceClassification.from_config(cls_config)
    trunk_prefix = lm.base_model_prefix
    missing = classifier.load_state_dict({k: v for k, v in lm.state_dict().items() if k.startswith(trunk_prefix + ".")}, strict=False)
    assert all(k.startswith("score") for k in missing.missing_keys), missing.missing_keys
    classifier.score.weight.data.copy_(role.gain * role.head.weight.detach())
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    classifier.save_pretrained(tmp)
    bb.tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
