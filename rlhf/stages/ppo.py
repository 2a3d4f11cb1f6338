"""PPO against the reward model with a per-token KL penalty to the SFT model (Ziegler §2.2, Stiennon §3.4,
InstructGPT §3.5). Writes RUN_DIR/ppo/{metrics.jsonl,samples.jsonl,value.*,model/}: with LoRA model/ is the policy's
adapter on the SFT model (a standard peft adapter folder), with full fine-tuning a plain HF model folder."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from rlhf.config import RunConfig
from rlhf.losses import (
    AdaptiveKLController,
    FixedKLController,
    apply_missing_stop_penalty,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    gae,
    kl_penalized_rewards,
    masked_mean,
)
from rlhf.models.loading import load_reward_model, open_backbone, sft_model_path
from rlhf.models.roles import Episodes
from rlhf.models.saving import ON_SFT, save_policy
from rlhf.run import MetricsLog, RunDir, seed_everything, trim_jsonl_log
from rlhf.stages.online import OnlineCollection
from rlhf.stages.optim import optimizer_step, trainable_parameters
from rlhf.stages.ppo_parts import (
    KLBudget,
    advantage_variance_shares,
    andon_cord_pulled,
    before_iteration,
    check_inputs,
    checkpoint_state,
    chunks,
    grad_norm,
    kl_overshoot,
    log_iteration,
    resume,
    zero_head,
)
from rlhf.stages.rollout import (
    BatchRows,
    Rollout,
    Scores,
    open_policy_roles,
    prompt_batch,
    rollout,
    score,
    write_samples,
)
from rlhf.stages.sft import response_nll
from rlhf.stages.tripwires import check_finite, check_finite_state, check_policy, save_checked_checkpoint
from rlhf.tasks import prompt_source, task_and_stop_rule, task_for

log = logging.getLogger("rlhf")
STAGE = "ppo"


class PPORoles:
    """Policy, reference, reward model and value network. With LoRA they share one frozen SFT base: the policy
    starts equal to SFT (LoRA B = 0), the reference is the base with adapters off, and the value network is a
    copy of the trained reward model, trunk and head (Stiennon §3.4), or with ppo.value_init=zero the same with its
    head's weight and bias zeroed after the normalisation is folded in (every value starts at 0)."""

    def __init__(self, run: RunDir, cfg: RunConfig):
        roles = open_policy_roles(run, cfg, with_reward=True)  # reward model, then policy (rlhf/stages/rollout.py)
        base, self.reward, self.policy, self.reference = roles.base, roles.reward, roles.policy, roles.reference
        if base.is_lora:
            value = load_reward_model(run, base, "value")
        else:  # full fine-tuning: the fourth copy
            value = load_reward_model(run, open_backbone(cfg, sft_model_path(run, cfg)))
        value.fold_normalization()  # the value head alone predicts returns, on the normalised reward's scale
        if cfg.ppo.value_init == "zero":  # lm-human-preferences: the value head starts at zero, the trunk from the RM
            zero_head(value.head)
        self.value = value
        self.policy_params = trainable_parameters(self.policy.backbone, self.policy.adapter)
        self.value_params = trainable_parameters(value.backbone, value.adapter) + list(value.head.parameters())
        self.tokenizer = base.tokenizer

    def trainable_state(self) -> dict:
        pb, vb = self.policy.backbone, self.value.backbone
        return {
            "policy": pb.adapter_state(self.policy.adapter) if pb.is_lora else pb.model.state_dict(),
            "value": vb.adapter_state(self.value.adapter) if vb.is_lora else vb.model.state_dict(),
            "value_head": self.value.head.state_dict(),
        }

    def policy_state(self) -> dict:
        """A copy of the policy's trainable weights (ppo.kl_budget keeps one)."""
        pb = self.policy.backbone
        return (
            pb.adapter_state(self.policy.adapter)
            if pb.is_lora
            else {k: v.clone() for k, v in pb.model.state_dict().items()}
        )

    def load_policy_state(self, state: dict) -> None:
        pb = self.policy.backbone
        pb.load_adapter_state(self.policy.adapter, state) if pb.is_lora else pb.model.load_state_dict(state)

    def load_trainable_state(self, state: dict) -> None:
        self.load_policy_state(state["policy"])
        vb = self.value.backbone
        vb.load_adapter_state(self.value.adapter, state["value"]) if vb.is_lora else vb.model.load_state_dict(
            state["value"]
        )
        self.value.head.load_state_dict(state["value_head"])


