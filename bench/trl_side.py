"""TRL's side of bench/ppo_vs_trl.py: one measurement per process, run by it as

    python bench/trl_side.py TRL_FOLDER {ppo,reward,sft} {full,lora} SPEC.json RESULT.json

TRL_FOLDER (a `pip install --no-deps --target` folder) goes first on sys.path; its dependencies (transformers,
accelerate, datasets, peft) are the project venv's. TRL's files are not changed: its PPO phases are timed by
wrapping, from here, the functions its training loop calls by module-global name (`batch_generation`, `forward`)
and by a trainer callback at the end of each step.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    TrainerCallback,
)

LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_config(spec: dict, task_type: str) -> LoraConfig:
    """LoRA as our quickstart: r, alpha, every linear layer of the top `lora_top_layers` layers (peft takes
    layers_to_transform only with a list of module names: the Llama names that all-linear picks)."""
    n_layers = json.loads((Path(spec["model_dir"]) / "config.json").read_text())["num_hidden_layers"]
    lo = spec["lora"]
    top = list(range(n_layers - lo["top_layers"], n_layers)) if lo["top_layers"] else None
    return LoraConfig(
        r=lo["r"],
        lora_alpha=lo["alpha"],
        target_modules=LLAMA_LINEAR if top else "all-linear",
        layers_to_transform=top,
        lora_dropout=0.0,
        task_type=task_type,
    )


def trainable(model) -> int:
    """Parameters the optimiser trains."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def facts(trainer) -> dict:
    """What a result records about the trained model: trained parameters, and whether gradient checkpointing was
    on in it (a module's `gradient_checkpointing` flag, as transformers sets it)."""
    on = any(getattr(m, "gradient_checkpointing", False) is True for m in trainer.model.modules())
    return {"trainable": trainable(trainer.model), "checkpointing": on}


def common_args(spec: dict, work: Path) -> dict:
    """TrainingArguments every trainer here gets: CPU, float32, no saving, logging or progress bars; gradient
    checkpointing as TRL's default (on) unless the spec says."""
    checkpointing = spec.get("trl_checkpointing")
    return {
        **({} if checkpointing is None else {"gradient_checkpointing": checkpointing}),
        "output_dir": str(work / "out"),
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": True,
        "bf16": False,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "seed": 0,
    }


class StepClock(TrainerCallback):
    """Seconds of each trainer step, from on_step_begin to on_step_end, and the end time of each step."""

    def __init__(self):
        self.seconds: list[float] = []
        self.ends: list[float] = []
        self._t0 = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self._t0 is not None:
            self.seconds.append(now - self._t0)
        self.ends.append(now)
        self._t0 = None


