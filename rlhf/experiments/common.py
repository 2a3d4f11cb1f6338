"""What the experiments share: a base run (SFT, comparisons, reward model) whose finished stages are linked into
one sub-run per PPO setting, a pool of samples from rho scored once, best-of-N read off that pool, and the
measurement of a trained policy (KL to rho, gold and proxy reward) on fresh samples.

    OUT/base/                 a pipeline run directory: sft/, collect/, reward/ (and config.yaml)
    OUT/<sub>/                one PPO run: sft, collect, reward are symlinks to ../base/<stage>; ppo/ is its own
    OUT/<sub>/measured.json   the policy's figures on fresh samples (a re-run skips a measured sub-run)
    OUT/pool.json             the pool: P prompts x M samples of rho with their scores
"""

from __future__ import annotations

import copy
import json
import logging
import resource
import time
from pathlib import Path

import numpy as np
import torch

from rlhf.config import RunConfig
from rlhf.data.faults import fault_point
from rlhf.data.io import atomic_write_json, atomic_write_text
from rlhf.eval.evaluate import sample_with_kl
from rlhf.losses import apply_missing_stop_penalty
from rlhf.models.best_of_n import best_of_n_kl
from rlhf.models.loading import base_model_path, load_reward_model, open_backbone, sft_model_path
from rlhf.models.roles import LanguageModelRole
from rlhf.models.sampling import sample_texts
from rlhf.pipeline import run_stage, start_run
from rlhf.run import RunDir, seed_everything
from rlhf.stats import mean_sem
from rlhf.tasks import evaluation_prompts, task_and_stop_rule

log = logging.getLogger("rlhf")
SHARED_STAGES = ("sft", "collect", "reward")


class Clock:
    """Wall and CPU seconds (this process and its finished children) since construction."""

    def __init__(self):
        self.wall0, self.cpu0 = time.time(), self._cpu()

    @staticmethod
    def _cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    def figures(self) -> dict:
        return {"wall_seconds": time.time() - self.wall0, "cpu_seconds": self._cpu() - self.cpu0}


# 1. base run and PPO sub-runs ------------------------------------------------------------------------------
def run_stages(run: RunDir, cfg: RunConfig, names: tuple[str, ...]) -> None:
    """The named pipeline stages in order (a finished one is skipped); a stopped stage is an error."""
    for name in names:
        info = run_stage(run, cfg, name)
        if info.get("stopped"):
            raise RuntimeError(
                f"{run.root}: {name} stopped ({info.get('reason')}); remove the stop file and re-run to resume"
            )


def run_base(out: Path, cfg: RunConfig, stages: tuple[str, ...] = SHARED_STAGES) -> RunDir:
    """The shared stages (by default SFT, collection and reward model) of the pipeline in OUT/base."""
    base_model_path(cfg)  # the one-time model conversion happens outside the stage clocks
    base = RunDir(out / "base")
    start_run(base, cfg)
    run_stages(base, cfg, stages)
    return base


def ppo_config(cfg: RunConfig, beta: float, reward_source: str) -> RunConfig:
    """The base config with a fixed KL coefficient beta and the given reward source for PPO."""
    sub = copy.deepcopy(cfg)
    sub.ppo.init_beta, sub.ppo.adaptive_kl, sub.ppo.reward_source = beta, False, reward_source
    return sub


def link_stages(sub: RunDir, sources: dict[str, Path]) -> None:
    """Symlink finished stage folders of another run into `sub` (relative links, so OUT can move)."""
    sub.root.mkdir(parents=True, exist_ok=True)
    for name, target in sources.items():
        link = sub.root / name
        if not link.exists():
            link.symlink_to(Path("..") / target.relative_to(sub.root.parent), target_is_directory=True)


def run_ppo_sub_run(base: RunDir, root: Path, cfg: RunConfig, method: str = "ppo") -> RunDir:
    """A run of one policy optimiser (`method`: ppo, rloo, grpo or dpo) sharing the base run's finished SFT,
    comparisons and reward model (symlinked stage folders)."""
    sub = RunDir(root)
    link_stages(sub, {name: base.root / name for name in SHARED_STAGES})
    start_run(sub, cfg)
    run_stages(sub, cfg, (method,))
    return sub


