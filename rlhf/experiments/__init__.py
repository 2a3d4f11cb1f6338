"""The papers' findings in miniature: `rlhf experiment NAME --config configs/experiments/NAME.yaml --out DIR`.
Each experiment is one module with a `Config` dataclass and `run(cfg, out) -> dict`."""

from __future__ import annotations

import logging
from pathlib import Path

from rlhf.config_loading import load_config
from rlhf.experiments import frontier, overoptimization, queries_needed, rlhf_vs_sft, rm_scaling, rouge_proxy
from rlhf.run import remove_stray_temp_files

EXPERIMENTS = ("frontier", "queries_needed", "overoptimization", "rouge_proxy", "rm_scaling", "rlhf_vs_sft")


def run_experiment(name: str, config_path: str | Path | None, out: str | Path, overrides: list[str] = ()) -> dict:
    """Load the experiment's config (defaults, then the YAML file, then overrides) and run it into `out`."""
    modules = {
        "frontier": frontier,
        "queries_needed": queries_needed,
        "overoptimization": overoptimization,
        "rouge_proxy": rouge_proxy,
        "rm_scaling": rm_scaling,
        "rlhf_vs_sft": rlhf_vs_sft,
    }
    module = modules.get(name)
    if module is None:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    cfg = load_config(config_path, overrides, cls=module.Config)
    for path in remove_stray_temp_files(Path(out), recursive=True):  # left by a run that was killed
        logging.getLogger("rlhf").info("removed %s, a temp file of a process that was killed", path)
    return module.run(cfg, Path(out))
