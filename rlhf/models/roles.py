"""The model roles of RLHF: policy, reference, reward model and value network.

With LoRA (the default) all roles share one frozen base model: the policy, value and reward are separate
adapters and the reference is the base with adapters disabled. With `lora_r: 0` each role is a full copy.
Sequences are laid out as [left-padded query | response padded on the right after its stop token].
"""

from __future__ import annotations

import json
from contextlib import contextmanager, nullcontext

import torch
import torch.nn as nn
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save

from rlhf.data.io import atomic_write_json, atomic_write_with
from rlhf.losses import entropy_from_logits, last_token_index, logprobs_from_logits, reward_head_init_std
from rlhf.models.architecture import (
    SPLITTABLE_MODEL_TYPES,
    decoder_layers,
    log_once,
    logits_from_hidden,
    lora_targets,
    trunk_of,
)
from rlhf.models.device import model_device
from rlhf.models.encoding import (
    EncodedSequence,
    ScoringInputs,
    length_sorted_batches,
    pad_encoded,
    pad_prompt_response,
    tokenize_prompt_response,
)
from rlhf.models.episodes import Episodes


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    # Positions count real tokens only: a left-padded row's first token sits at position 0, as it would alone,
    # so log-probs and scores do not depend on how much padding the batch gave it.
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class Backbone:
    """A causal LM, optionally carrying named LoRA adapters; `use(name)` selects one (None = adapters off)."""

    def __init__(
        self, model, tokenizer, lora_r: int = 0, lora_alpha: int = 32, target_modules=("all-linear",), top_layers=0
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.lora_r = lora_r
        self.lora_alpha = lora_alpha
        self.top_layers = top_layers
        # peft's all-linear as module names, resolved on the model before it carries adapters
        self.target_modules, self.exclude_modules = (
            lora_targets(self.causal_lm(), target_modules) if lora_r else ([], [])
        )
        self.layers_pattern = None
        if self.is_lora and top_layers:
            layers = decoder_layers(self.causal_lm())
            if layers is None:
                raise ValueError(
                    f"model.lora_top_layers: {type(self.causal_lm()).__name__} has no list of "
                    f"{model.config.num_hidden_layers} decoder layers to put adapters on the top of; use lora_top_layers: 0"
                )
            self.layers_pattern = layers[0]  # tells peft which numbered module names are the decoder layers
            if top_layers < model.config.num_hidden_layers and not self.shares_frozen_prefix:
                log_once(
                    f"model type '{model.config.model_type}': the frozen-prefix speed path is off (not in "
                    f"{sorted(SPLITTABLE_MODEL_TYPES)}): every forward runs all {model.config.num_hidden_layers} layers"
                )
        self.adapters: list[str] = []
        self.trainable_adapters: set[str] = set()
        self.hidden_size = model.config.hidden_size
        self.gradient_checkpointing = False
        self.adapter_in_use: str | None = None  # the adapter of the `use` block we are in (None: adapters off)

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each decoder layer's activations in the backward pass instead of keeping them."""
        kwargs = {"use_reentrant": False, "context_fn": self._recompute_contexts}
        self.causal_lm().gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self.gradient_checkpointing = True

    def _recompute_contexts(self):
        """torch.utils.checkpoint's context_fn, called at each checkpointed layer's forward pass: the layer is
        recomputed in the backward pass with the adapter it ran with. peft reads the active adapter when a layer is
        called, and another role (PPO's value after its policy) may have run before the backward pass."""
        return nullcontext(), self._adapter_while_recomputing(self.adapter_in_use)

    @contextmanager
    def _adapter_while_recomputing(self, adapter: str | None):
        if not self.adapters:
            yield
            return
        active = self.model.active_adapter
        with self.use(adapter):
            yield
        self.model.set_adapter(active)  # as the backward pass found it
        self._restore_requires_grad()

    @contextmanager
    def _checkpointing(self, lm):
        """transformers checkpoints a layer only in training mode, and we never call train() (dropout stays off):
        while gradients are recorded, the decoder layers alone (not their submodules) are marked training."""
        marked = list(decoder_layers(lm)[1]) if self.gradient_checkpointing and torch.is_grad_enabled() else []
        for layer in marked:
            layer.training = True
        try:
            yield
        finally:
            for layer in marked:
                layer.training = False

    @property
    def is_lora(self) -> bool:
        return self.lora_r > 0

    def add_adapter(self, name: str, rank: int = 0, top_layers: int = 0) -> None:
        """A new adapter `name` (LoRA B = 0: the model is unchanged) of rank `rank` on the top `top_layers` layers;
        0 = the backbone's rank and layers. An adapter may sit on fewer layers than the backbone's, never more (the
        frozen prefix below them is shared by every adapter)."""
        assert self.is_lora and name not in self.adapters
        n_layers = self.model.config.num_hidden_layers
        top = top_layers or self.top_layers
        if self.top_layers and top > self.top_layers:
            raise ValueError(f"adapter '{name}': {top} top layers, more than the backbone's {self.top_layers}")
        layers = list(range(n_layers - top, n_layers)) if top else None
        config = LoraConfig(
            r=rank or self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=0.0,
            target_modules=self.target_modules,
            exclude_modules=self.exclude_modules or None,
            layers_to_transform=layers,
            layers_pattern=self.layers_pattern,
            bias="none",
        )
        if isinstance(self.model, PeftModel):
            self.model.add_adapter(name, config)
        else:
            self.model = get_peft_model(self.model, config, adapter_name=name)
        self.adapters.append(name)
        self.model.eval()

    def adapter_state(self, name: str) -> dict[str, torch.Tensor]:
        tag = f".{name}."
        return {
            k.replace(tag, ".ADAPTER."): v.detach().clone()
            for k, v in self.model.named_parameters()
            if tag in k and "lora_" in k
        }

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
        outer, self.adapter_in_use = self.adapter_in_use, adapter
        try:
            if adapter is None:
                try:
                    with self.model.disable_adapter():
                        yield self.causal_lm()
                finally:  # peft re-enables only the active adapter's gradients: a graph built before keeps the rest
                    self._restore_requires_grad()
            else:
                self.model.set_adapter(adapter)
                self._restore_requires_grad()
                yield self.causal_lm()
        finally:
            self.adapter_in_use = outer

    @property
    def shares_frozen_prefix(self) -> bool:
        """True when adapters sit on the top layers only and the architecture lets us run a slice of its layers:
        then the frozen bottom layers are computed once per batch and shared by every role and PPO epoch."""
        return (
            self.is_lora
            and 0 < self.top_layers < self.model.config.num_hidden_layers
            and self.model.config.model_type in SPLITTABLE_MODEL_TYPES
        )

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
        mine, theirs = (b.causal_lm() for b in (self, other))
        pairs = [(mine.get_input_embeddings(), theirs.get_input_embeddings())] + list(
            zip(list(decoder_layers(mine)[1])[: self.n_bottom], list(decoder_layers(theirs)[1])[: self.n_bottom])
        )
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
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        with self.use(None) as lm:
            with self._layers(trunk_of(lm), slice(0, self.n_bottom), final_norm=False) as trunk:
                out = trunk(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    position_ids=position_ids_from_mask(attention_mask),
                )
        return out.last_hidden_state

    def hidden_states(
        self,
        adapter: str | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prefix: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states [B, T, d] on the model's device; with `prefix` (from `frozen_prefix`) only the top
        layers run."""
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        prefix = None if prefix is None else prefix.to(self.device)
        position_ids = position_ids_from_mask(attention_mask)
        no_cache = {"use_cache": False} if self.gradient_checkpointing else {}  # a checkpointed layer keeps no cache
        with self.use(adapter) as lm, self._checkpointing(lm):
            trunk = trunk_of(lm)
            if prefix is None:
                return trunk(
                    input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **no_cache
                ).last_hidden_state
            with self._layers(trunk, slice(self.n_bottom, None), final_norm=True) as top:
                return top(
                    inputs_embeds=prefix, attention_mask=attention_mask, position_ids=position_ids, **no_cache
                ).last_hidden_state

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return logits_from_hidden(self.causal_lm(), hidden)


class LanguageModelRole:
    """Policy (a trainable adapter) or reference (adapters off / frozen copy): samples and log-probabilities."""

    def __init__(self, backbone: Backbone, adapter: str | None, temperature: float):
        assert temperature > 0
        self.backbone = backbone
        self.adapter = adapter
        self.temperature = temperature

    def logits(self, episodes: Episodes) -> torch.Tensor:
        """Temperature-scaled logits predicting each response token: [B, R, V], float32."""
        episodes = episodes.to(self.backbone.device)
        Q, R = episodes.query_ids.shape[1], episodes.response_ids.shape[1]
        hidden = self.backbone.hidden_states(self.adapter, episodes.input_ids, episodes.attention_mask, episodes.prefix)
        return self.backbone.lm_head(hidden[:, Q - 1 : Q + R - 1]).float() / self.temperature

    def logprobs(self, episodes: Episodes, with_entropy: bool = False, entropy_grad: bool = False):
        """Log-probability [B, R] of each response token (and the entropy of its distribution), at the real
        positions only: padding after a stop gets 0 and costs no vocabulary projection, which over the full
        width would be as much compute as the top layers of a PPO step. Float32 on the model's device. The entropy
        has a graph only with `entropy_grad` (an entropy bonus in the loss)."""
        episodes = episodes.to(self.backbone.device)
        Q, R = episodes.query_ids.shape[1], episodes.response_ids.shape[1]
        hidden = self.backbone.hidden_states(self.adapter, episodes.input_ids, episodes.attention_mask, episodes.prefix)
        real = episodes.response_mask.bool()
        logits = self.backbone.lm_head(hidden[:, Q - 1 : Q + R - 1][real]).float() / self.temperature
        logits = logits.unsqueeze(0)  # [1, real, V]
        lp = torch.zeros(real.shape, device=hidden.device).masked_scatter(
            real, logprobs_from_logits(logits, episodes.response_ids[real].unsqueeze(0))[0]
        )
        if with_entropy:  # a statistic unless `entropy_grad`: no graph, so its [real, V] tensors are freed at once
            with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                entropy = entropy_from_logits(logits)[0]
            return lp, torch.zeros(real.shape, device=hidden.device).masked_scatter(real, entropy)
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
        self.head = head.to(backbone.device)  # float32 whatever the trunk's dtype: it reads float32 hidden states
        self.gain = 1.0
        self.bias = 0.0

    def hidden_at_last(self, batch: ScoringInputs) -> torch.Tensor:
        """Trunk output at each row's last real token (not the last padded position): [B, d], float32."""
        hidden = self.backbone.hidden_states(self.adapter, batch.input_ids, batch.attention_mask, batch.prefix)
        last = last_token_index(batch.attention_mask.to(hidden.device))
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()

    def raw_scores(self, batch: ScoringInputs) -> torch.Tensor:
        """Head output at each row's last real token, before normalisation and with gradients: [B]. What reward-model
        training differentiates; everything else reads `score`."""
        return self.head(self.hidden_at_last(batch)).squeeze(-1)

    def values(self, episodes: Episodes) -> torch.Tensor:
        """Value of the state before each response token: [B, R], float32."""
        episodes = episodes.to(self.backbone.device)
        Q, R = episodes.query_ids.shape[1], episodes.response_ids.shape[1]
        hidden = self.backbone.hidden_states(self.adapter, episodes.input_ids, episodes.attention_mask, episodes.prefix)
        return self.head(hidden[:, Q - 1 : Q + R - 1].float()).squeeze(-1)

    def fold_normalization(self) -> None:
        """Fold gain and bias into the head, so the head alone outputs the normalised score: the value network
        starts from the reward model on the scale of the rewards it must predict (Stiennon §3.4)."""
        with torch.no_grad():
            self.head.weight.mul_(self.gain)
            self.head.bias.mul_(self.gain).add_(self.bias)
        self.gain, self.bias = 1.0, 0.0

    # scoring -------------------------------------------------------------------------------------
    def tokenize(self, prompts: list[str], responses: list[str]) -> list[tuple[list[int], list[int]]]:
        """Prompt + response + EOS: the score is read at the EOS that ends every response, the same token whether
        the response stopped at EOS, at the task's stop string, or not at all, so the reward model sees where a
        response ends (and the score does not sit on an arbitrary last word)."""
        return tokenize_prompt_response(self.backbone.tokenizer, prompts, responses, append_eos=True)

    @torch.no_grad()
    def score(
        self,
        prompts: list[str],
        responses: list[str],
        episodes: Episodes | None = None,
        encoded: list[EncodedSequence] | None = None,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """Normalised reward gain*r + bias of each (prompt, response). Work already done for these pairs is reused:
        `episodes` sampled for this reward model (`sampling.prefix_reuse`) carry its input and the frozen bottom
        layers' output from the sampling loop, and `encoded` (`encode_for_scoring`) the tokens and that output, so
        only the top layers run; otherwise the texts are tokenised. In batches of `batch_size` rows (64 reusing
        work, 32 from texts), of similar lengths unless they come from episodes (padded to one width already)."""
        assert len(prompts) == len(responses)
        if episodes is not None and episodes.scoring is not None:
            assert len(episodes.has_stop) == len(prompts)
            n = batch_size or 64
            raw = torch.cat(
                [self.raw_scores(episodes.scoring.select(slice(i, i + n))) for i in range(0, len(prompts), n)]
            )
        elif encoded is not None:
            assert len(encoded) == len(prompts)
            raw = self._raw_scores_by_length(encoded, batch_size or 64)
        else:
            seqs = [EncodedSequence(torch.tensor(q + a), None) for q, a in self.tokenize(prompts, responses)]
            raw = self._raw_scores_by_length(seqs, batch_size or 32)
        return raw * self.gain + self.bias

    def _raw_scores_by_length(self, seqs: list[EncodedSequence], batch_size: int) -> torch.Tensor:
        raw = torch.zeros(len(seqs), device=self.backbone.device)
        for rows in length_sorted_batches([len(s.ids) for s in seqs], batch_size):
            raw[rows] = self.raw_scores(pad_encoded([seqs[i] for i in rows], self.backbone.tokenizer.pad_token_id))
        return raw

    # persistence -----------------------------------------------------------------------------------
    def save(self, folder, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            "head.weight": self.head.weight.detach().cpu().contiguous(),
            "head.bias": self.head.bias.detach().cpu().contiguous(),
        }
        if self.backbone.is_lora:
            tensors.update({k: v.cpu() for k, v in self.backbone.adapter_state(self.adapter).items()})
        else:
            prefix = self.backbone.causal_lm().base_model_prefix + "."  # the trunk only: the LM head is not used
            tensors.update(
                {
                    f"trunk.{k}": v.cpu().contiguous()
                    for k, v in self.backbone.model.state_dict().items()
                    if k.startswith(prefix)
                }
            )
        atomic_write_with(folder / f"{name}.safetensors", lambda handle: handle.write(save(tensors)))
        atomic_write_json(
            folder / f"{name}.json", {"gain": self.gain, "bias": self.bias, "lora": self.backbone.is_lora}
        )

    def load(self, folder, name: str) -> None:
        tensors = load_file(str(folder / f"{name}.safetensors"))
        meta = json.loads((folder / f"{name}.json").read_text())
        self.head.weight.data.copy_(tensors.pop("head.weight"))
        self.head.bias.data.copy_(tensors.pop("head.bias"))
        if self.backbone.is_lora:
            self.backbone.load_adapter_state(self.adapter, tensors)
        else:
            result = self.backbone.model.load_state_dict(
                {k[len("trunk.") :]: v for k, v in tensors.items()}, strict=False
            )
            assert not result.unexpected_keys and all("lm_head" in k for k in result.missing_keys), result
        self.gain, self.bias = float(meta["gain"]), float(meta["bias"])


@torch.no_grad()
def encode_for_scoring(
    role: "ScalarRole", prompts: list[str], responses: list[str], chunk: int = 64
) -> list[EncodedSequence]:
    """Tokenise (and run the frozen bottom layers once, in batches of similar lengths) so that many epochs over
    these sequences run the top layers only. One EncodedSequence per (prompt, response), in order."""
    pairs = role.tokenize(prompts, responses)
    out: list[EncodedSequence | None] = [None] * len(prompts)
    for rows in length_sorted_batches([len(q) + len(a) for q, a in pairs], chunk):
        ids, mask, _ = pad_prompt_response([pairs[i] for i in rows], role.backbone.tokenizer.pad_token_id)
        prefix = role.backbone.frozen_prefix(ids, mask) if role.backbone.shares_frozen_prefix else None
        for k, i in enumerate(rows):
            real = mask[k].bool()
            out[i] = EncodedSequence(ids[k][real], None if prefix is None else prefix[k][real.to(prefix.device)])
    return out
