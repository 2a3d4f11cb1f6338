"""Ancestral sampling with a KV cache: a fixed number of tokens, then truncation at EOS or the task's stop rule
(Ziegler et al. 2019 §3.1.2), so every batch has one shape and a row's tokens never depend on the other rows.
With adapters on the top layers only, the loop also keeps the frozen bottom layers' output for the roles that
read the episodes afterwards (`PrefixReuse`)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm import tqdm
from transformers import DynamicCache

from rlhf.models.architecture import decoder_layers
from rlhf.models.encoding import ScoringInputs, encode_queries
from rlhf.models.roles import Episodes, LanguageModelRole, ScalarRole, position_ids_from_mask
from rlhf.processes import Processes


def sample_categorical(probs: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
    """One index per row of `probs` [B, V] (rows need not sum to 1), by inverting the cumulative distribution
    with a single uniform draw per row (`u` [B, 1], drawn here when not given): exact, and far cheaper than
    torch.multinomial's V exponentials per row."""
    cdf = probs.cumsum(-1)
    if u is None:  # drawn from the CPU generator whatever the device, so a seed gives the same draws everywhere
        u = torch.rand(probs.shape[0], 1, dtype=cdf.dtype).to(cdf.device)
    u = u.to(cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1).squeeze(-1)


@contextmanager
def layer_outputs(layer: torch.nn.Module | None):
    """A list that receives `layer`'s output at each forward while the context is open (stays empty for None)."""
    outputs: list[torch.Tensor] = []
    hook = None
    if layer is not None:
        hook = layer.register_forward_hook(
            lambda m, args, out: outputs.append(out[0] if isinstance(out, tuple) else out)
        )
    try:
        yield outputs
    finally:
        if hook is not None:
            hook.remove()


