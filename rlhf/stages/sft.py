"""Supervised fine-tuning on demonstrations: next-token loss on response tokens only, cosine schedule,
validation loss; writes RUN_DIR/sft/model: with LoRA the adapter (a standard peft adapter folder on the base model),
with full fine-tuning a plain HF model folder."""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from rlhf.config import RunConfig
from rlhf.losses import entropy_from_logits
from rlhf.models.encoding import encode_prompt_response, left_pad_prefixes, tokenize_prompt_response
from rlhf.models.loading import base_model_path, open_backbone
from rlhf.models.roles import Backbone
from rlhf.models.saving import ON_BASE, save_policy
from rlhf.run import MetricsLog, RunDir, seed_everything
from rlhf.stages.optim import accumulated_step, load_trainable_state, trainable_parameters, trainable_state
from rlhf.stages.tripwires import check_finite, check_finite_state, checked_loss, save_checked_checkpoint
from rlhf.tasks import prompt_source, task_for

log = logging.getLogger("rlhf")
STAGE = "sft"


def response_token_logits(
    backbone: Backbone,
    adapter: str | None,
    prompts: list[str],
    responses: list[str],
    prefixes: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logits predicting every response token (and the EOS after each response) given its prompt, at
    temperature 1, in float32: (logits [N, V], target token ids [N], the row of each [N]), the N tokens in row
    order, each row's left to right. `prefixes`: each row's frozen bottom layers' output over its real tokens
    (from `kept_prefixes`), when kept: then only the top layers run."""
    ids, mask, rmask = encode_prompt_response(backbone.tokenizer, prompts, responses, append_eos=True)
    prefix = None if prefixes is None else left_pad_prefixes(prefixes, ids.shape[1])
    hidden = backbone.hidden_states(adapter, ids, mask, prefix)
    ids, predict = ids.to(hidden.device), rmask[:, 1:].bool().to(hidden.device)  # t-1 predicts the response token at t
    assert int(predict.sum()) > 0, "no response tokens in batch"
    logits = backbone.lm_head(hidden[:, :-1][predict]).float()
    return logits, ids[:, 1:][predict], predict.nonzero()[:, 0]


def response_nll(backbone: Backbone, adapter: str | None, prompts: list[str], responses: list[str]) -> torch.Tensor:
    """Mean negative log-likelihood of the response tokens (and the EOS after them) given the prompt, in float32."""
    logits, targets, _ = response_token_logits(backbone, adapter, prompts, responses)
    return F.cross_entropy(logits, targets)


def kept_prefixes(backbone: Backbone, prompts: list[str], responses: list[str]) -> list[torch.Tensor]:
    """The frozen bottom layers' output over each (prompt, response + EOS)'s real tokens, [n_i, d] each, computed
    in one batch laid out as `response_token_logits` lays it."""
    ids, mask, _ = encode_prompt_response(backbone.tokenizer, prompts, responses, append_eos=True)
    prefix = backbone.frozen_prefix(ids, mask)
    return [prefix[k][mask[k].bool().to(prefix.device)] for k in range(len(prompts))]


def response_logprob_sums(
    backbone: Backbone,
    adapter: str | None,
    prompts: list[str],
    responses: list[str],
    with_entropy: bool = False,
    prefixes: list[torch.Tensor] | None = None,
):
    """log pi(response | prompt) of each pair: the SUM of its response tokens' log-probs (the EOS after it
    included), at temperature 1, [B] in float32 on the model's device (DPO's sequence log-probs). With
    `with_entropy`, (those sums, the mean entropy of the distributions over those tokens, detached); `prefixes` as
    in `response_token_logits`."""
    logits, targets, rows = response_token_logits(backbone, adapter, prompts, responses, prefixes)
    token_logprobs = -F.cross_entropy(logits, targets, reduction="none")
    sums = token_logprobs.new_zeros(len(prompts)).index_add(0, rows, token_logprobs)
    if not with_entropy:
        return sums
    with torch.no_grad():
        return sums, entropy_from_logits(logits.detach().unsqueeze(0)).mean()


def response_token_count(tokenizer, demos: list) -> int:
    """The tokens `response_nll` averages over for `demos`: each response's tokens and the EOS after them."""
    rows = tokenize_prompt_response(tokenizer, [d.prompt for d in demos], [d.response for d in demos], append_eos=True)
    return sum(len(response) for _, response in rows)