@dataclass
class FirstForward:
    """Epoch 1's policy and value forward passes over all of this process's rows, graphs kept. With one minibatch
    per epoch the log-probs and values before any update are those of the first step's own forward pass, so they
    are computed once: the same numbers, two forward passes fewer per iteration."""

    logprobs: torch.Tensor
    entropy: torch.Tensor
    values: torch.Tensor


@dataclass
class Advantages:
    """What the PPO epochs read, all [B, R]: the log-probs and values before any update, per-token KL, advantages
    and returns; and, with one minibatch per epoch, the first step's forward passes (`first`, used once)."""

    old_logprobs: torch.Tensor
    old_values: torch.Tensor
    kl: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    first: FirstForward | None = None


def compute_advantages(
    roles: PPORoles, episodes: Episodes, scores: torch.Tensor, beta: float, pc, rows: BatchRows | None = None
) -> Advantages:
    """Log-probs of policy and reference and the values (in the minibatches of the first epoch, so that its ratio
    is exactly 1; with one minibatch per epoch, that minibatch's own forward passes, kept for its step), per-token
    rewards -beta*KL with the score at the last token (Ziegler eq. 2), GAE (Schulman et al. 2016) and, with
    ppo.whiten_advantages, whitened advantages (over the whole batch: `rows` says which rows of it this process
    holds; all of them by default). With ppo.whiten_rewards the per-token rewards are whitened first, their mean
    kept (lm-human-preferences' whiten(rewards, shift_mean=False)), over the whole batch too."""
    rows = rows or BatchRows(len(scores))
    mask = episodes.response_mask
    mbs = rows.first_epoch_minibatches(pc.minibatch_size)
    first = None
    if len(mbs) == 1:  # one minibatch per epoch: epoch 1's forward passes are the "before any update" ones
        whole = episodes.select(mbs[0])
        first = FirstForward(*roles.policy.logprobs(whole, True, pc.entropy_coef > 0), roles.value.values(whole))
        old_logprobs, old_values = first.logprobs.detach(), first.values.detach()
    with torch.no_grad():
        if first is None:
            old_logprobs = torch.cat([roles.policy.logprobs(episodes.select(s)) for s in mbs])
            old_values = torch.cat([roles.value.values(episodes.select(s)) for s in mbs])
        ref_logprobs = torch.cat([roles.reference.logprobs(episodes.select(s)) for s in mbs])
        return advantages_from(scores, old_logprobs, ref_logprobs, old_values, mask, beta, pc, rows, first)


def advantages_from(
    scores: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    old_values: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    pc,
    rows: BatchRows,
    first: FirstForward | None,
) -> Advantages:
    """compute_advantages' steps 2-4 from the three roles' outputs: rewards, GAE, whitening."""
    rewards, kl = kl_penalized_rewards(scores, old_logprobs, ref_logprobs, mask, beta)
    if pc.whiten_rewards:
        rewards = rows.whiten(rewards, mask, shift_mean=False)
    advantages, returns = gae(rewards, old_values, mask, pc.gamma, pc.lam)
    if pc.whiten_advantages:
        advantages = rows.whiten(advantages, mask)
    return Advantages(old_logprobs, old_values, kl, advantages, returns, first)


