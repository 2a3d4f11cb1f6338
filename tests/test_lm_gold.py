"""The zero-shot LM sentiment gold scorer, on the built-in model."""
from __future__ import annotations

from rlhf.tasks import get_task
from rlhf.tasks.sentiment_lm_gold import LMSentimentScorer, judge_input


def test_judge_input_quotes_the_stripped_response():
    text = judge_input("  a fine film. ")
    assert '"a fine film."' in text and text.endswith("The sentiment is")


def test_lm_gold_orders_clearly_positive_above_clearly_negative():
    scorer = LMSentimentScorer()
    positive = [" it was a wonderful, moving film and I loved every minute.", " the cast was brilliant and the ending made me smile."]
    negative = [" it was a dull, painful mess and I hated every minute.", " the acting was awful and the plot made no sense at all."]
    scores = scorer(["p"] * 4, positive + negative)
    assert min(scores[:2]) > max(scores[2:]), scores
    # batching does not change the scores (beyond float noise)
    alone = [scorer(["p"], [r])[0] for r in positive + negative]
    assert all(abs(a - b) < 1e-3 for a, b in zip(alone, scores))


def test_sentiment_task_gold_option():
    assert isinstance(get_task("sentiment", gold="lm").gold_scorer, LMSentimentScorer)
    assert get_task("sentiment").gold_scorer is not None
