"""Evaluation on held-out prompts for the initial, SFT, PPO and best-of-N policies: gold reward (mean, sem),
RM score, KL to the reference (SFT), length, distinct-n over the responses (and copying from the post on TL;DR),
and win rates judged by the gold labeler with bootstrap intervals.
`evaluate` (the eval stage) writes RUN_DIR/eval/samples.jsonl and the `policies` and `winrates` sections of
summary.json; `evaluate_on_prompts` measures the policies on any prompt list (see rlhf/eval/ood.py)."""

from __future__ import annotations

import json
import logging
import math

import torch

from rlhf.config import RunConfig
from rlhf.config_methods import POLICY_METHODS
from rlhf.data.io import atomic_write_text
from rlhf.eval.best_of_n_output import BestOfNOutput, read_best_of_n_output
from rlhf.eval.diversity import distinct_n
from rlhf.eval.text_metrics import (
    copying_fraction,
    first_three_words_copying,
    has_preamble,
    mean_over_pairs,
    novel_ngram_fraction,
)
from rlhf.labelers.simulated import preference_from_gold
from rlhf.models.best_of_n import best_of_n_kl, draw_best_of_n
from rlhf.models.loading import base_model_path, load_reward_model, open_backbone, sft_model_path
from rlhf.models.roles import LanguageModelRole, ScalarRole
from rlhf.models.sampling import prefix_reuse, sampled_batches
from rlhf.processes import Processes
from rlhf.run import RunDir, seed_everything
from rlhf.stats import mean_sem, win_rate
from rlhf.tasks import evaluation_prompts, task_and_stop_rule
from rlhf.tasks.tldr import tldr_post

log = logging.getLogger("rlhf")
STAGE = "eval"


@torch.no_grad()
def sample_with_kl(
    policy: LanguageModelRole,
    reference: LanguageModelRole,
    prompts: list[str],
    response_length: int,
    stop_rule,
    batch_size: int,
    reward: ScalarRole | None = None,
    processes: Processes = Processes(),
):
    """Responses of `policy` and, for each, the summed log-ratio log pi - log pi_ref over its tokens (a sample of KL),
    and (with `reward`) its reward-model score, else None: (texts, stops, lengths, kls, rm scores). With several
    `processes` each samples its rows; every process gets all of them, in prompt order."""
    texts, stops, lengths, kls, rm = [], [], [], [], []
    # roles that share the policy's frozen bottom layers run their top layers only, on the sampling loop's output
    reuse = prefix_reuse(policy, reference, reward)
    batches = sampled_batches(policy, prompts, response_length, stop_rule, batch_size, reuse, processes=processes)
    for rows, episodes, batch_texts in batches:
        batch = [prompts[i] for i in rows]
        if policy is reference:  # the SFT policy is the reference: its KL is exactly 0
            log_ratio = torch.zeros_like(episodes.response_mask, dtype=torch.float32)
        else:  # in slices of 64: the reference's logits over a whole batch would be large
            ref_logprobs = torch.cat(
                [reference.logprobs(episodes.select(slice(j, j + 64))) for j in range(0, len(batch_texts), 64)]
            )
            log_ratio = (episodes.sample_logprobs - ref_logprobs) * episodes.response_mask
        if reward is not None:
            rm += reward.score(batch, batch_texts, episodes).tolist()
        texts += batch_texts
        stops += episodes.has_stop.tolist()
        lengths += episodes.response_mask.sum(-1).tolist()
        kls += log_ratio.sum(-1).tolist()
    texts, stops, lengths, kls = (processes.in_order(values, len(prompts)) for values in (texts, stops, lengths, kls))
    return texts, stops, lengths, kls, (processes.in_order(rm, len(prompts)) if reward is not None else None)


