"""Tokenising and padding: prompts and responses laid out as the roles read them (left-padded queries; a
response after its prompt, tokenised separately as in sampling)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def tokenize_prompt_response(
    tokenizer, prompts: list[str], responses: list[str], append_eos: bool = False
) -> list[tuple[list[int], list[int]]]:
    """Prompt and response tokenised separately, as in sampling: one (prompt ids, response ids) per pair."""
    assert len(prompts) == len(responses)
    rows = []
    for p, r in zip(prompts, responses):
        q = tokenizer(p, add_special_tokens=True).input_ids
        a = tokenizer(r, add_special_tokens=False).input_ids
        if append_eos:
            a = a + [tokenizer.eos_token_id]
        if not q:
            raise ValueError(f"empty prompt: {p!r}")
        rows.append((q, a))
    return rows


def pad_prompt_response(rows: list[tuple[list[int], list[int]]], pad_id: int, padding_side: str = "left"):
    """Tokenised (prompt, response) pairs padded into (input_ids, attention_mask, response_mask)."""
    T = max(len(q) + len(a) for q, a in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    rmask = torch.zeros((len(rows), T), dtype=torch.float32)
    for i, (q, a) in enumerate(rows):
        seq = q + a
        start = T - len(seq) if padding_side == "left" else 0
        ids[i, start : start + len(seq)] = torch.tensor(seq)
        mask[i, start : start + len(seq)] = 1
        rmask[i, start + len(q) : start + len(seq)] = 1
    return ids, mask, rmask


def encode_prompt_response(
    tokenizer, prompts: list[str], responses: list[str], padding_side: str = "left", append_eos: bool = False
):
    """Tokenise prompt and response separately (as in sampling) and pad: (input_ids, attention_mask, response_mask)."""
    return pad_prompt_response(
        tokenize_prompt_response(tokenizer, prompts, responses, append_eos), tokenizer.pad_token_id, padding_side
    )


@dataclass
class EncodedSequence:
    """One tokenised sequence without padding, with its frozen-prefix hidden states when the backbone shares them."""

    ids: torch.Tensor
    prefix: torch.Tensor | None


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices 0..len(lengths)-1 in batches of at most batch_size, shortest first, so that a padded batch wastes
    little on padding; the caller puts each result back at its index."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@dataclass(frozen=True)
class ScoringInputs:
    """A batch as the reward model (or the value network) reads it: left-padded ids and mask [B, T], and the frozen
    bottom layers' output [B, T, d] when it was kept (then only the top layers run), else None."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prefix: torch.Tensor | None = None

    def to(self, device: torch.device) -> "ScoringInputs":
        prefix = None if self.prefix is None else self.prefix.to(device)
        return ScoringInputs(self.input_ids.to(device), self.attention_mask.to(device), prefix)

    def select(self, idx) -> "ScoringInputs":
        prefix = None if self.prefix is None else self.prefix[idx]
        return ScoringInputs(self.input_ids[idx], self.attention_mask[idx], prefix)


def left_pad_prefixes(prefixes: list[torch.Tensor], length: int) -> torch.Tensor:
    """Kept frozen-prefix hidden states, one [n_i, d] per sequence, left-padded with zeros into [B, length, d]."""
    out = prefixes[0].new_zeros((len(prefixes), length, prefixes[0].shape[-1]))
    for i, p in enumerate(prefixes):
        out[i, length - len(p) :] = p
    return out


def pad_encoded(seqs: list[EncodedSequence], pad_id: int) -> ScoringInputs:
    """Left-pad sequences back into one batch."""
    T = max(len(s.ids) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s.ids) :] = s.ids
        mask[i, T - len(s.ids) :] = 1
    prefix = None if seqs[0].prefix is None else left_pad_prefixes([s.prefix for s in seqs], T)
    return ScoringInputs(ids, mask, prefix)


def left_pad(token_lists: list[list[int]], pad_id: int):
    """Left-padded ids and attention mask [B, longest] of token-id lists."""
    Q = max(len(e) for e in token_lists)
    ids = torch.full((len(token_lists), Q), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), Q), dtype=torch.long)
    for i, e in enumerate(token_lists):
        ids[i, Q - len(e) :] = torch.tensor(e)
        mask[i, Q - len(e) :] = 1
    return ids, mask


def encode_queries(tokenizer, prompts: list[str]):
    """Left-padded query ids and mask."""
    return left_pad([tokenizer(p, add_special_tokens=True).input_ids for p in prompts], tokenizer.pad_token_id)