def distinct_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the first index of each distinct row of `rows` [B, L], for each row the position of its distinct row in
    that list [B]); (arange(B), None) when no two rows are equal."""
    _, which = torch.unique(rows, dim=0, return_inverse=True)
    B, n = len(rows), int(which.max()) + 1 if len(rows) else 0
    if n == B:
        return torch.arange(B, device=rows.device), None
    first = torch.full((n,), B, dtype=torch.long, device=rows.device)
    first.scatter_reduce_(0, which, torch.arange(B, device=rows.device), reduce="amin")
    return first, which


@torch.no_grad()
def sample_tokens(
    lm,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    n_tokens: int,
    temperature: float,
    stops_at: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    uniforms: torch.Tensor | None = None,
    hidden_of: torch.nn.Module | None = None,
    eos_tail: tuple[int, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Ancestral sampling of `n_tokens` tokens after left-padded queries, with a KV cache and the temperature
    applied to the logits: the tokens [B, n_tokens], the log-probability of each under the sampling distribution
    [B, n_tokens], and (with `hidden_of`, one of lm's decoder layers) that layer's output at every position the
    loop ran [B, Q + n_tokens (+1 with eos_tail), d], 0 elsewhere; else None.

    Row b's token at step t inverts the CDF at `uniforms[b, t]` (when not given, drawn here in the order of one
    draw per row at each step). `stops_at(tokens [b], t)` (the task's stop rule) marks rows whose token at step t
    ends their response: those rows stop sampling and hold token 0 and log-prob 0 after the stop. That is only a
    saving: fixed-length sampling truncates everything after the stop to padding anyway, and each row's draws
    are its own, so every row's tokens up to its stop are those of sampling all n_tokens.

    Without eos_tail a row leaves the batch at its last token (never fed): `hidden` covers what log-probs and values
    read. With `eos_tail = (eos_id, is_eos [V] bool)` a finished row is also fed its last token and then eos_id (an
    EOS last token as eos_id itself), so `hidden` covers what the reward model scores too (`scoring_inputs`)."""

    B, Q = query_ids.shape
    device = query_ids.device
    if uniforms is None:
        uniforms = torch.rand(n_tokens, B).T
    uniforms = uniforms.to(device)  # drawn on the CPU (the same draws on every device), used where the logits are
    assert uniforms.shape == (B, n_tokens), (uniforms.shape, B, n_tokens)
    assert eos_tail is None or hidden_of is not None, "eos_tail feeds tokens only to keep their hidden states"
    width = n_tokens + (1 if eos_tail is not None else 0)
    with layer_outputs(hidden_of) as layer_out:
        cache = DynamicCache(config=lm.config)
        mask = torch.cat([query_mask, query_mask.new_ones(B, width)], dim=1)
        position_ids = position_ids_from_mask(query_mask)
        cached = {"past_key_values": cache, "use_cache": True}
        # 0. the prompts: each distinct query once (K responses per prompt repeat it K times), then copied to its rows
        first, copies = distinct_rows(torch.cat([query_ids, query_mask], dim=1))
        prefill = slice(None) if copies is None else first
        # in bfloat16 the last position as an index, not `1`: a [B, 1, d] slice of the hidden states is strided, and
        # for a frozen output embedding torch's CPU matmul then runs it row by row on a copy of the weight per row
        # (x4.3 the prefill, bench/strided_head.py); indexed rows are contiguous, one matrix product, the same bits.
        # In float32 that gains 6 % and can change the last bit, so float32 runs keep the figures documented before
        last = 1 if lm.get_output_embeddings().weight.dtype == torch.float32 else torch.tensor([Q - 1], device=device)
        out = lm(
            input_ids=query_ids[prefill],
            attention_mask=query_mask[prefill],
            position_ids=position_ids[prefill],
            logits_to_keep=last,
            **cached,
        )
        if copies is not None:
            cache.batch_select_indices(copies)
            out.logits = out.logits[copies]
            layer_out[:] = [x[copies] for x in layer_out]
        hidden = None
        if hidden_of is not None:
            assert len(layer_out) == 1 and layer_out[0].shape[:2] == (B, Q), "hidden_of must run once per forward"
            hidden = layer_out[0].new_zeros(B, Q + width, layer_out[0].shape[-1])
            hidden[:, :Q] = layer_out.pop()
        tokens = torch.zeros(B, n_tokens, dtype=torch.long, device=device)
        logprobs = torch.zeros(B, n_tokens, device=device)
        # per row of the batch (the cache's rows, in order): its row in the output, whether it still samples, and
        # how many tail tokens (eos_tail) it has yet to be fed after this step's
        active = torch.arange(B, device=device)
        sampling = torch.ones(B, dtype=torch.bool, device=device)
        eos_next = torch.zeros(B, dtype=torch.bool, device=device)
        feed = torch.zeros(B, dtype=torch.long, device=device)
        position = position_ids[:, -1:]
        for t in range(width):  # the token fed at step t sits at response position t
            # 1. rows that sample: one token each
            leave = ~sampling & ~eos_next  # tail rows whose last tail token was fed at the previous step
            feed = torch.where(~sampling & eos_next, eos_tail[0] if eos_tail is not None else 0, feed)
            eos_next = eos_next & sampling
            rows = sampling.nonzero().squeeze(-1)
            if t < n_tokens and len(rows):
                step_logprobs = (out.logits[rows, -1].float() / temperature).log_softmax(-1)
                new = sample_categorical(step_logprobs.exp(), uniforms[active[rows], t : t + 1])
                tokens[active[rows], t] = new
                logprobs[active[rows], t] = step_logprobs.gather(-1, new.unsqueeze(-1)).squeeze(-1)
                ended = stops_at(new, t) if stops_at is not None else torch.zeros_like(new, dtype=torch.bool)
                ended = ended | (t + 1 == n_tokens)
                feed[rows] = new
                if eos_tail is None:
                    leave[rows[ended]] = True
                else:  # fed now: the last token (an EOS as eos_id); next step: eos_id, unless it was an EOS
                    last_is_eos = eos_tail[1][new] & ended
                    feed[rows[last_is_eos]] = eos_tail[0]
                    eos_next[rows[ended & ~last_is_eos]] = True
                sampling[rows[ended]] = False
            # 2. rows that are done leave the batch and its cache
            if leave.any():
                keep = ~leave
                cache.batch_select_indices(keep.nonzero().squeeze(-1))
                active, sampling, eos_next, feed, position = (
                    x[keep] for x in (active, sampling, eos_next, feed, position)
                )
            if len(active) == 0:
                break
            # 3. feed each remaining row its token at response position t
            position = position + 1
            out = lm(
                input_ids=feed.unsqueeze(-1), attention_mask=mask[active, : Q + t + 1], position_ids=position, **cached
            )
            if hidden is not None:
                hidden[active, Q + t] = layer_out.pop()[:, 0]
        assert eos_tail is None or len(active) == 0 or not (sampling | eos_next).any(), "rows left with tokens to feed"
    return tokens, logprobs, hidden


