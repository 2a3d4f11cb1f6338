"""Tests for the multi-run report (rlhf.eval.compare_report) and `rlhf report RUN_DIR [RUN_DIR ...]`."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from test_report import EMBEDDED_PNG, PNG_SIGNATURE, SCRIPT_RESPONSE, _build_full_run, _write_json

from rlhf.cli import main
from rlhf.eval.compare_report import run_labels, write_comparison_report


def _two_runs(tmp_path: Path) -> tuple[Path, Path]:
    first, second = tmp_path / "run-a", tmp_path / "run-b"
    _build_full_run(first)
    _write_json(
        second / "summary.json",
        {
            "config": {"task": "sentiment", "seed": 2},
            "policies": {
                "initial": {"gold_reward_mean": 0.1, "gold_reward_sem": 0.02},
                "bon": {"gold_reward_mean": 0.4321, "gold_reward_sem": 0.05, "n_samples": 16},
            },
            "winrates": {"bon_vs_initial": {"win_rate": 0.6789, "ci95_low": 0.6, "ci95_high": 0.75, "n": 64}},
        },
    )
    return first, second


def test_comparison_page_shows_both_runs_escaped_and_self_contained(tmp_path: Path) -> None:
    first, second = _two_runs(tmp_path)
    page = write_comparison_report([first, second], tmp_path / "out" / "compare.html")
    html = page.read_text(encoding="utf-8")
    assert "run-a" in html and "run-b" in html
    assert "0.734" in html and "0.6789" in html and "[0.6, 0.75]" in html  # both runs' win rates
    assert "0.4321" in html and "n_samples" in html  # second run's policy figures, extra field kept
    assert "0.8125" in html  # first run's RM accuracy
    images = EMBEDDED_PNG.findall(html)
    assert len(images) == 3  # gold reward grouped bars + PPO RM score + PPO KL overlays
    assert all(base64.b64decode(image).startswith(PNG_SIGNATURE) for image in images)
    assert SCRIPT_RESPONSE not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html and "<link" not in html
    assert "prompt number 3" in html and "prompt number 4" not in html  # 4 prompts per run
    assert "win-rate evaluation not run" not in html
    assert "The runs&#39; configurations differ." in html
    assert "Sampling for evaluation (eval/samples.jsonl): not run." in html  # the second run has no samples


def test_comparison_needs_two_existing_runs(tmp_path: Path) -> None:
    first, _ = _two_runs(tmp_path)
    with pytest.raises(ValueError, match="at least two"):
        write_comparison_report([first], tmp_path / "x.html")
    with pytest.raises(NotADirectoryError, match="missing"):
        write_comparison_report([first, tmp_path / "missing"], tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()


def test_comparison_reports_a_bad_summary_with_file_and_field(tmp_path: Path) -> None:
    first, second = _two_runs(tmp_path)
    _write_json(second / "summary.json", {"winrates": {"bon_vs_initial": {"win_rate": "most"}}})
    with pytest.raises(ValueError, match=r"run-b/summary\.json: field 'winrates\.bon_vs_initial\.win_rate'"):
        write_comparison_report([first, second], tmp_path / "x.html")


def test_run_labels_disambiguate_equal_folder_names(tmp_path: Path) -> None:
    paths = [tmp_path / "a" / "run", tmp_path / "b" / "run", tmp_path / "c" / "other"]
    assert run_labels(paths) == [str(paths[0]), str(paths[1]), "other"]


def test_cli_report_one_and_several_runs(tmp_path: Path, capsys, monkeypatch) -> None:
    first, second = _two_runs(tmp_path)
    assert main(["report", str(first)]) == 0
    assert (first / "report.html").exists()
    out = tmp_path / "both.html"
    assert main(["report", str(first), str(second), "--out", str(out)]) == 0
    assert "run-b" in out.read_text(encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(first), str(second)]) == 0
    assert (tmp_path / "comparison-report.html").exists()
    assert main(["report", str(first), str(tmp_path / "nope")]) == 2
    assert "expected an existing run directory" in capsys.readouterr().err
    json.loads((second / "summary.json").read_text())  # the runs' files are left as they were
