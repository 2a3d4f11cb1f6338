"""A LoRA run keeps adapters, and `rlhf export` turns a run's models into folders plain transformers and peft load:
the policy merged or as one peft adapter on the base (same logits as our policy), the reward model as a sequence
classifier whose pipeline scores are our ScalarRole scores, a model card in each, and a push to the hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, pipeline

from rlhf.config import RunConfig
from rlhf.config_loading import config_from_dict
from rlhf.models import export as export_module
from rlhf.models.encoding import EncodedSequence, pad_encoded, pad_prompt_response
from rlhf.models.export import (
    check_pairs,
    classifier_from_role,
    eos_appending_tokenizer,
    export_model,
    give_distinct_pad,
    lora_scaling,
    lora_sum,
    summed_adapter,
    upload_folder,
)
from rlhf.models.loading import load_reward_model, open_backbone, sft_model_path
from rlhf.models.provision import builtin_model_dir, load_causal_lm, load_tokenizer
from rlhf.models.roles import Backbone, ScalarRole, position_ids_from_mask
from rlhf.models.saving import ON_BASE, merge_adapter, save_policy
from rlhf.run import RunDir

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
PAIRS = [("A film", " was good."), ("Another film that", " bored me to tears"), ("The plot", " was thin")]


# LoRA sums -----------------------------------------------------------------------------------------------------
def test_lora_scaling_is_alpha_over_r_or_over_its_square_root_with_rslora():
    assert lora_scaling(LoraConfig(r=4, lora_alpha=8)) == 2.0
    assert lora_scaling(LoraConfig(r=4, lora_alpha=8, use_rslora=True)) == 4.0


def test_lora_sum_stacks_the_two_adapters_into_one_of_their_summed_rank():
    a1, b1 = torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0], [0.0]])
    a2, b2 = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0], [3.0]])
    a, b = lora_sum(a1, b1, 2.0, a2, b2, 0.5)
    assert a.tolist() == [[1.0, 2.0], [0.0, 1.0]] and b.tolist() == [[2.0, 0.0], [0.0, 1.5]]
    # 2 * [[1, 2], [0, 0]] + 0.5 * [[0, 0], [0, 3]]
    assert (b @ a).tolist() == [[2.0, 4.0], [0.0, 1.5]]


def test_summed_adapter_is_rank_r1_plus_r2_with_scaling_one():
    c1, c2 = LoraConfig(r=2, lora_alpha=4, target_modules=["q"]), LoraConfig(r=3, lora_alpha=3, target_modules=["q"])
    s1 = {"m.q.lora_A.weight": torch.ones(2, 5), "m.q.lora_B.weight": torch.ones(4, 2)}
    s2 = {"m.q.lora_A.weight": torch.ones(3, 5), "m.q.lora_B.weight": torch.full((4, 3), 2.0)}
    config, state = summed_adapter([c1, c2], [s1, s2])
    assert (config.r, config.lora_alpha, lora_scaling(config)) == (5, 5, 1.0)
    delta = state["m.q.lora_B.weight"] @ state["m.q.lora_A.weight"]
    expected = (
        2.0 * s1["m.q.lora_B.weight"] @ s1["m.q.lora_A.weight"] + s2["m.q.lora_B.weight"] @ s2["m.q.lora_A.weight"]
    )
    assert torch.equal(delta, expected)  # 2 * 2 + 3 * 2 = 10 everywhere
    assert delta.unique().tolist() == [10.0]
    with pytest.raises(ValueError, match="different layers"):
        summed_adapter([c1, c2], [s1, {"m.k.lora_A.weight": torch.ones(3, 5), "m.k.lora_B.weight": torch.ones(4, 3)}])


# a stage's adapter, saved and opened -----------------------------------------------------------------------------
def test_an_adapter_saved_and_opened_gives_the_weights_merged_in_memory_and_leaves_the_rng_alone(
    tiny_model_dir, tmp_path
):
    """What keeps the figures of a run bit-identical to those of runs that saved merged copies: opening base + adapter
    merges the same fp32 tensors with the same peft merge, and draws nothing from the global RNG."""
    cfg = config_for(tiny_model_dir)
    tok = load_tokenizer(str(tiny_model_dir))
    m = cfg.model
    bb = Backbone(load_causal_lm(str(tiny_model_dir), tok), tok, m.lora_r, m.lora_alpha, m.lora_target_modules)
    bb.add_adapter("sft")
    torch.manual_seed(2)
    for p in bb.adapter_parameters("sft"):
        p.data.normal_(0, 0.5)
    save_policy(bb, "sft", tmp_path / "sft" / "model", ON_BASE, str(tiny_model_dir))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft"]  # no temporary folder left behind
    expected = merge_adapter(bb, "sft").state_dict()
    torch.manual_seed(5)
    state = torch.random.get_rng_state()
    opened = open_backbone(cfg, str(tmp_path / "sft" / "model"))
    assert torch.equal(torch.random.get_rng_state(), state)
    got = opened.model.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


def config_for(model_dir: Path) -> RunConfig:
    return config_from_dict(
        {"model": {"name_or_path": str(model_dir), "lora_r": 4, "lora_alpha": 8, "lora_target_modules": ["q_proj"]}}
    )


# the reward model's tokenizer and head ---------------------------------------------------------------------------
def make_role(model_dir: Path, targets: list[str], gain: float, bias: float) -> ScalarRole:
    tok = load_tokenizer(str(model_dir))
    bb = Backbone(load_causal_lm(str(model_dir), tok), tok, lora_r=4, lora_alpha=8, target_modules=targets)
    bb.add_adapter("reward")
    torch.manual_seed(1)
    for p in bb.adapter_parameters("reward"):
        p.data.normal_(0, 0.5)
    role = ScalarRole(bb, "reward")
    with torch.no_grad():
        role.head.bias.fill_(0.3)
    role.gain, role.bias = gain, bias
    return role


def test_exported_tokenizer_appends_eos_as_the_reward_model_reads_it(tiny_model_dir, tmp_path):
    reference = load_tokenizer(str(tiny_model_dir))
    tok = eos_appending_tokenizer(reference)
    check_pairs(tok, reference, tmp_path)  # raises if a pair is encoded otherwise
    assert tok("A film was good.").input_ids == reference("A film was good.").input_ids + [reference.eos_token_id]
    assert tok.padding_side == "right" and reference("x").input_ids[-1] != reference.eos_token_id  # a copy was edited
    tok.save_pretrained(tmp_path / "tok")
    check_pairs(AutoTokenizer.from_pretrained(tmp_path / "tok"), reference, tmp_path)  # and it survives a reload


def pipeline_scores(folder: Path, pairs) -> list[float]:
    score = pipeline("text-classification", model=str(folder), function_to_apply="none", device="cpu")
    return [score({"text": p, "text_pair": r})["score"] for p, r in pairs]


def test_reward_pipeline_gives_the_score_with_the_offset_left_in_the_config_on_llama(tiny_model_dir, tmp_path):
    role = make_role(tiny_model_dir, ["q_proj", "v_proj"], gain=2.0, bias=-0.5)
    ours = role.score([p for p, _ in PAIRS], [r for _, r in PAIRS]).tolist()
    tokenizer = eos_appending_tokenizer(role.backbone.tokenizer)
    classifier = classifier_from_role(role, "reward")
    # RMSNorm and a bias-free head: the constant 2 * 0.3 - 0.5 cannot go into the weights
    assert classifier.config.rlhf_score_offset == pytest.approx(0.1)
    classifier.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    got = [s + classifier.config.rlhf_score_offset for s in pipeline_scores(tmp_path / "rm", PAIRS)]
    assert got == pytest.approx(ours, abs=1e-5)


def make_tiny_gpt2(folder: Path) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(builtin_model_dir())
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        model.transformer.ln_f.bias.normal_(0, 0.5)  # a final LayerNorm with a bias that matters
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_reward_pipeline_gives_exactly_our_scores_where_the_final_norm_has_a_bias(tmp_path):
    role = make_role(make_tiny_gpt2(tmp_path / "gpt2"), ["c_attn"], gain=2.0, bias=-0.5)
    ours = role.score([p for p, _ in PAIRS], [r for _, r in PAIRS]).tolist()
    tokenizer = eos_appending_tokenizer(role.backbone.tokenizer)
    classifier = classifier_from_role(role, "reward")
    assert classifier.config.rlhf_score_offset == 0.0  # folded into ln_f's bias
    classifier.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    assert pipeline_scores(tmp_path / "rm", PAIRS) == pytest.approx(ours, abs=1e-5)


def test_reward_pipeline_reads_the_appended_eos_when_the_pad_token_is_eos(tiny_model_dir, tmp_path):
    role = make_role(tiny_model_dir, ["q_proj", "v_proj"], gain=2.0, bias=-0.5)
    role.backbone.tokenizer.pad_token = role.backbone.tokenizer.eos_token  # pad = EOS, as many chat models have it
    ours = role.score([p for p, _ in PAIRS], [r for _, r in PAIRS]).tolist()
    tokenizer = eos_appending_tokenizer(role.backbone.tokenizer)
    classifier = classifier_from_role(role, "reward")
    vocabulary = classifier.config.vocab_size
    give_distinct_pad(classifier, tokenizer)
    assert tokenizer.pad_token == "<|rlhf_pad|>" and classifier.config.pad_token_id == vocabulary
    classifier.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    got = [s + classifier.config.rlhf_score_offset for s in pipeline_scores(tmp_path / "rm", PAIRS)]
    assert got == pytest.approx(ours, abs=1e-5)
    # and in batches, padded on the right with the new pad token
    score = pipeline("text-classification", model=str(tmp_path / "rm"), function_to_apply="none", device="cpu")
    batched = score([{"text": p, "text_pair": r} for p, r in PAIRS], batch_size=len(PAIRS))
    assert [b["score"] + classifier.config.rlhf_score_offset for b in batched] == pytest.approx(ours, abs=1e-5)


# the hub -------------------------------------------------------------------------------------------------------
class StandInHub:
    """Records what `upload_folder` asks of huggingface_hub's HfApi, and what the folder held then."""

    calls: list = []

    def create_repo(self, repo_id, exist_ok=False, **kwargs):
        self.calls.append(("create_repo", repo_id, exist_ok))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path, repo_id, **kwargs):
        self.calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))


