"""Experiment 3b, ROUGE as the proxy on TL;DR (Stiennon et al. 2020 fig. 7): best-of-N summaries chosen by their
ROUGE against the post's reference summary, judged against that reference.

rho is the SFT policy (trained on reference summaries of the training posts; the initial model with
`sft.n_demonstrations: 0`). A pool of M summaries of rho per held-out post is scored by ROUGE-L F1 against the
post's reference (the proxy) and judged against the reference in both orders by the configured judge (the gold: a
win is 1, a tie or an order disagreement 1/2, a loss 0; an unparseable answer is left out and counted). Best-of-N
by ROUGE for N = 1, 2, 4, ... M is read off disjoint groups of the pool (KL = log N - (N-1)/N). Stiennon found
that choosing by ROUGE raises the human preference a little and then stops (it peaks sooner and lower than
choosing by their reward models), while ROUGE itself keeps rising.

    OUT/base/          the pipeline run (sft)
    OUT/pool.json      the pool: posts, references, summaries, ROUGE and verdicts (a re-run reuses it)
    OUT/summary.json (`bon_sweep`, `peak`), OUT/summary.md, OUT/rouge_proxy.png

The judge is the run config's `judge` section. The default, the built-in 135M model read zero-shot, is not a usable
judge of summaries (README, RLHF vs SFT): its verdicts are mostly order disagreements, so the gold is close to 1/2
whatever is chosen. Use `run.judge.kind=llm` for a meaningful gold.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from rlhf.config import RunConfig
from rlhf.config_loading import config_to_dict
from rlhf.data.io import atomic_write_json, atomic_write_text
from rlhf.eval.text_metrics import ROUGE_TYPES, rouge_per_pair
from rlhf.experiments.common import Clock, best_of_n_sweep, run_base, save_figure
from rlhf.experiments.overoptimization import peak
from rlhf.judges import judge_both_orders, make_judge
from rlhf.models.loading import open_backbone, sft_model_path
from rlhf.models.roles import LanguageModelRole
from rlhf.models.sampling import sample_texts
from rlhf.run import seed_everything
from rlhf.tasks import held_out_prompts, task_and_stop_rule

log = logging.getLogger("rlhf")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    """Pipeline settings: `task` (tldr, `source` = the local TL;DR file, `test_fraction`, `max_query_tokens`), `sft`
    (rho), `judge` (the gold), `collect.batch_size` (the sampling batch)."""
    pool_posts: int = 16
    """Held-out posts of the pool."""
    pool_samples_per_post: int = 16
    """Summaries of rho per post (the largest N of the sweep); every one is judged in both orders."""
    bon_n: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    """N of the best-of-N sweep (each at most pool_samples_per_post)."""
    rouge_type: str = "rougeL"
    """The proxy: rouge1, rouge2 or rougeL F1 against the reference summary."""


def check_config(cfg: Config) -> Path:
    """The TL;DR file of the config, or a clear error, before anything runs."""
    rc = cfg.run
    if rc.task.name != "tldr":
        raise ValueError(
            f"rouge_proxy: run.task.name must be tldr (ROUGE needs reference summaries), got {rc.task.name!r}"
        )
    path = Path(rc.task.source) if rc.task.source else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"rouge_proxy: run.task.source={rc.task.source!r} is not a file; set it to a local TL;DR JSONL "
            "file with reference summaries (e.g. ../shared/data/tldr/test-500.jsonl, not in the repository)"
        )
    if cfg.rouge_type not in ROUGE_TYPES:
        raise ValueError(f"rouge_type: expected one of {', '.join(ROUGE_TYPES)}, got {cfg.rouge_type!r}")
    if max(cfg.bon_n) > cfg.pool_samples_per_post:
        raise ValueError(f"bon_n: {max(cfg.bon_n)} exceeds pool_samples_per_post={cfg.pool_samples_per_post}")
    return path


def judged_pool(base, cfg: Config, path: Path) -> dict:
    """M summaries of rho per held-out post, their ROUGE against the post's reference, and the judge's verdict on
    each against that reference in both orders (outcome for the summary; None = unparseable). Cached in `path`."""
    if path.exists():
        return json.loads(path.read_text())
    rc, M = cfg.run, cfg.pool_samples_per_post
    # 1. the held-out posts and M samples of rho for each
    posts = held_out_prompts(rc, cfg.pool_posts)
    prompts, references = [p.text for p in posts], [p.meta["summary"] for p in posts]
    seed_everything(rc.seed + 31)
    backbone = open_backbone(rc, sft_model_path(base, rc))
    _, response_length, stop_rule = task_and_stop_rule(rc, backbone.tokenizer)
    repeated = [p for p in prompts for _ in range(M)]
    repeated_refs = [r for r in references for _ in range(M)]
    policy = LanguageModelRole(backbone, None, rc.task.temperature)
    texts, stops, _ = sample_texts(
        policy, repeated, response_length, stop_rule, rc.collect.batch_size, progress=f"pool: {len(repeated)} summaries"
    )
    del policy, backbone
    # 2. the proxy: ROUGE against the reference
    rouge = rouge_per_pair(texts, repeated_refs)
    # 3. the gold: the judge's verdict on each summary against the reference, in both orders
    judged = judge_both_orders(make_judge(rc.judge), list(zip(repeated, texts, repeated_refs)))
    pool = {
        "prompts": prompts,
        "references": references,
        "per_prompt": M,
        "texts": texts,
        "has_stop": stops,
        "rouge": rouge,
        "outcomes": [j.outcome_for_a for j in judged],
        "consistent": [j.consistent for j in judged],
    }
    atomic_write_text(path, json.dumps(pool))
    return pool


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman rank correlation of the finite pairs (scipy), None when undefined."""
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return None
    return float(spearmanr(x[keep], y[keep]).statistic)


