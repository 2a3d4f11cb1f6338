"""Several runs side by side in one self-contained HTML page (`rlhf report RUN_DIR RUN_DIR ... --out PAGE`):
their summary figures, win rates, gold reward per policy, PPO curves overlaid, and a few samples of each.
Reads the same files as the single-run report (`rlhf.eval.report`), with the same checks."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from rlhf.data.io import atomic_write_text
from rlhf.eval.report import (
    _column,
    _ordered_policies,
    _png_base64,
    _sample_table,
    _summary_context,
    _template_environment,
    line_plot,
    read_checked_jsonl,
)

TEMPLATE_NAME = "compare_report.html.jinja"
SAMPLE_PROMPTS_PER_RUN = 4


def run_labels(run_dirs: list[Path]) -> list[str]:
    """A short label per run: its folder name, or the path as given when two runs share a folder name."""
    names = [path.resolve().name for path in run_dirs]
    return [name if names.count(name) == 1 else str(path) for name, path in zip(names, run_dirs)]


def grouped_bar_plot(
    title: str, groups: list[str], series: list[tuple[str, list[float | None], list[float | None]]]
) -> str:
    """Bars of (label, means, sems) series side by side within each group (a missing mean leaves a gap),
    ±1 SEM error bars where the SEM is known; as base64 PNG."""
    figure = Figure(figsize=(6.0, 3.0), layout="constrained")
    axes = figure.add_subplot()
    width = 0.8 / max(len(series), 1)
    positions = np.arange(len(groups))
    for index, (label, means, sems) in enumerate(series):
        heights = [math.nan if mean is None else mean for mean in means]
        errors = [sem if sem is not None and math.isfinite(sem) else 0.0 for sem in sems]
        axes.bar(
            positions + (index - (len(series) - 1) / 2) * width, heights, width, yerr=errors, capsize=3, label=label
        )
    axes.set_xticks(positions, groups)
    axes.axhline(0.0, color="black", linewidth=0.6)
    axes.set_title(title, fontsize=10)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    return _png_base64(figure)


def _ppo_overlays(run_dirs: list[Path], labels: list[str]) -> dict[str, str | None]:
    """PPO RM score and KL against iteration, one line per run that has PPO metrics."""
    logs = [
        (label, read_checked_jsonl(path / "ppo" / "metrics.jsonl", ("iteration", "rm_score", "kl", "beta")))
        for label, path in zip(labels, run_dirs)
    ]
    logs = [(label, rows) for label, rows in logs if rows]
    plots: dict[str, str | None] = {"ppo_rm_score": None, "ppo_kl": None}
    if logs:
        for field, title in (("rm_score", "PPO RM score"), ("kl", "PPO KL to reference")):
            plots[f"ppo_{field}"] = line_plot(
                title, "PPO iteration", [(label, *_column(rows, field, "iteration")) for label, rows in logs]
            )
    return plots


def _gold_plot(runs: list[dict[str, Any]]) -> str | None:
    policies = _ordered_policies(list(dict.fromkeys(name for run in runs for name in run["policies"])))
    series = []
    for run in runs:
        means = [run["policies"].get(name, {}).get("gold_reward_mean") for name in policies]
        sems = [run["policies"].get(name, {}).get("gold_reward_sem") for name in policies]
        if any(isinstance(mean, (int, float)) for mean in means):
            series.append((run["label"], means, sems))
    return grouped_bar_plot("Gold reward by policy and run (mean ± SEM)", policies, series) if series else None


def write_comparison_report(run_dirs: list[str | Path], out_path: str | Path) -> Path:
    """Render one HTML page comparing the given run directories; return its path."""
    paths = [Path(path) for path in run_dirs]
    if len(paths) < 2:
        raise ValueError(f"expected at least two run directories to compare, got {len(paths)}")
    for path in paths:
        if not path.is_dir():
            raise NotADirectoryError(f"{path}: expected an existing run directory")
    labels = run_labels(paths)
    runs = []
    for label, path in zip(labels, paths):
        context = _summary_context(path / "summary.json")
        samples = _sample_table(path)
        if samples is not None:
            samples["rows"] = samples["rows"][:SAMPLE_PROMPTS_PER_RUN]
        runs.append({"label": label, "path": str(path), "samples": samples, **context})
    policy_columns = list(dict.fromkeys(column for run in runs for column in run["policy_columns"]))
    html = (
        _template_environment()
        .get_template(TEMPLATE_NAME)
        .render(
            runs=runs,
            policy_columns=policy_columns,
            gold_plot=_gold_plot(runs),
            plots=_ppo_overlays(paths, labels),
            sample_prompts_per_run=SAMPLE_PROMPTS_PER_RUN,
            configs_differ=len({json.dumps(run["config_text"]) for run in runs}) > 1,
        )
    )
    out = Path(out_path)
    atomic_write_text(out, html)
    return out
