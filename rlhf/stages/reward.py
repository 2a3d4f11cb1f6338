"""Reward model: an LM trunk (initialised from the SFT model) with a scalar head, trained on comparisons with the
papers' losses, normalised after training, and measured on held-out comparisons. Writes RUN_DIR/reward/."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable

import torch
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from rlhf.config import RewardConfig, RunConfig
from rlhf.data.records import Comparison
from rlhf.losses import (
    best_of_k_loss,
    bias_for_zero_reference,
    gain_bias_for_unit_normal,
    pairwise_loss,
    ranking_loss,
)
from rlhf.models.encoding import EncodedSequence, pad_encoded
from rlhf.models.loading import open_backbone, sft_model_path
from rlhf.models.roles import Backbone, ScalarRole, encode_for_scoring
from rlhf.processes import Processes
from rlhf.run import MetricsLog, RunDir, seed_everything
from rlhf.stages.optim import accumulated_step, trainable_parameters
from rlhf.stages.tripwires import check_finite, check_finite_state, checked_loss, save_checked_checkpoint
from rlhf.tasks import prompt_source, task_for

log = logging.getLogger("rlhf")
STAGE = "reward"


def comparison_loss(rm: ScalarRole, batch: list[Comparison], encoded: list[list[EncodedSequence]]) -> torch.Tensor:
    """The loss of a batch that may mix the three query types, weighted by how many comparisons each has, from the
    raw scores of its responses: `encoded`, one list per comparison from `encode_comparisons`, has them tokenised
    and through the frozen bottom layers already."""
    scores = rm.raw_scores(pad_encoded([s for seqs in encoded for s in seqs], rm.backbone.tokenizer.pad_token_id))
    return loss_from_scores(scores, batch)


def loss_from_scores(scores: torch.Tensor, batch: list[Comparison]) -> torch.Tensor:
    """The papers' losses from the scores of every response of `batch`, concatenated in order. A ranking of K
    stays one batch element; its C(K,2) pairs are formed only inside `ranking_loss`."""
    per_comparison, start = [], 0
    for c in batch:
        per_comparison.append(scores[start : start + len(c.responses)])
        start += len(c.responses)
    assert start == scores.shape[0], (start, scores.shape)
    total, device = scores.new_zeros(()), scores.device
    for kind in ("pairwise", "best_of_k", "ranking"):
        idx = [i for i, c in enumerate(batch) if c.kind == kind]
        if not idx:
            continue
        if kind == "pairwise":
            r = torch.stack([per_comparison[i] for i in idx])
            best = torch.tensor([batch[i].best for i in idx], device=device)
            rows = torch.arange(len(idx), device=device)
            loss = pairwise_loss(r[rows, best], r[rows, 1 - best])
        elif kind == "best_of_k":
            K = max(len(batch[i].responses) for i in idx)
            assert all(len(batch[i].responses) == K for i in idx), "best_of_k comparisons in one batch must share K"
            loss = best_of_k_loss(
                torch.stack([per_comparison[i] for i in idx]), torch.tensor([batch[i].best for i in idx], device=device)
            )
        else:
            K = max(len(batch[i].responses) for i in idx)
            r = scores.new_zeros((len(idx), K))
            ranks = torch.zeros((len(idx), K), dtype=torch.long, device=device)
            valid = torch.zeros((len(idx), K), dtype=torch.bool, device=device)
            for row, i in enumerate(idx):
                k = len(batch[i].responses)
                r[row, :k] = per_comparison[i]
                ranks[row, :k] = torch.tensor(batch[i].ranks, device=device)
                valid[row, :k] = True
            loss = ranking_loss(r, ranks, valid)
        total = total + loss * len(idx) / len(batch)
    return total


@torch.no_grad()
def frozen_features(rm: ScalarRole, encoded: list[list[EncodedSequence]], chunk: int = 16) -> torch.Tensor:
    """The trunk's features at each response's last token, [sum of responses, d], in the order of `encoded`."""
    feats = []
    for i in range(0, len(encoded), chunk):
        seqs = [s for group in encoded[i : i + chunk] for s in group]
        feats.append(rm.hidden_at_last(pad_encoded(seqs, rm.backbone.tokenizer.pad_token_id)))
    return torch.cat(feats)


def fit_head_on_features(rm: ScalarRole, train: list[Comparison], x: torch.Tensor, l2: float) -> float:
    """Fit the scalar head by L-BFGS on features `x` (one row per response of `train`, in order; standardised,
    with an L2 penalty) under the comparison loss. Returns the training loss."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / std
    w = torch.zeros(z.shape[1], requires_grad=True, device=z.device)
    optimizer = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = loss_from_scores(z @ w, train) + l2 * (w * w).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():  # head(h) = w . (h - mean) / std
        rm.head.weight.copy_((w / std).unsqueeze(0))
        rm.head.bias.fill_(-(w * mean / std).sum().item())
        return loss_from_scores(z @ w, train).item()


