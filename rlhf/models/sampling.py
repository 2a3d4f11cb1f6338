"""Fixed-length sampling, then truncation at EOS or the task's stop rule (ppo-rlhf-details.md #5, #6)."""
from __future__ import annotations

import torch

from rlhf.models.roles import Episodes, LanguageModelRole, encode_queries


class StopRule:
    """A response ends at its first EOS, or at the first token at index >= `min_tokens` whose text contains a
    stop string (Ziegler §3.1.2: a period between tokens 16 and 24; a newline for summaries)."""

    def __init__(self, tokenizer, stop_strings: tuple[str, ...] = (), min_tokens: int = 0):
        V = len(tokenizer)
        eos = {tokenizer.eos_token_id}
        if "<|endoftext|>" in tokenizer.get_vocab():
            eos.add(tokenizer.convert_tokens_to_ids("<|endoftext|>"))
        self.eos_ids = sorted(i for i in eos if i is not None and i != tokenizer.pad_token_id)
        self.is_eos = torch.zeros(V, dtype=torch.bool)
        self.is_eos[self.eos_ids] = True
        self.has_stop_string = torch.zeros(V, dtype=torch.bool)
        if stop_strings:
            texts = tokenizer.batch_decode([[i] for i in range(V)])
            for i, text in enumerate(texts):
                if any(s in text for s in stop_strings):
                    self.has_stop_string[i] = True
        self.min_tokens = min_tokens

    def stops_at(self, token_ids: torch.Tensor, position: int | torch.Tensor) -> torch.Tensor:
        """Whether each token, at its response position, ends the response: bool of token_ids' shape."""
        return self.is_eos[token_ids] | (self.has_stop_string[token_ids] & (position >= self.min_tokens))

    def apply(self, response_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask [B,R] float with 1 up to and including the stop token, has_stop [B] bool)."""
        B, R = response_ids.shape
        position = torch.arange(R).expand(B, R)
        stops = self.stops_at(response_ids, position)
        has_stop = stops.any(-1)
        first = torch.where(has_stop, stops.float().argmax(-1), torch.full((B,), R - 1))
        mask = (position <= first.unsqueeze(-1)).float()
        return mask, has_stop


def decode_responses(tokenizer, response_ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    lengths = mask.sum(-1).long().tolist()
    return tokenizer.batch_decode([row[:n].tolist() for row, n in zip(response_ids, lengths)], skip_special_tokens=True)


DRAW_BLOCK = 64  # rows per block of uniform draws (the sampling batch size before draws were decoupled from it)


def uniform_draws(n_rows: int, n_tokens: int) -> torch.Tensor:
    """The uniforms that pick every sampled token of n_rows responses, [n_rows, n_tokens]: drawn from torch's
    global generator in blocks of DRAW_BLOCK rows, step by step within a block, so that what a prompt list
    samples depends on the seed and not on the batch size it is computed in."""
    blocks = [torch.rand(n_tokens, min(DRAW_BLOCK, n_rows - i)).T for i in range(0, n_rows, DRAW_BLOCK)]
    return torch.cat(blocks) if blocks else torch.zeros(0, n_tokens)


@torch.no_grad()
def sample_episodes(policy: LanguageModelRole, prompts: list[str], response_length: int, stop_rule: StopRule,
                    uniforms: torch.Tensor | None = None) -> tuple[Episodes, list[str]]:
    """Sample one response per prompt (row i's tokens picked by `uniforms[i]`, default `uniform_draws`); tokens
    after the stop become padding (masked)."""
    tok = policy.backbone.tokenizer
    query_ids, query_mask = encode_queries(tok, prompts)
    uniforms = uniform_draws(len(prompts), response_length) if uniforms is None else uniforms
    response_ids, logprobs = policy.sample(query_ids, query_mask, response_length, with_logprobs=True,
                                           stops_at=stop_rule.stops_at, uniforms=uniforms)
    mask, has_stop = stop_rule.apply(response_ids)
    response_ids = torch.where(mask.bool(), response_ids, torch.full_like(response_ids, tok.pad_token_id))
    episodes = Episodes(query_ids, query_mask, response_ids, mask, has_stop, sample_logprobs=logprobs)
    return episodes, decode_responses(tok, response_ids, mask)


def sample_texts(policy: LanguageModelRole, prompts: list[str], response_length: int, stop_rule: StopRule, batch_size: int = 64, progress: str = ""):
    """Responses for many prompts in batches: (texts, has_stop list, lengths list)."""
    from tqdm import tqdm

    texts, stops, lengths = [], [], []
    uniforms = uniform_draws(len(prompts), response_length)  # the samples do not depend on batch_size
    for i in tqdm(range(0, len(prompts), batch_size), desc=progress or "sampling", leave=False, disable=not progress):
        episodes, batch_texts = sample_episodes(policy, prompts[i : i + batch_size], response_length, stop_rule, uniforms[i : i + batch_size])
        texts += batch_texts
        stops += episodes.has_stop.tolist()
        lengths += episodes.response_mask.sum(-1).long().tolist()
    return texts, stops, lengths
