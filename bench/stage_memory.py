"""Peak RSS of the reward or PPO stage, phase by phase: copies a finished run's earlier stages into OUT, runs the
stage there (overrides as `section.field=value`), and samples the process's VmRSS every 20 ms, printing it after
each phase (PPO: roles loaded, rollout, advantages, update; reward: the frozen layers, the head probe, the
normalisation, the held-out accuracy). `--mmap-threshold BYTES` fixes glibc's mmap threshold first (mallopt), to
tell live memory from heap fragmentation: freed blocks between the threshold and glibc's dynamic maximum (32 MiB)
stay in the heap.

    .venv/bin/python bench/stage_memory.py ppo RUN OUT [ppo.iterations=2] [--mmap-threshold 65536]
"""

from __future__ import annotations

import argparse
import ctypes
import shutil
import threading
import time
from pathlib import Path

import rlhf.stages.ppo as ppo
import rlhf.stages.reward as reward
from rlhf.config_loading import load_config
from rlhf.run import RunDir

EARLIER = {"reward": ["sft", "collect"], "ppo": ["sft", "collect", "reward"]}
PHASES = {
    "reward": (
        reward,
        ["encode_comparisons", "fit_head_on_frozen_features", "normalize_reward_model", "heldout_accuracy"],
    ),
    "ppo": (ppo, ["PPORoles", "rollout", "compute_advantages", "update"]),
}


def rss_mib() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) // 1024 for line in fh if line.startswith("VmRSS"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", choices=sorted(EARLIER))
    ap.add_argument("run", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--mmap-threshold", type=int)
    args = ap.parse_args()
    if args.mmap_threshold is not None:
        M_MMAP_THRESHOLD = -3  # glibc's malloc.h
        assert ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, args.mmap_threshold) == 1, "mallopt failed"
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    for name in [*EARLIER[args.stage], "config.yaml"]:
        (shutil.copytree if (args.run / name).is_dir() else shutil.copy)(args.run / name, args.out / name)
    peak = [rss_mib()]

    def watch() -> None:
        while True:
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()
    module, phases = PHASES[args.stage]
    for name in phases:

        def traced(*a, _function=getattr(module, name), _name=name, **k):
            result = _function(*a, **k)
            print(f"after {_name}: {rss_mib()} MiB now, peak so far {peak[0]} MiB", flush=True)
            return result

        setattr(module, name, traced)
    cfg = load_config(args.out / "config.yaml", args.overrides)
    start = time.perf_counter()
    (ppo.train_ppo if args.stage == "ppo" else reward.train_reward)(RunDir(args.out), cfg)
    print(f"{args.stage}: {time.perf_counter() - start:.1f} s, peak RSS {peak[0]} MiB, {rss_mib()} MiB at the end")


if __name__ == "__main__":
    main()