def update(
    roles: PPORoles,
    episodes: Episodes,
    adv: Advantages,
    optimizer,
    scheduler,
    pc,
    ptx_texts: list,
    policy_moves: bool,
    rows: BatchRows | None = None,
    iteration: int = 0,
) -> dict[str, list[float]]:
    """ppo.ppo_epochs passes over the batch in minibatches (the first in order, later ones shuffled): the clipped
    policy loss (Schulman et al. 2017) plus the clipped value loss, and PPO-ptx's pretraining loss (InstructGPT
    eq. 2) when configured; the value loss alone while `policy_moves` is False (value warm-up). With several
    processes (`rows`) each takes its rows of every minibatch, its losses weighted by its share of the
    minibatch's tokens, and the gradients are summed before each step: the step one process would take. Each step
    clips the gradient norm to ppo.max_grad_norm, over policy and value together or (ppo.separate_clipping) each
    alone. Returns each statistic's values over the minibatches; besides the losses' statistics,
    `approx_kl_epoch_E` (approx_kl of epoch E's minibatches, each measured at its forward pass before its step, so
    the first minibatch of epoch 1 gives 0), at each optimiser step `policy_grad_norm` and `value_grad_norm`
    (each group's gradient norm before clipping), and `epochs_run` (the epochs' worth of steps taken: fewer than
    ppo.ppo_epochs when ppo.stop_epochs_at_kl stopped them). A NaN or inf loss or gradient norm fires the tripwire (1-based
    `iteration` names it) before its backward pass or step."""
    rows = rows or BatchRows(len(episodes.has_stop))
    parallel, mask = rows.processes.parallel, episodes.response_mask
    all_masks = rows.gather(mask)  # the whole batch's, for each minibatch's token count
    params = roles.policy_params + roles.value_params
    clip_groups = [roles.policy_params, roles.value_params] if pc.separate_clipping else None
    per_minibatch: list[tuple[float, dict[str, float]]] = []
    minibatches, accumulate = chunks(rows.size, pc.minibatch_size), pc.gradient_accumulation_steps
    steps_per_epoch, steps_taken = math.ceil(len(minibatches) / accumulate), 0
    for epoch in range(pc.ppo_epochs):
        perm = torch.arange(rows.size) if epoch == 0 else torch.randperm(rows.size)  # CPU: the same draws everywhere
        for k, s in enumerate(minibatches):
            idx = rows.local(perm[s])  # this process's rows of the minibatch, at their local positions
            share = float(mask[idx].sum() / all_masks[perm[s]].sum()) if parallel else 1.0
            loss, ratio_gap, ptx, measured = torch.zeros((), device=mask.device), None, {}, {}
            if idx:
                first = adv.first if epoch == 0 and k == 0 else None  # computed with the advantages, used once
                adv.first = None if first else adv.first
                mb = episodes.select(idx)
                logprobs, entropy = (
                    (first.logprobs, first.entropy) if first else roles.policy.logprobs(mb, True, pc.entropy_coef > 0)
                )
                if epoch == 0 and k == 0:  # nothing has changed yet: the ratio must be exactly 1
                    ratio_gap = (logprobs - adv.old_logprobs[idx]).abs().max().item()
                    assert ratio_gap < 1e-4, (
                        f"PPO ratio is not 1 on the first minibatch (max |log ratio| = {ratio_gap})"
                    )
                pg_loss, pg_stats = clipped_policy_loss(
                    logprobs, adv.old_logprobs[idx], adv.advantages[idx], mask[idx], pc.clip_range
                )
                values = first.values if first else roles.value.values(mb)
                vf_loss, vf_stats = clipped_value_loss(
                    values, adv.old_values[idx], adv.returns[idx], mask[idx], pc.clip_range_value
                )
                mean_entropy = masked_mean(entropy, mask[idx])  # with ppo.entropy_coef, a bonus (cleanrl's ent_coef)
                policy_term = pg_loss - pc.entropy_coef * mean_entropy  # = pg_loss exactly at the default 0
                loss = policy_term + pc.value_coef * vf_loss if policy_moves else vf_loss
                loss = loss * share if parallel else loss  # this process's share of the minibatch's token mean
                measured = {
                    **pg_stats,
                    f"approx_kl_epoch_{epoch + 1}": pg_stats["approx_kl"],
                    **vf_stats,
                    "policy_loss": pg_loss.item(),
                    "value_loss": vf_loss.item(),
                    "entropy": mean_entropy.item(),
                }
            if ptx_texts and policy_moves:  # every process draws the same texts; each adds 1/W of their loss
                pick = torch.randint(len(ptx_texts), (pc.ptx_batch_size,)).tolist()
                ptx_nll = response_nll(
                    roles.policy.backbone,
                    roles.policy.adapter,
                    [ptx_texts[i].prompt for i in pick],
                    [ptx_texts[i].response for i in pick],
                )
                # = PPO loss - gamma * pretraining log-likelihood
                loss = loss + pc.ptx_coef * ptx_nll / rows.processes.world_size
                ptx = {"ptx_nll": ptx_nll.item()}
            first = {} if ratio_gap is None else {"first_minibatch_max_log_ratio": ratio_gap}
            minibatch_stats = {**first, **ptx, **measured}
            per_minibatch.append((share, minibatch_stats))
            if stop_epochs_here(pc, measured, share, rows, policy_moves):
                optimizer.zero_grad(set_to_none=True)  # what earlier minibatches accumulated is not applied
                for _ in range(pc.ppo_epochs * steps_per_epoch - steps_taken):
                    scheduler.step()  # the schedule keeps its pace: the last iteration still ends at 0
                return {**rows.combine_stats(per_minibatch), "epochs_run": [steps_taken / steps_per_epoch]}
            # gradient accumulation: one optimiser step per `accumulate` minibatches (and at the end of the epoch)
            step_now = (k + 1) % accumulate == 0 or k + 1 == len(minibatches)
            loss = loss / accumulate if accumulate > 1 else loss
            where = f"loss (epoch {epoch + 1}, minibatch {k + 1})"
            check_finite(STAGE, where, iteration, loss, rows.processes if parallel else None)
            if loss.requires_grad:
                loss.backward()
            if step_now:
                rows.processes.sum_gradients(params)
                minibatch_stats["policy_grad_norm"] = grad_norm(roles.policy_params)
                minibatch_stats["value_grad_norm"] = grad_norm(roles.value_params)
                for name in ("policy_grad_norm", "value_grad_norm"):
                    check_finite(
                        STAGE, f"{name} (epoch {epoch + 1}, minibatch {k + 1})", iteration, minibatch_stats[name]
                    )
                optimizer_step(None, params, optimizer, scheduler, pc.max_grad_norm, clip_groups=clip_groups)
                steps_taken += 1
    return {**rows.combine_stats(per_minibatch), "epochs_run": [float(pc.ppo_epochs)]}


