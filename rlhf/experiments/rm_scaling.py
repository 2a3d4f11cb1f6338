"""Experiment 4, reward-model scaling (Stiennon et al. 2020, fig. 6): held-out accuracy of reward models trained on
doubling numbers of comparisons, on real human comparisons (Anthropic HH-RLHF) and on simulated ones (the sentiment
task's gold labeler), with bootstrap 95 % intervals over the held-out comparisons, beside a length-only baseline
(prefer the longer response) and chance (0.5).

The trunk (the base model) is run once over every comparison: dialogues are cut to their last `max_tokens` tokens
(the last turns and the response), and its features are cached. Each reward model is then either a linear probe on
the frozen trunk's features (`method: probe`, the head fitted by L-BFGS as `reward.probe_head_first` does), or that
probe followed by one epoch of LoRA fine-tuning of the top layers over the cached frozen bottom layers
(`method: lp_ft`, the reward stage's loss, optimiser and schedule).

    OUT/<source>/comparisons.jsonl, heldout.jsonl   the comparisons used (simulated: sampled and labelled once)
    OUT/<source>/features.pt                        trunk features at each response's last token, and lengths
    OUT/<source>/fits.jsonl                         one line per (n_train, seed): per-item held-out correctness
    OUT/summary.json, OUT/rm_scaling.png, OUT/summary.md
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from rlhf.config import RunConfig
from rlhf.config_loading import config_to_dict
from rlhf.data.importers import import_hh_rlhf
from rlhf.data.io import atomic_write_json, atomic_write_text, read_jsonl, write_jsonl
from rlhf.data.records import Comparison
from rlhf.experiments.common import save_figure
from rlhf.labelers.base import label_many
from rlhf.labelers.simulated import SimulatedLabeler
from rlhf.models.encoding import EncodedSequence, ScoringInputs, pad_encoded
from rlhf.models.loading import base_model_path, open_backbone
from rlhf.models.roles import LanguageModelRole
from rlhf.models.sampling import sample_texts
from rlhf.run import atomic_torch_save, seed_everything
from rlhf.stages.optim import optimizer_step, trainable_parameters
from rlhf.stages.reward import comparison_loss, fit_head_on_features, new_reward_model
from rlhf.stats import bootstrap_mean_interval
from rlhf.tasks import prompt_source, task_and_stop_rule

log = logging.getLogger("rlhf")
SOURCES = ("human", "simulated")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    """Pipeline settings reused: `model` (trunk, LoRA rank and top layers), `task` (the simulated source's task,
    gold scorer and sampling), `collect.labeler_temperature` (simulated labels' noise) and `reward` (batch size,
    learning rates, epochs and probe_l2 of each reward model)."""
    sizes: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256, 512, 1024])
    """Training-set sizes (comparisons), in doubling steps; each source needs at least the largest in its pool."""
    seeds: int = 3
    """Reward models per size and source, each on its own seeded draw of the training comparisons."""
    method: str = "probe"
    """`probe`: linear probe on the frozen trunk's features (L-BFGS, L2 `reward.probe_l2`); `lp_ft`: that probe,
    then `reward.epochs` epochs of LoRA fine-tuning on the top `model.lora_top_layers` layers (LP-FT)."""
    max_tokens: int = 192
    """Each (prompt, response) is cut to its last max_tokens tokens (the end of the dialogue and the response)."""
    human_path: str = "../shared/data/hh-rlhf/harmless-base-test.jsonl.gz"
    """HH-RLHF comparisons (file or hub name, rows {chosen, rejected}); empty = no human source."""
    human_heldout: int = 512
    """Human comparisons held out for accuracy (taken first from a seeded shuffle; the rest is the training pool)."""
    simulated: bool = True
    """Also run the simulated source: responses of the base model to the task's prompts, labelled by the gold labeler."""
    simulated_train_prompts: int = 512
    """Train-split prompts sampled for the simulated training pool (responses_per_prompt / 2 comparisons each)."""
    simulated_heldout_prompts: int = 128
    """Test-split prompts sampled for the simulated held-out comparisons."""
    responses_per_prompt: int = 4
    """Responses sampled per prompt, paired into disjoint pairwise comparisons (0,1), (2,3), ..."""
    bootstrap_resamples: int = 2000
    """Bootstrap resamples of the held-out comparisons for each 95 % interval."""


