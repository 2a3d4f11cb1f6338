"""PPO against the reward model with a per-token KL penalty to the SFT model (Ziegler §2.2, Stiennon §3.4,
InstructGPT §3.5). Writes RUN_DIR/ppo/{metrics.jsonl,samples.jsonl,model/}."""
from __future__ import annotations

import json
import logging
import math
import os
import shutil

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
    masked_whiten,
)
from rlhf.models.loading import load_reward_model, open_backbone, sft_model_path
from rlhf.models.roles import LanguageModelRole
from rlhf.models.sampling import sample_episodes
from rlhf.run import MetricsLog, RunDir, seed_everything
from rlhf.stages.online import OnlineCollection
from rlhf.stages.optim import optimizer_step, trainable_parameters
from rlhf.stages.sft import response_nll
from rlhf.tasks import prompt_source, task_and_stop_rule, task_for

log = logging.getLogger("rlhf")
STAGE = "ppo"


class PPORoles:
    """Policy, reference, reward model and value network. With LoRA they share one frozen SFT base: the policy
    starts equal to SFT (LoRA B = 0), the reference is the base with adapters off, and the value network is a
    copy of the trained reward model, trunk and head (Stiennon §3.4)."""

    def __init__(self, run: RunDir, cfg: RunConfig):
        sft_path = sft_model_path(run, cfg)
        T = cfg.task.temperature
        base = open_backbone(cfg, sft_path)
        if base.is_lora:
            self.reward = load_reward_model(run, base, "reward")
            base.add_adapter("policy")
            value = load_reward_model(run, base, "value")
            self.policy = LanguageModelRole(base, "policy", T)
            self.reference = LanguageModelRole(base, None, T)
        else:  # full fine-tuning: four separate copies
            self.reward = load_reward_model(run, base)
            value = load_reward_model(run, open_backbone(cfg, sft_path))
            self.policy = LanguageModelRole(open_backbone(cfg, sft_path), None, T)
            self.reference = LanguageModelRole(open_backbone(cfg, sft_path), None, T)
        value.fold_normalization()  # the value head alone predicts returns, on the normalised reward's scale
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

    def load_trainable_state(self, state: dict) -> None:
        pb, vb = self.policy.backbone, self.value.backbone
        pb.load_adapter_state(self.policy.adapter, state["policy"]) if pb.is_lora else pb.model.load_state_dict(state["policy"])
        vb.load_adapter_state(self.value.adapter, state["value"]) if vb.is_lora else vb.model.load_state_dict(state["value"])
        self.value.head.load_state_dict(state["value_head"])


def chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def andon_cord_pulled(pc, run_dir=None) -> str | None:
    """The reason written in the stop file, if someone pulled the cord (Ziegler §4.4): ppo.stop_file, or
    RUN_DIR/ANDON when none is configured (the file the labeling app writes)."""
    path = pc.stop_file or (os.path.join(run_dir, "ANDON") if run_dir is not None else "")
    if path and os.path.exists(path):
        return open(path).read().strip() or "stop file present"
    return None


