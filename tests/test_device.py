"""Device and precision on the CPU: model.device and model.dtype resolved into a Placement, a missing device as a
clear error that writes nothing, gradient checkpointing and accumulation computing what they replace, and the
smoke pipeline in bfloat16 (float32 math on bfloat16 weights)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhf.config import ModelConfig
from rlhf.config_checks import ConfigError
from rlhf.config_loading import load_config
from rlhf.models.device import Placement, resolve_dtype, resolve_placement
from rlhf.models.encoding import encode_queries
from rlhf.models.provision import load_causal_lm, load_tokenizer
from rlhf.models.roles import Backbone, Episodes
from rlhf.models.sampling import StopRule
from rlhf.run import RunDir
from rlhf.stages.optim import accumulated_step, micro_batches
from rlhf.stages.sft import response_nll

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def rlhf(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "rlhf.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)


@pytest.fixture
def no_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_auto_on_a_cpu_machine_is_cpu_float32(no_accelerator):
    placement = resolve_placement(ModelConfig())
    assert placement == Placement(torch.device("cpu"), torch.float32, 1)
    assert placement.describe() == "device cpu, dtype float32, world size 1"


def test_an_explicit_dtype_is_kept_on_the_cpu(no_accelerator):
    cfg = load_config(None, ["model.device=cpu", "model.dtype=bfloat16"])
    assert resolve_placement(cfg.model) == Placement(torch.device("cpu"), torch.bfloat16, 1)


def test_bfloat16_on_a_cpu_that_only_emulates_it_is_warned_about(monkeypatch, caplog):
    import rlhf.models.device as device

    monkeypatch.setattr(device, "cpu_computes_bfloat16", lambda: False)
    with caplog.at_level("WARNING", logger="rlhf"):
        assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
        assert resolve_dtype("float32", torch.device("cpu")) == torch.float32
    assert [r.message for r in caplog.records if "emulates" in r.message] and len(caplog.records) == 1
    monkeypatch.setattr(device, "cpu_computes_bfloat16", lambda: True)
    caplog.clear()
    with caplog.at_level("WARNING", logger="rlhf"):
        resolve_dtype("bfloat16", torch.device("cpu"))
    assert not caplog.records


def test_auto_dtype_is_bfloat16_on_a_gpu_that_supports_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_device_strings_accepted_on_load(device):
    assert load_config(None, [f"model.device={device}"]).model.device == device


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CPU", "cuda1"])
def test_a_bad_device_string_is_a_config_error_naming_the_field(device):
    with pytest.raises(ConfigError, match=r"model\.device: expected auto, cpu, cuda, cuda:N or mps"):
        load_config(None, [f"model.device={device}"])


def test_a_device_that_yaml_reads_as_a_mapping_is_a_config_error_naming_the_field():
    with pytest.raises(ConfigError, match=r"model\.device: expected a string, got \{'cuda': None\}"):
        load_config(None, ["model.device=cuda:"])  # YAML reads "cuda:" as {cuda: null}


def test_gradient_accumulation_steps_must_be_positive():
    assert load_config(None, ["ppo.gradient_accumulation_steps=4"]).ppo.gradient_accumulation_steps == 4
    with pytest.raises(ConfigError, match=r"sft\.gradient_accumulation_steps: expected an integer >= 1"):
        load_config(None, ["sft.gradient_accumulation_steps=0"])


def test_cuda_requested_without_cuda_is_an_error(no_accelerator):
    with pytest.raises(RuntimeError, match=r"model\.device: cuda requested but torch\.cuda\.is_available\(\) is False"):
        resolve_placement(ModelConfig(device="cuda"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_run_with_cuda_on_a_cpu_machine_fails_clearly_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    proc = rlhf("run", "--config", str(SMOKE), "--out", str(out), "model.device=cuda")
    assert proc.returncode != 0
    assert "model.device: cuda requested but torch.cuda.is_available() is False" in proc.stderr
    assert not out.exists()


def test_checkpoints_load_onto_the_cpu(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    run.save_checkpoint("ppo", {"step": 3, "weights": torch.ones(2)})
    seen = {}
    load = torch.load

    def recording_load(*args, **kwargs):
        seen.update(kwargs)
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    state = run.load_checkpoint("ppo")
    assert seen["map_location"] == "cpu"  # a checkpoint a GPU saved resumes on a CPU-only machine
    assert state["step"] == 3 and state["weights"].device.type == "cpu"


def test_episodes_and_stop_rule_move_to_a_device(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    rule = StopRule(tokenizer, (".",), min_tokens=1)
    meta = torch.device("meta")
    assert rule.to(meta).is_eos.device == meta and rule.has_stop_string.device == meta
    ids = torch.ones(2, 3, dtype=torch.long)
    episodes = Episodes(ids, ids, ids, ids.float(), torch.ones(2, dtype=torch.bool), sample_logprobs=ids.float())
    moved = episodes.to(meta)
    assert all(t.device == meta for t in (moved.query_ids, moved.response_mask, moved.has_stop, moved.sample_logprobs))
    assert moved.prefix is None and episodes.query_ids.device.type == "cpu"


def test_load_causal_lm_places_weights_in_the_dtype(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_causal_lm(str(tiny_model_dir), tokenizer, "cpu", torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def sft_gradients(tiny_model_dir, checkpointing: bool) -> tuple[list[torch.Tensor], int]:
    """Gradients of the SFT loss on a LoRA adapter, and how often the top layer's first norm ran in forward and backward."""
    tokenizer = load_tokenizer(str(tiny_model_dir))
    torch.manual_seed(0)
    backbone = Backbone(load_causal_lm(str(tiny_model_dir), tokenizer), tokenizer, 4, 8, ["q_proj", "v_proj"])
    if checkpointing:
        backbone.enable_gradient_checkpointing()
    backbone.add_adapter("sft")
    params = backbone.mark_trainable("sft")
    for p in params:  # LoRA's B starts at 0: make the adapter's gradient flow through every layer
        torch.nn.init.normal_(p, std=0.1)
    calls = []
    norm = backbone.causal_lm().model.layers[-1].input_layernorm  # its output feeds the adapter on q_proj
    hook = norm.register_forward_hook(lambda *args: calls.append(1))
    loss = response_nll(backbone, "sft", ["The movie was", "I think"], [" great fun.", " it is fine."])
    loss.backward()
    hook.remove()
    return [p.grad.clone() for p in params], len(calls)


