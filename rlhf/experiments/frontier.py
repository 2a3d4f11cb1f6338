"""Experiment 1, the reward-KL frontier (Ziegler et al. 2019 fig. 3), on the sentiment task whose gold reward is known.

The optimal KL-regularised policy pi* ∝ rho exp(r / beta) is estimated for a grid of beta by reweighting a pool of
samples of rho (the SFT policy) per prompt; best-of-N by the gold reward is read off the same pool (its KL is
log N - (N-1)/N); a few PPO runs optimise the GOLD reward directly (`ppo.reward_source: gold`, fixed beta) so that
they chase the same reward as pi*, and each reports the fraction of the optimum's gain over rho it reached at its KL:

    fraction = (gold(PPO) - gold(rho)) / (gold*(KL of PPO) - gold(rho))

Writes OUT/summary.json (`ppo_runs`, `bon`, `frontier`), OUT/frontier.png and OUT/summary.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlhf.config import RunConfig, config_to_dict
from rlhf.data.io import atomic_write_json, atomic_write_text
from rlhf.eval.frontier import fraction_of_optimum, frontier_over_prompts, optimal_reward_at_kl
from rlhf.experiments.common import (
    Clock,
    as_matrix,
    best_of_n_from_pool,
    beta_label,
    measured_sub_run,
    ppo_config,
    run_base,
    run_ppo_sub_run,
    sample_pool,
    save_figure,
)
from rlhf.models.best_of_n import best_of_n_kl

log = logging.getLogger("rlhf")
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
    """Fresh samples per pool prompt used to measure each PPO policy's KL and gold reward."""


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

    # 5. PPO on the gold reward, one sub-run per fixed beta; KL and gold measured on fresh samples
    ppo_runs = []
    for beta in cfg.ppo_betas:
        sub_cfg = ppo_config(rc, beta, reward_source="gold")
        sub = run_ppo_sub_run(base, out / beta_label(beta), sub_cfg)
        m = measured_sub_run(sub, base, sub_cfg, pool["prompts"], cfg.measure_samples_per_prompt, with_proxy=False)
        ppo_runs.append(
            {
                "beta": beta,
                **point_against_frontier(frontier, m["kl"], m["gold_reward"], rho_gold),
                "gold_reward_sem": m["gold_reward_sem"],
                "kl_sem": m["kl_sem"],
                "no_stop_fraction": m["no_stop_fraction"],
                "ppo_seconds": m["ppo_seconds"],
                "examples": m["examples"],
            }
        )
        log.info(
            "frontier: PPO beta %g: KL %.2f gold %.3f fraction %s",
            beta,
            m["kl"],
            m["gold_reward"],
            ppo_runs[-1]["fraction_of_optimum"],
        )

    # 6. plot and summaries
    plot_frontier(out / "frontier.png", frontier, bon, ppo_runs, rho_gold, rc.task.gold or "vader")
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
        "config": config_to_dict(cfg),
        **clock.figures(),
    }
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", summary_markdown(summary, cfg))
    return summary


def plot_frontier(
    path: Path, frontier: list[dict], bon: list[dict], ppo_runs: list[dict], rho_gold: float, gold_name: str
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
        ax.annotate(
            f"N={p['n']}",
            (p["kl"], p["gold_reward"]),
            textcoords="offset points",
            xytext=(4, -10),
            fontsize=7,
            color="tab:blue",
        )
    ax.errorbar(
        [p["kl"] for p in ppo_runs],
        [p["gold_reward"] for p in ppo_runs],
        xerr=[p["kl_sem"] for p in ppo_runs],
        yerr=[p["gold_reward_sem"] for p in ppo_runs],
        fmt="o",
        color="tab:red",
        label="PPO on gold (fixed β)",
    )
    for p in ppo_runs:
        frac = "" if p["fraction_of_optimum"] is None else f", {p['fraction_of_optimum']:.2f} of optimum"
        ax.annotate(
            f"β={p['beta']:g}{frac}",
            (p["kl"], p["gold_reward"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=7,
            color="tab:red",
        )
    ax.axhline(rho_gold, color="grey", linestyle=":", linewidth=1, label="ρ (SFT policy)")
    ax.set_xlabel("KL(π || ρ), nats")
    ax.set_ylabel(f"gold reward ({gold_name}; −1 without a stop)")
    ax.set_title("Reward–KL frontier (Ziegler et al. 2019, fig. 3)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


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
        "The PPO runs optimise the **gold reward itself** (`ppo.reward_source: gold`, fixed β), not a reward model: π* is defined "
        "by the reward it tilts towards, so only a policy trained on that same reward can be compared with it. "
        f"Fraction of the optimum = {s['fraction_definition']} (rewards can be negative, so gains over ρ are compared, not raw rewards).",
        "",
        "| policy | KL (nats) | gold reward | optimum's gold at that KL | fraction of optimum |",
        "|---|---|---|---|---|",
    ]
    for p in s["ppo_runs"]:
        lines.append(
            f"| PPO β={p['beta']:g} | {p['kl']:.2f} ± {p['kl_sem']:.2f} | {p['gold_reward']:.3f} ± {p['gold_reward_sem']:.3f} | "
            f"{fmt(p['optimal_gold_reward_at_kl'])} | {fmt(p['fraction_of_optimum'], 2)} |"
        )
    for p in s["bon"]:
        lines.append(
            f"| best-of-{p['n']} | {p['kl']:.2f} | {p['gold_reward']:.3f} ± {p['gold_reward_sem']:.3f} | "
            f"{fmt(p['optimal_gold_reward_at_kl'])} | {fmt(p['fraction_of_optimum'], 2)} |"
        )
    fractions = [p["fraction_of_optimum"] for p in s["ppo_runs"] if p["fraction_of_optimum"] is not None]
    if fractions:
        best = max(fractions)
        verdict = "met" if best >= 0.9 else f"not met: the best PPO run reached {best:.2f}, {0.9 - best:.2f} short"
        lines += ["", f"Target (the issue): PPO reaches ≥ 0.9 of the optimum's gain at its KL — **{verdict}**."]
    lines += [
        "",
        "![frontier](frontier.png)",
        "",
        f"Wall time {s['wall_seconds']:.0f} s, CPU time {s['cpu_seconds']:.0f} s (this invocation; a resumed run counts only what it redid).",
    ]
    return "\n".join(lines) + "\n"
