"""A zero-shot sentiment classifier read from an instruct language model, as the sentiment task's gold scorer:
the log-odds log P(" positive") - log P(" negative") of the model's answer when asked about the continuation.
Ziegler et al. 2019 §3.1.1 used "a sentiment classifier's log-odds" as the mock labeler; this one needs no
training data and works offline with the built-in model. It is semantic, where VADER is a word list."""

from __future__ import annotations

import threading

import torch
from transformers import DynamicCache

from rlhf.config import ModelConfig
from rlhf.models.architecture import logits_from_hidden
from rlhf.models.device import Placement, resolve_placement
from rlhf.models.encoding import encode_queries, left_pad
from rlhf.models.provision import builtin_model_dir, load_causal_lm, load_tokenizer
from rlhf.models.roles import position_ids_from_mask

QUESTION = "Is the sentiment of this text positive or negative?"
_LOCK = threading.Lock()
_MODELS: dict[tuple, tuple] = {}


def judge_input(response: str) -> str:
    """The chat-formatted question whose next token the classifier reads (SmolLM2's chat markup)."""
    return (
        f'<|im_start|>user\n{QUESTION}\n\nText: "{response.strip()}"<|im_end|>\n<|im_start|>assistant\nThe sentiment is'
    )


def shared_question_prefix() -> str:
    """The start every `judge_input` shares, cut where no response can change its tokens (after "Text:", before
    the space and quote that a response starting with punctuation would merge with)."""
    text = judge_input("")
    return text[: text.index("Text:") + len("Text:")]


def _model(path: str, placement: Placement | None = None):
    """The classifier at `path` on `placement` (default: `model.device: auto`, `model.dtype: auto`), loaded once."""
    placement = placement or resolve_placement(ModelConfig())
    with _LOCK:
        key = (path, placement.device, placement.dtype)
        if key not in _MODELS:
            tokenizer = load_tokenizer(path)
            _MODELS[key] = (tokenizer, load_causal_lm(path, tokenizer, placement.device, placement.dtype))
        return _MODELS[key]


class LMSentimentScorer:
    """Gold score of each response: the judge model's log-odds of " positive" over " negative" (the prompt is
    ignored, as with VADER: the policy is judged on what it wrote). Deterministic; batched; last position only.
    On `placement` (default: `model.device: auto` and `model.dtype: auto`); the log-odds are computed in float32."""

    def __init__(self, model_path: str | None = None, batch_size: int = 64, placement: Placement | None = None):
        self.model_path = model_path
        self.batch_size = batch_size
        self.placement = placement

    def _path(self) -> str:
        if self.model_path is None:
            self.model_path = str(builtin_model_dir())
        return self.model_path

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"LMSentimentScorer: {len(prompts)} prompts but {len(responses)} responses")
        tokenizer, model = _model(self._path(), self.placement)
        positive = tokenizer(" positive", add_special_tokens=False).input_ids[0]
        negative = tokenizer(" negative", add_special_tokens=False).input_ids[0]
        hidden = self._last_hidden(tokenizer, model, [judge_input(r) for r in responses])
        logprobs = logits_from_hidden(model, hidden).float().log_softmax(-1)
        return (logprobs[:, positive] - logprobs[:, negative]).tolist()

    def _last_hidden(self, tokenizer, model, texts: list[str]) -> torch.Tensor:
        """The trunk's last hidden state of each text, [len(texts), d]. Every text starts with the same question,
        so its tokens run once and their KV cache is shared; the rest of each text runs in batches sorted by length
        (little padding). Exact: the tokens, positions and attention are those of one forward per text. A text
        whose tokens do not start with the question's (impossible with `judge_input`, checked anyway) runs whole."""
        trunk, device = getattr(model, model.base_model_prefix), model.device
        prefix = tokenizer(shared_question_prefix(), add_special_tokens=True).input_ids
        P = len(prefix)
        encoded = [tokenizer(t, add_special_tokens=True).input_ids for t in texts]
        with_prefix = [i for i, e in enumerate(encoded) if e[:P] == prefix and len(e) > P]
        prefix_cache = trunk(input_ids=torch.tensor([prefix], device=device), use_cache=True).past_key_values
        out = torch.empty(len(texts), model.config.hidden_size, device=device, dtype=model.dtype)
        order = sorted(with_prefix, key=lambda i: len(encoded[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            ids, mask = left_pad([encoded[i][P:] for i in rows], tokenizer.pad_token_id)  # [prefix][pad][rest]
            ids, mask = ids.to(device), mask.to(device)
            R = ids.shape[1]
            cache = DynamicCache(
                ddp_cache_data=[
                    (
                        layer.keys.expand(len(rows), -1, -1, -1).contiguous(),
                        layer.values.expand(len(rows), -1, -1, -1).contiguous(),
                    )
                    for layer in prefix_cache.layers
                ],
                config=model.config,
            )
            hidden = trunk(
                input_ids=ids,
                attention_mask=torch.cat([mask.new_ones(len(rows), P), mask], dim=1),
                position_ids=P + position_ids_from_mask(mask),
                past_key_values=cache,
                use_cache=True,
                cache_position=torch.arange(P, P + R, device=device),
            ).last_hidden_state[:, -1]
            out[rows] = hidden
        cached = set(with_prefix)
        rest = [i for i in range(len(texts)) if i not in cached]
        for start in range(0, len(rest), self.batch_size):
            rows = rest[start : start + self.batch_size]
            ids, mask = (t.to(device) for t in encode_queries(tokenizer, [texts[i] for i in rows]))
            out[rows] = trunk(
                input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)
            ).last_hidden_state[:, -1]
        return out