def train_ppo(run: RunDir, cfg: RunConfig) -> dict:

    pc = cfg.ppo
    seed_everything(cfg.seed + 3)
    roles = PPORoles(run, cfg)
    policy, reference, reward, value = roles.policy, roles.reference, roles.reward, roles.value
    task, response_length, stop_rule = task_and_stop_rule(cfg, roles.tokenizer)
    if pc.reward_source not in ("rm", "gold"):
        raise ValueError(f"ppo.reward_source: expected rm or gold, got {pc.reward_source!r}")
    if pc.reward_source == "gold" and task.gold_scorer is None:
        raise ValueError(f"ppo.reward_source=gold: task '{task.name}' has no gold scorer")
    prompts = [p.text for p in task.load_prompts("train", n=None, source=prompt_source(cfg), seed=cfg.seed + 3)]
    ptx_texts = []
    if pc.ptx_coef > 0:  # PPO-ptx: a text set to keep the pretraining log-likelihood up (InstructGPT eq. 2)
        ptx_texts = task_for(cfg).load_demonstrations("train", n=None, source=prompt_source(cfg), seed=cfg.seed)

    n_minibatches = math.ceil(pc.batch_size / pc.minibatch_size)
    total_updates = pc.iterations * pc.ppo_epochs * n_minibatches
    param_groups = [{"params": roles.policy_params, "lr": pc.learning_rate},
                    {"params": roles.value_params, "lr": pc.value_learning_rate or pc.learning_rate}]
    optimizer = torch.optim.AdamW(param_groups, eps=1e-5, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, total_updates)  # annealed linearly to 0
    kl_ctl = AdaptiveKLController(pc.init_beta, pc.target_kl, pc.k_beta) if pc.adaptive_kl else FixedKLController(pc.init_beta)

    start = 0
    ckpt = run.load_checkpoint(STAGE)
    if ckpt is not None:
        roles.load_trainable_state(ckpt["trainable"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        kl_ctl.load_state_dict(ckpt["kl_controller"])
        start = ckpt["iteration"]
    metrics = MetricsLog(run, STAGE, resume_step=start if ckpt else None, step_key="iteration")
    samples_path = run.stage(STAGE) / "samples.jsonl"
    online = None  # online collection (Ziegler §2.3), off by default: rlhf/stages/online.py
    if cfg.online.enabled:
        online = OnlineCollection(run, cfg, roles, response_length, stop_rule, prompts, ckpt.get("online") if ckpt else None)

    def save_checkpoint(iteration: int) -> None:
        run.save_checkpoint(STAGE, {"trainable": roles.trainable_state(), "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict(), "kl_controller": kl_ctl.state_dict(), "iteration": iteration,
                                    "online": online.state_dict() if online else None})

    bar = tqdm(total=pc.iterations, initial=start, desc="ppo", leave=False)
    for iteration in range(start, pc.iterations):
        reason = andon_cord_pulled(pc, run.root)
        if reason is not None:
            save_checkpoint(iteration)
            log.warning("PPO stopped before iteration %d by the Andon cord: %s", iteration + 1, reason)
            return {"stopped": True, "reason": reason, "iteration": iteration}

        # 0. online collection: push fresh queries, wait for l(n) labels (cord honoured), retrain the RM at its points
        online_row = {}
        if online is not None:
            online_row, reason = online.before_iteration(iteration, lambda: andon_cord_pulled(pc, run.root))
            if reason is not None:
                save_checkpoint(iteration)
                log.warning("PPO stopped before iteration %d while waiting for labels: %s", iteration + 1, reason)
                return {"stopped": True, "reason": reason, "iteration": iteration}
            reward = roles.reward  # a retrained reward model, if one was due

        # 1. sample a batch of responses from the current policy (prompts in a seeded order, so resume continues it)
        order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(cfg.seed * 7919 + iteration * pc.batch_size // len(prompts)))
        first = iteration * pc.batch_size % len(prompts)
        batch_prompts = [prompts[order[(first + j) % len(prompts)]] for j in range(pc.batch_size)]
        # (the frozen bottom layers' output is kept from the sampling loop: they never run again for any role or epoch)
        # (and the reward model, on the same bottom layers, scores the sampled tokens from it with its top layers only)
        from_sampling = pc.reward_source != "gold" and policy.backbone.same_frozen_prefix(reward.backbone)
        episodes, texts = sample_episodes(policy, batch_prompts, response_length, stop_rule,
                                          with_prefix=policy.backbone.shares_frozen_prefix, for_scoring=from_sampling)
        mask = episodes.response_mask
        B = len(batch_prompts)

        with torch.no_grad():
            # 2. score with the reward model (or the gold scorer); responses with no stop get a fixed penalty (Ziegler §3.1.2)
            wants_gold = task.gold_scorer is not None and (pc.log_gold_reward or pc.reward_source == "gold")
            gold = task.gold_scorer(batch_prompts, texts) if wants_gold else None
            rm_scores = (torch.tensor(gold) if pc.reward_source == "gold" else
                         reward.score_episodes(episodes) if from_sampling else reward.score(batch_prompts, texts))
            scores = apply_missing_stop_penalty(rm_scores, episodes.has_stop, pc.missing_stop_penalty)
            # 3. log-probs of policy and reference and the values, in the same minibatches as the first epoch
            mbs = chunks(B, pc.minibatch_size)
            old_logprobs = torch.cat([policy.logprobs(episodes.select(s)) for s in mbs])
            ref_logprobs = torch.cat([reference.logprobs(episodes.select(s)) for s in mbs])
            old_values = torch.cat([value.values(episodes.select(s)) for s in mbs])
            # 4. per-token rewards -beta*KL with the score at the last token; GAE; whitened advantages
            rewards, kl = kl_penalized_rewards(scores, old_logprobs, ref_logprobs, mask, kl_ctl.beta)
            advantages, returns = gae(rewards, old_values, mask, pc.gamma, pc.lam)
            if pc.whiten_advantages:
                advantages = masked_whiten(advantages, mask)

        # 5. PPO epochs over minibatches: clipped policy and value losses (+ PPO-ptx); value alone while it warms up
        policy_moves = iteration >= pc.value_warmup_iterations
        stats: dict[str, list[float]] = {}
        for epoch in range(pc.ppo_epochs):
            perm = torch.arange(B) if epoch == 0 else torch.randperm(B)
            for k, s in enumerate(mbs):
                idx = perm[s]
                mb = episodes.select(idx)
                logprobs, entropy = policy.logprobs(mb, with_entropy=True)
                if epoch == 0 and k == 0:  # nothing has changed yet: the ratio must be exactly 1
                    ratio_gap = (logprobs - old_logprobs[idx]).abs().max().item()
                    assert ratio_gap < 1e-4, f"PPO ratio is not 1 on the first minibatch (max |log ratio| = {ratio_gap})"
                    stats.setdefault("first_minibatch_max_log_ratio", []).append(ratio_gap)
                pg_loss, pg_stats = clipped_policy_loss(logprobs, old_logprobs[idx], advantages[idx], mask[idx], pc.clip_range)
                values = value.values(mb)
                vf_loss, vf_stats = clipped_value_loss(values, old_values[idx], returns[idx], mask[idx], pc.clip_range_value)
                loss = pg_loss + pc.value_coef * vf_loss if policy_moves else vf_loss
                if ptx_texts and policy_moves:
                    pick = torch.randint(len(ptx_texts), (pc.ptx_batch_size,)).tolist()
                    ptx_nll = response_nll(policy.backbone, policy.adapter, [ptx_texts[i].prompt for i in pick], [ptx_texts[i].response for i in pick])
                    loss = loss + pc.ptx_coef * ptx_nll  # = PPO loss - gamma * pretraining log-likelihood
                    stats.setdefault("ptx_nll", []).append(ptx_nll.item())
                optimizer_step(loss, roles.policy_params + roles.value_params, optimizer, scheduler)
                for key, val in {**pg_stats, **vf_stats, "policy_loss": pg_loss.item(), "value_loss": vf_loss.item(),
                                 "entropy": masked_mean(entropy.detach(), mask[idx]).item()}.items():
                    stats.setdefault(key, []).append(val)

        # 6. adapt beta to the batch's KL, log, checkpoint
        mean_kl = kl.sum(-1).mean().item()
        row = {
            "iteration": iteration + 1,
            "rm_score": rm_scores.mean().item(),
            "score": scores.mean().item(),
            "non_score_reward": (-kl_ctl.beta * kl.sum(-1)).mean().item(),
            "kl": mean_kl,
            "beta": kl_ctl.beta,
            "response_length": mask.sum(-1).mean().item(),
            "no_stop_count": int((~episodes.has_stop).sum()),
            "explained_variance": explained_variance(old_values, returns, mask),
            "lr": scheduler.get_last_lr()[0],
            **{k: sum(v) / len(v) for k, v in stats.items() if k not in ("ratio_max", "first_minibatch_max_log_ratio")},
            "ratio_max": max(stats["ratio_max"]),
            "first_minibatch_max_log_ratio": stats["first_minibatch_max_log_ratio"][0],
            **online_row,
        }
        if gold is not None:  # the simulated task's gold reward (trained on only when reward_source=gold)
            row["gold_reward"] = sum(gold) / B
            row["gold_score"] = apply_missing_stop_penalty(torch.tensor(gold, dtype=torch.float32), episodes.has_stop, pc.missing_stop_penalty).mean().item()
        if policy_moves:  # the KL of a warm-up batch is 0 by construction, not a signal to lower beta
            kl_ctl.update(mean_kl, B)
        metrics.write(row)
        with open(samples_path, "a") as fh:
            for p, t, sc in list(zip(batch_prompts, texts, scores.tolist()))[:4]:
                fh.write(json.dumps({"iteration": iteration + 1, "prompt": p, "response": t, "score": sc}) + "\n")
        if row["response_length"] < 1.5 or row["entropy"] < 0.01:
            log.warning("PPO iteration %d: the policy may have collapsed (length %.2f, entropy %.3f)", iteration + 1, row["response_length"], row["entropy"])
        log.info("ppo %d/%d rm %.3f kl %.2f beta %.3f len %.1f", iteration + 1, pc.iterations, row["rm_score"], mean_kl, kl_ctl.beta, row["response_length"])
        bar.update(1)
        if (iteration + 1) % pc.checkpoint_every == 0 and iteration + 1 < pc.iterations:
            save_checkpoint(iteration + 1)
    bar.close()
    metrics.close()

    # 7. save the policy as a plain HF folder (adapter merged into the SFT base) and the value network
    roles.value.save(run.stage(STAGE), "value")
    out = run.stage(STAGE) / "model"
    tmp = out.with_name("model.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pb = policy.backbone
    model = pb.model.merge_and_unload(adapter_names=[policy.adapter]) if pb.is_lora else pb.model
    model.save_pretrained(tmp)
    pb.tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    info = {"iterations": pc.iterations, "final_beta": kl_ctl.beta, **({"online": online.summary()} if online else {})}
    run.mark_done(STAGE, info)
    (run.stage(STAGE) / "checkpoint.pt").unlink(missing_ok=True)
    return info