# 2. the pool of samples from rho -----------------------------------------------------------------------


def sample_pool(base: RunDir, cfg: RunConfig, path: Path, n_prompts: int, per_prompt: int, with_proxy: bool) -> dict:
    """`per_prompt` samples of rho (the SFT policy) for each of `n_prompts` test prompts, scored by the gold scorer
    (and by the base run's reward model, the proxy, when `with_proxy`), both as PPO sees them. Cached in `path`."""
    if path.exists():
        return json.loads(path.read_text())
    seed_everything(cfg.seed + 11)
    prompts = evaluation_prompts(cfg, n_prompts)
    backbone = open_backbone(cfg, sft_model_path(base, cfg))
    task, response_length, stop_rule = task_and_stop_rule(cfg, backbone.tokenizer)
    repeated = [p for p in prompts for _ in range(per_prompt)]
    policy = LanguageModelRole(backbone, None, cfg.task.temperature)
    texts, stops, _ = sample_texts(
        policy, repeated, response_length, stop_rule, cfg.collect.batch_size, progress=f"pool: {len(repeated)} samples"
    )
    has_stop, penalty = torch.tensor(stops, dtype=torch.bool), cfg.ppo.missing_stop_penalty
    gold = torch.tensor(task.gold_scorer(repeated, texts), dtype=torch.float32)
    pool = {
        "prompts": prompts,
        "per_prompt": per_prompt,
        "texts": texts,
        "has_stop": stops,
        "gold": apply_missing_stop_penalty(gold, has_stop, penalty).tolist(),
    }
    if with_proxy:
        proxy = load_reward_model(base, backbone)
        pool["proxy"] = apply_missing_stop_penalty(proxy.score(repeated, texts), has_stop, penalty).tolist()
    atomic_write_text(path, json.dumps(pool))
    return pool


def as_matrix(pool: dict, key: str) -> np.ndarray:
    """A pool's scores as [prompts, samples per prompt]."""
    return np.asarray(pool[key], dtype=float).reshape(len(pool["prompts"]), pool["per_prompt"])


# Stiennon et al. 2020 §4.1 (fig. 5): best-of-N, the response the selector scores highest among N samples.
def best_of_n_from_pool(selector: np.ndarray, values: np.ndarray, n: int) -> dict:
    """Mean and sem over prompts of `values` at the `selector`'s best of each disjoint group of n of a prompt's
    M samples (M // n groups per prompt, a leftover tail is unused), both arrays [P, M]. A NaN value (an
    unparseable verdict) is left out: a prompt's mean is over its other picks, and a prompt with none is dropped."""
    P, M = selector.shape
    if not 1 <= n <= M:
        raise ValueError(f"best-of-N: n must be in [1, {M}] (the pool's samples per prompt), got {n}")
    groups = M // n
    sel = selector[:, : groups * n].reshape(P, groups, n)
    val = values[:, : groups * n].reshape(P, groups, n)
    picked = np.take_along_axis(val, sel.argmax(-1)[..., None], -1)[..., 0]  # [P, groups]
    counted = np.isfinite(picked)
    per_prompt = np.where(counted, picked, 0.0).sum(-1)[counted.any(-1)] / counted.sum(-1)[counted.any(-1)]
    stats = mean_sem(per_prompt)
    return {"mean": stats["mean"], "sem": stats["sem"], "n_picks": int(counted.sum())}


