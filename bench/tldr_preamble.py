"""How many TL;DR posts the preamble rule flags (rlhf.eval.text_metrics.has_preamble), and how often the human
reference summaries start with the post's first three words, overall and on flagged posts (Ziegler et al. 2019
table 7). The README's figures were measured with:

    .venv/bin/python bench/tldr_preamble.py ../shared/data/tldr/test-500.jsonl

FILE: jsonl(.gz) rows with fields post and summary (as in the shared TL;DR files). Prints one JSON object.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

from rlhf.data.io import iter_rows
from rlhf.eval.text_metrics import first_three_words_copying, preamble_rule
from rlhf.tasks.base import require_text_field


def measure(path: str) -> dict:
    posts, summaries = [], []
    for location, row in iter_rows(path, "test"):
        posts.append(require_text_field(row, "post", location).strip())
        summaries.append(require_text_field(row, "summary", location).strip())
    rules = [preamble_rule(post) for post in posts]
    copying = first_three_words_copying(summaries, posts, [rule is not None for rule in rules])
    return {
        "file": path,
        "posts": len(posts),
        "flagged": sum(rule is not None for rule in rules),
        "by_rule": dict(Counter(rule for rule in rules if rule).most_common()),
        "reference_summaries": copying,
    }


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(json.dumps(measure(sys.argv[1]), indent=2))