# ------------------------------------------------------------------------------------------ pure functions
def keep_last_tokens(ids: list[int], max_tokens: int) -> list[int]:
    """The last `max_tokens` token ids: a long dialogue keeps its last turns and the response (read at its end)."""
    return ids[-max_tokens:] if len(ids) > max_tokens else ids


# Stiennon et al. 2020 fig. 6: accuracy = share of held-out comparisons where the RM scores the preferred one higher.
def pairwise_correct(preferred: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Per comparison: 1 when the preferred response scores higher, 0.5 on a tie, 0 otherwise."""
    return np.where(preferred > other, 1.0, np.where(preferred == other, 0.5, 0.0))


def preferred_index(c: Comparison) -> int | None:
    """The better of a pairwise comparison's two responses: by the gold scores stored with a simulated comparison
    (None when they tie), otherwise the labeler's choice."""
    gold = c.meta.get("gold")
    if gold:
        return None if gold[0] == gold[1] else int(gold[1] > gold[0])
    return c.best


def nested_subset(n_pool: int, n: int, seed: int) -> list[int]:
    """The first n of a seeded shuffle of range(n_pool): for one seed, each size's set contains the smaller ones."""
    if n > n_pool:
        raise ValueError(f"sizes: {n} comparisons asked for, but the training pool holds only {n_pool}")
    order = list(range(n_pool))
    random.Random(seed).shuffle(order)
    return order[:n]


def disjoint_pairs(prompt: str, responses: list[str], gold: list[float]) -> list[tuple[str, list[str], list[float]]]:
    """(prompt, [a, b], [gold_a, gold_b]) for responses (0,1), (2,3), ... of one prompt; an odd last one is unused."""
    return [(prompt, responses[i : i + 2], gold[i : i + 2]) for i in range(0, len(responses) - 1, 2)]


# ------------------------------------------------------------------------------------------ 1. comparisons
def human_comparisons(cfg: Config) -> tuple[list[Comparison], list[Comparison]]:
    """HH-RLHF comparisons, shuffled with the run's seed: (training pool, held-out)."""
    if not Path(cfg.human_path).exists() and Path(cfg.human_path).suffix in (".jsonl", ".gz", ".json", ".parquet"):
        raise FileNotFoundError(
            f"human_path: {cfg.human_path} not found (HH-RLHF rows {{chosen, rejected}}; "
            "set human_path='' to run the simulated source only)"
        )
    comparisons = import_hh_rlhf(cfg.human_path)
    random.Random(cfg.run.seed).shuffle(comparisons)
    if len(comparisons) <= cfg.human_heldout:
        raise ValueError(f"human_path: {len(comparisons)} comparisons, not more than human_heldout={cfg.human_heldout}")
    return comparisons[cfg.human_heldout :], comparisons[: cfg.human_heldout]


def simulated_comparisons(cfg: Config, folder: Path) -> tuple[list[Comparison], list[Comparison]]:
    """Responses of the base model (train-split prompts for the pool, test-split for held-out), each pair labelled
    by the task's simulated labeler (Bradley-Terry noise `collect.labeler_temperature`); gold scores kept in meta.
    Cached in folder/{comparisons,heldout}.jsonl."""
    if (folder / "heldout.jsonl").exists():
        return read_jsonl(folder / "comparisons.jsonl", Comparison), read_jsonl(folder / "heldout.jsonl", Comparison)
    rc = cfg.run
    seed_everything(rc.seed + 1)
    backbone = open_backbone(rc, base_model_path(rc))
    task, response_length, stop_rule = task_and_stop_rule(rc, backbone.tokenizer)
    if task.gold_scorer is None:
        raise ValueError(f"run.task.name: task '{task.name}' has no simulated gold labeler")
    policy = LanguageModelRole(backbone, None, rc.task.temperature)
    K = cfg.responses_per_prompt
    splits = []
    for split, n in (("train", cfg.simulated_train_prompts), ("test", cfg.simulated_heldout_prompts)):
        prompts = [p.text for p in task.load_prompts(split, n=n, source=prompt_source(rc), seed=rc.seed + 1)]
        repeated = [p for p in prompts for _ in range(K)]
        texts, _, _ = sample_texts(
            policy,
            repeated,
            response_length,
            stop_rule,
            rc.collect.batch_size,
            progress=f"rm_scaling: {split} responses",
        )
        gold = task.gold_scorer(repeated, texts)
        pairs = [
            pair
            for i, p in enumerate(prompts)
            for pair in disjoint_pairs(p, texts[i * K : (i + 1) * K], gold[i * K : (i + 1) * K])
        ]
        known = {(p, r): g for p, rs, gs in pairs for r, g in zip(rs, gs)}
        labeler = SimulatedLabeler(
            lambda ps, rs: [known[(p, r)] for p, r in zip(ps, rs)],
            temperature=rc.collect.labeler_temperature,
            seed=rc.seed,
        )
        labelled = label_many(labeler, [(p, rs) for p, rs, _ in pairs], "pairwise")
        splits.append(
            [Comparison(**{**c.to_dict(), "meta": {**c.meta, "gold": gs}}) for c, (_, _, gs) in zip(labelled, pairs)]
        )
    pool, heldout = splits
    write_jsonl(folder / "comparisons.jsonl", pool)
    write_jsonl(folder / "heldout.jsonl", heldout)
    return pool, heldout


# ------------------------------------------------------------------------------------------ 2. the trunk, once
def encode_truncated(
    tokenizer, comparisons: list[Comparison], max_tokens: int
) -> tuple[list[torch.Tensor], list[int], int]:
    """Token ids of prompt + response + EOS per response (as `ScalarRole.encode`), cut to the last max_tokens;
    with each response's own token count (for the length baseline) and how many sequences were cut."""
    seqs, lengths, cut = [], [], 0
    for c in comparisons:
        q = tokenizer(c.prompt, add_special_tokens=True).input_ids
        for r in c.responses:
            a = tokenizer(r, add_special_tokens=False).input_ids
            ids = q + a + [tokenizer.eos_token_id]
            cut += len(ids) > max_tokens
            seqs.append(torch.tensor(keep_last_tokens(ids, max_tokens)))
            lengths.append(len(a))
    return seqs, lengths, cut


@torch.no_grad()
def trunk_pass(rm, seqs: list[torch.Tensor], keep_prefix: bool, chunk: int = 16):
    """Final features at each sequence's last token [N, d] and, with `keep_prefix`, the frozen bottom layers'
    hidden states per sequence (for LoRA on the top layers). Sequences run in length order to waste little padding."""
    backbone = rm.backbone
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    feats = torch.zeros(len(seqs), backbone.hidden_size, device=backbone.device)
    encoded: list = [None] * len(seqs)
    for start in tqdm(range(0, len(order), chunk), desc="rm_scaling: trunk pass", leave=False):
        idx = order[start : start + chunk]
        batch = pad_encoded([EncodedSequence(seqs[i], None) for i in idx], backbone.tokenizer.pad_token_id)
        ids, mask = batch.input_ids, batch.attention_mask
        prefix = backbone.frozen_prefix(ids, mask) if backbone.shares_frozen_prefix else None
        feats[idx] = rm.hidden_at_last(ScoringInputs(ids, mask, prefix))
        if keep_prefix:
            for row, i in enumerate(idx):
                real = mask[row].bool()
                kept = None if prefix is None else prefix[row][real.to(prefix.device)].clone()
                encoded[i] = EncodedSequence(ids[row][real], kept)
    return feats, encoded


# ------------------------------------------------------------------------------------------ 3. reward models
def probe_scores(rm, train: list[Comparison], train_x: torch.Tensor, heldout_x: torch.Tensor, l2: float) -> np.ndarray:
    """Linear probe: the head fitted on the training responses' features, applied to the held-out ones."""
    fit_head_on_features(rm, train, train_x, l2)
    with torch.no_grad():
        return rm.head(heldout_x.to(rm.head.weight.device)).squeeze(-1).cpu().numpy()


def lp_ft_scores(
    rm, cfg: Config, train: list[Comparison], train_x, train_encoded, heldout_encoded, adapter_init, seed: int
) -> np.ndarray:
    """LP-FT: the probe, then LoRA fine-tuning of the top layers with the reward stage's loss, AdamW and linear
    annealing, `reward.epochs` epochs in seeded orders; scores of the held-out responses."""
    rc = cfg.run.reward
    backbone = rm.backbone
    backbone.load_adapter_state(rm.adapter, adapter_init)  # every reward model starts from the same fresh adapter
    fit_head_on_features(rm, train, train_x, rc.probe_l2)
    trunk_params = trainable_parameters(backbone, rm.adapter)
    groups = [
        {"params": trunk_params, "lr": rc.learning_rate},
        {"params": list(rm.head.parameters()), "lr": rc.head_learning_rate or rc.learning_rate},
    ]
    optimizer = torch.optim.AdamW(groups, eps=1e-5, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(train) / rc.batch_size)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, steps_per_epoch * rc.epochs)
    for epoch in range(rc.epochs):
        order = list(range(len(train)))
        random.Random(seed * 1000 + epoch).shuffle(order)
        for i in range(0, len(order), rc.batch_size):
            picked = order[i : i + rc.batch_size]
            loss = comparison_loss(rm, [train[j] for j in picked], [train_encoded[j] for j in picked])
            optimizer_step(loss, trunk_params + list(rm.head.parameters()), optimizer, scheduler)
    scores = []
    with torch.no_grad():
        for i in range(0, len(heldout_encoded), 32):
            scores.append(rm.raw_scores(pad_encoded(heldout_encoded[i : i + 32], backbone.tokenizer.pad_token_id)))
    return torch.cat(scores).cpu().numpy()


