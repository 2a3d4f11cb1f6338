"""Experiment 3, reward-model over-optimisation (Stiennon et al. 2020 figs. 5 and 7), on the sentiment task.

A proxy reward model is trained on few comparisons from a noisy simulated labeler (Bradley-Terry temperature > 0).
Then two ways of optimising it move away from rho (the SFT policy): best-of-N by the proxy (N = 1, 2, 4, ... 64,
read off one pool of 64 samples per prompt; KL = log N - (N-1)/N) and PPO against the proxy with a sweep of fixed
KL coefficients beta. For every point the gold score (the simulated labeler's own scorer) and the proxy score are
measured: the proxy keeps rising with KL while the gold score rises and, once the proxy is over-optimised, falls.
Each PPO run's log gives its path too (proxy, gold and KL of every training batch, as in Gao et al. 2022 fig. 1).

Writes OUT/summary.json (`bon_sweep`, `ppo_sweep`, `ppo_trajectories`), OUT/overoptimization.png and OUT/summary.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlhf.config import RunConfig
from rlhf.config_loading import config_to_dict
from rlhf.data.io import atomic_write_json, atomic_write_text
from rlhf.experiments.common import (
    Clock,
    as_matrix,
    best_of_n_sweep,
    beta_label,
    measured_sub_run,
    ppo_config,
    ppo_metrics,
    run_base,
    run_ppo_sub_run,
    sample_pool,
    save_figure,
)

log = logging.getLogger("rlhf")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    """Pipeline settings: `collect` (few comparisons, labeler_temperature > 0) and `reward` make the proxy; `ppo` the sweep's runs."""
    pool_prompts: int = 16
    """Held-out (test split) prompts of the best-of-N pool; the PPO policies are measured on the same prompts."""
    pool_samples_per_prompt: int = 64
    """Samples of rho per pool prompt (the largest N of the sweep)."""
    bon_n: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    """N of the best-of-N sweep (each at most pool_samples_per_prompt)."""
    ppo_betas: list[float] = field(default_factory=lambda: [0.1, 0.03, 0.01, 0.003, 0.001])
    """Fixed KL coefficients of the PPO sweep against the proxy, one run each (smaller = optimised harder)."""
    measure_samples_per_prompt: int = 8
    """Fresh samples per pool prompt used to measure each PPO policy's KL, proxy and gold reward."""
    path_bin_width: float = 8.0
    """Width in nats of the KL bins into which every PPO training batch of every run is pooled (the third panel)."""


def peak(points: list[dict]) -> dict:
    """The point of highest gold reward and whether the gold reward falls after it (while KL grows)."""
    ordered = sorted(points, key=lambda p: p["kl"])
    best = max(range(len(ordered)), key=lambda i: ordered[i]["gold_reward"])
    return {
        "peak_kl": ordered[best]["kl"],
        "peak_gold_reward": ordered[best]["gold_reward"],
        "gold_falls_after_peak": best < len(ordered) - 1,
        "drop_after_peak": ordered[best]["gold_reward"] - ordered[-1]["gold_reward"],
        "last_point_sem": ordered[-1].get("gold_reward_sem"),
    }


def trajectory(rows: list[dict]) -> list[dict]:
    """A PPO run's path from its log: per iteration, the batch's KL, proxy reward as optimised (the RM score with the
    missing-stop penalty) and gold reward scored the same way (None when PPO did not log the gold scorer)."""
    return [
        {"iteration": r["iteration"], "kl": r["kl"], "proxy_reward": r["score"], "gold_reward": r.get("gold_score")}
        for r in rows
    ]


