"""`rlhf export`: a run's policy, reward model or value network as folders plain transformers, peft and TRL load.

- policy, merged: a plain causal-LM folder (`AutoModelForCausalLM.from_pretrained(DIR)`).
- policy, adapter: one standard peft adapter on the base model (`PeftModel.from_pretrained(base, DIR)`). The PPO
  policy's adapter sits on the SFT model (the SFT adapter merged into the base); both are exported as their sum, a
  single adapter on the base: s1 B1 A1 + s2 B2 A2 = [s1 B1, s2 B2] [A1; A2], rank r1 + r2 with scaling 1.
- reward / value: an `AutoModelForSequenceClassification` folder (num_labels 1, problem_type regression) whose head
  carries the trained head times the normalisation gain. The reward model's tokenizer appends EOS (to a text, and
  after the second text of a pair), where the score is read, so `pipeline("text-classification", model=DIR,
  function_to_apply="none")({"text": prompt, "text_pair": response})` reads the same token as `ScalarRole.score`.
  The normalisation's additive constant is folded into the final norm's bias where the architecture has one
  (LayerNorm: GPT-2, GPT-NeoX, Phi...); RMSNorm models (Llama, Qwen2, Mistral, Gemma) have no additive term
  anywhere after the last layer, and transformers' classifier head for them has no bias, so there the constant is
  left in `config.rlhf_score_offset` (0 when folded) and the model card says to add it.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from huggingface_hub import HfApi
from peft import LoraConfig
from safetensors.torch import load_file
from tokenizers import processors
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlhf.config import RunConfig
from rlhf.config_methods import POLICY_METHODS
from rlhf.models.device import Placement
from rlhf.models.encoding import tokenize_prompt_response
from rlhf.models.loading import (
    load_reward_model,
    model_chain,
    open_backbone,
    open_causal_lm,
    sft_model_path,
)
from rlhf.models.model_card import write_model_card
from rlhf.models.provision import BUILTIN
from rlhf.models.roles import ScalarRole
from rlhf.models.saving import ADAPTER_NOTE, merge_adapter, save_hf_folder, write_adapter_files, write_folder
from rlhf.run import RunDir

WHAT = ("policy", "reward", "value")
CPU_FP32 = Placement(torch.device("cpu"), torch.float32)  # exports are made on the CPU, weights in float32
FINAL_NORMS = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f")  # the trunk's last norm, by name
PROBE_PAIRS = [("A film", " was good."), ("Another film that", " bored me"), ("x", "")]


class ExportError(ValueError):
    pass


def lora_scaling(config: LoraConfig) -> float:
    """peft's scaling of an adapter's update: alpha / r (alpha / sqrt(r) with rsLoRA)."""
    return config.lora_alpha / (math.sqrt(config.r) if config.use_rslora else config.r)


# LoRA (Hu et al. 2021): a layer's update is s * B A; two adapters applied in turn add their updates, and
# s1 B1 A1 + s2 B2 A2 = [s1 B1, s2 B2] [A1; A2], one adapter of rank r1 + r2 with scaling 1.
def lora_sum(a1: torch.Tensor, b1: torch.Tensor, s1: float, a2: torch.Tensor, b2: torch.Tensor, s2: float):
    """(A, B) of the one adapter (scaling 1) whose update B A is s1 B1 A1 + s2 B2 A2; A [r1+r2, in], B [out, r1+r2]."""
    return torch.cat([a1, a2], dim=0), torch.cat([s1 * b1, s2 * b2], dim=1)


def summed_adapter(configs: list[LoraConfig], states: list[dict]) -> tuple[LoraConfig, dict]:
    """One adapter on the base equal to the adapters `configs`/`states` merged in turn (`lora_sum` per layer)."""
    config, state = configs[0], states[0]
    for c2, s2 in zip(configs[1:], states[1:]):
        if set(state) != set(s2) or config.rank_pattern or config.alpha_pattern or c2.rank_pattern or c2.alpha_pattern:
            raise ExportError("the SFT and PPO adapters cover different layers: export with --merged instead")
        if any(".lora_A." not in k and ".lora_B." not in k for k in state):
            raise ExportError("an adapter holds more than LoRA's A and B matrices: export with --merged instead")
        w1, w2 = lora_scaling(config), lora_scaling(c2)
        summed = {}
        for key in state:
            if ".lora_A." in key:
                b_key = key.replace(".lora_A.", ".lora_B.")
                summed[key], summed[b_key] = lora_sum(state[key], state[b_key], w1, s2[key], s2[b_key], w2)
        r = config.r + c2.r
        config = LoraConfig(**{**config.to_dict(), "r": r, "lora_alpha": r, "use_rslora": False})
        state = summed
    return config, state


def hub_base_name(cfg: RunConfig, base_path: str) -> str:
    """The base model as a user names it: the config's hub id or folder; the built-in model's converted folder."""
    return base_path if cfg.model.name_or_path == BUILTIN else cfg.model.name_or_path


def policy_path(run: RunDir, stage: str) -> Path:
    if stage not in ("sft", *POLICY_METHODS):
        raise ExportError(f"--stage must be one of sft, {', '.join(POLICY_METHODS)}, got {stage!r}")
    run.require(stage)
    if stage == "sft" and not run.done_info("sft").get("trained"):
        raise ExportError(f"{run.root}: SFT was skipped (sft.n_demonstrations: 0); its policy is the base model")
    return run.root / stage / "model"


def export_policy(run: RunDir, cfg: RunConfig, stage: str, folder: Path, merged: bool) -> dict:
    """The `stage` (sft or ppo) policy into `folder`: a plain causal-LM folder (merged) or one peft adapter on the
    base model with the base's own tokenizer; returns what the model card says about it."""
    path = policy_path(run, stage)
    if merged:
        tokenizer, model = open_causal_lm(cfg, str(path), CPU_FP32)
        save_hf_folder(model, tokenizer, folder)
        return {}
    if not (path / ADAPTER_NOTE).exists():
        raise ExportError(f"{path}: a fully fine-tuned policy has no adapter (model.lora_r: 0); use --merged")
    base, adapters = model_chain(cfg, str(path))
    configs = [LoraConfig.from_pretrained(str(a)) for a in adapters]
    config, state = summed_adapter(configs, [load_file(str(a / "adapter_model.safetensors")) for a in adapters])
    tokenizer = AutoTokenizer.from_pretrained(base)

    def write(tmp: Path) -> None:
        write_adapter_files(tmp, config, state, hub_base_name(cfg, base))
        tokenizer.save_pretrained(tmp)

    write_folder(folder, write)
    return {"base": hub_base_name(cfg, base)}


