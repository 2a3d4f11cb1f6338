"""The sentiment LM gold scorer with its shared-prefix KV cache and length-sorted batches against one plain forward
per batch of whole judge inputs (what it did before), on the responses of a finished run's eval samples (plus a
few edge cases), side by side in one run: seconds of each and the largest score difference.

    .venv/bin/python bench/gold_prefix_cache.py RUN
"""

from __future__ import annotations

import json
import sys
import time

import torch

from rlhf.models.encoding import encode_queries
from rlhf.models.roles import position_ids_from_mask
from rlhf.tasks.sentiment_lm_gold import LMSentimentScorer, _model, judge_input


@torch.no_grad()
def plain_scores(scorer: LMSentimentScorer, responses: list[str]) -> list[float]:
    tokenizer, model = _model(scorer._path())
    positive = tokenizer(" positive", add_special_tokens=False).input_ids[0]
    negative = tokenizer(" negative", add_special_tokens=False).input_ids[0]
    trunk, scores = getattr(model, model.base_model_prefix), []
    for i in range(0, len(responses), scorer.batch_size):
        ids, mask = encode_queries(tokenizer, [judge_input(r) for r in responses[i : i + scorer.batch_size]])
        hidden = trunk(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).last_hidden_state[
            :, -1
        ]
        logprobs = model.get_output_embeddings()(hidden).log_softmax(-1)
        scores += (logprobs[:, positive] - logprobs[:, negative]).tolist()
    return scores


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit(__doc__)
    rows = [json.loads(line) for line in open(f"{argv[0]}/eval/samples.jsonl")]
    responses = [r["response"] for r in rows] + ["", " ", "...", '"quoted" text', "Text: odd"]
    scorer = LMSentimentScorer()
    scorer(["p"] * 4, responses[:4])  # load the model outside the timings
    t0 = time.time()
    plain = plain_scores(scorer, responses)
    t1 = time.time()
    cached = scorer(["p"] * len(responses), responses)
    t2 = time.time()
    print(
        f"responses={len(responses)} plain_seconds={t1 - t0:.1f} cached_seconds={t2 - t1:.1f} "
        f"speedup={(t1 - t0) / (t2 - t1):.2f} max_abs_diff={max(abs(a - b) for a, b in zip(plain, cached)):.2e}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
