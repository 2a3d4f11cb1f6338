"""Sanity check of the zero-shot LM judge on real TL;DR posts: each held-out post's own reference summary against
another post's, in both orders. `python bench/tldr_judge_probe.py` (needs ../shared/data/tldr/test-500.jsonl)."""

import time

from rlhf.config import JudgeConfig
from rlhf.config_loading import load_config
from rlhf.experiments import rlhf_vs_sft as m
from rlhf.judges import judge_both_orders, make_judge

cfg = load_config("configs/experiments/rlhf_vs_sft.yaml", ["run.task.n_eval_prompts=8"], cls=m.Config)
prompts, refs = m.eval_posts(cfg.run)
items = [
    (p, r, refs[(i + 1) % len(refs)]) for i, (p, r) in enumerate(zip(prompts, refs))
]  # own reference vs another post's
judge = make_judge(JudgeConfig(kind="lm", lm_batch_size=8, lm_order_rule="logodds"))
judge._model()
t0 = time.time()
judged = judge_both_orders(judge, items)
dt = time.time() - t0
print(f"{2 * len(items)} judge forwards in {dt:.1f} s")
print("logodds outcomes for the post's own reference:", [j.outcome_for_a for j in judged])
print("consistent:", [j.consistent for j in judged])
print("verdicts:", [[v.outcome for v in j.verdicts] for j in judged])
lp = judge.answer_logprobs([*items, *[(p, b, a) for p, a, b in items]])
print("d_forward - d_backward:", [round((lp[i][0] - lp[i][1]) - (lp[8 + i][0] - lp[8 + i][1]), 3) for i in range(8)])
