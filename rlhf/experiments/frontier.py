"""Experiment 1, the reward-KL frontier (Ziegler et al. 2019 fig. 3), on the sentiment task whose gold reward is known.

The optimal KL-regularised policy pi* ∝ rho exp(r / beta) is estimated for a grid of beta by reweighting a pool of
samples of rho (the SFT policy) per prompt; best-of-N by the gold reward is read off the same pool (its KL is
log N - (N-1)/N); PPO runs (fixed beta), RLOO and GRPO optimise the GOLD reward directly (`reward_source: gold`) so
that they chase the same reward as pi*, DPO learns from gold-labelled comparisons, and each reports the fraction of
the optimum's gain over rho it reached at its KL:

    fraction = (gold(PPO) - gold(rho)) / (gold*(KL of PPO) - gold(rho))

Writes OUT/summary.json (`method_runs`, `ppo_runs` (PPO's alone), `bon`, `frontier`), OUT/frontier.png,
OUT/fraction_by_episodes.png and OUT/summary.md.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlhf.config import RunConfig
from rlhf.config_loading import config_to_dict
from rlhf.config_methods import POLICY_METHODS
from rlhf.data.io import atomic_write_json, atomic_write_text
from rlhf.eval.frontier import fraction_of_optimum, frontier_over_prompts, optimal_reward_at_kl
from rlhf.experiments.common import (
    Clock,
    as_matrix,
    best_of_n_from_pool,
    beta_label,
    measured_sub_run,
    ppo_config,
    ppo_metrics,
    run_base,
    run_ppo_sub_run,
    sample_pool,
    save_figure,
)
from rlhf.models.best_of_n import best_of_n_kl

log = logging.getLogger("rlhf")
EPISODES_DEFINITION = "ppo: iterations x batch_size; rloo, grpo: iterations x prompts_per_batch x samples_per_prompt (sampled, scored responses); dpo: labelled pairs x epochs"
FRACTION_DEFINITION = "(gold_reward - rho_gold_reward) / (optimal_gold_reward_at_kl - rho_gold_reward): the share of the optimum's gain over rho"


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    """Pipeline settings of the base run (SFT, comparisons, reward model: the value network's start) and of every PPO run."""
    pool_prompts: int = 16
    """Held-out (test split) prompts of the pool; the PPO policies are measured on the same prompts."""
    pool_samples_per_prompt: int = 128
    """Samples of rho per pool prompt: pi* can be estimated only up to a KL of log of this, reliably well below it."""
    frontier_betas: list[float] = field(default_factory=lambda: [float(b) for b in np.geomspace(10.0, 0.005, 40)])
    """The betas at which pi* is estimated (from weak to strong optimisation)."""
    bon_n: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    """N of the best-of-N points (each at most pool_samples_per_prompt)."""
    ppo_betas: list[float] = field(default_factory=lambda: [0.1, 0.03, 0.01])
    """Fixed KL coefficients of the PPO runs on the gold reward, one run each."""
    measure_samples_per_prompt: int = 8
    """Fresh samples per pool prompt used to measure each trained policy's KL and gold reward."""
    methods: list[str] = field(default_factory=lambda: ["ppo", "rloo", "grpo", "dpo"])
    """Policy optimisers on the frontier: ppo (one run per ppo_betas), rloo and grpo (one run each on the gold reward,
    with the run's rloo/grpo settings), dpo (on the base run's comparisons, labelled by the gold reward)."""


def point_against_frontier(frontier: list[dict], kl: float, gold: float, rho_gold: float) -> dict:
    """A policy's (KL, gold) with the optimum's gold at that KL and the fraction of its gain reached; both null
    when the KL lies beyond what the pool can estimate (a KL below the frontier's first point is read there)."""
    kl_max = frontier[-1]["kl"]
    if kl > kl_max:
        return {
            "kl": kl,
            "gold_reward": gold,
            "optimal_gold_reward_at_kl": None,
            "fraction_of_optimum": None,
            "note": f"KL {kl:.2f} is beyond the frontier's estimable range (max {kl_max:.2f} nats from this pool)",
        }
    optimum = optimal_reward_at_kl(frontier, max(kl, frontier[0]["kl"]))
    try:
        fraction = fraction_of_optimum(gold, optimum, rho_gold)
    except ValueError:  # at KL ~ 0 the optimum has no gain over rho to divide by
        fraction = None
    return {"kl": kl, "gold_reward": gold, "optimal_gold_reward_at_kl": optimum, "fraction_of_optimum": fraction}


def method_settings(cfg: Config) -> list[tuple[str, float, RunConfig, str]]:
    """(method, beta, sub-run config, sub-run folder name) of each policy optimiser run: PPO on the gold reward at each
    fixed beta of ppo_betas, RLOO and GRPO on the gold reward at their configured beta, DPO at its beta."""
    unknown = [m for m in cfg.methods if m not in POLICY_METHODS]
    if unknown:
        raise ValueError(f"methods: expected names among {', '.join(POLICY_METHODS)}, got {unknown}")
    settings = []
    for method in cfg.methods:
        if method == "ppo":
            for beta in cfg.ppo_betas:
                settings.append(("ppo", beta, ppo_config(cfg.run, beta, reward_source="gold"), beta_label(beta)))
            continue
        sub = copy.deepcopy(cfg.run)
        sub.policy.methods = [method]
        if method in ("rloo", "grpo"):
            getattr(sub, method).reward_source = "gold"
        settings.append((method, getattr(sub, method).beta, sub, method))
    return settings


def episodes_of(method: str, cfg: RunConfig, sub) -> int:
    """The training signal a run used (EPISODES_DEFINITION)."""
    if method == "ppo":
        return cfg.ppo.iterations * cfg.ppo.batch_size
    if method in ("rloo", "grpo"):
        mc = getattr(cfg, method)
        return mc.iterations * mc.prompts_per_batch * mc.samples_per_prompt
    return int(sub.done_info("dpo").get("pairs", 0)) * cfg.dpo.epochs


def training_curve(frontier: list[dict], rho_gold: float, sub, method: str, cfg: RunConfig) -> list[dict]:
    """Per iteration of an on-policy optimiser (not DPO): episodes so far, the batch's KL and gold score (on its
    training prompts, from metrics.jsonl) and the fraction of the optimum's gain over the first batch's score (the
    policy is rho then) at that KL. Noisy (one batch each) and on other prompts than the pool: a curve, not a result."""
    if method == "dpo":
        return []
    rows = ppo_metrics(sub, method)
    per_iteration = episodes_of(method, cfg, sub) // max(len(rows), 1)
    start, curve = rows[0]["score"], []
    for i, row in enumerate(rows):
        gain = row["score"] - start
        point = point_against_frontier(frontier, max(row["kl"], 0.0), rho_gold + gain, rho_gold)
        curve.append(
            {
                "episodes": (i + 1) * per_iteration,
                "kl": row["kl"],
                "score": row["score"],
                "fraction_of_optimum": point["fraction_of_optimum"],
            }
        )
    return curve


def run(cfg: Config, out: Path) -> dict:
    clock = Clock()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rc = cfg.run
    if rc.task.name != "sentiment":
        log.warning("frontier: designed for the sentiment task; running on %s", rc.task.name)
    if max(cfg.bon_n) > cfg.pool_samples_per_prompt:
        raise ValueError(f"bon_n: {max(cfg.bon_n)} exceeds pool_samples_per_prompt={cfg.pool_samples_per_prompt}")

    # 1. base run: SFT (rho), comparisons and the reward model (which the PPO value network starts from)
    base = run_base(out, rc)

    # 2. one pool of samples of rho on held-out prompts, gold-scored as PPO scores them
    pool = sample_pool(base, rc, out / "pool.json", cfg.pool_prompts, cfg.pool_samples_per_prompt, with_proxy=False)
    gold = as_matrix(pool, "gold")
    rho_gold = float(gold.mean())

    # 3. pi* for each beta, per prompt, averaged over prompts
    frontier = frontier_over_prompts(gold, cfg.frontier_betas)

    # 4. best-of-N by the gold reward from the same pool
    bon = []
    for n in cfg.bon_n:
        best = best_of_n_from_pool(gold, gold, n)
        bon.append(
            {
                "n": n,
                **point_against_frontier(frontier, best_of_n_kl(n), best["mean"], rho_gold),
                "gold_reward_sem": best["sem"],
            }
        )

    # 5. each policy optimiser on the gold reward (PPO once per fixed beta; DPO on gold-labelled comparisons);
    # KL and gold measured on fresh samples of the pool's prompts, the training curve read from its log
    method_runs = []
    for method, beta, sub_cfg, label in method_settings(cfg):
        sub = run_ppo_sub_run(base, out / label, sub_cfg, method)
        m = measured_sub_run(
            sub, base, sub_cfg, pool["prompts"], cfg.measure_samples_per_prompt, with_proxy=False, method=method
        )
        point = point_against_frontier(frontier, m["kl"], m["gold_reward"], rho_gold)
        method_runs.append(
            {
                "method": method,
                "beta": beta,
                **point,
                "gold": m["gold_reward"],
                "gold_reward_sem": m["gold_reward_sem"],
                "kl_sem": m["kl_sem"],
                "episodes": episodes_of(method, sub_cfg, sub),
                "no_stop_fraction": m["no_stop_fraction"],
                "seconds": m.get(f"{method}_seconds"),
                "training_curve": training_curve(frontier, rho_gold, sub, method, sub_cfg),
                "examples": m["examples"],
            }
        )
        log.info(
            "frontier: %s beta %g: KL %.2f gold %.3f fraction %s",
            method,
            beta,
            m["kl"],
            m["gold_reward"],
            point["fraction_of_optimum"],
        )
    ppo_runs = [
        {k: v for k, v in r.items() if k not in ("method", "gold", "training_curve")} | {"ppo_seconds": r["seconds"]}
        for r in method_runs
        if r["method"] == "ppo"
    ]

    # 6. plots and summaries
    plot_frontier(out / "frontier.png", frontier, bon, method_runs, rho_gold, rc.task.gold or "vader")
    plot_training_curves(out / "fraction_by_episodes.png", method_runs)
    summary = {
        "experiment": "frontier",
        "gold": rc.task.gold or "vader",
        "reward_optimised": "gold",
        "rho_gold_reward": rho_gold,
        "pool": {"prompts": len(pool["prompts"]), "samples_per_prompt": pool["per_prompt"]},
        "fraction_definition": FRACTION_DEFINITION,
        "frontier": frontier,
        "bon": bon,
        "ppo_runs": ppo_runs,
        "method_runs": method_runs,
        "episodes_definition": EPISODES_DEFINITION,
        "config": config_to_dict(cfg),
        **clock.figures(),
    }
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", summary_markdown(summary, cfg))
    return summary


METHOD_COLORS = {"ppo": "tab:red", "rloo": "tab:green", "grpo": "tab:purple", "dpo": "tab:orange"}


def plot_frontier(
    path: Path, frontier: list[dict], bon: list[dict], method_runs: list[dict], rho_gold: float, gold_name: str
) -> None:
    import matplotlib  # lazy: a heavy import, needed for plots only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: a heavy import, needed for plots only

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.plot(
        [p["kl"] for p in frontier],
        [p["gold_reward"] for p in frontier],
        "-",
        color="black",
        label="optimal π* (from samples of ρ)",
    )
    ax.errorbar(
        [p["kl"] for p in bon],
        [p["gold_reward"] for p in bon],
        yerr=[p["gold_reward_sem"] for p in bon],
        fmt="s",
        color="tab:blue",
        label="best-of-N (by gold)",
    )
    for p in bon:
        ax.annotate(f"N={p['n']}", (p["kl"], p["gold_reward"]), textcoords="offset points", xytext=(4, -10), fontsize=7)
    for method in dict.fromkeys(r["method"] for r in method_runs):
        runs = [r for r in method_runs if r["method"] == method]
        ax.errorbar(
            [p["kl"] for p in runs],
            [p["gold_reward"] for p in runs],
            xerr=[p["kl_sem"] for p in runs],
            yerr=[p["gold_reward_sem"] for p in runs],
            fmt="o",
            color=METHOD_COLORS.get(method, "grey"),
            label=f"{method.upper()} on gold",
        )
        for p in runs:
            frac = "" if p["fraction_of_optimum"] is None else f", {p['fraction_of_optimum']:.2f}"
            ax.annotate(
                f"β={p['beta']:g}{frac}",
                (p["kl"], p["gold_reward"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
                color=METHOD_COLORS.get(method, "grey"),
            )
    ax.axhline(rho_gold, color="grey", linestyle=":", linewidth=1, label="ρ (SFT policy)")
    ax.set_xlabel("KL(π || ρ), nats")
    ax.set_ylabel(f"gold reward ({gold_name}; −1 without a stop)")
    ax.set_title("Reward–KL frontier (Ziegler et al. 2019, fig. 3)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def plot_training_curves(path: Path, method_runs: list[dict]) -> None:
    """Fraction of the optimum's gain against episodes, per on-policy run, from its training batches."""
    import matplotlib  # lazy: a heavy import, needed for plots only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: a heavy import, needed for plots only

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for r in method_runs:
        points = [p for p in r["training_curve"] if p["fraction_of_optimum"] is not None]
        if points:
            ax.plot(
                [p["episodes"] for p in points],
                [p["fraction_of_optimum"] for p in points],
                "-o",
                markersize=3,
                color=METHOD_COLORS.get(r["method"], "grey"),
                label=f"{r['method'].upper()} β={r['beta']:g}",
            )
    ax.axhline(0.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("episodes")
    ax.set_ylabel("fraction of the optimum's gain (training batches)")
    ax.set_title("Fraction of the optimum by episodes (one batch per point: noisy)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def summary_markdown(s: dict, cfg: Config) -> str:
    fmt = lambda v, d=3: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = [
        "# Frontier (Ziegler et al. 2019 fig. 3)",
        "",
        f"Gold reward: `{s['gold']}` on the sentiment task, as PPO scores it (−1 for a response without a stop). ρ is the SFT policy "
        f"(`run.sft.n_demonstrations: {cfg.run.sft.n_demonstrations}`; 0 means the initial model). Pool: {s['pool']['prompts']} held-out prompts × "
        f"{s['pool']['samples_per_prompt']} samples of ρ, mean gold {s['rho_gold_reward']:.3f}.",
        "",
        "π* ∝ ρ·exp(r/β) is estimated per prompt by self-normalised importance weights over that prompt's samples and averaged over "
        "prompts, so it is the optimum over the pool's responses; its KL cannot exceed log(samples per prompt) and its curve is "
        f"trustworthy only where the effective sample size is not tiny (smallest over prompts at the largest KL: "
        f"{s['frontier'][-1]['min_effective_sample_size']:.1f}).",
        "",
        "PPO (fixed β), RLOO and GRPO optimise the **gold reward itself** (`reward_source: gold`), not a reward model, and DPO "
        "learns from the base run's comparisons labelled by the gold reward: π* is defined "
        "by the reward it tilts towards, so only a policy trained on that same reward can be compared with it. "
        f"Fraction of the optimum = {s['fraction_definition']} (rewards can be negative, so gains over ρ are compared, not raw rewards).",
        "",
        "| policy | KL (nats) | gold reward | optimum's gold at that KL | fraction of optimum |",
        "|---|---|---|---|---|",
    ]
    for p in s["method_runs"]:
        lines.append(
            f"| {p['method'].upper()} β={p['beta']:g} ({p['episodes']} episodes) | {p['kl']:.2f} ± {p['kl_sem']:.2f} | "
            f"{p['gold_reward']:.3f} ± {p['gold_reward_sem']:.3f} | {fmt(p['optimal_gold_reward_at_kl'])} | "
            f"{fmt(p['fraction_of_optimum'], 2)} |"
        )
    for p in s["bon"]:
        lines.append(
            f"| best-of-{p['n']} | {p['kl']:.2f} | {p['gold_reward']:.3f} ± {p['gold_reward_sem']:.3f} | "
            f"{fmt(p['optimal_gold_reward_at_kl'])} | {fmt(p['fraction_of_optimum'], 2)} |"
        )
    fractions = [p["fraction_of_optimum"] for p in s["ppo_runs"] if p["fraction_of_optimum"] is not None]
    if fractions:
        best = max(fractions)
        verdict = "met" if best >= 0.5 else f"not met: the best PPO run reached {best:.2f}, {0.5 - best:.2f} short"
        lines += ["", f"Target (issue 19): PPO reaches ≥ 0.5 of the optimum's gain at its KL — **{verdict}**."]
    lines += [
        "",
        "![frontier](frontier.png)",
        "",
        "![fraction by episodes](fraction_by_episodes.png)",
        "",
        f"Wall time {s['wall_seconds']:.0f} s, CPU time {s['cpu_seconds']:.0f} s (this invocation; a resumed run counts only what it redid).",
    ]
    return "\n".join(lines) + "\n"