def run(cfg: Config, out: Path) -> dict:
    clock = Clock()
    out = Path(out)
    rc = cfg.run

    # 1. check the data and the settings, then rho: SFT on the training posts' reference summaries
    check_config(cfg)
    out.mkdir(parents=True, exist_ok=True)
    base = run_base(out, rc, ("sft",))

    # 2. the pool, its ROUGE and its verdicts against the references
    pool = judged_pool(base, cfg, out / "pool.json")
    P, M = len(pool["prompts"]), pool["per_prompt"]
    rouge = np.array([r[cfg.rouge_type] for r in pool["rouge"]], dtype=float).reshape(P, M)
    gold = np.array([math.nan if o is None else o for o in pool["outcomes"]], dtype=float).reshape(P, M)

    # 3. best-of-N by ROUGE: the gold (win rate against the reference) and ROUGE of the chosen summaries
    bon_sweep = best_of_n_sweep(rouge, gold, cfg.bon_n)
    for row in bon_sweep:
        line = "rouge_proxy: best-of-%d by %s: %.3f, win rate against the reference %.3f"
        log.info(line, row["n"], cfg.rouge_type, row["proxy_reward"], row["gold_reward"])

    # 4. plot and summaries
    consistent = [c for c in pool["consistent"] if c is not None]
    summary = {
        "experiment": "rouge_proxy",
        "proxy": cfg.rouge_type,
        "judge": rc.judge.kind if rc.judge.kind != "lm" else f"lm (order rule {rc.judge.lm_order_rule})",
        "pool": {"posts": P, "samples_per_post": M, "source": rc.task.source},
        "judged": {
            "n": len(pool["outcomes"]),
            "n_unparseable": sum(o is None for o in pool["outcomes"]),
            "position_consistency_rate": float(np.mean(consistent)) if consistent else None,
        },
        "spearman_proxy_gold": spearman(rouge.ravel(), gold.ravel()),
        "bon_sweep": bon_sweep,
        "peak": peak(bon_sweep),
        "examples": [
            {
                "post": pool["prompts"][i][:400],
                "reference": pool["references"][i],
                "highest_rouge": pool["texts"][i * M + int(rouge[i].argmax())],
                "first_sample": pool["texts"][i * M],
            }
            for i in range(min(3, P))
        ],
        "config": config_to_dict(cfg),
        **clock.figures(),
    }
    if (
        summary["judged"]["position_consistency_rate"] is not None
        and summary["judged"]["position_consistency_rate"] < 0.5
    ):
        summary["warning"] = (
            "the judge gave the same verdict in both orders on fewer than half of the summaries: it is strongly "
            "position-biased, and its outcomes (ties under the `tie` order rule, the sign of a small log-odds "
            "difference under `logodds`) say little; use a stronger judge (run.judge.kind=llm)"
        )
        log.warning("rouge_proxy: %s", summary["warning"])
    plot_sweep(out / "rouge_proxy.png", bon_sweep, cfg.rouge_type, rc.judge.kind)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", summary_markdown(summary))
    return summary