def stop_epochs_here(pc, measured: dict[str, float], share: float, rows: BatchRows, policy_moves: bool) -> bool:
    """Whether the policy has moved past ppo.stop_epochs_at_kl on this batch (Spinning Up's early stopping): the
    whole minibatch's approx-KL, each process's token share of it summed (every process decides alike)."""
    if pc.stop_epochs_at_kl <= 0 or not policy_moves:
        return False
    approx_kl = measured.get("approx_kl", 0.0) * share
    return rows.processes.sum(approx_kl) > pc.stop_epochs_at_kl


def log_row(
    iteration: int,
    mask: torch.Tensor,
    has_stop: torch.Tensor,
    scores: Scores,
    adv: Advantages,
    stats: dict[str, list[float]],
    beta: float,
    lr: float,
    missing_stop_penalty: float,
    online_row: dict,
) -> dict:
    """The metrics of one PPO iteration (1-based `iteration`) from its batch's response mask [B, R], stops,
    scores and advantages, as metrics.jsonl logs them."""
    row = {
        "iteration": iteration,
        "rm_score": scores.reward.mean().item(),
        "score": scores.penalised.mean().item(),
        "non_score_reward": (-beta * adv.kl.sum(-1)).mean().item(),
        "kl": adv.kl.sum(-1).mean().item(),
        "beta": beta,
        "response_length": mask.sum(-1).mean().item(),
        "no_stop_count": int((~has_stop).sum()),
        "explained_variance": explained_variance(adv.old_values, adv.returns, mask),
        "lr": lr,
        **{k: sum(v) / len(v) for k, v in stats.items() if k not in ("ratio_max", "first_minibatch_max_log_ratio")},
        "ratio_max": max(stats["ratio_max"]),
        "first_minibatch_max_log_ratio": stats["first_minibatch_max_log_ratio"][0],
        **online_row,
    }
    if scores.gold is not None:  # the simulated task's gold reward (trained on only when reward_source=gold)
        gold = torch.tensor(scores.gold, dtype=torch.float32)
        row["gold_reward"] = sum(scores.gold) / len(scores.gold)
        row["gold_score"] = apply_missing_stop_penalty(gold, has_stop, missing_stop_penalty).mean().item()
    return row


@dataclass
class WholeBatch:
    """An iteration's whole batch as it is logged: the rows of every process, in the order of the batch."""

    prompts: list[str]
    texts: list[str]
    mask: torch.Tensor
    has_stop: torch.Tensor
    scores: Scores
    adv: Advantages


def whole_batch(rows: BatchRows, batch: Rollout, scores: Scores, adv: Advantages) -> WholeBatch:
    """The batch, its scores and advantages gathered from every process (with one process, themselves)."""
    e = batch.episodes
    if not rows.processes.parallel:
        return WholeBatch(batch.prompts, batch.texts, e.response_mask, e.has_stop, scores, adv)
    gold = None if scores.gold is None else rows.gather_list(scores.gold)
    return WholeBatch(
        rows.gather_list(batch.prompts),
        rows.gather_list(batch.texts),
        rows.gather(e.response_mask),
        rows.gather(e.has_stop),
        Scores(rows.gather(scores.reward), rows.gather(scores.penalised), gold),
        Advantages(
            *(rows.gather(getattr(adv, f)) for f in ("old_logprobs", "old_values", "kl", "advantages", "returns"))
        ),
    )