def fit_head_on_frozen_features(
    rm: ScalarRole, train: list[Comparison], encoded: list[list[EncodedSequence]], l2: float
) -> float:
    """Linear probing before fine-tuning (Kumar et al. 2022, "LP-FT"): fit the scalar head by L-BFGS on the
    trunk's features (standardised, with an L2 penalty) under the same comparison loss, so that fine-tuning starts
    from a head that already ranks the responses instead of a random one. Returns the probe's training loss."""
    return fit_head_on_features(rm, train, frozen_features(rm, encoded), l2)


def has_tied_best(c: Comparison) -> bool:
    """True when the gold scores stored with a simulated comparison tie for the best response."""
    gold = c.meta.get("gold")
    return bool(gold) and sorted(gold)[-1] == sorted(gold)[-2]


@torch.no_grad()
def heldout_accuracy(rm: ScalarRole, heldout: list[Comparison]) -> dict:
    """Accuracy over ordered pairs: against the gold scores stored with each comparison when present (ties in
    gold are skipped), otherwise against the labeler's choice. Equal RM scores count one half."""
    prompts, responses = prompts_and_responses(heldout)
    all_scores = rm.score(prompts, responses, encoded=encode_for_scoring(rm, prompts, responses)).tolist()
    correct, n, start = 0.0, 0, 0
    for c in heldout:
        scores, start = all_scores[start : start + len(c.responses)], start + len(c.responses)
        gold = c.meta.get("gold")
        pairs = [(i, j) for i in range(len(gold)) for j in range(len(gold)) if gold[i] > gold[j]] if gold else c.pairs()
        for better, worse in pairs:
            correct += 1.0 if scores[better] > scores[worse] else 0.5 if scores[better] == scores[worse] else 0.0
            n += 1
    return {
        "heldout_accuracy": correct / n if n else float("nan"),
        "heldout_n": n,
        "against": "gold" if heldout and heldout[0].meta.get("gold") else "labels",
    }


def new_reward_model(backbone: Backbone, name: str = "reward") -> ScalarRole:
    """A fresh reward model on `backbone`: a new LoRA adapter `name` (or the whole model) and a new head."""
    adapter = name if backbone.is_lora else None
    if adapter:
        backbone.add_adapter(adapter)
    return ScalarRole(backbone, adapter)


def prompts_and_responses(comparisons: list[Comparison]) -> tuple[list[str], list[str]]:
    """Every response of `comparisons`, in order, with its prompt: (prompts, responses)."""
    return [c.prompt for c in comparisons for _ in c.responses], [r for c in comparisons for r in c.responses]


def encode_comparisons(rm: ScalarRole, comparisons: list[Comparison]) -> list[EncodedSequence]:
    """Every response of `comparisons`, in order, through `encode_for_scoring` (the frozen bottom layers run once)."""
    return encode_for_scoring(rm, *prompts_and_responses(comparisons))


