"""Out-of-distribution evaluation: a finished run's policies (initial, SFT, PPO, best-of-N) and reward model on
another prompt set — another source, split or task, or a subset of TL;DR subreddits (Stiennon et al. 2020 §4.4
evaluate TL;DR policies on CNN/DM; Ziegler et al. 2019 §4 on other subreddits) — with the figures of the
in-distribution evaluation (`rlhf.eval.evaluate.evaluate_on_prompts`).

    rlhf eval-ood RUN_DIR --out OUT_DIR [--split test] [--subreddits a,b | --exclude-subreddits a,b] [task.source=...]

Writes OUT_DIR/samples.jsonl and OUT_DIR/summary.json (last); nothing in RUN_DIR is written.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from rlhf.config import RunConfig
from rlhf.config_loading import load_config
from rlhf.data.io import atomic_write_json, atomic_write_text
from rlhf.data.records import Prompt
from rlhf.eval.evaluate import evaluate_on_prompts, samples_jsonl
from rlhf.run import RunDir, seed_everything
from rlhf.tasks import held_out_prompts

log = logging.getLogger("rlhf")
# what an out-of-distribution evaluation may change: the prompts and how they are sampled, never the policies
OVERRIDABLE = ("task.", "eval.", "bon.n=", "seed=", "collect.batch_size=", "model.threads=")
RUN_FOLDERS = ("sft", "collect", "reward", "ppo", "bon", "eval", "tb")


def parse_subreddits(text: str, option: str) -> tuple[str, ...]:
    """Comma-separated subreddit names, lower-cased, without a leading "r/" or "/r/" ("r/Cats, dogs" -> ("cats", "dogs"))."""
    names = tuple(name.strip().lower().removeprefix("/").removeprefix("r/") for name in text.split(","))
    if not text.strip() or not all(names):
        raise ValueError(
            f"{option}: expected comma-separated subreddit names such as 'relationships,r/AskReddit', got {text!r}"
        )
    return names


def keeps_subreddit(subreddit: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """True when `subreddit` (any case, with or without "r/") is in `include` (or include is empty) and not in `exclude`."""
    name = subreddit.strip().lower().removeprefix("/").removeprefix("r/")
    return (not include or name in include) and name not in exclude


def ood_config(run: RunDir, overrides: Sequence[str]) -> RunConfig:
    """The run's config with `overrides` applied; only the prompt and sampling settings may change."""
    run.load_config()  # a clear error when RUN_DIR has no config
    for item in overrides:
        if not item.startswith(OVERRIDABLE) or "=" not in item:
            raise ValueError(
                f"override {item!r}: eval-ood may change only task.*, eval.*, bon.n, seed, collect.batch_size "
                "and model.threads (the policies and the reward model are the run's)"
            )
    return load_config(run.root / "config.yaml", list(overrides))


def select_prompts(
    cfg: RunConfig, split: str, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[Prompt]:
    """The held-out prompts of `split` that pass the subreddit filter (TL;DR only); without a filter, for the test
    split, the prompts `rlhf eval` uses."""
    if (include or exclude) and cfg.task.name != "tldr":
        raise ValueError(
            f"--subreddits/--exclude-subreddits: only TL;DR prompts have a subreddit, the task is {cfg.task.name!r}"
        )
    keep = (lambda p: keeps_subreddit(p.meta["subreddit"], include, exclude)) if include or exclude else None
    return held_out_prompts(cfg, split=split, keep=keep)


def _check_out_dir(run: RunDir, out: Path) -> None:
    root, target = run.root.resolve(), out.resolve()
    inside = target.relative_to(root).parts if target.is_relative_to(root) else None
    if inside is not None and (not inside or inside[0] in RUN_FOLDERS):
        raise ValueError(
            f"--out {out}: must not be the run directory or one of its stage folders (the run's own results stay untouched)"
        )


def evaluate_ood(
    run_dir: str | Path,
    out_dir: str | Path,
    overrides: Sequence[str] = (),
    split: str = "test",
    subreddits: str = "",
    exclude_subreddits: str = "",
) -> dict:
    """Evaluate the run's policies on the selected prompts; write OUT_DIR/samples.jsonl and OUT_DIR/summary.json."""
    run, out = RunDir(run_dir), Path(out_dir)
    _check_out_dir(run, out)
    run.require("reward")
    in_distribution = run.load_config()
    cfg = ood_config(run, overrides)
    include = parse_subreddits(subreddits, "--subreddits") if subreddits else ()
    exclude = parse_subreddits(exclude_subreddits, "--exclude-subreddits") if exclude_subreddits else ()
    seed_everything(cfg.seed + 5)
    prompts = select_prompts(cfg, split, include, exclude)
    log.info(
        "eval-ood: %d prompts of %s (%s, split %s)",
        len(prompts),
        cfg.task.name,
        cfg.task.source or "default source",
        split,
    )
    figures, winrates, rows = evaluate_on_prompts(run, cfg, [p.text for p in prompts], reuse_bon=False)
    reward_info = run.done_info("reward")
    summary = {
        "run_dir": str(run.root.resolve()),
        "trained_on": {"task": in_distribution.task.name, "source": in_distribution.task.source or "default"},
        "prompts": {
            "task": cfg.task.name,
            "source": cfg.task.source or "default",
            "split": split,
            "subreddits": list(include),
            "exclude_subreddits": list(exclude),
            "seed": cfg.seed,
            "n": len(prompts),
            "ids": [p.id for p in prompts],
        },
        "overrides": list(overrides),
        "reward_model_in_distribution": {
            k: reward_info[k] for k in ("heldout_accuracy", "heldout_n") if k in reward_info
        },
        "policies": figures,
        "winrates": winrates,
    }
    atomic_write_text(out / "samples.jsonl", samples_jsonl(rows))
    atomic_write_json(out / "summary.json", summary)
    return summary