def interval(values: np.ndarray, cfg: Config, seed: int) -> tuple[float, float]:
    return bootstrap_mean_interval(values, seed, cfg.bootstrap_resamples, 0.95)


def run_source(source: str, cfg: Config, out: Path, rm, adapter_init) -> dict:
    """Steps 1-3 for one source: comparisons, the trunk pass (cached), every (size, seed) reward model (resumed
    from fits.jsonl), then each size's accuracy with its interval and the length baseline."""
    folder = out / source
    folder.mkdir(parents=True, exist_ok=True)
    if adapter_init is not None:  # features of the untrained trunk, whatever an earlier source fine-tuned
        rm.backbone.load_adapter_state(rm.adapter, adapter_init)
    # 1. comparisons: the training pool and the held-out set (pairs whose gold scores tie are not scorable)
    pool, heldout = human_comparisons(cfg) if source == "human" else simulated_comparisons(cfg, folder)
    if source == "human" and not (folder / "heldout.jsonl").exists():
        write_jsonl(folder / "comparisons.jsonl", pool)
        write_jsonl(folder / "heldout.jsonl", heldout)
    heldout = [c for c in heldout if preferred_index(c) is not None]
    if not heldout:
        raise ValueError(f"{source}: every held-out comparison ties in gold; nothing to measure accuracy on")
    better = np.array([preferred_index(c) for c in heldout])
    rows = np.arange(len(heldout))

    # 2. the trunk over every response once: features (cached on disk); frozen-prefix states only for lp_ft
    fits_path = folder / "fits.jsonl"
    fits = [json.loads(line) for line in fits_path.read_text().splitlines()] if fits_path.exists() else []
    done = {(f["n_train"], f["seed"]) for f in fits}
    todo = [(n, s) for n in cfg.sizes for s in range(cfg.seeds) if (n, s) not in done]
    need_prefix = cfg.method == "lp_ft" and bool(todo)
    feats_path = folder / "features.pt"
    if feats_path.exists() and not need_prefix:
        cached = torch.load(feats_path, map_location=rm.backbone.device)
        encoded = None
    else:
        seqs, lengths, cut = encode_truncated(rm.backbone.tokenizer, pool + heldout, cfg.max_tokens)
        feats, encoded = trunk_pass(rm, seqs, keep_prefix=need_prefix)
        cached = {"features": feats, "lengths": lengths, "n_cut": cut}
        atomic_torch_save(feats_path, cached)
    feats, lengths = cached["features"], np.array(cached["lengths"])
    n_pool = len(pool)
    pool_x, heldout_x = feats[: 2 * n_pool], feats[2 * n_pool :]

    # 3. a reward model per (size, seed) on a nested seeded draw of the pool; per-item correctness on held-out
    if cfg.method == "lp_ft" and todo:
        heldout_encoded = encoded[2 * n_pool :]
    for n, s in todo:
        idx = nested_subset(n_pool, n, cfg.run.seed * 1000 + s)
        train = [pool[i] for i in idx]
        train_x = pool_x[[2 * i + k for i in idx for k in (0, 1)]]
        if cfg.method == "probe":
            scores = probe_scores(rm, train, train_x, heldout_x, cfg.run.reward.probe_l2)
        else:
            train_encoded = [[encoded[2 * i], encoded[2 * i + 1]] for i in idx]
            scores = lp_ft_scores(
                rm, cfg, train, train_x, train_encoded, heldout_encoded, adapter_init, cfg.run.seed * 1000 + s
            )
        scores = scores.reshape(-1, 2)
        correct = pairwise_correct(scores[rows, better], scores[rows, 1 - better])
        fits.append({"n_train": n, "seed": s, "accuracy": float(correct.mean()), "correct": correct.tolist()})
        log.info("rm_scaling %s: n_train %d seed %d: held-out accuracy %.3f", source, n, s, correct.mean())
        atomic_write_text(fits_path, "".join(json.dumps(f) + "\n" for f in fits))

    # 4. per size: accuracy of the seed-averaged per-item correctness, bootstrap over held-out comparisons
    points = []
    for n in cfg.sizes:
        per_seed = [f for f in fits if f["n_train"] == n and f["seed"] < cfg.seeds]
        per_item = np.mean([f["correct"] for f in per_seed], axis=0)
        low, high = interval(per_item, cfg, seed=n)
        points.append(
            {
                "n_train": n,
                "accuracy": float(per_item.mean()),
                "ci95_low": low,
                "ci95_high": high,
                "source": source,
                "seed_accuracies": [f["accuracy"] for f in sorted(per_seed, key=lambda f: f["seed"])],
                "n_heldout": len(heldout),
            }
        )
    held_lengths = lengths[2 * n_pool :].reshape(-1, 2)
    length_correct = pairwise_correct(held_lengths[rows, better], held_lengths[rows, 1 - better])
    low, high = interval(length_correct, cfg, seed=1)
    baseline = {
        "longer_response": {
            "accuracy": float(length_correct.mean()),
            "ci95_low": low,
            "ci95_high": high,
            "equal_length_share": float(np.mean(length_correct == 0.5)),
        },
        "random": 0.5,
    }
    info = {
        "n_pool": n_pool,
        "n_heldout": len(heldout),
        "sequences_cut": int(cached["n_cut"]),
        "sequences": int(2 * (n_pool + len(heldout))),
    }
    return {"points": points, "baseline": baseline, "info": info}


