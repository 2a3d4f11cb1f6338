"""Config sections of the policy optimisers beside PPO (rlhf/config.py holds the rest): which optimisers the pipeline
runs, RLOO and GRPO (critic-free, K samples per prompt), DPO (offline, on the run's comparisons), and the tripwires
that stop a training stage whose numbers go wrong.

Each field's docstring (the string literal under it) is its help text; `rlhf config-help` prints them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# the policy optimisers, in the order the pipeline runs them; each writes RUN_DIR/<method>/ (model/, metrics.jsonl)
POLICY_METHODS = ("ppo", "rloo", "grpo", "dpo")


@dataclass
class PolicyConfig:
    methods: list[str] = field(default_factory=lambda: ["ppo"])
    """The policy optimisers `rlhf run` trains after the reward model, each from the SFT policy into RUN_DIR/<method>/:
    any of ppo, rloo, grpo, dpo (evaluated side by side with best-of-N). `rlhf rloo RUN` etc. run one alone."""


@dataclass
class GroupRLConfig:
    iterations: int = 8
    """Iterations: each samples samples_per_prompt responses for each of prompts_per_batch prompts, scores them and
    updates the policy."""
    prompts_per_batch: int = 8
    """Prompts per iteration (each iteration's episodes = prompts_per_batch x samples_per_prompt)."""
    samples_per_prompt: int = 4
    """K (RLOO) or G (GRPO): responses sampled per prompt; the baseline of each is the others of its prompt (>= 2)."""
    epochs: int = 1
    """Optimisation passes over each batch (1 = on-policy, the papers' setting; GRPO's mu)."""
    minibatch_size: int = 32
    """Episodes per optimiser step (a batch of prompts_per_batch x samples_per_prompt episodes gives
    ceil(episodes / minibatch_size) steps per epoch)."""
    learning_rate: float = 1e-4
    """Policy learning rate, annealed linearly to 0 over all updates."""
    warmup_updates: int = 0
    """Optimiser steps of linear learning-rate warm-up before the anneal; 0 = none."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip of each optimiser step."""
    clip_range: float = 0.2
    """Ratio clip epsilon of GRPO's clipped objective (used by RLOO only when epochs > 1)."""
    beta: float = 0.05
    """KL coefficient to the SFT policy. RLOO: in the sequence reward, r - beta * sum_t log(pi/pi_ref) (Ahmadian et al.
    2024 §3); GRPO: weight of the k3 KL estimate in the loss (Shao et al. 2024 eq. 3; their default 0.04)."""
    reward_source: Literal["rm", "gold"] = "rm"
    """What the policy maximises: "rm" (the trained reward model) or "gold" (the simulated task's gold scorer)."""
    log_gold_reward: bool = True
    """Score each batch with the gold scorer too, for the metrics only (always on when reward_source is gold)."""
    missing_stop_penalty: float = -1.0
    """Score given to responses with no EOS/stop token instead of the reward's (Ziegler §3.1.2)."""
    checkpoint_every: int = 1
    """Iterations between checkpoints."""
    gradient_accumulation_steps: int = 1
    """Minibatches whose gradients are summed before one optimiser step."""


@dataclass
class DPOConfig:
    loss: Literal["dpo", "ipo"] = "dpo"
    """dpo = Rafailov et al. 2023 eq. 7; ipo = Azar et al. 2023 eq. 17 (squared loss toward a margin of 1/(2 beta))."""
    beta: float = 0.1
    """DPO's beta (strength of the implicit KL constraint to the SFT policy), or IPO's tau."""
    epochs: int = 1
    """Passes over the run's comparisons (rankings and best-of-K expanded to their ordered pairs)."""
    batch_size: int = 8
    """Pairs per optimiser step."""
    learning_rate: float = 5e-4
    """Learning rate (LoRA), annealed linearly to 0."""
    warmup_updates: int = 0
    """Optimiser steps of linear learning-rate warm-up before the anneal; 0 = none."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip of each optimiser step."""
    checkpoint_every: int = 10
    """Optimiser steps between checkpoints."""
    gradient_accumulation_steps: int = 1
    """Micro-batches each optimiser step's batch (batch_size pairs) goes through one after another, their gradients
    summed, each loss weighted by its share of the batch: the same step, holding one micro-batch's activations at a
    time. With several processes each takes its share of the batch the same way."""
    kept_prefix_gib: float = 2.0
    """With LoRA on the top layers only: the most memory (GiB, on the model's device) DPO keeps of the frozen bottom
    layers' output over the pairs, so that later passes run the top layers only (the same numbers); pairs past it
    run all layers on every pass. 0 = keep none."""


@dataclass
class TripwireConfig:
    """Checks that stop a training stage with a clear error (rlhf/stages/tripwires.py, docs/faults.md). A NaN or inf in
    a loss, reward, advantage, gradient norm or saved weight always stops the stage; these two are off by default."""

    kl_ceiling: float = 0.0
    """Stop PPO, RLOO or GRPO when an iteration's mean KL to the SFT policy (nats per response, metrics.jsonl's `kl`)
    exceeds this; DPO: when the mean |log pi(y|x) - log pi_ref(y|x)| of a step's chosen and rejected responses does.
    0 = off."""
    entropy_floor: float = 0.0
    """Stop PPO, RLOO, GRPO or DPO when the policy's mean per-token entropy (nats; PPO/RLOO/GRPO over an iteration's
    sampled responses, DPO over a step's chosen and rejected responses) falls below this. 0 = off."""