def train_sft(run: RunDir, cfg: RunConfig) -> dict:
    sc = cfg.sft
    if sc.n_demonstrations == 0:
        run.mark_done(STAGE, {"trained": False})
        return {"trained": False}
    seed_everything(cfg.seed)

    # 1. demonstrations, split into train and validation
    task = task_for(cfg)
    demos = task.load_demonstrations("train", n=sc.n_demonstrations, source=prompt_source(cfg), seed=cfg.seed)
    n_val = max(1, int(len(demos) * sc.val_fraction))
    val, train = demos[:n_val], demos[n_val:]
    assert train, "no training demonstrations left after the validation split"

    # 2. model: a fresh adapter (or the full model) on the base
    backbone = open_backbone(cfg, base_model_path(cfg))
    adapter = "sft" if backbone.is_lora else None
    if adapter:
        backbone.add_adapter(adapter)
    params = trainable_parameters(backbone, adapter)
    steps_per_epoch = math.ceil(len(train) / sc.batch_size)
    total_steps = steps_per_epoch * sc.epochs
    optimizer = torch.optim.AdamW(params, lr=sc.learning_rate, eps=1e-5, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, total_steps // 10), total_steps)

    # 3. resume from the last checkpoint, if any
    step = 0
    ckpt = run.load_checkpoint(STAGE)
    if ckpt is not None:
        load_trainable_state(backbone, adapter, ckpt["trainable"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        step = ckpt["step"]
    metrics = MetricsLog(run, STAGE, resume_step=step if ckpt else None)

    def validation_loss() -> float:
        with torch.no_grad():
            losses = [
                response_nll(
                    backbone,
                    adapter,
                    [d.prompt for d in val[i : i + sc.batch_size]],
                    [d.response for d in val[i : i + sc.batch_size]],
                ).item()
                for i in range(0, len(val), sc.batch_size)
            ]
        return sum(losses) / len(losses)

    if step == 0:
        metrics.write({"step": 0, "val_loss": validation_loss()})

    # 4. train: the data order of each epoch is a seeded permutation, so resuming at `step` continues it
    bar = tqdm(total=total_steps, initial=step, desc="sft", leave=False, disable=not run.writer)
    while step < total_steps:
        epoch, i = divmod(step, steps_per_epoch)
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch)).tolist()
        batch = [train[j] for j in order[i * sc.batch_size : (i + 1) * sc.batch_size]]
        loss = accumulated_step(
            batch,
            lambda demos: checked_loss(
                STAGE,
                step + 1,
                response_nll(backbone, adapter, [d.prompt for d in demos], [d.response for d in demos]),
                run.processes,
            ),
            params,
            optimizer,
            scheduler,
            sc.gradient_accumulation_steps,
            run.processes,  # with several processes each takes its rows; the loss is a mean over tokens
            lambda demos: response_token_count(backbone.tokenizer, demos),
        )
        step += 1
        bar.update(1)
        check_finite(STAGE, "loss", step, loss)
        row = {"step": step, "loss": loss.item(), "lr": scheduler.get_last_lr()[0]}
        if step == total_steps:
            row["val_loss"] = validation_loss()
        metrics.write(row)
        if step % sc.checkpoint_every == 0 and step < total_steps:
            save_checked_checkpoint(
                run,
                STAGE,
                step,
                {
                    "trainable": trainable_state(backbone, adapter),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": step,
                },
            )
    bar.close()
    metrics.close()

    # 5. save the adapter (or the full model) atomically
    info = {"trained": True, "steps": step, "n_train": len(train), "n_val": len(val)}
    check_finite_state(STAGE, step, trainable_state(backbone, adapter))  # never save poisoned weights
    if run.writer:
        save_policy(backbone, adapter, run.stage(STAGE) / "model", ON_BASE, cfg.model.name_or_path)
        run.mark_done(STAGE, info)
        (run.stage(STAGE) / "checkpoint.pt").unlink(missing_ok=True)
    return info