# ------------------------------------------------------------------------------------------ 4. report
def plot(summary: dict, path: Path) -> None:
    import matplotlib  # lazy: a heavy import, needed for plots only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: a heavy import, needed for plots only

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"human": "tab:blue", "simulated": "tab:orange"}
    labels = {"human": "human (HH-RLHF)", "simulated": "simulated (gold labeler)"}
    for source, result in summary["sources"].items():
        pts = [p for p in summary["points"] if p["source"] == source]
        x = [p["n_train"] for p in pts]
        y = np.array([p["accuracy"] for p in pts])
        err = np.array([[a - p["ci95_low"] for a, p in zip(y, pts)], [p["ci95_high"] - a for a, p in zip(y, pts)]])
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=colors[source], label=f"RM, {labels[source]}")
        base = result["baseline"]["longer_response"]
        ax.axhline(
            base["accuracy"], color=colors[source], linestyle="--", linewidth=1, label=f"prefer longer, {source}"
        )
        ax.axhspan(base["ci95_low"], base["ci95_high"], color=colors[source], alpha=0.08)
    ax.axhline(0.5, color="gray", linestyle=":", label="random (0.5)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training comparisons (log2)")
    ax.set_ylabel("held-out accuracy (95% bootstrap CI)")
    ax.set_title(f"Reward-model scaling ({summary['method']}, {summary['seeds']} seeds per size)")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def summary_markdown(summary: dict) -> str:
    lines = [
        "# Reward-model scaling (Stiennon et al. 2020, fig. 6)",
        "",
        f"Method: `{summary['method']}`; {summary['seeds']} reward models per size (nested seeded draws); accuracy of "
        "the seed-averaged per-comparison correctness, 95 % bootstrap interval over held-out comparisons.",
        "",
        "![accuracy vs training comparisons](rm_scaling.png)",
        "",
        "| source | n_train | accuracy | 95 % CI | per seed |",
        "|---|---|---|---|---|",
    ]
    for p in summary["points"]:
        seeds = ", ".join(f"{a:.3f}" for a in p["seed_accuracies"])
        lines.append(
            f"| {p['source']} | {p['n_train']} | {p['accuracy']:.3f} | [{p['ci95_low']:.3f}, {p['ci95_high']:.3f}] | {seeds} |"
        )
    lines += ["", "| source | held-out comparisons | prefer-longer baseline (95 % CI) | random |", "|---|---|---|---|"]
    for source, result in summary["sources"].items():
        b = result["baseline"]["longer_response"]
        lines.append(
            f"| {source} | {result['info']['n_heldout']} | {b['accuracy']:.3f} [{b['ci95_low']:.3f}, {b['ci95_high']:.3f}] | 0.5 |"
        )
    lines += ["", f"Wall time {summary['wall_seconds']:.0f} s, CPU time {summary['cpu_seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def run(cfg: Config, out: Path) -> dict:
    import resource  # lazy: a heavy import, needed for peak-memory figures only

    wall0 = time.time()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.method not in ("probe", "lp_ft"):
        raise ValueError(f"method: expected probe or lp_ft, got {cfg.method!r}")
    if cfg.method == "lp_ft" and not cfg.run.model.lora_r:
        raise ValueError("method=lp_ft needs LoRA adapters: set run.model.lora_r > 0")
    if sorted(cfg.sizes) != cfg.sizes or cfg.sizes[0] < 1:
        raise ValueError(f"sizes: expected increasing positive numbers, got {cfg.sizes}")
    saved = out / "config.json"  # cached features and fits belong to one config: refuse to mix them with another
    if saved.exists() and json.loads(saved.read_text()) != json.loads(json.dumps(config_to_dict(cfg))):
        raise ValueError(
            f"{out}: holds an rm_scaling run with a different config; use a new --out directory (or the same config to resume)"
        )
    atomic_write_json(saved, config_to_dict(cfg))
    sources = [s for s in SOURCES if (s == "human" and cfg.human_path) or (s == "simulated" and cfg.simulated)]
    if not sources:
        raise ValueError("no source: set human_path or simulated=true")

    # 0. the trunk: the base model with a reward adapter (fresh, B = 0) and a scalar head
    seed_everything(cfg.run.seed)
    backbone = open_backbone(cfg.run, base_model_path(cfg.run))
    rm = new_reward_model(backbone)
    adapter_init = backbone.adapter_state(rm.adapter) if backbone.is_lora else None

    # 1-3 per source
    results = {source: run_source(source, cfg, out, rm, adapter_init) for source in sources}

    # 4. summary.json, plot, summary.md
    usage = resource.getrusage(resource.RUSAGE_SELF)
    summary = {
        "experiment": "rm_scaling",
        "method": cfg.method,
        "seeds": cfg.seeds,
        "sizes": cfg.sizes,
        "points": [p for r in results.values() for p in r["points"]],
        "sources": {s: {"baseline": r["baseline"], "info": r["info"]} for s, r in results.items()},
        "wall_seconds": time.time() - wall0,
        "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu0,
        "config": config_to_dict(cfg),
    }
    plot(summary, out / "rm_scaling.png")
    atomic_write_text(out / "summary.md", summary_markdown(summary))
    atomic_write_json(out / "summary.json", summary)
    return summary