@dataclass(frozen=True)
class PrefixReuse:
    """What the sampling loop keeps so that later forwards run the top layers only (adapters on the top layers,
    the bottom ones frozen and shared): `keep_prefix`, the bottom layers' output at every position a log-prob or
    value reads (`Episodes.prefix`); `score_from_sampling`, also the reward model's input, the response up to its
    stop and then EOS, with that output on it (`Episodes.scoring`), so `ScalarRole.score` takes it from there."""

    keep_prefix: bool = False
    score_from_sampling: bool = False


NO_REUSE = PrefixReuse()


def prefix_reuse(
    policy: LanguageModelRole, reference: LanguageModelRole | None = None, reward: ScalarRole | None = None
) -> PrefixReuse:
    """What `policy`'s sampling loop keeps for the roles that read its episodes: the bottom-layer output, when the
    reference (and the value network, on the reference's backbone) is not the policy itself and computes the same
    bottom layers; the reward model's input, when the reward model computes them too. None: a role not used."""
    shares: dict[int, bool] = {}  # comparing the bottom layers' weights once per backbone

    def same_bottom_layers(backbone) -> bool:
        if id(backbone) not in shares:
            shares[id(backbone)] = policy.backbone.same_frozen_prefix(backbone)
        return shares[id(backbone)]

    keep_prefix = reference is not None and reference is not policy and same_bottom_layers(reference.backbone)
    return PrefixReuse(keep_prefix, score_from_sampling=reward is not None and same_bottom_layers(reward.backbone))


