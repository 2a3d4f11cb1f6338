"""bench/gpu_check.py, the GPU check: its helpers, its skip without a GPU, and a whole run in --cpu mode through
bench/gpu_check.sh (tiny model, CPU), so that the script cannot rot between runs on a GPU machine."""

from __future__ import annotations

import ast
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402
from gpu_check_models import SMOLLM2_VOCAB, offline_tokenizer, peak_bf16_flops  # noqa: E402

from rlhf.models.provision import load_tokenizer  # noqa: E402

FIGURE = re.compile(r"^([a-z0-9_.]+): ([-+0-9.e]+|nan|inf) (\S+)$")  # `name: value unit`


def test_offline_tokenizer_round_trips_text_and_decodes_every_id(tmp_path):
    offline_tokenizer().save_pretrained(tmp_path)
    tok = load_tokenizer(str(tmp_path))
    assert len(tok) == SMOLLM2_VOCAB
    assert tok.pad_token_id != tok.eos_token_id and tok.padding_side == "left"
    text = "A quiet film, and a fine one. Café!"
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    texts = tok.batch_decode([[i] for i in range(len(tok) - 50, len(tok))])
    assert all(isinstance(t, str) and t for t in texts)


def test_peak_table_picks_the_most_specific_name():
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3")[0] == 989e12
    assert peak_bf16_flops("NVIDIA H100 PCIe")[0] == 756e12
    assert peak_bf16_flops("NVIDIA H200")[0] == 989e12
    peak, why = peak_bf16_flops("Some Future GPU")
    assert peak is None and "Some Future GPU" in why


def test_finite_figures_names_the_figures_that_are_not():
    summary = {"a": 1.0, "b": {"c": float("nan"), "d": [0.5, float("inf")]}, "e": "text", "f": None}
    assert gpu_check.finite_figures(summary) == [".b.c", ".b.d[1]"]
    no_data = {"reward_model": {"heldout_accuracy": float("nan"), "heldout_n": 0}}
    assert gpu_check.finite_figures(no_data) == []
    no_data["reward_model"]["heldout_n"] = 8
    assert gpu_check.finite_figures(no_data) == [".reward_model.heldout_accuracy"]


def test_figure_lines_and_failures(capsys, tmp_path):
    check = gpu_check.Check("cpu", "float32", True, None, tmp_path, None, math.inf)
    check.figure("x_tokens_per_s", 1234.0, "tokens/s")
    check.figure("y_mfu", float("nan"), "%")
    assert capsys.readouterr().out.splitlines() == ["x_tokens_per_s: 1234 tokens/s", "y_mfu: nan %"]
    assert check.failures == ["y_mfu = nan"]


def test_placement_overrides_only_where_the_config_has_the_fields(tmp_path):
    names = {f.name for f in gpu_check.dataclasses.fields(gpu_check.ModelConfig)}
    check = gpu_check.Check("cuda", "bfloat16", True, None, tmp_path, None, math.inf)
    overrides = gpu_check.placement_overrides(check)
    if {"device", "dtype"} <= names:
        assert overrides == ["model.device=cuda", "model.dtype=bfloat16"] and not check.failures
    else:
        assert overrides == [] and "no GPU support" in check.failures[0]


def test_gpu_mode_without_a_gpu_says_it_skips(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    assert capsys.readouterr().out.strip().startswith("gpu_check: SKIP (no CUDA GPU")


# Top-level modules the GPU image has (its package list), and those the check carries as wheels in .whl/
ON_THE_GPU_IMAGE = {
    "accelerate", "jinja2", "matplotlib", "numpy", "pandas", "peft", "pyarrow", "safetensors", "scipy", "sklearn",
    "tensorboard", "tokenizers", "torch", "tqdm", "transformers", "yaml",
}  # fmt: skip
CARRIED = {"sqlalchemy", "vaderSentiment"}


def top_level_imports(path: Path) -> tuple[set[str], set[str]]:
    """(modules imported at a module's top level, those imported inside functions), as written."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    for node in tree.body:  # imports under a module-level `if` or `try` run at import time too
        if isinstance(node, (ast.If, ast.Try)):
            top |= {id(n) for n in ast.walk(node)}
    at_top, lazy = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        (at_top if id(node) in top else lazy).update(names)
    return at_top, lazy


def third_party_closure(scripts: list[Path]) -> set[str]:
    """The third-party top-level modules that importing `scripts` imports, following `rlhf` (and bench/) modules'
    top-level imports: what the GPU machine must have before the check starts."""
    todo, seen, third_party = list(scripts), set(), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in top_level_imports(path)[0]:
            parts = name.split(".")
            if parts[0] == "rlhf":
                for i in range(1, len(parts) + 1):  # the packages on the way are imported too
                    module = ROOT.joinpath(*parts[:i])
                    todo += [f for f in (module.with_suffix(".py"), module / "__init__.py") if f.exists()]
            elif (ROOT / "bench" / f"{parts[0]}.py").exists():
                todo.append(ROOT / "bench" / f"{parts[0]}.py")
            elif parts[0] not in sys.stdlib_module_names and parts[0] != "__future__":
                third_party.add(parts[0])
    return third_party


def test_the_check_imports_only_what_the_gpu_machine_has_or_the_wheels_carry():
    needed = third_party_closure([ROOT / "bench" / "gpu_check.py"])
    assert "sqlalchemy" in needed  # the closure does reach the stages (the labeling app's database)
    assert needed <= ON_THE_GPU_IMAGE | CARRIED, needed - ON_THE_GPU_IMAGE - CARRIED


@pytest.mark.slow
def test_cpu_mode_passes_through_the_wrapper(tmp_path):
    pytest.importorskip("setuptools", reason="gpu_check.sh builds the package without build isolation")
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_SITE": str(tmp_path / "site")}
    command = ["bash", "bench/gpu_check.sh", "--cpu", "--quick"]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert out.splitlines()[-1] == "gpu_check: PASS"
    figures = {m[1]: (float(m[2]), m[3]) for m in map(FIGURE.match, out.splitlines()) if m}
    assert "smoke_pipeline: PASS" in out
    for name, unit in [
        ("sft_tiny_tokens_per_s", "tokens/s"),
        ("reward_tiny_tokens_per_s", "tokens/s"),
        ("sampling_tiny_project_new_tokens_per_s", "tokens/s"),
        ("sampling_tiny_generate_new_tokens_per_s", "tokens/s"),
        ("ppo_tiny_episodes_per_s", "episodes/s"),
        ("seconds_smoke_pipeline", "s"),
        ("seconds_total", "s"),
    ]:
        value, got_unit = figures[name]
        assert got_unit == unit and math.isfinite(value) and value > 0, (name, value, got_unit)
    assert (tmp_path / "site" / "rlhf" / "pipeline.py").exists(), "the package was not installed into GPU_CHECK_SITE"
