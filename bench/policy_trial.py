"""A policy-optimiser trial on a finished run: links RUN's sft/collect/reward into OUT/<name>_s<seed>, trains one
method (ppo, rloo, grpo or dpo) with the overrides, and measures the trained policy on the run's held-out prompts
(task.n_eval_prompts of them, one sample each): KL to the SFT policy (summed log-ratio per response), gold reward
(as the eval stage reports it: no missing-stop penalty), RM score and no-stop share. One line per seed, then the
mean over seeds. The sweeps in docs/algorithms/ppo.md were measured with it:

    .venv/bin/python bench/policy_trial.py RUN OUT NAME [--method ppo] [--seeds 0,1] [section.field=value ...]
    .venv/bin/python bench/policy_trial.py runs/quickstart /tmp/trials lr1e-3 ppo.learning_rate=1e-3

A sub-run already measured (OUT/NAME_sSEED/measured.json) is not redone. `seed` offsets the run's seed, which
seeds the method's sampling and updates; SFT, comparisons and reward model are RUN's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from rlhf.config_loading import config_to_dict, load_config
from rlhf.data.io import atomic_write_json
from rlhf.eval.evaluate import sample_with_kl
from rlhf.experiments.common import SHARED_STAGES, run_stages
from rlhf.models.loading import load_reward_model, open_backbone, sft_model_path
from rlhf.models.roles import LanguageModelRole
from rlhf.pipeline import start_run
from rlhf.run import RunDir, seed_everything
from rlhf.tasks import evaluation_prompts, task_and_stop_rule


def measure(run: RunDir, cfg, method: str) -> dict:
    """The trained policy on the held-out prompts: KL to SFT, gold, RM score, no-stop share (means, and sems)."""
    seed_everything(12345)  # the same draws for every trial
    sft = open_backbone(cfg, sft_model_path(run, cfg))
    reference = LanguageModelRole(sft, None, cfg.task.temperature)
    policy = LanguageModelRole(open_backbone(cfg, str(run.root / method / "model")), None, cfg.task.temperature)
    reward = load_reward_model(run, sft)
    task, response_length, stop_rule = task_and_stop_rule(cfg, sft.tokenizer)
    prompts = evaluation_prompts(cfg)
    texts, stops, _, kls, rm = sample_with_kl(
        policy, reference, prompts, response_length, stop_rule, cfg.collect.batch_size, reward
    )
    gold = np.asarray(task.gold_scorer(prompts, texts), dtype=float)
    kls, rm = np.asarray(kls, dtype=float), np.asarray(rm, dtype=float)
    sem = lambda x: float(x.std(ddof=1) / len(x) ** 0.5)  # noqa: E731
    return {
        "n": len(prompts),
        "kl": float(kls.mean()),
        "kl_sem": sem(kls),
        "gold": float(gold.mean()),
        "gold_sem": sem(gold),
        "rm": float(rm.mean()),
        "no_stop": 1 - sum(stops) / len(stops),
    }


def trial(src: Path, root: Path, method: str, overrides: list[str]) -> dict:
    """Train `method` in `root` on `src`'s shared stages with the overrides, and measure it (cached)."""
    if (root / "measured.json").exists():
        return json.loads((root / "measured.json").read_text())
    cfg = load_config(src / "config.yaml", [f"policy.methods=[{method}]", *overrides])
    sub = RunDir(root)
    root.mkdir(parents=True, exist_ok=True)
    for name in SHARED_STAGES:  # absolute links: RUN need not lie beside OUT
        if not (root / name).exists():
            (root / name).symlink_to((src / name).resolve(), target_is_directory=True)
    start_run(sub, cfg)
    t0 = time.time()
    run_stages(sub, cfg, (method,))
    seconds = time.time() - t0
    figures = {**measure(sub, cfg, method), "train_seconds": seconds, "overrides": overrides}
    atomic_write_json(root / "measured.json", {**figures, "config": config_to_dict(cfg)})
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a run directory with sft, collect and reward finished")
    p.add_argument("out", type=Path, help="folder of the trials")
    p.add_argument("name", help="this trial's name (its sub-runs are OUT/NAME_s<seed>)")
    p.add_argument("--method", default="ppo", choices=("ppo", "rloo", "grpo", "dpo"))
    p.add_argument("--seeds", default="0", help="comma-separated seed offsets (default 0)")
    p.add_argument("overrides", nargs="*", help="section.field=value")
    args = p.parse_intermixed_args()
    for stage in SHARED_STAGES:
        if not (args.run / stage / "done.json").exists():
            raise SystemExit(f"{args.run}: stage {stage} is not finished; run the pipeline first")
    base_seed = load_config(args.run / "config.yaml").seed
    rows = []
    for offset in [int(s) for s in args.seeds.split(",")]:
        overrides = [f"seed={base_seed + offset}", *args.overrides] if offset else list(args.overrides)
        rows.append(trial(args.run, args.out / f"{args.name}_s{offset}", args.method, overrides))
        r = rows[-1]
        print(
            f"{args.name} seed+{offset}: kl {r['kl']:.2f}±{r['kl_sem']:.2f} gold {r['gold']:.3f}±{r['gold_sem']:.3f} "
            f"rm {r['rm']:.3f} no_stop {r['no_stop']:.2f} train {r['train_seconds']:.0f}s",
            flush=True,
        )
    mean = lambda k: float(np.mean([r[k] for r in rows]))  # noqa: E731
    print(
        f"{args.name} mean of {len(rows)}: kl {mean('kl'):.2f} gold {mean('gold'):.3f} rm {mean('rm'):.3f} "
        f"train {mean('train_seconds'):.0f}s [{args.method} {' '.join(args.overrides)}]"
    )


if __name__ == "__main__":
    main()
