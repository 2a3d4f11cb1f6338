"""The papers' findings in miniature: `rlhf experiment NAME --config configs/experiments/NAME.yaml --out DIR`.
Each experiment is one module with a `Config` dataclass and `run(cfg, out) -> dict`."""
from __future__ import annotations

from pathlib import Path

EXPERIMENTS = ("frontier", "queries_needed", "overoptimization", "rouge_proxy", "rm_scaling", "rlhf_vs_sft")


def run_experiment(name: str, config_path: str | Path | None, out: str | Path, overrides: list[str] = ()) -> dict:
    """Load the experiment's config (defaults, then the YAML file, then overrides) and run it into `out`."""
    from rlhf.config import load_config

    if name == "frontier":
        from rlhf.experiments import frontier as module
    elif name == "queries_needed":
        from rlhf.experiments import queries_needed as module
    elif name == "overoptimization":
        from rlhf.experiments import overoptimization as module
    elif name == "rouge_proxy":
        from rlhf.experiments import rouge_proxy as module
    elif name == "rm_scaling":
        from rlhf.experiments import rm_scaling as module
    elif name == "rlhf_vs_sft":
        from rlhf.experiments import rlhf_vs_sft as module
    else:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    cfg = load_config(config_path, overrides, cls=module.Config)
    return module.run(cfg, Path(out))