def optimizers(roles: PPORoles, pc):
    """AdamW over policy and value (each at its learning rate), warmed up linearly over ppo.warmup_updates steps and
    annealed linearly to 0 over all of PPO's updates, and the KL coefficient's controller: adaptive toward
    ppo.target_kl (Ziegler §2.2, or with ppo.kl_horizon lm-human-preferences' horizon form) or fixed."""
    minibatches = math.ceil(pc.batch_size / pc.minibatch_size)
    total_updates = pc.iterations * pc.ppo_epochs * math.ceil(minibatches / pc.gradient_accumulation_steps)
    param_groups = [
        {"params": roles.policy_params, "lr": pc.learning_rate},
        {"params": roles.value_params, "lr": pc.value_learning_rate or pc.learning_rate},
    ]
    optimizer = torch.optim.AdamW(param_groups, eps=1e-5, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, pc.warmup_updates, total_updates)
    kl_ctl = (
        AdaptiveKLController(pc.init_beta, pc.target_kl, pc.k_beta, pc.kl_horizon or None)
        if pc.adaptive_kl
        else FixedKLController(pc.init_beta)
    )
    return optimizer, scheduler, kl_ctl


def train_ppo(run: RunDir, cfg: RunConfig) -> dict:
    """The PPO stage, one iteration at a time as lm-human-preferences' PPOTrainer.step: rollout, score,
    advantages, update, log; resumes from its checkpoint, and stops with one when the Andon cord is pulled."""
    pc = cfg.ppo
    if cfg.online.enabled and run.processes.parallel:
        raise ValueError("online.enabled: online collection runs in one process; start PPO without a launcher")
    seed_everything(cfg.seed + 3)
    roles = PPORoles(run, cfg)
    rows = BatchRows(pc.batch_size, run.processes)  # the batch's rows this process samples and trains on
    task, response_length, stop_rule = task_and_stop_rule(cfg, roles.tokenizer)
    check_inputs(pc, task)
    prompts = [p.text for p in task.load_prompts("train", n=None, source=prompt_source(cfg), seed=cfg.seed + 3)]
    ptx_texts = []
    if pc.ptx_coef > 0:  # PPO-ptx: a text set to keep the pretraining log-likelihood up (InstructGPT eq. 2)
        ptx_texts = task_for(cfg).load_demonstrations("train", n=None, source=prompt_source(cfg), seed=cfg.seed)
    # the gold scorer scores every batch when PPO trains on it, or when its reward is logged
    gold_scorer = task.gold_scorer if pc.reward_source == "gold" or pc.log_gold_reward else None

    optimizer, scheduler, kl_ctl = optimizers(roles, pc)
    ckpt = resume(run, roles, optimizer, scheduler, kl_ctl)
    start = ckpt["iteration"] if ckpt else 0
    metrics = MetricsLog(run, STAGE, resume_step=start if ckpt else None, step_key="iteration")
    if run.writer:  # samples.jsonl as the checkpoint left it (a line cut short by a kill dropped)
        trim_jsonl_log(run.stage(STAGE) / "samples.jsonl", "iteration", start if ckpt else None)
    online = None  # online collection (Ziegler §2.3), off by default: rlhf/stages/online.py
    if cfg.online.enabled:
        online_state = ckpt.get("online") if ckpt else None
        online = OnlineCollection(run, cfg, roles, response_length, stop_rule, prompts, online_state)

    batch_kls: list[float] = []  # this session's iterations, for the end-of-stage KL check
    budget, budget_stop = KLBudget(pc.kl_budget, roles.policy_state, roles.load_policy_state), None
    bar = tqdm(total=pc.iterations, initial=start, desc="ppo", leave=False, disable=not run.writer)
    for iteration in range(start, pc.iterations):
        # 0. the Andon cord (as the main process sees it), and online collection: fresh queries, l(n) labels, the
        # reward model retrained at its points
        andon = lambda: run.processes.broadcast(andon_cord_pulled(pc, run.root))  # noqa: E731
        online_row, reason = before_iteration(iteration, online, andon)
        if reason is not None:
            state = checkpoint_state(roles, optimizer, scheduler, kl_ctl, iteration, online)
            save_checked_checkpoint(run, STAGE, iteration, state, cfg.tripwires)
            log.warning("PPO stopped before iteration %d: %s", iteration + 1, reason)
            return {"stopped": True, "reason": reason, "iteration": iteration}
        reward = roles.reward if pc.reward_source == "rm" else None  # (online collection may have retrained it)

        # 1. sample a batch of responses from the current policy (prompts in a seeded order, so resume continues it;
        # each process samples its rows with the draws one process would use for them)
        batch_prompts = rows.shard(prompt_batch(prompts, iteration, pc.batch_size, cfg.seed))
        uniforms = rows.uniforms(response_length)
        batch = rollout(roles.policy, roles.reference, reward, batch_prompts, response_length, stop_rule, uniforms)
        # 2. score with the reward model (or the gold scorer); no stop, a fixed penalty instead (Ziegler §3.1.2)
        scores = score(batch, reward, gold_scorer, pc.missing_stop_penalty)
        parallel = rows.processes if rows.processes.parallel else None  # tripwire checks are collective then
        check_finite(STAGE, "reward", iteration + 1, scores.penalised, parallel)
        # 3. log-probs of policy and reference and the values; 4. KL-penalised rewards, GAE, whitened advantages
        adv = compute_advantages(roles, batch.episodes, scores.penalised, kl_ctl.beta, pc, rows)
        check_finite(STAGE, "advantage", iteration + 1, adv.advantages, parallel)
        check_finite(STAGE, "return", iteration + 1, adv.returns, parallel)
        # 4b. ppo.kl_budget: a batch past it ends PPO with the last policy whose batch stayed within it
        policy_moves, batch_kl = iteration >= pc.value_warmup_iterations, rows.gather(adv.kl).sum(-1).mean().item()
        if policy_moves and not budget.within(iteration + 1, batch_kl):
            budget_stop = budget.restore(iteration + 1, batch_kl)
            break
        # 5. PPO epochs over minibatches: clipped policy and value losses (+ PPO-ptx); value alone while it warms up
        stats = update(
            roles, batch.episodes, adv, optimizer, scheduler, pc, ptx_texts, policy_moves, rows, iteration + 1
        )

        # 6. log the whole batch (gathered from every process), adapt beta to its KL, checkpoint
        lr, whole = scheduler.get_last_lr()[0], whole_batch(rows, batch, scores, adv)
        batch_stats = (whole.mask, whole.has_stop, whole.scores, whole.adv, stats)
        row = log_row(iteration + 1, *batch_stats, kl_ctl.beta, lr, pc.missing_stop_penalty, online_row)
        # where the advantages' spread comes from: score, KL penalty, value baseline (rlhf/stages/ppo_parts.py)
        parts = (whole.scores.penalised, whole.adv.kl, whole.adv.old_values, whole.mask)
        row.update(advantage_variance_shares(*parts, kl_ctl.beta, pc.gamma, pc.lam))
        # the KL and entropy tripwires, on whole-batch figures (the same in every process)
        check_policy(run, STAGE, iteration + 1, row["kl"], row["entropy"], cfg.tripwires, "iteration")
        if policy_moves:  # the KL of a warm-up batch is 0 by construction, not a signal to lower beta
            kl_ctl.update(row["kl"], rows.size)
        metrics.write(row)
        batch_kls.append(row["kl"])
        if run.writer:
            samples = (whole.prompts, whole.texts, whole.scores.penalised.tolist())
            write_samples(run.stage(STAGE) / "samples.jsonl", iteration + 1, *samples)
        log_iteration(row, pc.iterations, kl_ctl.beta)
        bar.update(1)
        if (iteration + 1) % pc.checkpoint_every == 0 and iteration + 1 < pc.iterations:
            state = checkpoint_state(roles, optimizer, scheduler, kl_ctl, iteration + 1, online)
            save_checked_checkpoint(run, STAGE, iteration + 1, state, cfg.tripwires)
    bar.close()
    metrics.close()

    # 7. save the value network and the policy (adapters on the SFT model, or full models)
    if (warning := kl_overshoot(batch_kls, pc)) is not None:
        log.warning(warning)
    info = {"iterations": pc.iterations, "final_beta": kl_ctl.beta, **({"online": online.summary()} if online else {})}
    info.update({"kl_budget_stop": budget_stop} if budget_stop else {})
    check_finite_state(STAGE, pc.iterations, roles.trainable_state())  # never save poisoned weights
    if run.writer:
        roles.value.save(run.stage(STAGE), "value")
        save_policy(roles.policy.backbone, roles.policy.adapter, run.stage(STAGE) / "model", ON_SFT)
        run.mark_done(STAGE, info)
        run.remove_checkpoints(STAGE)
    return info