def test_gradient_checkpointing_recomputes_and_gives_the_same_gradients(tiny_model_dir):
    plain, plain_calls = sft_gradients(tiny_model_dir, checkpointing=False)
    checkpointed, checkpointed_calls = sft_gradients(tiny_model_dir, checkpointing=True)
    assert plain_calls == 1 and checkpointed_calls == 2  # the layer ran again in the backward pass
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b)


def two_role_gradients(tiny_model_dir, checkpointing: bool) -> list[torch.Tensor]:
    """PPO's first step: the policy's and the value's forward passes, the reference's (adapters off), one backward."""
    tokenizer = load_tokenizer(str(tiny_model_dir))
    torch.manual_seed(0)
    backbone = Backbone(load_causal_lm(str(tiny_model_dir), tokenizer), tokenizer, 4, 8, ["q_proj", "v_proj"])
    if checkpointing:
        backbone.enable_gradient_checkpointing()
    params = []
    for name in ("policy", "value"):
        backbone.add_adapter(name)
        params += backbone.mark_trainable(name)
    for p in params:
        torch.nn.init.normal_(p, std=0.1)
    ids, mask = encode_queries(tokenizer, ["The movie was", "I think the ending"])
    loss = (
        backbone.hidden_states("policy", ids, mask).square().mean() + backbone.hidden_states("value", ids, mask).mean()
    )
    with torch.no_grad():
        backbone.hidden_states(None, ids, mask)
    loss.backward()
    return [p.grad.clone() for p in params]


def test_a_checkpointed_layer_is_recomputed_with_the_adapter_it_ran_with(tiny_model_dir):
    # peft reads the active adapter when a layer is called: without the recompute context the policy's layers would
    # be recomputed with the value's adapter, the one active when the backward pass runs
    for a, b in zip(two_role_gradients(tiny_model_dir, False), two_role_gradients(tiny_model_dir, True)):
        torch.testing.assert_close(a, b)


def test_micro_batches():
    assert micro_batches(list(range(5)), 1) == [[0, 1, 2, 3, 4]]
    assert micro_batches(list(range(5)), 2) == [[0, 1, 2], [3, 4]]
    assert micro_batches(list(range(2)), 4) == [[0], [1]]


def test_accumulated_step_takes_the_step_of_the_whole_batch():
    data = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))

    def step(parts: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        params = list(model.parameters())
        loss = accumulated_step(
            list(range(6)), lambda rows: model(data[rows]).pow(2).mean(), params, optimizer, scheduler, parts
        )
        return loss.detach(), model.weight.detach().clone()

    whole_loss, whole_weight = step(1)
    for parts in (2, 3):
        loss, weight = step(parts)
        torch.testing.assert_close(loss, whole_loss)
        torch.testing.assert_close(weight, whole_weight)


def finite_figures(summary: dict) -> None:
    for policy, figures in summary["policies"].items():
        for key in ("gold_reward_mean", "kl_to_reference"):
            assert math.isfinite(figures[key]), (policy, key, figures[key])
    assert math.isfinite(summary["winrates"]["ppo_vs_initial"]["win_rate"])


@pytest.mark.slow
def test_smoke_pipeline_in_bfloat16_on_the_cpu(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    proc = rlhf(
        "run",
        "--config",
        str(SMOKE),
        "--out",
        str(out),
        f"model.name_or_path={tiny_model_dir}",
        "model.device=cpu",
        "model.dtype=bfloat16",
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "device cpu, dtype bfloat16, world size 1" in (out / "log.txt").read_text()
    finite_figures(json.loads((out / "summary.json").read_text()))
    rows = [json.loads(line) for line in (out / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["kl"]) and math.isfinite(r["value_loss"]) for r in rows)
    assert rows[0]["first_minibatch_max_log_ratio"] == 0.0  # float32 log-probs of bfloat16 weights still match


@pytest.mark.slow
def test_smoke_pipeline_with_gradient_accumulation_and_checkpointing(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    overrides = [
        "model.gradient_checkpointing=true",
        "sft.gradient_accumulation_steps=2",
        "reward.gradient_accumulation_steps=2",
        "ppo.gradient_accumulation_steps=2",
    ]
    proc = rlhf("run", "--config", str(SMOKE), "--out", str(out), f"model.name_or_path={tiny_model_dir}", *overrides)
    assert proc.returncode == 0, proc.stderr[-5000:]
    finite_figures(json.loads((out / "summary.json").read_text()))
