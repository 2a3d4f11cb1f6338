"""The GPU path on a CUDA GPU, in bfloat16: the smoke pipeline end to end, and a model opened on the GPU with
float32 log-probs. Skipped where there is no CUDA GPU (bench/gpu_check.sh runs these and the speed figures on
the GPU machine)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhf.config import ModelConfig
from rlhf.config_loading import load_config
from rlhf.models.encoding import encode_queries
from rlhf.models.loading import open_backbone
from rlhf.models.roles import Episodes, LanguageModelRole

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here (torch.cuda.is_available() is False)"),
    pytest.mark.skipif(
        not {"device", "dtype"} <= {f.name for f in dataclasses.fields(ModelConfig)},
        reason="this tree's ModelConfig has no device/dtype fields (no GPU support)",
    ),
]
ON_GPU = ["model.device=cuda", "model.dtype=bfloat16"]


def finite(value) -> bool:
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    if isinstance(value, list):
        return all(finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


def test_smoke_run_on_cuda_in_bfloat16(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    args = ["run", "--config", str(SMOKE), "--out", str(out), f"model.name_or_path={tiny_model_dir}", *ON_GPU]
    proc = subprocess.run([sys.executable, "-m", "rlhf.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["model"]["device"] == "cuda" and summary["config"]["model"]["dtype"] == "bfloat16"
    assert finite(summary), "a figure of the smoke run is not finite"
    for policy in ("initial", "sft", "ppo", "bon"):
        assert math.isfinite(summary["policies"][policy]["gold_reward_mean"]), policy
    assert summary["winrates"]["ppo_vs_initial"]["n"] == 8


def test_backbone_on_cuda_in_bfloat16_gives_float32_logprobs(tiny_model_dir):
    cfg = load_config(SMOKE, [f"model.name_or_path={tiny_model_dir}", *ON_GPU])
    backbone = open_backbone(cfg, str(tiny_model_dir))
    assert {(p.device.type, p.dtype) for p in backbone.model.parameters()} == {("cuda", torch.bfloat16)}
    query_ids, query_mask = encode_queries(backbone.tokenizer, ["The movie was", "I thought the plot"])
    response_ids = torch.randint(0, 1000, (2, 5))
    episodes = Episodes(query_ids, query_mask, response_ids, torch.ones(2, 5), torch.zeros(2, dtype=torch.bool))
    logprobs = LanguageModelRole(backbone, None, 0.7).logprobs(episodes)
    assert logprobs.dtype == torch.float32 and logprobs.device.type == "cuda"
    assert torch.isfinite(logprobs).all() and (logprobs < 0).all()