def test_upload_folder_creates_the_repo_and_uploads_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "HfApi", StandInHub)
    StandInHub.calls = []
    (tmp_path / "README.md").write_text("card")
    assert upload_folder(tmp_path, "me/my-rm") == "https://huggingface.co/me/my-rm"
    assert StandInHub.calls == [("create_repo", "me/my-rm", True), ("upload_folder", "me/my-rm", ["README.md"])]


# a whole run on the tiny model -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke_run(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export-run") / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    args = ["run", "--config", str(SMOKE), "--out", str(out), f"model.name_or_path={tiny_model_dir}"]
    proc = subprocess.run([sys.executable, "-m", "rlhf.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return out


def our_policy_logits(run: Path, stage: str, ids, mask) -> torch.Tensor:
    cfg = RunDir(run).load_config()
    backbone = open_backbone(cfg, str(run / stage / "model"))
    with torch.no_grad():
        return backbone.lm_head(backbone.hidden_states(None, ids, mask))


def inputs(tokenizer):
    return pad_prompt_response(
        [(tokenizer(p).input_ids, tokenizer(r, add_special_tokens=False).input_ids) for p, r in PAIRS],
        tokenizer.pad_token_id,
    )[:2]


@pytest.mark.slow
def test_a_lora_run_keeps_adapters_not_merged_models(smoke_run):
    for stage in ("sft", "ppo"):
        folder = smoke_run / stage / "model"
        assert sorted(p.name for p in folder.iterdir()) == [
            "adapter_config.json",
            "adapter_model.safetensors",
            "rlhf_adapter.json",
        ]
        assert json.loads((folder / "rlhf_adapter.json").read_text()) == {"on": "base" if stage == "sft" else "sft"}
    assert not (smoke_run / "reward" / "hf_model").exists()
    big = [p for p in smoke_run.rglob("*") if p.is_file() and p.stat().st_size > 1_000_000]
    assert big == []  # the tiny model's full weights are 3 MB (its vocabulary); no copy of them is kept


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "ppo"])
def test_exported_policy_merged_and_as_one_adapter_on_the_base_give_our_logits(
    smoke_run, tiny_model_dir, tmp_path, stage
):
    export_model(smoke_run, "policy", tmp_path / "merged", merged=True, stage=stage)
    export_model(smoke_run, "policy", tmp_path / "adapter", merged=False, stage=stage)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    ids, mask = inputs(tokenizer)
    ours = our_policy_logits(smoke_run, stage, ids, mask)
    position_ids = position_ids_from_mask(mask)
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
        got_merged = merged(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        peft_model = PeftModel.from_pretrained(base, tmp_path / "adapter")
        got_adapter = peft_model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    real = mask.bool()
    assert torch.equal(got_merged[real], ours[real])  # the same weights, saved
    assert torch.allclose(got_adapter[real], ours[real], atol=1e-5)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == (4 if stage == "sft" else 8) and config["base_model_name_or_path"] == str(tiny_model_dir)
    for folder in ("merged", "adapter"):
        card = (tmp_path / folder / "README.md").read_text()
        assert str(tiny_model_dir) in card and '"winrates"' in card and "sentiment" in card


@pytest.mark.slow
def test_exported_reward_model_scores_as_our_reward_model_in_a_pipeline(smoke_run, tmp_path):
    from rlhf.cli import main

    assert main(["export", str(smoke_run), "--what", "reward", "--to", str(tmp_path / "rm")]) == 0
    cfg = RunDir(smoke_run).load_config()
    rm = load_reward_model(RunDir(smoke_run), open_backbone(cfg, sft_model_path(RunDir(smoke_run), cfg)))
    ours = rm.score([p for p, _ in PAIRS], [r for _, r in PAIRS]).tolist()
    offset = json.loads((tmp_path / "rm" / "config.json").read_text())["rlhf_score_offset"]
    assert [s + offset for s in pipeline_scores(tmp_path / "rm", PAIRS)] == pytest.approx(ours, abs=1e-5)
    card = (tmp_path / "rm" / "README.md").read_text()
    assert "rlhf_score_offset" in card and "text_pair" in card


@pytest.mark.slow
def test_exported_value_network_predicts_as_ours_and_is_pushed_to_the_stand_in_hub(smoke_run, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "HfApi", StandInHub)
    StandInHub.calls = []
    export_model(smoke_run, "value", tmp_path / "value", merged=True, push_to_hub="me/value")
    assert StandInHub.calls[0] == ("create_repo", "me/value", True) and "README.md" in StandInHub.calls[1][2]
    value = export_module.scalar_role(RunDir(smoke_run), RunDir(smoke_run).load_config(), "value")
    tokenizer = value.backbone.tokenizer
    seqs = [EncodedSequence(torch.tensor(tokenizer(p + r).input_ids), None) for p, r in PAIRS]
    with torch.no_grad():
        ours = value.raw_scores(pad_encoded(seqs, tokenizer.pad_token_id)) * value.gain + value.bias
        classifier = export_module.AutoModelForSequenceClassification.from_pretrained(tmp_path / "value")
        got = [classifier(input_ids=s.ids[None]).logits.item() + classifier.config.rlhf_score_offset for s in seqs]
    assert got == pytest.approx(ours.tolist(), abs=1e-5)
    assert "predicts the return" in (tmp_path / "value" / "README.md").read_text()


@pytest.mark.slow
def test_export_refuses_what_it_cannot_write(smoke_run, tmp_path):
    from rlhf.cli import main

    assert main(["export", str(smoke_run), "--what", "reward", "--adapter", "--to", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
