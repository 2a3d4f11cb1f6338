"""Build `run_dir/report.html`: one self-contained page with a run's summary figures, training curves
(matplotlib PNGs embedded as base64) and policies' responses side by side. Missing inputs say "not run"."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path
from typing import Any, NoReturn

import jinja2
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rlhf.config_methods import POLICY_METHODS
from rlhf.data.io import atomic_write_text, iter_jsonl_rows

TEMPLATE_NAME = "report.html.jinja"
REPORT_NAME = "report.html"
POLICY_ORDER = ("initial", "sft", *POLICY_METHODS, "bon")
POLICY_FIELDS = (
    "gold_reward_mean",
    "gold_reward_sem",
    "rm_score_mean",
    "kl_to_reference",
    "response_length_mean",
    "no_stop_fraction",
)
REWARD_MODEL_FIELDS = ("heldout_accuracy", "heldout_n", "train_n")
WINRATE_FIELDS = ("win_rate", "ci95_low", "ci95_high", "n")
SAMPLE_PROMPTS_SHOWN = 8

Series = tuple[str, list[float], list[float]]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bad_field(where: str | Path, field: str, expected: str, got: Any) -> NoReturn:
    raise ValueError(f"{where}: field {field!r}: expected {expected}, got {got!r}")


def read_checked_jsonl(
    path: Path,
    required_numbers: tuple[str, ...] = (),
    optional_numbers: tuple[str, ...] = (),
    required_texts: tuple[str, ...] = (),
) -> list[dict[str, Any]] | None:
    """Rows of a JSONL file (None if the file is missing), checking the fields the report uses."""
    if not path.exists():
        return None
    rows: list[dict[str, Any]] = []
    for where, row in iter_jsonl_rows(path):
        for field in required_numbers:
            if not _is_number(row.get(field)):
                _bad_field(where, field, "a number", row.get(field, "<missing>"))
        for field in optional_numbers:
            if row.get(field) is not None and not _is_number(row[field]):
                _bad_field(where, field, "a number, null or no value", row[field])
        for field in required_texts:
            if not isinstance(row.get(field), str):
                _bad_field(where, field, "a string", row.get(field, "<missing>"))
        rows.append(row)
    return rows


def read_summary(path: Path) -> dict[str, Any] | None:
    """The run's summary.json as a dict (None if the file is missing)."""
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: expected valid JSON, got a parse error ({error.msg})") from error
    if not isinstance(summary, dict):
        raise ValueError(f"{path}:1: expected a JSON object at the top level, got {type(summary).__name__}")
    return summary


def _section(mapping: dict[str, Any] | None, key: str, path: Path, prefix: str = "") -> dict[str, Any] | None:
    """`mapping[key]` if it is a JSON object, None if absent; anything else is an error."""
    if mapping is None or mapping.get(key) is None:
        return None
    if not isinstance(mapping[key], dict):
        _bad_field(path, f"{prefix}{key}", "a JSON object", mapping[key])
    return mapping[key]


def _figures(mapping: dict[str, Any], known: tuple[str, ...], path: Path, prefix: str) -> dict[str, Any]:
    """Known fields (each a number or null) first, then any other scalar fields, in a display order."""
    figures: dict[str, Any] = {}
    for field in known:
        value = mapping.get(field)
        if value is not None and not _is_number(value):
            _bad_field(path, f"{prefix}{field}", "a number or null", value)
        figures[field] = value
    for field, value in mapping.items():
        if field not in figures and (value is None or isinstance(value, (str, int, float))):
            figures[field] = value
    return figures