class StopRule:
    """A response ends at its first EOS, or at the first token at index >= `min_tokens` whose text contains a
    stop string (Ziegler §3.1.2: a period between tokens 16 and 24; a newline for summaries). EOS stays a stop
    when it is also the pad token (a tokenizer without one): masks come from lengths, never from the pad id."""

    def __init__(self, tokenizer, stop_strings: tuple[str, ...] = (), min_tokens: int = 0):
        V = len(tokenizer)
        eos = {tokenizer.eos_token_id}
        if "<|endoftext|>" in tokenizer.get_vocab():
            eos.add(tokenizer.convert_tokens_to_ids("<|endoftext|>"))
        self.eos_ids = sorted(i for i in eos if i is not None)
        self.is_eos = torch.zeros(V, dtype=torch.bool)
        self.is_eos[self.eos_ids] = True
        self.has_stop_string = torch.zeros(V, dtype=torch.bool)
        if stop_strings:
            texts = tokenizer.batch_decode([[i] for i in range(V)])
            for i, text in enumerate(texts):
                if any(s in text for s in stop_strings):
                    self.has_stop_string[i] = True
        self.min_tokens = min_tokens

    def to(self, device: torch.device) -> "StopRule":
        """Move the token tables to `device` (in place: the rule is built once and used on one device)."""
        self.is_eos, self.has_stop_string = self.is_eos.to(device), self.has_stop_string.to(device)
        return self

    def stops_at(self, token_ids: torch.Tensor, position: int | torch.Tensor) -> torch.Tensor:
        """Whether each token, at its response position, ends the response: bool of token_ids' shape."""
        if self.is_eos.device != token_ids.device:
            self.to(token_ids.device)
        return self.is_eos[token_ids] | (self.has_stop_string[token_ids] & (position >= self.min_tokens))

    def apply(self, response_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask [B,R] float with 1 up to and including the stop token, has_stop [B] bool)."""
        B, R = response_ids.shape
        position = torch.arange(R, device=response_ids.device).expand(B, R)
        stops = self.stops_at(response_ids, position)
        has_stop = stops.any(-1)
        first = torch.where(has_stop, stops.float().argmax(-1), torch.full((B,), R - 1, device=response_ids.device))
        mask = (position <= first.unsqueeze(-1)).float()
        return mask, has_stop


def decode_responses(tokenizer, response_ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    lengths = mask.sum(-1).long().tolist()
    rows = response_ids.cpu()
    return tokenizer.batch_decode([row[:n].tolist() for row, n in zip(rows, lengths)], skip_special_tokens=True)


DRAW_BLOCK = 64  # rows per block of uniform draws (the sampling batch size before draws were decoupled from it)


def uniform_draws(n_rows: int, n_tokens: int) -> torch.Tensor:
    """The uniforms that pick every sampled token of n_rows responses, [n_rows, n_tokens]: drawn from torch's
    global generator in blocks of DRAW_BLOCK rows, step by step within a block, so that what a prompt list
    samples depends on the seed and not on the batch size it is computed in. On the CPU whatever the models'
    device (sampling moves them), so a seed gives the same draws on every device."""
    blocks = [torch.rand(n_tokens, min(DRAW_BLOCK, n_rows - i)).T for i in range(0, n_rows, DRAW_BLOCK)]
    return torch.cat(blocks) if blocks else torch.zeros(0, n_tokens)


def scoring_inputs(episodes: Episodes, hidden: torch.Tensor, eos_id: int, is_eos: torch.Tensor) -> ScoringInputs:
    """What the reward model scores for sampled episodes, [B, Q+R+1]: the query, the response up to its stop, and
    EOS, read at the EOS (an EOS stop is that EOS), as `ScalarRole.tokenize` lays out a (prompt, response) pair,
    with `hidden`, `sample_tokens`'s bottom-layer output with eos_tail=(eos_id, is_eos)."""
    B, R = episodes.response_ids.shape
    device = episodes.response_ids.device
    n = episodes.response_mask.sum(-1).long()  # tokens up to and including the stop
    last = episodes.response_ids.gather(1, (n - 1).unsqueeze(-1)).squeeze(-1)
    ends_eos = episodes.has_stop & is_eos[last]
    ids = torch.cat([episodes.response_ids, episodes.response_ids.new_zeros(B, 1)], dim=1)
    ids[torch.arange(B, device=device), torch.where(ends_eos, n - 1, n)] = eos_id
    mask = (torch.arange(R + 1, device=device) < (n + (~ends_eos).long()).unsqueeze(-1)).long()
    assert hidden.shape[:2] == (B, episodes.query_ids.shape[1] + R + 1), hidden.shape
    query_and_response = torch.cat([episodes.query_ids, ids], dim=1)
    return ScoringInputs(query_and_response, torch.cat([episodes.query_mask, mask], dim=1), hidden)


