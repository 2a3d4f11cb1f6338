"""One policy-optimiser trial against the reward-KL frontier, on a finished frontier experiment's base run and pool
(OUT of `rlhf experiment frontier`): trains METHOD on the gold reward with the overrides into TRIALS/NAME, measures
it on fresh samples of the pool's prompts and prints its KL, gold and fraction of the optimum, and the training
curve. The frontier trials in docs/algorithms/ppo.md were measured with it:

    .venv/bin/python bench/frontier_trial.py EXPERIMENT_OUT TRIALS NAME METHOD [overrides ...]
    .venv/bin/python bench/frontier_trial.py runs/experiments/frontier /tmp/ft lr5e-4 ppo \\
        run.ppo.learning_rate=5e-4 'ppo_betas=[0.03]'

Overrides apply to configs/experiments/frontier.yaml (`run.<section>.<field>=...`, `ppo_betas=[...]`); the base
run (SFT, comparisons, reward model) and the pool are EXPERIMENT_OUT's, whatever its config was.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rlhf.config_loading import load_config
from rlhf.eval.frontier import frontier_over_prompts
from rlhf.experiments import frontier as F
from rlhf.experiments.common import SHARED_STAGES, as_matrix, measured_sub_run, run_stages
from rlhf.pipeline import start_run
from rlhf.run import RunDir, setup_logging

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> None:
    if len(argv) < 4:
        sys.exit(__doc__)
    experiment, trials, name, method, overrides = Path(argv[0]), Path(argv[1]), argv[2], argv[3], argv[4:]
    config = ROOT / "configs" / "experiments" / "frontier.yaml"
    cfg = load_config(config, [f"methods=[{method}]", *overrides], cls=F.Config)
    setup_logging(None)
    base = RunDir(experiment / "base")
    pool = json.loads((experiment / "pool.json").read_text())
    gold = as_matrix(pool, "gold")
    rho = float(gold.mean())
    frontier = frontier_over_prompts(gold, cfg.frontier_betas)
    for m, beta, sub_cfg, label in F.method_settings(cfg):
        sub = RunDir(trials / name / label)
        sub.root.mkdir(parents=True, exist_ok=True)
        for stage in SHARED_STAGES:  # absolute links to the experiment's base run
            if not (sub.root / stage).exists():
                (sub.root / stage).symlink_to((base.root / stage).resolve(), target_is_directory=True)
        start_run(sub, sub_cfg)
        run_stages(sub, sub_cfg, (m,))
        figures = measured_sub_run(sub, base, sub_cfg, pool["prompts"], cfg.measure_samples_per_prompt, False, method=m)
        point = F.point_against_frontier(frontier, figures["kl"], figures["gold_reward"], rho)
        fraction = point["fraction_of_optimum"]
        print(
            f"{name} {m} beta={beta:g}: kl {figures['kl']:.2f}±{figures['kl_sem']:.2f} "
            f"gold {figures['gold_reward']:.3f}±{figures['gold_reward_sem']:.3f} (rho {rho:.3f}) "
            f"fraction {'n/a' if fraction is None else f'{fraction:.2f}'} "
            f"({point.get('note', '')}) train {figures.get(m + '_seconds') or 0:.0f}s"
        )
        curve = F.training_curve(frontier, rho, sub, m, sub_cfg)
        print(
            "  curve (episodes, kl, batch score):",
            [(c["episodes"], round(c["kl"], 2), round(c["score"], 3)) for c in curve],
        )


if __name__ == "__main__":
    main(sys.argv[1:])
