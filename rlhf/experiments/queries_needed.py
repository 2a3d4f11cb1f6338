"""Experiment 2, queries needed (Ziegler et al. 2019, fig. 2): PPO on the gold reward itself against PPO on reward
models trained from increasing numbers of simulated comparisons (queries), with the gold reward over PPO training
for each, on the sentiment task.

One base run holds the shared stages: SFT and one collection of comparisons (labelled by the simulated labeler).
Each reward model learns from the first N training comparisons of a seeded shuffle (nested: the 4N set holds the N
set) and is measured on the same held-out comparisons; each is then optimised by its own PPO run. The gold run
maximises the gold scorer (`ppo.reward_source: gold`); its value network starts from the largest reward model.

    OUT/base/                   sft/ and collect/ (a pipeline run directory)
    OUT/rm_<N>/                 sft -> ../base/sft; collect/ (its N comparisons); reward/; ppo/ (metrics.jsonl)
    OUT/gold/                   sft, collect and reward -> the largest rm_<N>; ppo/ with reward_source gold
    OUT/<run>/final.json        the final policy's gold reward and KL to the SFT policy on held-out prompts
    OUT/summary.json, OUT/queries_needed.png, OUT/summary.md
"""

from __future__ import annotations

import copy
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from rlhf.config import RunConfig
from rlhf.config_loading import config_to_dict
from rlhf.data.io import atomic_write_json, atomic_write_text, read_jsonl, write_jsonl
from rlhf.data.records import Comparison
from rlhf.eval.evaluate import sample_with_kl
from rlhf.experiments.common import Clock, link_stages, ppo_metrics, run_base, run_stages, save_figure
from rlhf.models.loading import open_backbone, sft_model_path
from rlhf.models.roles import LanguageModelRole
from rlhf.pipeline import start_run
from rlhf.run import RunDir, seed_everything
from rlhf.stats import mean_sem
from rlhf.tasks import evaluation_prompts, task_and_stop_rule

log = logging.getLogger("rlhf")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    """Pipeline settings shared by every sub-run: `sft`, `collect` (its n_prompts must give at least the largest N
    training comparisons after the held-out split), `reward` and `ppo` (reward_source is set per sub-run)."""
    n_queries: list[int] = field(default_factory=lambda: [16, 64, 256])
    """Numbers of training comparisons (queries) of the reward models, one PPO run each."""
    eval_prompts: int = 64
    """Held-out (test split) prompts on which each final policy's gold reward and KL are measured."""


def nested_first(comparisons: list[Comparison], n: int, seed: int) -> list[Comparison]:
    """The first n of a seeded shuffle: for one seed the n-set is contained in every larger one."""
    if n > len(comparisons):
        raise ValueError(
            f"n_queries: {n} comparisons asked for, but the collection holds only {len(comparisons)} "
            "training comparisons; raise run.collect.n_prompts"
        )
    shuffled = list(comparisons)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:n]


def episodes_axis(iterations: list[int], batch_size: int) -> list[int]:
    """Episodes seen by the end of each PPO iteration (Ziegler fig. 2's x-axis): iteration x batch size."""
    return [i * batch_size for i in iterations]


def subset_collect(sub: RunDir, base: RunDir, n: int, seed: int) -> None:
    """Write sub/collect/: the first n training comparisons of the base run's collection, and all its held-out ones."""
    if sub.is_done("collect"):
        return
    train = read_jsonl(base.root / "collect" / "comparisons.jsonl", Comparison)
    heldout = read_jsonl(base.root / "collect" / "heldout.jsonl", Comparison)
    folder = sub.stage("collect")
    write_jsonl(folder / "comparisons.jsonl", nested_first(train, n, seed))
    write_jsonl(folder / "heldout.jsonl", heldout)
    sub.mark_done("collect", {"n_train": n, "n_heldout": len(heldout), "from": str(base.root / "collect")})


def ppo_curve(sub: RunDir, batch_size: int) -> dict:
    rows = ppo_metrics(sub)
    return {
        "episodes": episodes_axis([r["iteration"] for r in rows], batch_size),
        "gold_reward": [r["gold_reward"] for r in rows],
        "rm_score": [r["rm_score"] for r in rows],
        "kl": [r["kl"] for r in rows],
    }


def final_figures(sub: RunDir, cfg: RunConfig, prompts: list[str], reference, policy_path: str) -> dict:
    """Gold reward (mean, sem) and KL to the SFT policy of fresh samples on held-out prompts; cached in final.json."""
    path = sub.root / "final.json"
    if path.exists():
        return json.loads(path.read_text())
    seed_everything(cfg.seed + 5)
    policy = LanguageModelRole(open_backbone(cfg, policy_path), None, cfg.task.temperature)
    task, response_length, stop_rule = task_and_stop_rule(cfg, reference.backbone.tokenizer)
    texts, stops, lengths, kls, _ = sample_with_kl(
        policy, reference, prompts, response_length, stop_rule, cfg.collect.batch_size
    )
    gold = mean_sem(task.gold_scorer(prompts, texts))
    figures = {
        "gold_reward": gold["mean"],
        "gold_reward_sem": gold["sem"],
        "kl": mean_sem(kls)["mean"],
        "n": gold["n"],
        "no_stop_fraction": 1 - sum(stops) / len(stops),
        "examples": [{"prompt": p, "response": t} for p, t in zip(prompts[:4], texts[:4])],
    }
    atomic_write_json(path, figures)
    return figures


