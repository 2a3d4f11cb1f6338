"""The pipeline on any AutoModelForCausalLM: tiny random models of several architectures built from config (two
layers, the built-in model's tokenizer): peft's all-linear, adapters on the top layers, the frozen-prefix speed
path where it is exact, padding invariance, the sampler against a full forward, tokenizers without a pad token
or with pad = EOS, and the smoke pipeline end to end."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.pytorch_utils import Conv1D

from rlhf.models.architecture import SPLITTABLE_MODEL_TYPES, decoder_layers, logits_from_hidden, lora_targets
from rlhf.models.encoding import encode_queries
from rlhf.models.provision import builtin_model_dir, load_causal_lm, load_tokenizer
from rlhf.models.roles import Backbone, Episodes, LanguageModelRole, ScalarRole, encode_for_scoring
from rlhf.models.sampling import PrefixReuse, StopRule, sample_episodes

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"

SIZE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
# model_type -> its config fields beyond the vocabulary and special tokens (names as each config spells them)
ARCHITECTURES = {
    "llama": dict(**SIZE, num_key_value_heads=1, tie_word_embeddings=True),
    "qwen2": dict(**SIZE, num_key_value_heads=1, tie_word_embeddings=True),
    "mistral": dict(**SIZE, num_key_value_heads=1, sliding_window=4),  # windows shorter than the test sequences
    "gemma": dict(**SIZE, num_key_value_heads=1, head_dim=16),
    "gemma2": dict(**SIZE, num_key_value_heads=1, head_dim=16, final_logit_softcapping=5.0, sliding_window=4),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=2, n_positions=512),
    "gpt_neox": dict(**SIZE, rotary_pct=0.5, use_parallel_residual=True),
    "phi": dict(**SIZE, partial_rotary_factor=0.5),
}
# peft's all-linear on each, as module names (every linear layer but the output layer)
ALL_LINEAR = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}


def build_tiny(folder: Path, model_type: str, pad: str = "own", padding_side: str = "left", seed: int = 0) -> Path:
    """A random two-layer `model_type` model with the built-in model's tokenizer in `folder`. pad: `own` (the
    tokenizer's pad token, not EOS), `none` (no pad token) or `eos` (pad = EOS); padding_side: the tokenizer's."""
    tokenizer = AutoTokenizer.from_pretrained(builtin_model_dir())
    if pad == "none":
        tokenizer.pad_token = None
    elif pad == "eos":
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **ARCHITECTURES[model_type],
    )
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def tiny(request, tmp_path_factory) -> tuple[str, Path]:
    return request.param, build_tiny(tmp_path_factory.mktemp(request.param), request.param)


def backbone_of(folder: Path, top_layers: int = 0, targets=("all-linear",)) -> Backbone:
    tokenizer = load_tokenizer(str(folder))
    bb = Backbone(load_causal_lm(str(folder), tokenizer), tokenizer, 4, 8, targets, top_layers)
    bb.add_adapter("policy")
    bb.add_adapter("reward")
    torch.manual_seed(0)
    for name in ("policy", "reward"):  # LoRA B starts at 0: give the adapters weight so they change the output
        for p in bb.adapter_parameters(name):
            p.data.normal_(0, 0.3)
    return bb


def lora_layer_names(bb: Backbone, adapter: str) -> set[str]:
    """The modules carrying `adapter`'s LoRA weights, by full name."""
    return {k.split(".lora_A.")[0] for k, _ in bb.model.named_parameters() if f".lora_A.{adapter}." in k}


def test_all_linear_names_the_linear_layers_but_the_output_layer(tmp_path):
    for model_type, expected in ALL_LINEAR.items():
        model = AutoModelForCausalLM.from_pretrained(build_tiny(tmp_path / model_type, model_type))
        assert lora_targets(model, ["all-linear"]) == (expected, []), model_type
        assert lora_targets(model, "all-linear") == (expected, [])
    assert lora_targets(model, ["dense"]) == (["dense"], [])  # names are passed on as given
    with pytest.raises(ValueError, match="all-linear' stands alone"):
        lora_targets(model, ["all-linear", "dense"])


def test_all_linear_selects_what_peft_all_linear_selects(tiny):
    from peft import LoraConfig, get_peft_model

    model_type, folder = tiny
    ours = lora_layer_names(backbone_of(folder), "policy")
    model = AutoModelForCausalLM.from_pretrained(folder)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"), adapter_name="policy")
    theirs = {k.split(".lora_A.")[0] for k, _ in peft_model.named_parameters() if ".lora_A.policy." in k}
    assert ours and ours == theirs, model_type
    output = [n for n, m in model.named_modules() if m is model.get_output_embeddings()]
    assert not any(name.endswith(output[0]) for name in ours)


def test_adapters_on_the_top_layer_only(tiny):
    model_type, folder = tiny
    bb = backbone_of(folder, top_layers=1)
    name, layers = decoder_layers(bb.causal_lm())
    on = lora_layer_names(bb, "policy")
    assert on and all(f".{name}.1." in k for k in on), (model_type, on)  # the top of the two layers only
    assert len(on) == len(lora_layer_names(backbone_of(folder), "policy")) // 2
    assert bb.shares_frozen_prefix == (model_type in SPLITTABLE_MODEL_TYPES)