def batches_by_kl(trajectories: list[dict], width: float) -> list[dict]:
    """Every PPO training batch of every run, pooled into KL bins [k*width, (k+1)*width): per non-empty bin the number
    of batches, their mean KL, proxy and gold reward, and the gold's standard error over batches (equal-sized batches,
    so the mean of batch means is the mean over episodes). Batches without a logged gold reward are left out."""
    points = [p for run in trajectories for p in run["points"] if p["gold_reward"] is not None]
    bins: dict[int, list[dict]] = {}
    for p in points:
        bins.setdefault(int(max(p["kl"], 0.0) // width), []).append(p)
    out = []
    for k in sorted(bins):
        gold = np.array([p["gold_reward"] for p in bins[k]])
        out.append(
            {
                "kl_low": k * width,
                "kl_high": (k + 1) * width,
                "n_batches": len(gold),
                "kl": float(np.mean([p["kl"] for p in bins[k]])),
                "proxy_reward": float(np.mean([p["proxy_reward"] for p in bins[k]])),
                "gold_reward": float(gold.mean()),
                "gold_reward_sem": float(gold.std(ddof=1) / np.sqrt(len(gold))) if len(gold) > 1 else None,
            }
        )
    return out


def run(cfg: Config, out: Path) -> dict:
    clock = Clock()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rc = cfg.run
    if max(cfg.bon_n) > cfg.pool_samples_per_prompt:
        raise ValueError(f"bon_n: {max(cfg.bon_n)} exceeds pool_samples_per_prompt={cfg.pool_samples_per_prompt}")
    if not rc.ppo.log_gold_reward:
        log.warning("overoptimization: run.ppo.log_gold_reward is false: the PPO runs' paths will have no gold reward")
    if rc.collect.labeler_temperature <= 0:
        log.warning("overoptimization: run.collect.labeler_temperature is 0: the proxy's labels are noiseless")

    # 1. base run: rho (SFT) and the proxy reward model trained on few noisy comparisons
    base = run_base(out, rc)
    reward_info = base.done_info("reward")

    # 2. one pool of samples of rho, scored by the proxy and by the gold scorer
    pool = sample_pool(base, rc, out / "pool.json", cfg.pool_prompts, cfg.pool_samples_per_prompt, with_proxy=True)
    gold, proxy = as_matrix(pool, "gold"), as_matrix(pool, "proxy")

    # 3. best-of-N by the proxy for each N: gold and proxy of the chosen responses
    bon_sweep = best_of_n_sweep(proxy, gold, cfg.bon_n)

    # 4. PPO against the proxy for each beta; KL, proxy and gold measured on fresh samples
    ppo_sweep, ppo_trajectories = [], []
    for beta in cfg.ppo_betas:
        sub_cfg = ppo_config(rc, beta, reward_source="rm")
        sub = run_ppo_sub_run(base, out / beta_label(beta), sub_cfg)
        m = measured_sub_run(sub, base, sub_cfg, pool["prompts"], cfg.measure_samples_per_prompt, with_proxy=True)
        ppo_sweep.append(
            {
                "beta": beta,
                "kl": m["kl"],
                "proxy_reward": m["proxy_reward"],
                "gold_reward": m["gold_reward"],
                "gold_reward_sem": m["gold_reward_sem"],
                "kl_sem": m["kl_sem"],
                "no_stop_fraction": m["no_stop_fraction"],
                "ppo_seconds": m["ppo_seconds"],
                "examples": m["examples"],
            }
        )
        ppo_trajectories.append({"beta": beta, "points": trajectory(ppo_metrics(sub))})
        log.info(
            "overoptimization: PPO beta %g: KL %.2f proxy %.3f gold %.3f",
            beta,
            m["kl"],
            m["proxy_reward"],
            m["gold_reward"],
        )

    # 5. plot and summaries
    rho = {"kl": 0.0, "proxy_reward": float(proxy.mean()), "gold_reward": float(gold.mean())}
    binned = batches_by_kl(ppo_trajectories, cfg.path_bin_width)
    plot_sweeps(
        out / "overoptimization.png", bon_sweep, ppo_sweep, ppo_trajectories, binned, rho, rc.task.gold or "vader"
    )
    summary = {
        "experiment": "overoptimization",
        "gold": rc.task.gold or "vader",
        "rho": rho,
        "proxy_reward_model": {k: reward_info.get(k) for k in ("heldout_accuracy", "heldout_n", "train_n")},
        "labeler_temperature": rc.collect.labeler_temperature,
        "pool": {"prompts": len(pool["prompts"]), "samples_per_prompt": pool["per_prompt"]},
        "bon_sweep": bon_sweep,
        "ppo_sweep": ppo_sweep,
        "ppo_trajectories": ppo_trajectories,
        "ppo_batches_by_kl": binned,
        "bon_peak": peak(bon_sweep),
        "ppo_peak": peak([rho, *ppo_sweep]),
        "ppo_batches_peak": peak(binned) if binned else None,
        "config": config_to_dict(cfg),
        **clock.figures(),
    }
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", summary_markdown(summary))
    return summary


def plot_sweeps(
    path: Path,
    bon_sweep: list[dict],
    ppo_sweep: list[dict],
    trajectories: list[dict],
    binned: list[dict],
    rho: dict,
    gold_name: str,
) -> None:
    import matplotlib  # lazy: a heavy import, needed for plots only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: a heavy import, needed for plots only

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    ppo = sorted([rho, *ppo_sweep], key=lambda p: p["kl"])
    for ax, points, title, label_of in (
        (axes[0], bon_sweep, "best-of-N by the proxy", lambda p: f"N={p['n']}"),
        (
            axes[1],
            ppo,
            "PPO against the proxy (fixed β), fresh samples",
            lambda p: "ρ" if "beta" not in p else f"β={p['beta']:g}",
        ),
    ):
        kls = [p["kl"] for p in points]
        ax.errorbar(
            kls,
            [p["gold_reward"] for p in points],
            yerr=[p.get("gold_reward_sem", 0.0) for p in points],
            fmt="o-",
            color="tab:green",
            label=f"gold ({gold_name})",
        )
        for p in points:
            ax.annotate(label_of(p), (p["kl"], p["gold_reward"]), textcoords="offset points", xytext=(3, 5), fontsize=7)
        twin = ax.twinx()
        twin.plot(kls, [p["proxy_reward"] for p in points], "s--", color="tab:purple", label="proxy RM")
        twin.set_ylabel("proxy reward (normalised RM)", color="tab:purple")
        ax.set_xlabel("KL(π || ρ), nats")
        ax.set_ylabel(f"gold reward ({gold_name}; −1 without a stop)")
        ax.set_title(title, fontsize=10)
        lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(lines, [h.get_label() for h in lines], fontsize=8, loc="lower right")
    # every PPO training batch (grey dots: gold), pooled into KL bins: mean gold (green) and proxy (purple, right axis)
    ax, twin = axes[2], axes[2].twinx()
    batches = [p for run in trajectories for p in run["points"] if p["gold_reward"] is not None]
    ax.scatter(
        [p["kl"] for p in batches], [p["gold_reward"] for p in batches], s=6, color="0.75", label="gold of one batch"
    )
    if binned:
        ax.errorbar(
            [b["kl"] for b in binned],
            [b["gold_reward"] for b in binned],
            yerr=[b["gold_reward_sem"] or 0.0 for b in binned],
            fmt="o-",
            color="tab:green",
            label=f"gold ({gold_name}), mean per KL bin",
        )
        for b in binned:
            ax.annotate(
                f"{b['n_batches']}",
                (b["kl"], b["gold_reward"]),
                textcoords="offset points",
                xytext=(3, -10),
                fontsize=7,
            )
        twin.plot(
            [b["kl"] for b in binned],
            [b["proxy_reward"] for b in binned],
            "s--",
            color="tab:purple",
            label="proxy RM, mean per bin",
        )
    twin.set_ylabel("proxy reward (normalised RM)", color="tab:purple")
    ax.set_xlabel("KL(π || ρ) of the training batch, nats")
    ax.set_ylabel(f"gold reward ({gold_name}; −1 without a stop)")
    ax.set_title(f"PPO training batches of all {len(trajectories)} runs, by KL (n = batches per bin)", fontsize=10)
    lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(lines, [h.get_label() for h in lines], fontsize=7, loc="best")
    fig.suptitle("Over-optimising a proxy reward model (Stiennon et al. 2020, figs. 5 and 7)")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def summary_markdown(s: dict) -> str:
    rm = s["proxy_reward_model"]
    acc = (
        "n/a"
        if rm["heldout_accuracy"] is None
        else f"{rm['heldout_accuracy']:.3f} (n = {rm['heldout_n']} held-out pairs)"
    )
    lines = [
        "# Over-optimisation (Stiennon et al. 2020 figs. 5 and 7)",
        "",
        f"Proxy: a reward model trained on {rm['train_n']} comparisons from a simulated labeler with Bradley-Terry temperature "
        f"{s['labeler_temperature']:g}; held-out accuracy against the labeler's noisy choices {acc}. Gold: `{s['gold']}` "
        f"(the labeler's own scorer), as PPO scores it (−1 without a stop). ρ: gold {s['rho']['gold_reward']:.3f}, proxy {s['rho']['proxy_reward']:.3f}.",
        "",
        "| policy | KL (nats) | proxy reward | gold reward |",
        "|---|---|---|---|",
    ]
    for p in s["bon_sweep"]:
        lines.append(
            f"| best-of-{p['n']} | {p['kl']:.2f} | {p['proxy_reward']:.3f} | {p['gold_reward']:.3f} ± {p['gold_reward_sem']:.3f} |"
        )
    for p in s["ppo_sweep"]:
        lines.append(
            f"| PPO β={p['beta']:g} | {p['kl']:.2f} ± {p['kl_sem']:.2f} | {p['proxy_reward']:.3f} | {p['gold_reward']:.3f} ± {p['gold_reward_sem']:.3f} |"
        )
    lines += [
        "",
        "Every PPO training batch of every run (from `ppo/metrics.jsonl`), pooled by its KL:",
        "",
        "| KL bin (nats) | batches | mean KL | proxy reward | gold reward |",
        "|---|---|---|---|---|",
    ]
    for b in s["ppo_batches_by_kl"]:
        sem = "" if b["gold_reward_sem"] is None else f" ± {b['gold_reward_sem']:.3f}"
        lines.append(
            f"| [{b['kl_low']:g}, {b['kl_high']:g}) | {b['n_batches']} | {b['kl']:.1f} | {b['proxy_reward']:.3f} | {b['gold_reward']:.3f}{sem} |"
        )
    for name, key in (
        ("best-of-N", "bon_peak"),
        ("PPO (fresh samples)", "ppo_peak"),
        ("PPO training batches", "ppo_batches_peak"),
    ):
        pk = s[key]
        if pk is None:
            continue
        sem = (
            ""
            if pk.get("last_point_sem") is None
            else f" (standard error of the last point {pk['last_point_sem']:.3f})"
        )
        fall = (
            f"falls by {pk['drop_after_peak']:.3f} after it{sem}"
            if pk["gold_falls_after_peak"]
            else "does not fall within the sweep (the peak is its last point)"
        )
        lines.append(f"\n{name}: gold peaks at KL {pk['peak_kl']:.2f} ({pk['peak_gold_reward']:.3f}) and {fall}.")
    lines += [
        "",
        "![over-optimisation](overoptimization.png)",
        "",
        f"Wall time {s['wall_seconds']:.0f} s, CPU time {s['cpu_seconds']:.0f} s (this invocation; a resumed run counts only what it redid).",
    ]
    return "\n".join(lines) + "\n"