class PhaseClock:
    """PPO phases of TRL's loop: generation is `batch_generation`; scoring runs from its end to the first forward
    pass with gradients (reference log-probs, values, reward model, GAE); update from there to the step's end."""

    def __init__(self):
        self.iterations: list[dict] = []
        self.current: dict | None = None
        self.phase, self.t = None, 0.0

    def mark(self, phase: str | None) -> None:
        now = time.perf_counter()
        if self.current is not None and self.phase is not None:
            self.current[self.phase] = self.current.get(self.phase, 0.0) + now - self.t
        self.phase, self.t = phase, now

    def wrap_generation(self, fn):
        def wrapper(*args, **kwargs):
            self.current = {"start": time.perf_counter()}
            self.iterations.append(self.current)
            self.mark("generation")
            out = fn(*args, **kwargs)
            self.mark("scoring")
            return out

        return wrapper

    def wrap_forward(self, fn):
        def wrapper(*args, **kwargs):
            if torch.is_grad_enabled() and self.phase == "scoring":
                self.mark("update")
            return fn(*args, **kwargs)

        return wrapper

    def callback(self) -> TrainerCallback:
        clock = self

        class EndOfIteration(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                clock.mark(None)
                clock.current["seconds"] = time.perf_counter() - clock.current["start"]

        return EndOfIteration()


def ppo(spec: dict, variant: str, work: Path) -> dict:
    """TRL's PPOTrainer (trl.experimental.ppo) on the model: policy, reference (a copy, or the adapter disabled
    with LoRA), value and reward models (AutoModelForSequenceClassification from the same folder, a fresh score
    head each), the spec's prompts, one minibatch per epoch."""
    import trl.experimental.ppo.ppo_trainer as ppo_trainer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    s, folder = spec["ppo"], spec["model_dir"]
    tok = AutoTokenizer.from_pretrained(folder, padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ref = None if variant == "lora" else AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    value, reward = (
        AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=torch.float32) for _ in "vr"
    )
    ids = [tok(p).input_ids for p in spec["prompts"]]
    data = Dataset.from_dict({"input_ids": ids})
    args = PPOConfig(
        **common_args(spec, work),
        per_device_train_batch_size=s["episodes"],
        gradient_accumulation_steps=1,
        num_mini_batches=1,
        num_ppo_epochs=s["epochs"],
        total_episodes=s["episodes"] * s["iterations"],
        local_rollout_forward_batch_size=s["episodes"],
        response_length=s["new_tokens"],
        stop_token="eos",
        temperature=spec["temperature"],
        num_sample_generations=0,
        logging_steps=1,
    )
    clock = PhaseClock()
    ppo_trainer.batch_generation = clock.wrap_generation(ppo_trainer.batch_generation)
    ppo_trainer.forward = clock.wrap_forward(ppo_trainer.forward)
    lengths: list[float] = []
    original_truncate = ppo_trainer.truncate_response

    def truncate(stop_id, pad_id, responses):
        out = original_truncate(stop_id, pad_id, responses)
        lengths.append((out != pad_id).sum(-1).float().mean().item())
        return out

    ppo_trainer.truncate_response = truncate
    trainer = PPOTrainer(
        args=args,
        processing_class=tok,
        model=policy,
        ref_model=ref,
        reward_model=reward,
        value_model=value,
        train_dataset=data,
        eval_dataset=data,
        peft_config=lora_config(spec, "CAUSAL_LM") if variant == "lora" else None,
        callbacks=[clock.callback()],
    )
    trainer.train()
    iterations = [
        {
            "seconds": it["seconds"],
            "generation": it.get("generation", 0.0),
            "scoring": it.get("scoring", 0.0),
            "update": it.get("update", 0.0),
            "response_length": length,
        }
        for it, length in zip(clock.iterations, lengths)
    ]
    return {"iterations": iterations, "episodes": s["episodes"], **facts(trainer)}


def reward(spec: dict, variant: str, work: Path) -> dict:
    """TRL's RewardTrainer (a model path: AutoModelForSequenceClassification, num_labels=1) on the spec's pairs."""
    from trl import RewardConfig, RewardTrainer

    s = spec["reward"]
    data = Dataset.from_dict(
        {k: [row[i] for row in spec["pairs"]] for i, k in enumerate(("prompt", "chosen", "rejected"))}
    )
    args = RewardConfig(
        **common_args(spec, work),
        per_device_train_batch_size=s["batch_size"],
        num_train_epochs=s["epochs"],
        max_length=None,
        logging_steps=10_000,
    )
    peft = lora_config(spec, "SEQ_CLS") if variant == "lora" else None
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    clock = StepClock()
    trainer = RewardTrainer(
        model=spec["model_dir"],
        args=args,
        train_dataset=data,
        processing_class=tok,
        peft_config=peft,
        callbacks=[clock],
    )
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    return {
        "train_seconds": seconds,
        "steps": len(clock.seconds),
        "step_seconds": clock.seconds,
        **facts(trainer),
    }


def sft(spec: dict, variant: str, work: Path) -> dict:
    """TRL's SFTTrainer on the spec's demonstrations (prompt-completion rows: loss on the completion only)."""
    from trl import SFTConfig, SFTTrainer

    s = spec["sft"]
    data = Dataset.from_dict({"prompt": [p for p, _ in spec["demos"]], "completion": [r for _, r in spec["demos"]]})
    args = SFTConfig(
        **common_args(spec, work),
        per_device_train_batch_size=s["batch_size"],
        num_train_epochs=1,
        max_length=None,
        packing=False,
        learning_rate=2e-4,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,  # a share of the steps (transformers 5)
        logging_steps=10_000,
    )
    peft = lora_config(spec, "CAUSAL_LM") if variant == "lora" else None
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    clock = StepClock()
    trainer = SFTTrainer(
        model=spec["model_dir"],
        args=args,
        train_dataset=data,
        processing_class=tok,
        peft_config=peft,
        callbacks=[clock],
    )
    tokens: list[int] = []
    original_step = trainer.training_step

    def training_step(model, inputs, *a, **k):
        tokens.append(int(inputs["attention_mask"].sum()))
        return original_step(model, inputs, *a, **k)

    trainer.training_step = training_step
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    return {
        "step_seconds": clock.seconds,
        "step_tokens": tokens,
        "train_seconds": seconds,
        **facts(trainer),
    }


PARTS = {"ppo": ppo, "reward": reward, "sft": sft}


def main(argv: list[str]) -> None:
    folder, part, variant, spec_path, result_path = argv
    sys.path.insert(0, folder)  # before anything imports trl
    import trl

    assert Path(trl.__file__).resolve().is_relative_to(Path(folder).resolve()), (trl.__file__, folder)
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    with tempfile.TemporaryDirectory(prefix=f"trl_{part}_") as work:
        result = PARTS[part](spec, variant, Path(work))
    result["trl_version"] = trl.__version__
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