def plot(summary: dict, path: Path) -> None:
    import matplotlib  # lazy: a heavy import, needed for plots only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: a heavy import, needed for plots only

    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("viridis")
    runs = summary["runs"]
    for i, r in enumerate(x for x in runs if x["reward"] == "rm"):
        color = cmap(0.15 + 0.7 * i / max(1, len(runs) - 2))
        ax.plot(
            r["curve"]["episodes"],
            r["curve"]["gold_reward"],
            marker="o",
            color=color,
            label=f"RM from {r['n_queries']} queries (acc {r['rm_heldout_accuracy']:.2f})",
        )
    for r in (x for x in runs if x["reward"] == "gold"):
        ax.plot(
            r["curve"]["episodes"],
            r["curve"]["gold_reward"],
            marker="s",
            color="black",
            linestyle="--",
            label="gold reward (true reward)",
        )
    ax.axhline(summary["sft"]["gold_reward"], color="gray", linestyle=":", label="SFT policy, held-out prompts")
    ax.set_xlabel("PPO episodes")
    ax.set_ylabel("gold reward (batch mean)")
    ax.set_title("Queries needed (Ziegler et al. 2019, fig. 2), sentiment task")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def summary_markdown(summary: dict) -> str:
    lines = [
        "# Queries needed (Ziegler et al. 2019, fig. 2)",
        "",
        "![gold reward over PPO episodes](queries_needed.png)",
        "",
        "| PPO optimises | RM held-out accuracy | gold reward, last PPO batch | final gold reward (held-out, ± sem) | final KL to SFT |",
        "|---|---|---|---|---|",
        f"| (SFT policy, no PPO) | | | {summary['sft']['gold_reward']:.3f} ± {summary['sft']['gold_reward_sem']:.3f} | 0 |",
    ]
    for r in summary["runs"]:
        name = "gold reward" if r["reward"] == "gold" else f"RM from {r['n_queries']} queries"
        acc = "" if r["reward"] == "gold" else f"{r['rm_heldout_accuracy']:.3f} (n = {r['rm_heldout_n']})"
        f = r["final"]
        lines.append(
            f"| {name} | {acc} | {r['curve']['gold_reward'][-1]:.3f} | {f['gold_reward']:.3f} ± {f['gold_reward_sem']:.3f} | {f['kl']:.2f} |"
        )
    lines += ["", f"Wall time {summary['wall_seconds']:.0f} s, CPU time {summary['cpu_seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def run(cfg: Config, out: Path) -> dict:
    clock = Clock()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rc = cfg.run
    if sorted(cfg.n_queries) != cfg.n_queries or cfg.n_queries[0] < 1:
        raise ValueError(f"n_queries: expected increasing positive numbers, got {cfg.n_queries}")

    # 1. base run: SFT and one collection of comparisons, shared by every sub-run
    base = run_base(out, rc, ("sft", "collect"))

    # 2. per N: a reward model on the first N comparisons, then PPO against it
    rm_cfg = copy.deepcopy(rc)
    rm_cfg.ppo.reward_source = "rm"
    subs = []
    for n in cfg.n_queries:
        sub = RunDir(out / f"rm_{n}")
        link_stages(sub, {"sft": base.root / "sft"})
        subset_collect(sub, base, n, rc.seed)
        start_run(sub, rm_cfg)
        run_stages(sub, rm_cfg, ("reward", "ppo"))
        subs.append(("rm", n, sub))

    # 3. PPO on the gold reward itself (value network started from the largest reward model)
    gold_cfg = copy.deepcopy(rc)
    gold_cfg.ppo.reward_source = "gold"
    largest = subs[-1][2]
    gold = RunDir(out / "gold")
    link_stages(
        gold, {"sft": base.root / "sft", "collect": largest.root / "collect", "reward": largest.root / "reward"}
    )
    start_run(gold, gold_cfg)
    run_stages(gold, gold_cfg, ("ppo",))
    subs.append(("gold", None, gold))

    # 4. final evaluation on held-out prompts: the SFT policy and every PPO policy, gold reward and KL to SFT
    prompts = evaluation_prompts(rc, cfg.eval_prompts)
    reference = LanguageModelRole(open_backbone(rc, sft_model_path(base, rc)), None, rc.task.temperature)
    sft_figures = final_figures(base, rc, prompts, reference, sft_model_path(base, rc))
    runs = []
    for kind, n, sub in subs:
        reward_info = sub.done_info("reward")
        runs.append(
            {
                "reward": kind,
                "n_queries": n,
                "run_dir": sub.root.name,
                "rm_heldout_accuracy": reward_info.get("heldout_accuracy"),
                "rm_heldout_n": reward_info.get("heldout_n"),
                "curve": ppo_curve(sub, rc.ppo.batch_size),
                "final": final_figures(sub, rc, prompts, reference, str(sub.root / "ppo" / "model")),
            }
        )
        log.info("queries_needed %s: final gold reward %.3f", sub.root.name, runs[-1]["final"]["gold_reward"])

    # 5. summary.json, plot, summary.md
    summary = {
        "experiment": "queries_needed",
        "n_queries": cfg.n_queries,
        "sft": sft_figures,
        "runs": runs,
        **clock.figures(),
        "config": config_to_dict(cfg),
    }
    plot(summary, out / "queries_needed.png")
    atomic_write_text(out / "summary.md", summary_markdown(summary))
    atomic_write_json(out / "summary.json", summary)
    return summary