def test_frozen_prefix_speed_path_on_where_exact_and_logged_off_elsewhere(tiny, caplog):
    model_type, folder = tiny
    with caplog.at_level(logging.INFO, logger="rlhf"):
        bb = backbone_of(folder, top_layers=1)
        backbone_of(folder, top_layers=1)
    off = [r.message for r in caplog.records if "frozen-prefix speed path is off" in r.message]
    if model_type in ("llama", "qwen2", "mistral"):
        assert bb.shares_frozen_prefix and not off
        tok = bb.tokenizer
        ids, mask = encode_queries(tok, ["a short one", "a much longer prompt with several more words"])
        prefix = bb.frozen_prefix(ids, mask)
        with torch.no_grad():
            full, split = bb.hidden_states("policy", ids, mask), bb.hidden_states("policy", ids, mask, prefix)
        assert torch.allclose(full[mask.bool()], split[mask.bool()], atol=1e-5)
        reuse = PrefixReuse(keep_prefix=True, score_from_sampling=True)
        rm = ScalarRole(bb, "reward")
        episodes, _ = sample_episodes(
            LanguageModelRole(bb, "policy", 0.7), ["Hi", "A longer one"], 4, StopRule(tok), None, reuse
        )
        assert episodes.prefix is not None and episodes.scoring is not None
        assert all(s.prefix is not None for s in encode_for_scoring(rm, ["Hi"], [" there"]))
    else:  # skipped, said once per process (the log keeps the first time only, possibly from an earlier test)
        assert not bb.shares_frozen_prefix and len(off) <= 1
        assert all(s.prefix is None for s in encode_for_scoring(ScalarRole(bb, "reward"), ["Hi"], [" there"]))
    assert model_type not in ("gpt2", "gpt_neox", "gemma", "gemma2") or not bb.shares_frozen_prefix


def test_logprobs_and_scores_of_a_left_padded_batch_equal_each_row_alone(tiny):
    model_type, folder = tiny
    bb = backbone_of(folder)
    tok = bb.tokenizer
    policy, rm = LanguageModelRole(bb, "policy", 0.7), ScalarRole(bb, "reward")
    prompts = ["A short one", "A much longer opening sentence for this review that"]
    responses = [" was fine and good", " made me smile a lot"]
    q, qm = encode_queries(tok, prompts)
    resp = torch.tensor([tok(r).input_ids[:3] for r in responses])
    with torch.no_grad():
        together = policy.logprobs(Episodes(q, qm, resp, torch.ones(2, 3), torch.ones(2, dtype=torch.bool)))
        scores = rm.score(prompts, responses, batch_size=2)
        for i in range(2):
            qi, qmi = encode_queries(tok, prompts[i : i + 1])
            alone = policy.logprobs(Episodes(qi, qmi, resp[i : i + 1], torch.ones(1, 3), torch.ones(1, dtype=bool)))
            assert torch.allclose(together[i], alone[0], atol=1e-5), (model_type, i, together[i], alone[0])
            assert torch.allclose(scores[i], rm.score(prompts[i : i + 1], responses[i : i + 1])[0], atol=1e-5)
    assert qm[0, 0] == 0  # the first row was padded


def test_sampler_log_probs_equal_a_full_forward(tiny):
    """The KV-cached sampling loop (left padding, position ids, temperature, a row leaving at its stop) computes
    what a full forward over the finished sequences gives: the PPO ratio starts at 1 on every architecture."""
    model_type, folder = tiny
    bb = backbone_of(folder)
    policy = LanguageModelRole(bb, "policy", 0.7)
    torch.manual_seed(0)
    episodes, texts = sample_episodes(policy, ["One", "Two three four five"], 6, StopRule(bb.tokenizer, (" ",), 2))
    with torch.no_grad():
        full = policy.logprobs(episodes)
    real = episodes.response_mask.bool()
    assert torch.allclose(episodes.sample_logprobs[real], full[real], atol=1e-4), model_type
    assert len(texts) == 2


def test_gradient_checkpointing_gives_the_same_log_probs_and_gradients(tiny):
    model_type, folder = tiny
    tok = load_tokenizer(str(folder))
    q, qm = encode_queries(tok, ["A short one", "A much longer opening sentence"])
    episodes = Episodes(q, qm, torch.tensor([[5, 6, 7], [8, 9, 10]]), torch.ones(2, 3), torch.ones(2, dtype=torch.bool))
    results = []
    for checkpointing in (False, True):
        bb = backbone_of(folder)
        if checkpointing:
            bb.enable_gradient_checkpointing()
        params = bb.mark_trainable("policy")
        calls = []  # the bottom layer's modules run again in the backward pass when it is checkpointed
        inner = next(m for m in decoder_layers(bb.causal_lm())[1][0].modules() if isinstance(m, (nn.Linear, Conv1D)))
        hook = inner.register_forward_hook(lambda *args: calls.append(1))
        logprobs = LanguageModelRole(bb, "policy", 0.7).logprobs(episodes)
        logprobs.sum().backward()
        hook.remove()
        assert len(calls) == (2 if checkpointing else 1), (model_type, checkpointing, len(calls))
        results.append((logprobs.detach(), [p.grad.clone() for p in params]))
    (lp, grads), (lp_ckpt, grads_ckpt) = results
    assert torch.allclose(lp, lp_ckpt, atol=1e-6), model_type
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, grads_ckpt))
    assert any(g.abs().sum() > 0 for g in grads)