def plot_sweep(path: Path, bon_sweep: list[dict], rouge_type: str, judge: str) -> None:
    import matplotlib  # lazy: a heavy import, needed for plots only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: a heavy import, needed for plots only

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    kls = [p["kl"] for p in bon_sweep]
    ax.errorbar(
        kls,
        [p["gold_reward"] for p in bon_sweep],
        yerr=[p["gold_reward_sem"] for p in bon_sweep],
        fmt="o-",
        color="tab:green",
        label=f"win rate vs reference ({judge} judge)",
    )
    for p in bon_sweep:
        ax.annotate(f"N={p['n']}", (p["kl"], p["gold_reward"]), textcoords="offset points", xytext=(3, 5), fontsize=7)
    twin = ax.twinx()
    twin.plot(kls, [p["proxy_reward"] for p in bon_sweep], "s--", color="tab:purple", label=f"{rouge_type} (proxy)")
    twin.set_ylabel(f"{rouge_type} F1 against the reference", color="tab:purple")
    ax.set_xlabel("KL(best-of-N || ρ) = log N − (N−1)/N, nats")
    ax.set_ylabel("win rate against the reference (ties ½)")
    lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(lines, [h.get_label() for h in lines], fontsize=8, loc="best")
    ax.set_title("Best-of-N by ROUGE on TL;DR (Stiennon et al. 2020, fig. 7)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def summary_markdown(s: dict) -> str:
    j, pk = s["judged"], s["peak"]
    consistency = "n/a" if j["position_consistency_rate"] is None else f"{j['position_consistency_rate']:.2f}"
    rho = "n/a" if s["spearman_proxy_gold"] is None else f"{s['spearman_proxy_gold']:.3f}"
    lines = [
        "# ROUGE as the proxy on TL;DR (Stiennon et al. 2020 fig. 7)",
        "",
        f"{s['pool']['posts']} held-out posts × {s['pool']['samples_per_post']} summaries of ρ, each judged against the post's "
        f"reference summary in both orders by the `{s['judge']}` judge ({j['n']} summaries; {j['n_unparseable']} unparseable, left out; "
        f"position consistency {consistency}). Spearman correlation of {s['proxy']} with the verdict over all summaries: {rho}.",
        "",
        f"| policy | KL (nats) | {s['proxy']} | win rate vs reference |",
        "|---|---|---|---|",
    ]
    for p in s["bon_sweep"]:
        lines.append(
            f"| best-of-{p['n']} by {s['proxy']} | {p['kl']:.2f} | {p['proxy_reward']:.3f} | {p['gold_reward']:.3f} ± {p['gold_reward_sem']:.3f} |"
        )
    fall = (
        f"falls by {pk['drop_after_peak']:.3f} after it"
        if pk["gold_falls_after_peak"]
        else "does not fall within the sweep (the peak is its last point)"
    )
    lines.append(f"\nThe win rate peaks at KL {pk['peak_kl']:.2f} ({pk['peak_gold_reward']:.3f}) and {fall}.")
    if s.get("warning"):
        lines.append(f"\n**Warning:** {s['warning']}.")
    lines += [
        "",
        "![ROUGE as the proxy](rouge_proxy.png)",
        "",
        f"Wall time {s['wall_seconds']:.0f} s, CPU time {s['cpu_seconds']:.0f} s (this invocation; a resumed run counts only what it redid).",
    ]
    return "\n".join(lines) + "\n"