@torch.no_grad()
def sample_episodes(
    policy: LanguageModelRole,
    prompts: list[str],
    response_length: int,
    stop_rule: StopRule,
    uniforms: torch.Tensor | None = None,
    reuse: PrefixReuse = NO_REUSE,
) -> tuple[Episodes, list[str]]:
    """Sample one response per prompt (row i's tokens picked by `uniforms[i]`, default `uniform_draws`) at the
    policy's temperature, with no top-k/top-p; tokens after the stop become padding (masked). The episodes carry
    each token's log-probability read off the sampling loop, and what `reuse` (`prefix_reuse`) asks the loop
    to keep: the frozen bottom layers' output (`Episodes.prefix`) and the reward model's input (`Episodes.scoring`)."""
    backbone, tok = policy.backbone, policy.backbone.tokenizer
    device = backbone.device
    query_ids, query_mask = (t.to(device) for t in encode_queries(tok, prompts))
    uniforms = uniform_draws(len(prompts), response_length) if uniforms is None else uniforms
    stop_rule.to(device)
    # with the reward model's input, a finished row is fed its last token and then EOS before it leaves the batch
    eos_tail = (tok.eos_token_id, stop_rule.is_eos) if reuse.score_from_sampling else None
    with backbone.use(policy.adapter) as lm:
        bottom_layer = None
        if reuse.keep_prefix or reuse.score_from_sampling:
            assert backbone.shares_frozen_prefix, "prefix reuse needs adapters on the top layers only"
            bottom_layer = decoder_layers(lm)[1][backbone.n_bottom - 1]
        response_ids, logprobs, hidden = sample_tokens(
            lm,
            query_ids,
            query_mask,
            response_length,
            policy.temperature,
            stop_rule.stops_at,
            uniforms,
            bottom_layer,
            eos_tail,
        )
    assert response_ids.shape == logprobs.shape == (len(prompts), response_length), response_ids.shape
    mask, has_stop = stop_rule.apply(response_ids)
    response_ids = torch.where(mask.bool(), response_ids, torch.full_like(response_ids, tok.pad_token_id))
    prefix = hidden[:, : query_ids.shape[1] + response_length] if reuse.keep_prefix else None
    episodes = Episodes(query_ids, query_mask, response_ids, mask, has_stop, prefix=prefix, sample_logprobs=logprobs)
    if reuse.score_from_sampling:
        episodes.scoring = scoring_inputs(episodes, hidden, tok.eos_token_id, stop_rule.is_eos)
    return episodes, decode_responses(tok, response_ids, mask)


def sampled_batches(
    policy: LanguageModelRole,
    prompts: list[str],
    response_length: int,
    stop_rule: StopRule,
    batch_size: int,
    reuse: PrefixReuse = NO_REUSE,
    progress: str = "",
    processes: Processes = Processes(),
):
    """Episodes of `policy` for this process's rows of many prompts (all of them with one process), a batch at a
    time: yields (the rows' indices in `prompts`, episodes, texts). The uniform draws for all prompts are made
    first, on every process, so the samples depend on neither batch_size nor the number of processes."""
    uniforms = uniform_draws(len(prompts), response_length)
    mine = processes.rows(len(prompts))
    show = bool(progress) and processes.is_main
    for i in tqdm(range(0, len(mine), batch_size), desc=progress or "sampling", leave=False, disable=not show):
        rows = mine[i : i + batch_size]
        batch = [prompts[j] for j in rows]
        episodes, texts = sample_episodes(policy, batch, response_length, stop_rule, uniforms[rows], reuse)
        yield rows, episodes, texts


def sample_texts(
    policy: LanguageModelRole,
    prompts: list[str],
    response_length: int,
    stop_rule: StopRule,
    batch_size: int = 64,
    progress: str = "",
    processes: Processes = Processes(),
):
    """Responses for many prompts in batches, shared out among `processes` and gathered in prompt order:
    (texts, has_stop list, lengths list)."""
    texts, stops, lengths = [], [], []
    for _, episodes, batch_texts in sampled_batches(
        policy, prompts, response_length, stop_rule, batch_size, progress=progress, processes=processes
    ):
        texts += batch_texts
        stops += episodes.has_stop.tolist()
        lengths += episodes.response_mask.sum(-1).long().tolist()
    n = len(prompts)
    return processes.in_order(texts, n), processes.in_order(stops, n), processes.in_order(lengths, n)