def fit_reward_model(
    rm: ScalarRole,
    train: list[Comparison],
    rc: RewardConfig,
    seed: int,
    ckpt: dict | None = None,
    after_step: Callable[[int, float, float, dict], None] | None = None,
    flat: list[EncodedSequence] | None = None,
    processes: Processes = Processes(),
) -> int:
    """Train `rm` on the comparisons `train` with the papers' losses: AdamW annealed linearly to 0, `rc.epochs`
        passes each in a seeded order (after an LP-FT head fit when `rc.probe_head_first`). `ckpt` resumes a run;
        `after_step(step, loss, lr, state)` sees each step (state() gives a checkpoint); `flat` is
        `encode_comparisons(rm, train)` when the caller has it; with several `processes` each step's comparisons are shared
    out among them (the frozen features are computed by every process). Returns the steps taken."""

    backbone = rm.backbone
    trunk_params = trainable_parameters(backbone, rm.adapter)
    params = trunk_params + list(rm.head.parameters())
    steps_per_epoch = math.ceil(len(train) / rc.batch_size)
    total_steps = steps_per_epoch * rc.epochs
    groups = [
        {"params": trunk_params, "lr": rc.learning_rate},
        {"params": list(rm.head.parameters()), "lr": rc.head_learning_rate or rc.learning_rate},
    ]
    optimizer = torch.optim.AdamW(groups, eps=1e-5, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, total_steps)  # annealed linearly to 0

    step = 0
    if ckpt is not None:
        rm.head.load_state_dict(ckpt["head"])
        if backbone.is_lora:
            backbone.load_adapter_state(rm.adapter, ckpt["trainable"])
        else:
            backbone.model.load_state_dict(ckpt["trainable"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        step = ckpt["step"]

    def state() -> dict:
        trainable = backbone.adapter_state(rm.adapter) if backbone.is_lora else backbone.model.state_dict()
        return {
            "trainable": trainable,
            "head": rm.head.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
        }

    # the frozen bottom layers (when adapters sit on the top layers only) run once for all epochs
    flat = encode_comparisons(rm, train) if flat is None else flat
    assert len(flat) == sum(len(c.responses) for c in train), "flat must encode every response of train, in order"
    encoded, start = [], 0
    for c in train:
        encoded.append(flat[start : start + len(c.responses)])
        start += len(c.responses)

    if rc.probe_head_first and step == 0:  # LP-FT: the head is fitted on the frozen features first
        probe_loss = fit_head_on_frozen_features(rm, train, encoded, rc.probe_l2)
        log.info("reward model: head fitted on frozen features, training loss %.3f", probe_loss)

    bar = tqdm(total=total_steps, initial=step, desc="reward model", leave=False, disable=not processes.is_main)
    while step < total_steps:
        epoch, i = divmod(step, steps_per_epoch)
        order = list(range(len(train)))
        random.Random(seed * 1000 + epoch).shuffle(order)
        picked = order[i * rc.batch_size : (i + 1) * rc.batch_size]
        loss = accumulated_step(
            picked,
            lambda rows: checked_loss(
                STAGE, step + 1, comparison_loss(rm, [train[j] for j in rows], [encoded[j] for j in rows]), processes
            ),
            params,
            optimizer,
            scheduler,
            rc.gradient_accumulation_steps,
            processes,
        )
        step += 1
        bar.update(1)
        check_finite(STAGE, "loss", step, loss)
        if after_step is not None:
            after_step(step, loss.item(), scheduler.get_last_lr()[0], state)
    bar.close()
    return step


def normalize_reward_model(
    rm: ScalarRole, train: list[Comparison], cfg: RunConfig, flat: list[EncodedSequence] | None = None
) -> None:
    """Set the RM's gain and bias: Ziegler (policy samples mean 0, std 1, over the first 256 training responses;
    `flat` = `encode_comparisons(rm, train)` when the caller has it) or Stiennon (reference responses average 0)."""
    rc = cfg.reward
    if rc.normalize == "policy":
        prompts, responses = (p[:256] for p in prompts_and_responses(train[:256]))
        sample = (flat if flat is not None else encode_comparisons(rm, train[:256]))[:256]
        rm.gain, rm.bias = gain_bias_for_unit_normal(rm.score(prompts, responses, encoded=sample))
    elif rc.normalize == "reference":
        demos = task_for(cfg).load_demonstrations("train", n=None, source=prompt_source(cfg), seed=cfg.seed)[:256]
        rm.bias = bias_for_zero_reference(rm.score([d.prompt for d in demos], [d.response for d in demos]))
    # "none" (the only other value reward.normalize takes, checked when the config loads): gain and bias stay as trained


def train_reward(run: RunDir, cfg: RunConfig) -> dict:
    rc = cfg.reward
    seed_everything(cfg.seed + 2)
    run.require("collect")

    # 1. comparisons
    train = run.read_records("collect", "comparisons.jsonl", Comparison)
    heldout = run.read_records("collect", "heldout.jsonl", Comparison)
    if rc.drop_tied_best:
        train = [c for c in train if not has_tied_best(c)]
    assert train, "no training comparisons"

    # 2. trunk initialised from the SFT model, scalar head N(0, 1/sqrt(d+1))
    backbone = open_backbone(cfg, sft_model_path(run, cfg))
    rm = new_reward_model(backbone)

    # 3. resume
    ckpt = run.load_checkpoint(STAGE)
    metrics = MetricsLog(run, STAGE, resume_step=ckpt["step"] if ckpt else None)

    def after_step(step: int, loss: float, lr: float, state: Callable[[], dict]) -> None:
        metrics.write({"step": step, "loss": loss, "lr": lr})
        if step % rc.checkpoint_every == 0 and step < math.ceil(len(train) / rc.batch_size) * rc.epochs:
            save_checked_checkpoint(run, STAGE, step, state())

    # 4. train (one epoch by default), each epoch in a seeded order; LP-FT head fit first if configured
    flat = encode_comparisons(rm, train)  # the frozen bottom layers, once for training and normalisation
    step = fit_reward_model(rm, train, rc, cfg.seed, ckpt, after_step, flat, run.processes)
    metrics.close()

    # 5. normalise: Ziegler (policy samples mean 0, std 1) or Stiennon (reference responses average 0)
    normalize_reward_model(rm, train, cfg, flat)

    # 6. held-out accuracy, then save
    acc = heldout_accuracy(rm, heldout) if heldout else {"heldout_accuracy": float("nan"), "heldout_n": 0}
    info = {**acc, "train_n": len(train), "steps": step, "gain": rm.gain, "bias": rm.bias, "normalize": rc.normalize}
    check_finite(STAGE, "normalisation gain and bias", step, torch.tensor([rm.gain, rm.bias]))
    trunk = backbone.adapter_state(rm.adapter) if backbone.is_lora else backbone.model.state_dict()
    check_finite_state(STAGE, step, {"head": rm.head.state_dict(), "trainable": trunk})  # never save poisoned weights
    if run.writer:
        rm.save(run.stage(STAGE), "reward")
        run.mark_done(STAGE, info)
        (run.stage(STAGE) / "checkpoint.pt").unlink(missing_ok=True)
    log.info("reward model: held-out accuracy %.3f on %d pairs", acc["heldout_accuracy"], acc["heldout_n"])
    return info