def best_of_n_sweep(selector: np.ndarray, gold: np.ndarray, ns: list[int]) -> list[dict]:
    """Best-of-N by `selector` for each N in `ns` (Stiennon fig. 5): the KL bound, and the selector's ("proxy") and
    the gold's mean and sem over prompts at the chosen responses; `n_judged_picks` counts the gold picks kept."""
    rows = []
    for n in ns:
        g, p = best_of_n_from_pool(selector, gold, n), best_of_n_from_pool(selector, selector, n)
        rows.append(
            {
                "n": n,
                "kl": best_of_n_kl(n),
                "proxy_reward": p["mean"],
                "gold_reward": g["mean"],
                "proxy_reward_sem": p["sem"],
                "gold_reward_sem": g["sem"],
                "n_judged_picks": g["n_picks"],
            }
        )
    return rows


# 3. measuring a trained policy ----------------------------------------------------------------------------
def measure_policy(
    base: RunDir, cfg: RunConfig, model_path: str, prompts: list[str], per_prompt: int, with_proxy: bool
) -> dict:
    """Fresh samples of the policy at `model_path` on `prompts`: mean KL(pi || rho) (summed token log-ratios
    against the SFT policy), gold reward and, when `with_proxy`, the base run's reward model, as PPO scores them."""
    seed_everything(cfg.seed + 12)
    T = cfg.task.temperature
    reference_backbone = open_backbone(cfg, sft_model_path(base, cfg))
    reference = LanguageModelRole(reference_backbone, None, T)
    policy = LanguageModelRole(open_backbone(cfg, model_path), None, T)
    task, response_length, stop_rule = task_and_stop_rule(cfg, reference_backbone.tokenizer)
    repeated = [p for p in prompts for _ in range(per_prompt)]
    texts, stops, lengths, kls, _ = sample_with_kl(
        policy, reference, repeated, response_length, stop_rule, cfg.collect.batch_size
    )
    has_stop, penalty = torch.tensor(stops, dtype=torch.bool), cfg.ppo.missing_stop_penalty
    gold_scores = torch.tensor(task.gold_scorer(repeated, texts), dtype=torch.float32)
    gold = mean_sem(apply_missing_stop_penalty(gold_scores, has_stop, penalty).tolist())
    out = {
        "kl": mean_sem(kls)["mean"],
        "kl_sem": mean_sem(kls)["sem"],
        "gold_reward": gold["mean"],
        "gold_reward_sem": gold["sem"],
        "no_stop_fraction": 1 - sum(stops) / len(stops),
        "response_length_mean": sum(lengths) / len(lengths),
        "examples": [{"prompt": p, "response": t} for p, t in zip(repeated[::per_prompt][:4], texts[::per_prompt][:4])],
    }
    if with_proxy:
        proxy = load_reward_model(base, reference_backbone)
        proxy_scores = apply_missing_stop_penalty(proxy.score(repeated, texts), has_stop, penalty)
        out["proxy_reward"] = mean_sem(proxy_scores.tolist())["mean"]
    return out


def measured_sub_run(
    sub: RunDir,
    base: RunDir,
    cfg: RunConfig,
    prompts: list[str],
    per_prompt: int,
    with_proxy: bool,
    method: str = "ppo",
) -> dict:
    """`measure_policy` of a sub-run's policy (trained by `method`), cached in SUB/measured.json; with the
    method's training seconds as `<method>_seconds`."""
    path = sub.root / "measured.json"
    if path.exists():
        return json.loads(path.read_text())
    figures = measure_policy(base, cfg, str(sub.root / method / "model"), prompts, per_prompt, with_proxy)
    figures[f"{method}_seconds"] = sub.read_summary().get("stage_seconds", {}).get(method)
    atomic_write_json(path, figures)
    return figures


def ppo_metrics(sub: RunDir, method: str = "ppo") -> list[dict]:
    """The rows of a sub-run's training log (SUB/<method>/metrics.jsonl), one per iteration."""
    path = sub.root / method / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def beta_label(beta: float) -> str:
    return f"ppo_beta{beta:g}"


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """Write a matplotlib figure as PNG atomically (temp file, then rename) and close it."""
    import matplotlib.pyplot as plt  # lazy: a heavy import, needed for plots only

    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    fault_point(f"before rename {path}")
    tmp.replace(path)
    fault_point(f"after rename {path}")