def format_figure(value: Any) -> str:
    """A number as 4 significant figures (integers whole); missing values as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _png_base64(figure: Figure) -> str:
    FigureCanvasAgg(figure)  # attach the Agg canvas explicitly: no pyplot, no GUI backend
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def line_plot(title: str, xlabel: str, series: list[Series]) -> str:
    """A small line plot of one or more (label, xs, ys) series, as base64 PNG."""
    figure = Figure(figsize=(4.4, 2.8), layout="constrained")
    axes = figure.add_subplot()
    for label, xs, ys in series:
        assert len(xs) == len(ys), f"{title}: {label} has {len(xs)} x values and {len(ys)} y values"
        axes.plot(xs, ys, marker="." if len(xs) < 30 else None, label=label)
    axes.set_title(title, fontsize=10)
    axes.set_xlabel(xlabel)
    axes.grid(alpha=0.3)
    if len(series) > 1:
        axes.legend(fontsize=8)
    return _png_base64(figure)


def bar_plot(title: str, labels: list[str], means: list[float], sems: list[float | None]) -> str:
    """Bars of means with ±1 SEM error bars (no bar where the SEM is unknown), as base64 PNG."""
    figure = Figure(figsize=(4.4, 2.8), layout="constrained")
    axes = figure.add_subplot()
    errors = [sem if sem is not None and math.isfinite(sem) else 0.0 for sem in sems]
    axes.bar(labels, means, yerr=errors, capsize=4, color="#4c72b0")
    axes.axhline(0.0, color="black", linewidth=0.6)
    axes.set_title(title, fontsize=10)
    axes.grid(axis="y", alpha=0.3)
    return _png_base64(figure)


def _ordered_policies(names: list[str]) -> list[str]:
    known = [name for name in POLICY_ORDER if name in names]
    return known + [name for name in names if name not in POLICY_ORDER]


def _column(rows: list[dict[str, Any]], field: str, x_field: str) -> tuple[list[float], list[float]]:
    kept = [row for row in rows if row.get(field) is not None]
    return [row[x_field] for row in kept], [row[field] for row in kept]


def _training_plots(run_dir: Path) -> dict[str, str | None]:
    ppo = read_checked_jsonl(run_dir / "ppo" / "metrics.jsonl", ("iteration", "rm_score", "kl", "beta"))
    reward = read_checked_jsonl(run_dir / "reward" / "metrics.jsonl", ("step", "loss"), ("accuracy",))
    sft = read_checked_jsonl(run_dir / "sft" / "metrics.jsonl", ("step",), ("loss", "val_loss"))
    plots: dict[str, str | None] = dict.fromkeys(("ppo_rm_score", "ppo_kl", "ppo_beta", "reward", "sft"))
    if ppo:
        for field, title in (("rm_score", "RM score"), ("kl", "KL to reference"), ("beta", "KL coefficient β")):
            plots[f"ppo_{field}"] = line_plot(title, "PPO iteration", [(field, *_column(ppo, field, "iteration"))])
    if reward:
        plots["reward"] = line_plot("Reward model loss", "step", [("loss", *_column(reward, "loss", "step"))])
    if sft:
        series = [(field, *_column(sft, field, "step")) for field in ("loss", "val_loss")]
        series = [item for item in series if item[1]]
        if series:
            plots["sft"] = line_plot("SFT loss", "step", series)
    return plots


def _sample_table(run_dir: Path) -> dict[str, Any] | None:
    """The first SAMPLE_PROMPTS_SHOWN prompts with each policy's first response to it."""
    rows = read_checked_jsonl(
        run_dir / "eval" / "samples.jsonl", (), ("gold_reward", "rm_score"), ("prompt", "policy", "response")
    )
    if rows is None:
        return None
    policies = _ordered_policies(list(dict.fromkeys(row["policy"] for row in rows)))
    prompts = list(dict.fromkeys(row["prompt"] for row in rows))[:SAMPLE_PROMPTS_SHOWN]
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        cells.setdefault((row["prompt"], row["policy"]), row)
    table_rows = [{"prompt": prompt, "cells": [cells.get((prompt, name)) for name in policies]} for prompt in prompts]
    return {"policies": policies, "rows": table_rows, "prompt_count": len(set(row["prompt"] for row in rows))}


def _summary_context(path: Path) -> dict[str, Any]:
    summary = read_summary(path)
    reward_model = _section(summary, "reward_model", path)
    policies = _section(summary, "policies", path) or {}
    winrates = _section(summary, "winrates", path) or {}
    stage_seconds = _section(summary, "stage_seconds", path) or {}
    config = _section(summary, "config", path)
    policy_figures = {}
    for name in _ordered_policies(list(policies)):
        entry = _section(policies, name, path, "policies.")
        policy_figures[name] = _figures(entry or {}, POLICY_FIELDS, path, f"policies.{name}.")
    columns = list(dict.fromkeys(field for figures in policy_figures.values() for field in figures))
    winrate_figures = {
        name: _figures(_section(winrates, name, path, "winrates.") or {}, WINRATE_FIELDS, path, f"winrates.{name}.")
        for name in winrates
    }
    stages = _figures(stage_seconds, tuple(stage_seconds), path, "stage_seconds.")
    total = None if summary is None else summary.get("wall_seconds_total")
    if total is not None and not _is_number(total):
        _bad_field(path, "wall_seconds_total", "a number", total)
    gold = [(name, figures) for name, figures in policy_figures.items() if _is_number(figures["gold_reward_mean"])]
    gold_plot = None
    if gold:
        gold_plot = bar_plot(
            "Gold reward by policy (mean ± SEM)",
            [name for name, _ in gold],
            [figures["gold_reward_mean"] for _, figures in gold],
            [figures["gold_reward_sem"] for _, figures in gold],
        )
    return {
        "summary_present": summary is not None,
        "config_text": None if config is None else json.dumps(config, indent=2, sort_keys=True),
        "reward_model": (
            None if reward_model is None else _figures(reward_model, REWARD_MODEL_FIELDS, path, "reward_model.")
        ),
        "policy_columns": columns,
        "policies": policy_figures,
        "winrates": winrate_figures,
        "stages": stages,
        "wall_seconds_total": total,
        "gold_plot": gold_plot,
    }


def _template_environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["figure"] = format_figure
    return environment


def write_report(run_dir: Path) -> Path:
    """Render `run_dir/report.html` from whatever of the run's outputs exist; return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NotADirectoryError(f"{run_dir}: expected an existing run directory")
    context = _summary_context(run_dir / "summary.json")
    context["plots"] = _training_plots(run_dir)
    context["samples"] = _sample_table(run_dir)
    context["run_name"] = run_dir.resolve().name
    context["sample_prompts_shown"] = SAMPLE_PROMPTS_SHOWN
    html = _template_environment().get_template(TEMPLATE_NAME).render(**context)
    report_path = run_dir / REPORT_NAME
    atomic_write_text(report_path, html)
    return report_path
