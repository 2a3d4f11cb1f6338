"""DPO (Rafailov et al. 2023) and IPO (Azar et al. 2023) on the run's comparisons, the SFT policy as reference
(issue 19 §2). Writes RUN_DIR/dpo/{metrics.jsonl,model/}: with LoRA model/ is the policy's adapter on the SFT model
(a standard peft adapter folder), with full fine-tuning a plain HF model folder, as PPO's."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from rlhf.config import RunConfig
from rlhf.config_methods import DPOConfig
from rlhf.data.records import Comparison
from rlhf.models.loading import open_backbone, sft_model_path
from rlhf.models.roles import Backbone, LanguageModelRole
from rlhf.models.saving import ON_SFT, save_policy
from rlhf.policy_losses import dpo_loss, ipo_loss
from rlhf.run import MetricsLog, RunDir, seed_everything
from rlhf.stages.optim import accumulated_step, load_trainable_state, trainable_parameters, trainable_state
from rlhf.stages.sft import kept_prefixes, response_logprob_sums
from rlhf.stages.tripwires import check_finite, check_finite_state, check_policy, checked_loss, save_checked_checkpoint

log = logging.getLogger("rlhf")
STAGE = "dpo"
STAT_KEYS = ("reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward")


@dataclass(frozen=True)
class PreferencePair:
    """One ordered pair of responses to a prompt: `chosen` preferred to `rejected`."""

    prompt: str
    chosen: str
    rejected: str


def preference_pairs(comparisons: list[Comparison]) -> tuple[list[PreferencePair], int]:
    """Every comparison as its ordered pairs (`Comparison.pairs`: pairwise its one pair, best-of-K (best, each
    other), a ranking all its (better, worse) pairs, tied ranks skipped), in order; pairs whose two responses are
    the same text are dropped as ties. Returns (pairs, the number of text ties dropped)."""
    pairs, ties = [], 0
    for c in comparisons:
        for better, worse in c.pairs():
            if c.responses[better] == c.responses[worse]:
                ties += 1
                continue
            pairs.append(PreferencePair(c.prompt, c.responses[better], c.responses[worse]))
    return pairs, ties


class PairPrefixes:
    """The frozen bottom layers' output over each pair's two sequences, kept by the first pass over the pair, so
    that every later pass (the training steps, the accuracy passes) runs only the top layers, where the policy's
    adapter sits: the reward model's and PPO's speed trick. The first pass computes a whole batch's in that batch's
    layout, so a later pass over the same batch reads the very numbers a full pass computes. Off (None) when the
    backbone has no frozen prefix (full fine-tuning, adapters on every layer) or `max_bytes` (dpo.kept_prefix_gib)
    is 0; past `max_bytes` no more are kept, and the pairs left run all layers on every pass, as without it."""

    def __init__(self, backbone: Backbone, pairs: list[PreferencePair], max_bytes: int = 2 * 2**30):
        self.backbone, self.pairs, self.max_bytes = backbone, pairs, max_bytes
        self.kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # pair index -> (chosen's, rejected's)
        self.bytes = 0

    def of(self, idx: list[int]) -> list[torch.Tensor] | None:
        """Pairs `idx`'s prefixes as `pair_logprobs` lays out its sequences: every chosen, then every rejected."""
        if not self.backbone.shares_frozen_prefix or self.max_bytes <= 0:
            return None
        if all(j in self.kept for j in idx):
            got = [self.kept[j] for j in idx]
        else:
            ps = [self.pairs[j] for j in idx]
            prompts, responses = [p.prompt for p in ps], [p.chosen for p in ps] + [p.rejected for p in ps]
            fresh = kept_prefixes(self.backbone, prompts + prompts, responses)
            got = list(zip(fresh[: len(idx)], fresh[len(idx) :]))
            for j, both in zip(idx, got):
                size = sum(t.numel() * t.element_size() for t in both)
                if j not in self.kept and self.bytes + size <= self.max_bytes:
                    self.kept[j], self.bytes = both, self.bytes + size
        return [c for c, _ in got] + [r for _, r in got]

    def release(self) -> None:
        """Drop what is kept (later passes run the bottom layers again)."""
        self.kept, self.bytes = {}, 0


