"""Tests for rlhf.eval.report.write_report on small hand-written run directories."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from rlhf.eval.report import format_figure, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EMBEDDED_PNG = re.compile(r'<img[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
SCRIPT_RESPONSE = "<script>alert(1)</script>"


def _write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _ppo_row(iteration: int) -> dict:
    return {
        "iteration": iteration,
        "rm_score": 0.1 * iteration,
        "kl": 0.5 * iteration,
        "beta": 0.1 - 0.01 * iteration,
        "entropy": 2.0,
        "clipfrac": 0.1,
        "approx_kl": 0.01,
        "value_loss": 0.3,
        "ratio_mean": 1.0,
        "response_length": 12.0,
        "no_stop_count": 0,
        "non_score_reward": -0.05,
        "lr": 1e-5,
    }


def _build_full_run(run_dir: Path) -> None:
    _write_json(
        run_dir / "summary.json",
        {
            "config": {"task": "sentiment", "seed": 1},
            "wall_seconds_total": 123.5,
            "stage_seconds": {"sft": 40.25, "reward": 20.0, "ppo": 63.25},
            "reward_model": {"heldout_accuracy": 0.8125, "heldout_n": 64, "train_n": 256},
            "policies": {
                "initial": {
                    "gold_reward_mean": 0.12,
                    "gold_reward_sem": 0.03,
                    "rm_score_mean": -0.2,
                    "kl_to_reference": 0.0,
                    "response_length_mean": 14.0,
                    "no_stop_fraction": 0.25,
                },
                "ppo": {
                    "gold_reward_mean": 0.61,
                    "gold_reward_sem": 0.04,
                    "rm_score_mean": 1.3,
                    "kl_to_reference": 4.2,
                    "response_length_mean": 16.5,
                    "no_stop_fraction": 0.0,
                },
            },
            "winrates": {"ppo_vs_initial": {"win_rate": 0.734, "ci95_low": 0.65, "ci95_high": 0.81, "n": 100}},
        },
    )
    _write_jsonl(run_dir / "ppo" / "metrics.jsonl", [_ppo_row(i) for i in range(1, 5)])
    _write_jsonl(
        run_dir / "reward" / "metrics.jsonl",
        [{"step": s, "loss": 0.7 - 0.1 * s, "accuracy": 0.5 + 0.05 * s} for s in range(4)],
    )
    _write_jsonl(
        run_dir / "sft" / "metrics.jsonl",
        [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5, "val_loss": 2.7}, {"step": 3, "loss": 2.2}],
    )
    samples = []
    for index in range(10):
        prompt = f"prompt number {index}"
        samples.append(
            {
                "prompt": prompt,
                "policy": "initial",
                "response": f"initial reply {index}",
                "gold_reward": 0.1,
                "rm_score": -0.1,
            }
        )
        response = SCRIPT_RESPONSE if index == 0 else f"ppo reply {index}"
        samples.append({"prompt": prompt, "policy": "ppo", "response": response, "gold_reward": 0.6, "rm_score": 1.2})
    _write_jsonl(run_dir / "eval" / "samples.jsonl", samples)


def test_full_report_has_figures_images_and_escaped_text(tmp_path: Path) -> None:
    _build_full_run(tmp_path)
    report_path = write_report(tmp_path)
    assert report_path == tmp_path / "report.html" and report_path.exists()
    html = report_path.read_text(encoding="utf-8")
    assert "0.8125" in html  # held-out accuracy, 4 significant figures
    assert "0.734" in html and "[0.65, 0.81]" in html  # win rate and its interval
    assert "123.5" in html and "63.25" in html  # wall seconds
    images = EMBEDDED_PNG.findall(html)
    # gold bar plot + RM loss + SFT loss + 3 PPO plots = 6
    assert len(images) == 6
    assert all(base64.b64decode(image).startswith(PNG_SIGNATURE) for image in images)
    assert SCRIPT_RESPONSE not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html and "<link" not in html  # self-contained, no scripts or external CSS
    # 10 prompts written, 8 shown
    assert "prompt number 7" in html and "prompt number 8" not in html
    assert "not run" not in html
    assert not list(tmp_path.glob("*.tmp*"))  # atomic write left no temporary file


def test_report_with_every_input_missing_says_not_run(tmp_path: Path) -> None:
    html = write_report(tmp_path).read_text(encoding="utf-8")
    assert html.count("not run") >= 5
    assert EMBEDDED_PNG.findall(html) == []
    assert "<html" in html and "</html>" in html


def test_report_with_only_training_metrics(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "reward" / "metrics.jsonl", [{"step": 0, "loss": 0.69}, {"step": 1, "loss": 0.6}])
    html = write_report(tmp_path).read_text(encoding="utf-8")
    assert len(EMBEDDED_PNG.findall(html)) == 1
    assert "Policy evaluation: not run" in html


def test_report_rejects_bad_metric_row_naming_file_line_and_field(tmp_path: Path) -> None:
    rows = [_ppo_row(1), {**_ppo_row(2), "kl": "large"}]
    _write_jsonl(tmp_path / "ppo" / "metrics.jsonl", rows)
    with pytest.raises(ValueError, match=r"ppo/metrics\.jsonl:2: field 'kl': expected a number"):
        write_report(tmp_path)


def test_report_rejects_invalid_json_line(tmp_path: Path) -> None:
    path = tmp_path / "eval" / "samples.jsonl"
    path.parent.mkdir()
    path.write_text('{"prompt": "p", "policy": "ppo", "response": "r"}\n{not json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"samples\.jsonl:2: invalid JSON"):
        write_report(tmp_path)


def test_report_rejects_non_numeric_summary_figure(tmp_path: Path) -> None:
    _write_json(tmp_path / "summary.json", {"policies": {"ppo": {"gold_reward_mean": "high"}}})
    with pytest.raises(ValueError, match=r"summary\.json: field 'policies\.ppo\.gold_reward_mean'"):
        write_report(tmp_path)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "—"),
        (64, "64"),
        (0.8125, "0.8125"),
        (2.0 / 3.0, "0.6667"),
        (float("nan"), "nan"),
        (1234567.0, "1.235e+06"),
    ],
)
def test_format_figure(value: object, text: str) -> None:
    assert format_figure(value) == text
