"""Seconds of each phase of the PPO stage (rollout, score, advantages, update) on a finished run: links RUN's sft,
collect and reward into OUT (which must not exist), runs `rlhf ppo` there with the overrides and prints the phases'
totals. To compare two revisions side by side, run it from a worktree of each, alternating:

    git worktree add /tmp/old REV
    PYTHONPATH=/tmp/old .venv/bin/python bench/ppo_phases.py runs/quickstart /tmp/a1 ppo.iterations=3
    .venv/bin/python bench/ppo_phases.py runs/quickstart /tmp/b1 ppo.iterations=3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import rlhf.stages.ppo as ppo
from rlhf.config_loading import load_config
from rlhf.experiments.common import SHARED_STAGES, run_stages
from rlhf.pipeline import start_run
from rlhf.run import RunDir

PHASES = ("rollout", "score", "compute_advantages", "update")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a run directory with sft, collect and reward finished")
    p.add_argument("out", type=Path, help="a new folder for the PPO run")
    p.add_argument("overrides", nargs="*", help="section.field=value")
    args = p.parse_args()
    seconds = dict.fromkeys(PHASES, 0.0)

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            result = fn(*a, **k)
            seconds[name] += time.perf_counter() - t
            return result

        return wrapper

    for name in PHASES:  # train_ppo looks them up in its module at call time
        setattr(ppo, name, timed(name, getattr(ppo, name)))
    cfg = load_config(args.run / "config.yaml", ["policy.methods=[ppo]", *args.overrides])
    args.out.mkdir(parents=True)
    for name in SHARED_STAGES:
        (args.out / name).symlink_to((args.run / name).resolve(), target_is_directory=True)
    sub = RunDir(args.out)
    start_run(sub, cfg)
    t0 = time.perf_counter()
    run_stages(sub, cfg, ("ppo",))
    total = time.perf_counter() - t0
    print(" ".join(f"{k} {v:.1f}s" for k, v in seconds.items()), f"ppo stage {total:.1f}s", f"[{ppo.__file__}]")


if __name__ == "__main__":
    main()