def pair_logprobs(
    role: LanguageModelRole,
    pairs: list[PreferencePair],
    with_entropy: bool = False,
    prefixes: list[torch.Tensor] | None = None,
):
    """log pi(chosen | prompt), log pi(rejected | prompt): sums over each response's tokens (its EOS included), at
    temperature 1, [B] each, from one forward over the 2B sequences (only the top layers' with `prefixes`, from
    `PairPrefixes.of`). With `with_entropy`, the policy's mean per-token entropy over those tokens as well (a third,
    detached value)."""
    prompts, responses = [p.prompt for p in pairs], [p.chosen for p in pairs] + [p.rejected for p in pairs]
    out = response_logprob_sums(role.backbone, role.adapter, prompts + prompts, responses, with_entropy, prefixes)
    sums, entropy = out if with_entropy else (out, None)
    return (sums[: len(pairs)], sums[len(pairs) :]) + ((entropy,) if with_entropy else ())


@torch.no_grad()
def batched_pair_logprobs(
    role: LanguageModelRole, pairs: list[PreferencePair], batches: list[list[int]], prefixes: PairPrefixes | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`pair_logprobs` of every pair, in the given batches of pair indices (each index once), on the CPU [N]; with
    `prefixes` (over `pairs`) each batch's bottom layers run at most once in the stage."""
    chosen, rejected = torch.full((len(pairs),), float("nan")), torch.full((len(pairs),), float("nan"))
    for idx in batches:
        c, r = pair_logprobs(role, [pairs[j] for j in idx], prefixes=prefixes.of(idx) if prefixes else None)
        chosen[idx], rejected[idx] = c.float().cpu(), r.float().cpu()
    assert not (chosen.isnan().any() or rejected.isnan().any()), "some pairs were in no batch"
    return chosen, rejected


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Epoch `epoch`'s batches of pair indices: a seeded permutation of 0..n-1 (as SFT's), cut into batch_size."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def implicit_reward_accuracy(
    policy: LanguageModelRole,
    reference: LanguageModelRole | None,
    pairs: list[PreferencePair],
    batch_size: int,
    reference_logprobs: tuple[torch.Tensor, torch.Tensor] | None = None,
    prefixes: PairPrefixes | None = None,
) -> float:
    """Share of `pairs` whose implicit reward log(pi/pi_ref) (any positive scale, e.g. beta) is higher for the chosen
    response than for the rejected one; equal rewards count 0, as in the loss's statistics. `reference_logprobs`
    (chosen, rejected) [N], when the reference's are at hand already: then the reference does not run. `prefixes`:
    the pairs' kept bottom-layer outputs, shared by policy and reference (one base)."""
    batches = [list(range(i, min(i + batch_size, len(pairs)))) for i in range(0, len(pairs), batch_size)]
    pc, pr = batched_pair_logprobs(policy, pairs, batches, prefixes)
    if reference_logprobs is None:
        reference_logprobs = batched_pair_logprobs(reference, pairs, batches, prefixes)
    rc, rr = reference_logprobs
    return float(((pc - rc) > (pr - rr)).float().mean())


def dpo_roles(cfg: RunConfig, sft_path: str) -> tuple[LanguageModelRole, LanguageModelRole]:
    """(policy, reference), at temperature 1. With LoRA one frozen SFT base: the policy a new adapter "policy"
    (LoRA B = 0, so it starts equal to SFT), the reference the base with adapters off; full fine-tuning: two copies."""
    base = open_backbone(cfg, sft_path)
    if base.is_lora:
        base.add_adapter("policy", cfg.model.policy_lora_r, cfg.model.policy_lora_top_layers)
        return LanguageModelRole(base, "policy", 1.0), LanguageModelRole(base, None, 1.0)
    return LanguageModelRole(base, None, 1.0), LanguageModelRole(open_backbone(cfg, sft_path), None, 1.0)


