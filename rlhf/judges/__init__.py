"""Pairwise judges: `judge.compare(prompt, a, b) -> Verdict`, judged in both orders against position bias.

verdicts.py     Verdict, the Judge protocol
simple.py       the gold, labeler, reward-model and human-file judges
lm.py           the zero-shot judge read from a local model (`judge.kind: lm`)
llm.py          an OpenAI-compatible chat endpoint (`judge.kind: llm`)
from_config.py  make_judge: the judge of a config's `judge` section
orders.py       judging items in both orders (or one random order)
summaries.py    win rate, position statistics, agreement with human labels
labeler.py      a judge as the simulated labeler (`collect.labeler: judge`)
"""

from rlhf.judges.from_config import make_judge
from rlhf.judges.labeler import JudgeLabeler
from rlhf.judges.orders import JudgedItem, judge_both_orders, judge_pairs
from rlhf.judges.summaries import summarize_judgements, validate_judge
from rlhf.judges.verdicts import Verdict

__all__ = [
    "JudgeLabeler",
    "JudgedItem",
    "Verdict",
    "judge_both_orders",
    "judge_pairs",
    "make_judge",
    "summarize_judgements",
    "validate_judge",
]
