"""A zero-shot sentiment classifier read from an instruct language model, as the sentiment task's gold scorer:
the log-odds log P(" positive") - log P(" negative") of the model's answer when asked about the continuation.
Ziegler et al. 2019 §3.1.1 used "a sentiment classifier's log-odds" as the mock labeler; this one needs no
training data and works offline with the built-in model. It is semantic, where VADER is a word list."""
from __future__ import annotations

import threading

import torch

QUESTION = "Is the sentiment of this text positive or negative?"
_LOCK = threading.Lock()
_MODELS: dict[str, tuple] = {}


def judge_input(response: str) -> str:
    """The chat-formatted question whose next token the classifier reads (SmolLM2's chat markup)."""
    return (f"<|im_start|>user\n{QUESTION}\n\nText: \"{response.strip()}\"<|im_end|>\n"
            f"<|im_start|>assistant\nThe sentiment is")


def _model(path: str):
    with _LOCK:
        if path not in _MODELS:
            from rlhf.models.provision import load_causal_lm, load_tokenizer

            tokenizer = load_tokenizer(path)
            _MODELS[path] = (tokenizer, load_causal_lm(path, tokenizer))
        return _MODELS[path]


class LMSentimentScorer:
    """Gold score of each response: the judge model's log-odds of " positive" over " negative" (the prompt is
    ignored, as with VADER: the policy is judged on what it wrote). Deterministic; batched; last position only."""

    def __init__(self, model_path: str | None = None, batch_size: int = 64):
        self.model_path = model_path
        self.batch_size = batch_size

    def _path(self) -> str:
        if self.model_path is None:
            from rlhf.models.provision import builtin_model_dir

            self.model_path = str(builtin_model_dir())
        return self.model_path

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        from rlhf.models.roles import encode_queries, position_ids_from_mask

        if len(prompts) != len(responses):
            raise ValueError(f"LMSentimentScorer: {len(prompts)} prompts but {len(responses)} responses")
        tokenizer, model = _model(self._path())
        positive = tokenizer(" positive", add_special_tokens=False).input_ids[0]
        negative = tokenizer(" negative", add_special_tokens=False).input_ids[0]
        scores: list[float] = []
        for i in range(0, len(responses), self.batch_size):
            ids, mask = encode_queries(tokenizer, [judge_input(r) for r in responses[i : i + self.batch_size]])
            trunk = getattr(model, model.base_model_prefix)
            hidden = trunk(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).last_hidden_state[:, -1]
            logprobs = model.get_output_embeddings()(hidden).log_softmax(-1)
            scores += (logprobs[:, positive] - logprobs[:, negative]).tolist()
        return scores