def test_logits_from_hidden_apply_the_final_soft_cap(tmp_path):
    model = AutoModelForCausalLM.from_pretrained(build_tiny(tmp_path / "g", "gemma2"))
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        hidden = model.get_decoder()(input_ids=ids).last_hidden_state
        assert torch.allclose(logits_from_hidden(model, hidden), out.logits, atol=1e-5)
        assert out.logits.abs().max() <= 5.0  # capped at final_logit_softcapping
        assert not torch.allclose(model.get_output_embeddings()(hidden), out.logits, atol=1e-3)


@pytest.mark.parametrize("pad", ["own", "none", "eos"])
def test_tokenizer_pad_cases(tmp_path, pad, monkeypatch):
    import rlhf.models.sampling as sampling

    """A tokenizer's own pad token is kept; without one, or with pad = EOS, pad is EOS and nothing is added (no
    vocabulary resize). Either way EOS stops a response, is scored at, and rows do not depend on padding."""
    folder = build_tiny(tmp_path / pad, "llama", pad=pad, padding_side="right")
    raw = AutoTokenizer.from_pretrained(folder)
    tok = load_tokenizer(str(folder))
    assert tok.padding_side == "left" and len(tok) == len(raw)
    assert (tok.pad_token_id == tok.eos_token_id) == (pad != "own")
    model = load_causal_lm(str(folder), tok)
    assert model.get_input_embeddings().weight.shape[0] == len(raw)
    eos, word = tok.eos_token_id, tok(" word").input_ids[0]
    mask, has_stop = StopRule(tok).apply(torch.tensor([[word, eos, word], [word, word, word]]))
    assert mask.tolist() == [[1, 1, 0], [1, 1, 1]] and has_stop.tolist() == [True, False]
    bb = Backbone(model, tok, 4, 8)
    bb.add_adapter("reward")
    rm = ScalarRole(bb, "reward")
    pairs = rm.tokenize(["A film", "A much longer opening of a film that"], [" was good.", " bored me"])
    assert all(a[-1] == eos for _, a in pairs)  # the score is read at the appended EOS
    with torch.no_grad():
        both = rm.score(["A film", "A much longer opening of a film that"], [" was good.", " bored me"])
        alone = rm.score(["A film"], [" was good."])
    assert torch.allclose(both[0], alone[0], atol=1e-5)
    steps = []  # the sampler picks EOS at the second step of every row
    real = sampling.sample_categorical
    monkeypatch.setattr(
        sampling,
        "sample_categorical",
        lambda probs, u=None: (
            steps.append(1),
            torch.full_like(real(probs, u), eos) if len(steps) == 2 else real(probs, u),
        )[1],
    )
    episodes, texts = sample_episodes(LanguageModelRole(bb, None, 1.0), ["One", "Two three"], 4, StopRule(tok))
    assert episodes.has_stop.all() and episodes.response_mask.tolist() == [[1, 1, 0, 0]] * 2
    assert (episodes.response_ids[:, 1] == eos).all()  # a real EOS stays in the response (not taken for padding)


def rlhf(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "rlhf.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, f"rlhf {' '.join(args)}: exit {proc.returncode}\n{proc.stderr[-5000:]}"
    return proc


SHORT_RUN = ["sft.n_demonstrations=8", "collect.n_prompts=6", "ppo.iterations=1", "task.n_eval_prompts=4"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "model_type, pad, top_layers",
    [("gpt2", "none", 1), ("gpt_neox", "eos", 0), ("gemma2", "own", 1), ("qwen2", "own", 1), ("phi", "none", 0)],
)
def test_smoke_pipeline_runs_on_the_architecture(tmp_path, model_type, pad, top_layers):
    folder = build_tiny(tmp_path / "model", model_type, pad=pad)
    out = tmp_path / "run"
    proc = rlhf(
        "run",
        "--config",
        str(SMOKE),
        "--out",
        str(out),
        f"model.name_or_path={folder}",
        f"model.lora_top_layers={top_layers}",
        *SHORT_RUN,
    )
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["policies"]) == {"initial", "sft", "ppo", "bon"}
    assert "win_rate" in summary["winrates"]["ppo_vs_initial"] and (out / "report.html").exists()
    rows = [json.loads(line) for line in (out / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert rows and rows[0]["first_minibatch_max_log_ratio"] == 0.0  # sampling and training forwards agree
    assert ("frozen-prefix speed path is off" in proc.stderr) == (
        top_layers > 0 and model_type not in SPLITTABLE_MODEL_TYPES
    )
