"""A zero-shot pairwise judge read from a local instruct model, for tasks without a gold scorer (TL;DR).

The model is asked which of two summaries of a post is better (the criteria of Stiennon et al. 2020 App. C and of
the GPT-4 judge of Kirk et al. 2024: accuracy, coverage, coherence) and its answer is read at the next token:
log P(" A") against log P(" B"). Nothing is generated, so there is nothing to parse. Small models prefer one position
whatever the content: judge both orders (`rlhf.judges.judge_both_orders`, which batches all comparisons through
`compare_both_orders` here). With the built-in SmolLM2-135M-Instruct this is a weak judge: it is the simulated human
of the offline set-up, as the zero-shot sentiment classifier is the sentiment task's gold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch

from rlhf.config import ModelConfig
from rlhf.judges.orders import JudgedItem, item_from_both_orders
from rlhf.judges.verdicts import Verdict
from rlhf.models.architecture import logits_from_hidden
from rlhf.models.device import Placement, resolve_placement
from rlhf.models.encoding import encode_queries
from rlhf.models.provision import builtin_model_dir, load_causal_lm, load_tokenizer
from rlhf.models.roles import position_ids_from_mask

QUESTION = (
    "Which summary of this Reddit post is better? A good summary is accurate (it states only what the post says), "
    "covers the most important points of the post, and is clear and coherent on its own. Do not prefer a summary "
    "for being longer."
)
ANSWER_TOKENS = (" A", " B")
ORDER_RULES = ("tie", "logodds")


def post_of(prompt: str) -> str:
    """The post as the judge sees it: the policy's query without its trailing "TL;DR:" cue."""
    text = prompt.rstrip()
    return text[: -len("TL;DR:")].rstrip() if text.endswith("TL;DR:") else text


def judge_input(prompt: str, a: str, b: str) -> str:
    """The chat-formatted question (SmolLM2's chat markup) whose next token after "The better summary is" is read."""
    return (
        f"<|im_start|>user\n{QUESTION}\n\n{post_of(prompt)}\n\nSummary A: {a.strip()}\n\nSummary B: {b.strip()}\n\n"
        f"Answer with A or B.<|im_end|>\n<|im_start|>assistant\nThe better summary is"
    )


def verdict_from_logprobs(logprob_a: float, logprob_b: float, margin: float = 0.0) -> Verdict:
    """'a' when log P(A) - log P(B) > margin, 'b' when it is < -margin, else 'tie' (non-finite: 'unparseable')."""
    raw = f"logP(A)={logprob_a:.4f} logP(B)={logprob_b:.4f}"
    difference = logprob_a - logprob_b
    if not math.isfinite(difference):
        return Verdict("unparseable", raw)
    return Verdict("a" if difference > margin else "b" if difference < -margin else "tie", raw)


# Zheng et al. 2023 (swap positions) / Wang et al. 2023 (balanced position calibration): with a position bias c,
# d(x, y) = log P(A) - log P(B) = c + q and d(y, x) = c - q, so d(x, y) - d(y, x) = 2q is free of c.
def outcome_from_both_logodds(
    forward: tuple[float, float], backward: tuple[float, float], margin: float = 0.0
) -> float | None:
    """Outcome for x from (log P(A), log P(B)) with x shown first (`forward`) and with y shown first (`backward`):
    1 when d_forward - d_backward > 2 margin, 0 when < -2 margin, else 0.5; None when not finite."""
    score = (forward[0] - forward[1]) - (backward[0] - backward[1])
    if not math.isfinite(score):
        return None
    return 1.0 if score > 2 * margin else 0.0 if score < -2 * margin else 0.5


class LMPairwiseJudge:
    """`compare(prompt, a, b) -> Verdict` from log P(" A") vs log P(" B"). order_rule says how `compare_both_orders`
    combines the two orders: "tie" (the two verdicts must agree, else a tie) or "logodds" (the sign of the log-odds
    difference summed over both orders, which cancels a constant position bias)."""

    def __init__(
        self,
        model_path: str | None = None,
        margin: float = 0.0,
        batch_size: int = 8,
        name: str = "",
        order_rule: str = "tie",
        placement: Placement | None = None,
    ):
        if order_rule not in ORDER_RULES:
            raise ValueError(f"order_rule: expected one of {ORDER_RULES}, got {order_rule!r}")
        self.model_path = model_path or None
        self.margin = margin
        self.batch_size = batch_size
        self.name = name or "lm_judge"
        self.order_rule = order_rule
        self._loaded: tuple | None = None
        self.placement = placement  # None: `model.device: auto`, `model.dtype: auto`, resolved when the model loads

    def _model(self):
        if self._loaded is None:
            path = self.model_path or str(builtin_model_dir())
            tokenizer = load_tokenizer(path)
            placement = self.placement or resolve_placement(ModelConfig())
            model = load_causal_lm(path, tokenizer, placement.device, placement.dtype).eval()
            ids = [tokenizer(token, add_special_tokens=False).input_ids for token in ANSWER_TOKENS]
            if any(len(i) != 1 for i in ids):
                raise ValueError(f"{path}: the judge's answers {ANSWER_TOKENS} must be one token each, got {ids}")
            self._loaded = (tokenizer, model, [i[0] for i in ids])
        return self._loaded

    @torch.no_grad()
    def answer_logprobs(self, items: Sequence[tuple[str, str, str]]) -> list[tuple[float, float]]:
        """(log P(" A"), log P(" B")) of the next token for each (prompt, a, b), in batches of `batch_size`."""
        tokenizer, model, (token_a, token_b) = self._model()
        out: list[tuple[float, float]] = []
        for i in range(0, len(items), self.batch_size):
            ids, mask = encode_queries(tokenizer, [judge_input(*item) for item in items[i : i + self.batch_size]])
            ids, mask = ids.to(model.device), mask.to(model.device)
            trunk = getattr(model, model.base_model_prefix)
            hidden = trunk(
                input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)
            ).last_hidden_state[:, -1]
            logprobs = logits_from_hidden(model, hidden).float().log_softmax(-1)
            out += list(zip(logprobs[:, token_a].tolist(), logprobs[:, token_b].tolist()))
        return out

    def compare(self, prompt: str, a: str, b: str) -> Verdict:
        return verdict_from_logprobs(*self.answer_logprobs([(prompt, a, b)])[0], self.margin)

    def compare_both_orders(self, items: Sequence[tuple[str, str, str]]) -> list[JudgedItem]:
        """Each item as (a, b) and as (b, a), all 2n comparisons in batches, combined by `order_rule` ("logodds":
        `outcome_from_both_logodds`); `consistent` is always whether the two verdicts agree."""
        logprobs = self.answer_logprobs([*items, *[(p, b, a) for p, a, b in items]])
        judged = []
        for forward, backward in zip(logprobs[: len(items)], logprobs[len(items) :]):
            verdicts = verdict_from_logprobs(*forward, self.margin), verdict_from_logprobs(*backward, self.margin)
            item = item_from_both_orders(*verdicts)
            if self.order_rule == "logodds" and item.consistent is not None:
                item = replace(item, outcome_for_a=outcome_from_both_logodds(forward, backward, self.margin))
            judged.append(item)
        return judged