def scalar_role(run: RunDir, cfg: RunConfig, what: str) -> ScalarRole:
    """The trained reward model, or PPO's value network, on the SFT model, on the CPU in float32."""
    backbone = open_backbone(cfg, sft_model_path(run, cfg), CPU_FP32)
    if what == "reward":
        return load_reward_model(run, backbone)
    run.require("ppo")
    if backbone.is_lora:
        backbone.add_adapter("value")
    value = ScalarRole(backbone, "value" if backbone.is_lora else None)
    value.load(run.root / "ppo", "value")
    return value


def final_norm(trunk) -> torch.nn.Module | None:
    for name in FINAL_NORMS:
        if isinstance(getattr(trunk, name, None), torch.nn.Module):
            return getattr(trunk, name)
    return None


def fold_offset(classifier, offset: float) -> float:
    """Add `offset` to every score through the final norm's bias, w . (h + offset w / |w|^2) = w . h + offset, where
    the trunk has one (its output feeds the head only); returns what is left over (0, or `offset` without one)."""
    norm = final_norm(getattr(classifier, classifier.base_model_prefix))
    bias = getattr(norm, "bias", None) if norm is not None else None
    if not isinstance(bias, torch.nn.Parameter) or offset == 0.0:
        return offset
    w = classifier.score.weight.detach()[0].double()
    with torch.no_grad():
        bias.add_((offset * w / w.dot(w)).to(bias.dtype))
    return 0.0


def classifier_from_role(role: ScalarRole, label: str):
    """The role as a transformers sequence classifier: its trunk (adapter merged), the head times the gain, and
    the constant gain * head bias + bias folded where the architecture allows (`fold_offset`)."""
    lm = merge_adapter(role.backbone, role.adapter)
    config = type(lm.config).from_dict(
        {
            **lm.config.to_dict(),
            "num_labels": 1,
            "problem_type": "regression",
            "id2label": {0: label},
            "label2id": {label: 0},
            "pad_token_id": role.backbone.tokenizer.pad_token_id,
        }
    )
    classifier = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    prefix = lm.base_model_prefix + "."
    trunk = {k: v for k, v in lm.state_dict().items() if k.startswith(prefix)}
    result = classifier.load_state_dict(trunk, strict=False)
    if result.unexpected_keys or any(not k.startswith("score.") for k in result.missing_keys):
        raise ExportError(f"the {label} trunk does not fit {type(classifier).__name__}: {result}")
    with torch.no_grad():
        classifier.score.weight.copy_(role.gain * role.head.weight.detach())
    offset = fold_offset(classifier, role.gain * float(role.head.bias.detach()) + role.bias)
    classifier.config.rlhf_score_offset = offset
    return classifier.eval()


