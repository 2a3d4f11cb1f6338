"""The zero-shot LM sentiment gold scorer, on the built-in model."""

from __future__ import annotations

from rlhf.tasks import get_task
from rlhf.tasks.sentiment_lm_gold import LMSentimentScorer, judge_input


def test_judge_input_quotes_the_stripped_response():
    text = judge_input("  a fine film. ")
    assert '"a fine film."' in text and text.endswith("The sentiment is")


def test_lm_gold_orders_clearly_positive_above_clearly_negative():
    scorer = LMSentimentScorer()
    positive = [
        " it was a wonderful, moving film and I loved every minute.",
        " the cast was brilliant and the ending made me smile.",
    ]
    negative = [
        " it was a dull, painful mess and I hated every minute.",
        " the acting was awful and the plot made no sense at all.",
    ]
    scores = scorer(["p"] * 4, positive + negative)
    assert min(scores[:2]) > max(scores[2:]), scores
    # batching does not change the scores (beyond float noise)
    alone = [scorer(["p"], [r])[0] for r in positive + negative]
    assert all(abs(a - b) < 1e-3 for a, b in zip(alone, scores))


def test_sentiment_task_gold_option():
    assert isinstance(get_task("sentiment", gold="lm").gold_scorer, LMSentimentScorer)
    assert get_task("sentiment").gold_scorer is not None


def test_shared_prefix_cache_gives_the_scores_of_one_plain_forward_per_text():
    # responses starting with punctuation merge with the quote that follows "Text:"; the cache stops before it
    import torch

    from rlhf.tasks.sentiment_lm_gold import _model, shared_question_prefix

    scorer = LMSentimentScorer(batch_size=3)
    responses = [", I loved it.", "...and then it ended badly", " a fine, quiet film", '"Great" they said', "", "ok"]
    assert all(judge_input(r).startswith(shared_question_prefix()) for r in responses)
    tokenizer, model = _model(scorer._path())
    positive = tokenizer(" positive", add_special_tokens=False).input_ids[0]
    negative = tokenizer(" negative", add_special_tokens=False).input_ids[0]
    plain = []
    with torch.no_grad():
        for r in responses:
            ids = tokenizer(judge_input(r), add_special_tokens=True, return_tensors="pt").input_ids
            logprobs = model(input_ids=ids).logits[0, -1].log_softmax(-1)
            plain.append((logprobs[positive] - logprobs[negative]).item())
    cached = scorer(["p"] * len(responses), responses)
    assert max(abs(a - b) for a, b in zip(plain, cached)) < 1e-3, (plain, cached)