def check_settings(dc: DPOConfig) -> None:
    if dc.epochs < 1 or dc.batch_size < 1 or dc.checkpoint_every < 1 or dc.warmup_updates < 0:
        raise ValueError(
            "dpo.epochs, dpo.batch_size, dpo.checkpoint_every: expected >= 1, dpo.warmup_updates >= 0; got "
            f"{dc.epochs}, {dc.batch_size}, {dc.checkpoint_every}, {dc.warmup_updates}"
        )
    if dc.kept_prefix_gib < 0:
        raise ValueError(f"dpo.kept_prefix_gib: expected >= 0 (0 = keep none), got {dc.kept_prefix_gib}")
    if not dc.beta > 0 or not dc.max_grad_norm > 0:
        raise ValueError(f"dpo.beta, dpo.max_grad_norm: expected > 0, got {dc.beta}, {dc.max_grad_norm}")


def train_dpo(run: RunDir, cfg: RunConfig) -> dict:
    """The DPO stage: the policy trained on the run's comparisons (as ordered pairs) against the SFT policy, with
    the DPO or IPO loss; resumes from its checkpoint."""
    dc, tc = cfg.dpo, cfg.tripwires
    check_settings(dc)
    loss_fn = dpo_loss if dc.loss == "dpo" else ipo_loss  # ipo: dc.beta is tau
    seed_everything(cfg.seed + 6)
    collect_dir = run.require("collect")

    # 1. the comparisons as ordered (chosen, rejected) pairs; ties dropped
    train, ties = preference_pairs(run.read_records("collect", "comparisons.jsonl", Comparison))
    heldout_path = collect_dir / "heldout.jsonl"
    heldout, _ = (
        preference_pairs(run.read_records("collect", "heldout.jsonl", Comparison)) if heldout_path.exists() else ([], 0)
    )
    assert train, "dpo: no training pairs in the run's comparisons"

    # 2. policy (a new adapter on the SFT model, or a copy of it) and reference (the SFT model)
    policy, reference = dpo_roles(cfg, sft_model_path(run, cfg))
    params = trainable_parameters(policy.backbone, policy.adapter)
    steps_per_epoch = math.ceil(len(train) / dc.batch_size)
    total_steps = steps_per_epoch * dc.epochs
    optimizer = torch.optim.AdamW(params, lr=dc.learning_rate, eps=1e-5, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, dc.warmup_updates, total_steps)

    # 3. the reference's sequence log-probs, once, in the first epoch's batches (the very layout of the first
    # step, so that there the policy's log-probs equal them exactly)
    kept_bytes = int(dc.kept_prefix_gib * 2**30)
    train_prefixes = PairPrefixes(policy.backbone, train, kept_bytes)  # kept by this pass for the steps, accuracy
    ref_chosen, ref_rejected = batched_pair_logprobs(
        reference, train, epoch_batches(len(train), dc.batch_size, cfg.seed, 0), train_prefixes
    )

    # 4. resume from the last checkpoint, if any
    step = 0
    ckpt = run.load_checkpoint(STAGE)
    if ckpt is not None:
        load_trainable_state(policy.backbone, policy.adapter, ckpt["trainable"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        step = ckpt["step"]
    metrics = MetricsLog(run, STAGE, resume_step=step if ckpt else None)

    # 5. epochs over the pairs in seeded orders (a resumed run continues the order), the DPO or IPO loss
    bar = tqdm(total=total_steps, initial=step, desc="dpo", leave=False, disable=not run.writer)
    while step < total_steps:
        epoch, i = divmod(step, steps_per_epoch)
        batch = epoch_batches(len(train), dc.batch_size, cfg.seed, epoch)[i]
        measured: list[tuple[int, dict[str, float]]] = []  # (pairs, statistics) of each micro-batch
        first_gap: list[float] = []  # on the first step of a fresh run: max |log pi - log pi_ref| of each micro-batch
        fresh_start = step == 0
        drift: list[tuple[int, float]] = []  # tripwires: (pairs, mean |log pi/pi_ref|) of each micro-batch
        entropies: list[tuple[int, float]] = []  # tripwires: (pairs, the policy's mean per-token entropy)

        def loss_of(rows: list[int]) -> torch.Tensor:
            kept = train_prefixes.of(rows)
            if tc.entropy_floor > 0:
                chosen, rejected, entropy = pair_logprobs(policy, [train[j] for j in rows], True, kept)
                entropies.append((len(rows), entropy.item()))
            else:
                chosen, rejected = pair_logprobs(policy, [train[j] for j in rows], prefixes=kept)
            rc, rr = ref_chosen[rows].to(chosen.device), ref_rejected[rows].to(chosen.device)
            if tc.kl_ceiling > 0:
                drift.append((len(rows), ((chosen - rc).abs().mean() + (rejected - rr).abs().mean()).item() / 2))
            if fresh_start:  # nothing has moved yet: the policy is the reference
                first_gap.append(max((chosen - rc).abs().max().item(), (rejected - rr).abs().max().item()))
                assert first_gap[-1] < 1e-4, f"dpo: policy != reference at the first step (max |log ratio| {first_gap})"
            loss, stats = loss_fn(chosen, rejected, rc, rr, dc.beta)
            measured.append((len(rows), stats))
            return checked_loss(STAGE, step + 1, loss, run.processes)

        loss = accumulated_step(
            batch,
            loss_of,
            params,
            optimizer,
            scheduler,
            dc.gradient_accumulation_steps,
            run.processes,  # with several processes each takes its rows; the loss is a mean over pairs
            max_grad_norm=dc.max_grad_norm,
        )
        step += 1
        bar.update(1)
        check_finite(STAGE, "loss", step, loss)
        if drift or entropies:  # DPO samples nothing: its drift from the reference on the step's responses
            mean_drift = run.processes.sum(sum(n * d for n, d in drift)) / len(batch) if drift else None
            entropy = run.processes.sum(sum(n * e for n, e in entropies)) / len(batch) if entropies else None
            check_policy(run, STAGE, step, mean_drift, entropy, tc, "step")
        stats = {k: run.processes.sum(sum(n * s[k] for n, s in measured)) / len(batch) for k in STAT_KEYS}
        row = {"step": step, "epoch": epoch + 1, "loss": loss.item(), **stats, "lr": scheduler.get_last_lr()[0]}
        if fresh_start:
            row["first_step_max_log_ratio"] = run.processes.max(max(first_gap, default=0.0))
        metrics.write(row)
        if step % dc.checkpoint_every == 0 and step < total_steps:
            state = trainable_state(policy.backbone, policy.adapter)
            save_checked_checkpoint(
                run,
                STAGE,
                step,
                {
                    "trainable": state,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": step,
                },
                tc,
            )
    bar.close()
    metrics.close()

    # 6. implicit-reward accuracy on the training pairs (the reference's log-probs from step 3) and held-out pairs;
    # save the policy, as PPO does
    check_finite_state(STAGE, step, trainable_state(policy.backbone, policy.adapter))  # never save poisoned weights
    reference_logprobs = (ref_chosen, ref_rejected)
    train_accuracy = implicit_reward_accuracy(policy, None, train, dc.batch_size, reference_logprobs, train_prefixes)
    train_prefixes.release()  # the held-out pairs' may take their memory
    heldout_prefixes = PairPrefixes(policy.backbone, heldout, kept_bytes)
    heldout_accuracy = (
        implicit_reward_accuracy(policy, reference, heldout, dc.batch_size, None, heldout_prefixes)
        if heldout
        else float("nan")
    )
    info = {
        "loss": dc.loss,
        "beta": dc.beta,
        "pairs": len(train),
        "dropped_ties": ties,
        "steps": step,
        "train_accuracy": train_accuracy,
        "heldout_accuracy": heldout_accuracy,
        "heldout_pairs": len(heldout),
    }
    if run.writer:
        save_policy(policy.backbone, policy.adapter, run.stage(STAGE) / "model", ON_SFT)
        run.mark_done(STAGE, info)
        run.remove_checkpoints(STAGE)
    log.info("dpo: %d pairs, train accuracy %.3f, held-out accuracy %.3f", len(train), train_accuracy, heldout_accuracy)
    return info