def eos_appending_tokenizer(tokenizer):
    """A copy of `tokenizer` whose encoding of a text ends with EOS and of a pair (prompt, response) is the
    prompt's encoding, the response's tokens and EOS: what `ScalarRole.tokenize` feeds the reward model. Padding on
    the right, so a batch's real tokens keep the positions they have alone."""
    tok = copy.deepcopy(tokenizer)
    plain = tok("a b", add_special_tokens=False).input_ids
    full = tok("a b", add_special_tokens=True).input_ids
    at = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), None)
    if at is None:
        raise ExportError("cannot tell which special tokens the tokenizer adds around a text")
    prefix, suffix = (tok.convert_ids_to_tokens(ids) for ids in (full[:at], full[at + len(plain) :]))
    eos = tok.eos_token
    template = processors.TemplateProcessing(
        single=[*prefix, "$A:0", *suffix, eos],
        pair=[*prefix, "$A:0", *suffix, "$B:0", eos],
        special_tokens=[(t, tok.convert_tokens_to_ids(t)) for t in dict.fromkeys([*prefix, *suffix, eos])],
    )
    old = tok.backend_tokenizer.post_processor
    keep_old = old is not None and not isinstance(old, processors.TemplateProcessing)
    tok.backend_tokenizer.post_processor = processors.Sequence([old, template]) if keep_old else template
    tok.padding_side = "right"
    return tok


def give_distinct_pad(classifier, tokenizer) -> None:
    """A classifier reads the score at the last token that is not padding: when the pad token is EOS (or there is
    none), that would skip the EOS the reward model reads its score at. Then the exported tokenizer gets a pad
    token of its own and the classifier one more embedding row for it (never attended to); a base with a distinct
    pad token keeps its vocabulary."""
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    tokenizer.add_special_tokens({"pad_token": "<|rlhf_pad|>"})
    classifier.resize_token_embeddings(len(tokenizer))
    classifier.config.pad_token_id = tokenizer.pad_token_id


def check_pairs(tokenizer, reference, where: Path) -> None:
    """The exported tokenizer encodes the probe pairs as `ScalarRole.tokenize` does with `reference`."""
    for (q, a), (p, r) in zip(tokenize_prompt_response(reference, *zip(*PROBE_PAIRS), append_eos=True), PROBE_PAIRS):
        got = tokenizer(text=p, text_pair=r).input_ids
        if got != q + a:
            raise ExportError(f"{where}: the exported tokenizer encodes ({p!r}, {r!r}) as {got}, expected {q + a}")


def export_scalar(run: RunDir, cfg: RunConfig, what: str, folder: Path) -> dict:
    """The reward model (`what` = reward) or the value network (value) as a sequence classifier folder; returns
    what the model card says about its score."""
    role = scalar_role(run, cfg, what)
    reference = role.backbone.tokenizer
    classifier = classifier_from_role(role, what)
    tokenizer = eos_appending_tokenizer(reference) if what == "reward" else copy.deepcopy(reference)
    tokenizer.padding_side = "right"
    give_distinct_pad(classifier, tokenizer)
    save_hf_folder(classifier, tokenizer, folder)
    if what == "reward":
        check_pairs(AutoTokenizer.from_pretrained(folder), reference, folder)
    return {"score_offset": classifier.config.rlhf_score_offset}


def export_model(
    root: Path, what: str, to: Path, merged: bool, stage: str | None = None, push_to_hub: str = ""
) -> Path:
    """Export `what` of the run at `root` into `to` with a model card; push it to the hub repo `push_to_hub` if given."""
    run = RunDir(root)
    cfg = run.load_config()
    if what not in WHAT:
        raise ExportError(f"--what must be one of {', '.join(WHAT)}, got {what!r}")
    to = Path(to)
    notes: dict = {}
    if what == "policy":
        stage = stage or next((m for m in POLICY_METHODS if run.is_done(m)), "sft")
        notes = export_policy(run, cfg, stage, to, merged)
    else:
        if stage is not None or not merged:
            raise ExportError(f"--what {what}: a sequence classifier folder only (no --stage, no --adapter)")
        stage = "reward" if what == "reward" else "ppo"
        notes = export_scalar(run, cfg, what, to)
    write_model_card(to, run, cfg, what, stage, merged, notes)
    if push_to_hub:
        upload_folder(to, push_to_hub)
    return to


def upload_folder(folder: Path, repo: str) -> str:
    """Create the hub repo `repo` (if need be) and upload `folder` into it; the token is huggingface_hub's own
    (HF_TOKEN or `hf auth login`). Returns the repo's URL."""
    api = HfApi()
    url = api.create_repo(repo_id=repo, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="rlhf export")
    return str(url)