def policy_figures(
    gold: list[float] | None,
    rm: list[float],
    kls: list[float] | None,
    lengths: list[float],
    stops: list[bool],
    kl_value: float | None = None,
) -> dict:
    out = {
        "n": len(rm),
        "rm_score_mean": sum(rm) / len(rm),
        "response_length_mean": sum(lengths) / len(lengths),
        "no_stop_fraction": 1 - sum(stops) / len(stops),
    }
    if gold is not None:
        g = mean_sem(gold)
        out.update(gold_reward_mean=g["mean"], gold_reward_sem=g["sem"])
    out["kl_to_reference"] = kl_value if kl_value is not None else sum(kls) / len(kls)
    return out


def text_figures(prompts: list[str], texts: list[str], with_copying: bool) -> dict:
    """Across-prompt distinct-1/2 of the responses (Kirk et al. 2024) and, with_copying (TL;DR prompts), the mean
    copying fraction (Stiennon fn. 9) and novel-bigram fraction of each response against its post, and the
    share of responses that start with the post's first three words, overall and on posts whose first sentence
    is a preamble (Ziegler table 7; `has_preamble`), with the number of responses each share is over.
    A figure that is undefined (no response has two words, no post has a preamble) is None, written as null."""
    out = {"distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2)}
    if with_copying:
        posts = [tldr_post(prompt) for prompt in prompts]  # against the post, not the subreddit and title lines
        out["copying"] = mean_over_pairs(copying_fraction, texts, posts)
        out["novel_2gram"] = mean_over_pairs(lambda summary, post: novel_ngram_fraction(summary, post, 2), texts, posts)
        first_three = first_three_words_copying(texts, posts, [has_preamble(post) for post in posts])
        out.update(
            first_three_copied=first_three["first_three_copied"],
            first_three_n=first_three["n"],
            first_three_copied_with_preamble=first_three["first_three_copied_with_preamble"],
            first_three_n_with_preamble=first_three["n_with_preamble"],
        )
    return {key: None if math.isnan(value) else value for key, value in out.items()}


def sample_rows(policy: str, prompts, texts, stops, rm, gold) -> list[dict]:
    return [
        {
            "prompt": p,
            "policy": policy,
            "response": t,
            "has_stop": s,
            "rm_score": r,
            **({} if gold is None else {"gold_reward": gold[i]}),
        }
        for i, (p, t, s, r) in enumerate(zip(prompts, texts, stops, rm))
    ]


def measure_responses(
    task,
    name: str,
    prompts: list[str],
    texts: list[str],
    stops: list[bool],
    lengths: list[float],
    rm: list[float],
    kls: list[float] | None,
    kl_value: float | None = None,
    processes: Processes = Processes(),
) -> tuple[list[float] | None, dict, list[dict]]:
    """One policy's responses measured: (gold rewards or None, its figures, one row per sample); the gold scorer's
    rows are shared out among `processes`."""
    gold = processes.map_rows(task.gold_scorer, prompts, texts) if task.gold_scorer else None
    figures = policy_figures(gold, rm, kls, lengths, stops, kl_value)
    figures.update(text_figures(prompts, texts, with_copying=task.name == "tldr"))
    return gold, figures, sample_rows(name, prompts, texts, stops, rm, gold)


def evaluate_on_prompts(
    run: RunDir, cfg: RunConfig, prompts: list[str], reuse_bon: bool
) -> tuple[dict, dict, list[dict]]:
    """Sample the run's initial, SFT, PPO (when trained) and best-of-N (when drawn) policies on `prompts` and measure
    them; returns (figures per policy, win rates vs. initial, one row per sample). With reuse_bon the run's own
    best-of-N output is used (drawn for these prompts); otherwise, when the run has a best-of-N stage, best-of-cfg.bon.n
    is drawn afresh here. Writes nothing."""
    bs = cfg.collect.batch_size

    # 1. models: the SFT model is the reference and carries the reward model's adapter
    sft = open_backbone(cfg, sft_model_path(run, cfg))
    reward = load_reward_model(run, sft)
    reference = LanguageModelRole(sft, None, cfg.task.temperature)
    task, response_length, stop_rule = task_and_stop_rule(cfg, sft.tokenizer)
    policies = {"initial": LanguageModelRole(open_backbone(cfg, base_model_path(cfg)), None, cfg.task.temperature)}
    bon = read_best_of_n_output(run, prompts) if reuse_bon and run.is_done("bon") else None
    draw_bon = not reuse_bon and run.is_done("bon")
    if bon is None and not draw_bon:  # without best-of-N's candidates the SFT policy is sampled here
        policies["sft"] = reference
    for method in POLICY_METHODS:  # every policy optimiser the run has trained (rlhf/config_methods.py)
        if run.is_done(method):
            model_folder = str(run.root / method / "model")
            policies[method] = LanguageModelRole(open_backbone(cfg, model_folder), None, cfg.task.temperature)

    # 2. sample each policy on the prompts; gold reward, RM score, KL to the reference
    golds: dict[str, list[float] | None] = {}
    figures: dict[str, dict] = {}
    rows: list[dict] = []
    for name, policy in policies.items():
        texts, stops, lengths, kls, rm = sample_with_kl(
            policy, reference, prompts, response_length, stop_rule, bs, reward, run.processes
        )
        golds[name], figures[name], new_rows = measure_responses(
            task, name, prompts, texts, stops, lengths, rm, kls, processes=run.processes
        )
        rows += new_rows
        log.info("eval %s: %s", name, {k: round(v, 3) for k, v in figures[name].items() if isinstance(v, float)})
    if draw_bon:
        candidates, chosen = draw_best_of_n(
            reference,
            reward,
            prompts,
            cfg.bon.n,
            response_length,
            stop_rule,
            bs,
            cfg.ppo.missing_stop_penalty,
            run.processes,
        )
        bon = BestOfNOutput(cfg.bon.n, best_of_n_kl(cfg.bon.n), candidates, chosen)
    if bon is not None:
        # the SFT policy's samples are best-of-N's first candidates (i.i.d. SFT samples; their KL to SFT is 0),
        # and best-of-N's are the chosen ones; both were scored by the RM when best-of-N was drawn
        for name, picked, kl in (("sft", bon.first_candidates(), 0.0), ("bon", bon.chosen, bon.kl_to_reference)):
            texts, stops = [s.response for s in picked], [s.has_stop for s in picked]
            rm = [s.meta["rm_score_no_penalty"] for s in picked]
            lengths = [len(sft.tokenizer(t, add_special_tokens=False).input_ids) for t in texts]
            measured = measure_responses(
                task, name, prompts, texts, stops, lengths, rm, None, kl_value=kl, processes=run.processes
            )
            golds[name], figures[name], new_rows = measured
            rows += new_rows
        figures["bon"]["n_samples"] = bon.n
    figures = {name: figures[name] for name in ("initial", "sft", *POLICY_METHODS, "bon") if name in figures}

    # 3. win rates judged by the gold labeler (ties count 0.5), with 95% bootstrap intervals
    winrates = {}
    if task.gold_scorer is not None:
        for name in (*POLICY_METHODS, "bon", "sft"):
            if name in golds:
                outcomes = [preference_from_gold(a, b) for a, b in zip(golds[name], golds["initial"])]
                winrates[f"{name}_vs_initial"] = win_rate(
                    outcomes, seed=cfg.seed, n_resamples=cfg.eval.bootstrap_resamples
                )
    return figures, winrates, rows


def samples_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def evaluate(run: RunDir, cfg: RunConfig) -> dict:
    """The eval stage: the run's policies on its held-out prompts -> RUN_DIR/eval/samples.jsonl and summary.json."""
    seed_everything(cfg.seed + 5)
    prompts = evaluation_prompts(cfg)
    figures, winrates, rows = evaluate_on_prompts(run, cfg, prompts, reuse_bon=True)
    if run.writer:
        atomic_write_text(run.stage(STAGE) / "samples.jsonl", samples_jsonl(rows))
    reward_info = run.done_info("reward")
    run.update_summary(
        reward_model={
            k: reward_info[k] for k in ("heldout_accuracy", "heldout_n", "train_n", "normalize") if k in reward_info
        },
        policies=figures,
        winrates=winrates,
    )
    run.mark_done(STAGE, {"n_prompts": len(prompts)})
    return {"policies": figures, "winrates": winrates}
