"""The driver loop: SFT -> collect comparisons -> reward model -> PPO -> best-of-N -> evaluation -> report.
Each stage reads and writes the run directory; a finished stage is skipped and an interrupted one resumes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from rlhf.config import RunConfig
from rlhf.config_loading import config_to_dict
from rlhf.config_methods import POLICY_METHODS
from rlhf.eval.evaluate import evaluate
from rlhf.eval.report import write_report
from rlhf.models.device import resolve_placement
from rlhf.models.loading import base_model_path
from rlhf.models.threads import CPU_THREADS
from rlhf.run import RunDir, remove_stray_temp_files
from rlhf.stages.bon import run_bon
from rlhf.stages.collect import collect
from rlhf.stages.dpo import train_dpo
from rlhf.stages.group_rl import train_grpo, train_rloo
from rlhf.stages.ppo import train_ppo
from rlhf.stages.reward import train_reward
from rlhf.stages.sft import train_sft

log = logging.getLogger("rlhf")
# the stages in the order the pipeline runs them
STAGE_FUNCTIONS: dict[str, Callable[[RunDir, RunConfig], dict]] = {
    "sft": train_sft,
    "collect": collect,
    "reward": train_reward,
    "ppo": train_ppo,
    "rloo": train_rloo,
    "grpo": train_grpo,
    "dpo": train_dpo,
    "bon": run_bon,
    "eval": evaluate,
}
STAGES = list(STAGE_FUNCTIONS)


def run_stage(run: RunDir, cfg: RunConfig, name: str, force: bool = False) -> dict:
    """Run one stage unless it has finished (then skip it); record its wall time in summary.json."""
    if run.writer:  # what a killed run of this stage left half-written
        for path in remove_stray_temp_files(run.root) + remove_stray_temp_files(run.root / name):
            log.info("removed %s, a temp file of a process that was killed", path)
    if run.is_done(name) and not force:
        if run.writer:  # a run killed after done.json, before it removed its checkpoint
            (run.root / name / "checkpoint.pt").unlink(missing_ok=True)
        log.info("stage %s: already done, skipping", name)
        return run.done_info(name)
    if force and run.writer:
        (run.root / name / "done.json").unlink(missing_ok=True)
    run.processes.wait()  # every process sees the same finished stages before this one starts
    # a device asked for but missing is an error here, before the stage writes anything
    log.info("stage %s: starting (%s)", name, resolve_placement(cfg.model).describe())
    t0 = time.time()
    info = STAGE_FUNCTIONS[name](run, cfg)
    run.processes.wait()  # the main process has written the stage's outputs before anyone reads them
    seconds = time.time() - t0
    if info.get("stopped"):
        log.warning("stage %s stopped: %s", name, info.get("reason"))
        return info
    summary = run.read_summary()
    stage_seconds = {**summary.get("stage_seconds", {}), name: seconds}
    run.update_summary(stage_seconds=stage_seconds, wall_seconds_total=sum(stage_seconds.values()))
    threads = CPU_THREADS.describe()
    log.info("stage %s: done in %.0f s%s", name, seconds, f" (CPU threads: {threads})" if threads else "")
    return info


def start_run(run: RunDir, cfg: RunConfig) -> None:
    """Write the config into a new run directory, or check it matches the one already there. A device the config
    asks for that is not there is an error before anything is written."""
    resolve_placement(cfg.model)
    if (run.root / "config.yaml").exists():
        existing = run.load_config()
        if config_to_dict(existing) != config_to_dict(cfg):
            raise ValueError(
                f"{run.root}: holds a run with a different config; use a new --out directory (or the same config to resume)"
            )
    else:
        run.save_config(cfg)
    run.update_summary(config=config_to_dict(cfg))
    run.processes.wait()


def run_pipeline(run: RunDir, cfg: RunConfig) -> dict:
    # one-time model conversion happens here, outside the stage clocks; by the main process first
    if run.writer:
        base_model_path(cfg)
    run.processes.wait()
    start_run(run, cfg)
    for name in STAGES:
        if name in POLICY_METHODS and name not in cfg.policy.methods:
            continue  # a policy optimiser the config does not ask for
        info = run_stage(run, cfg, name)
        if info.get("stopped"):
            return info
    t0 = time.time()
    if run.writer:
        write_report(run.root)
    summary = run.read_summary()
    stage_seconds = {**summary.get("stage_seconds", {}), "report": time.time() - t0}
    return run.update_summary(stage_seconds=stage_seconds, wall_seconds_total=sum(stage_seconds.values()))
