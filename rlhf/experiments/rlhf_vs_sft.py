"""Experiment 5, RLHF against SFT on TL;DR (Stiennon et al. 2020 fig. 1; Kirk et al. 2024).

The pipeline's stages run on the training posts of a local TL;DR file (split from the held-out posts by a stable
hash of each post's id, `task.test_fraction`): SFT on the reference summaries, comparisons of the SFT policy's
summaries labelled by the pairwise judge (`collect.labeler: judge`), a reward model, PPO against it, and best-of-N
from the SFT policy on the held-out posts. Each policy's summary of each held-out post is then judged against the
post's reference (human) summary in both orders (a disagreement is a tie): the win rate with ties one half, its
SEM and bootstrap interval over posts, and the length-controlled win rate; ROUGE against the reference, copying
from the post, length and diversity (distinct-n, EAD; per input and across inputs) beside them.

    OUT/base/               the pipeline run (sft, collect, reward, ppo, bon)
    OUT/eval/<policy>.json  the policy's summaries and the judge's verdicts (a re-run reuses them)
    OUT/summary.json, OUT/summary.md, OUT/rlhf_vs_sft.png

The default judge, the built-in model read zero-shot, is also the simulated labeler of the reward model's comparisons:
the simulated-human set-up, as the sentiment task's gold scorer is for its labeler. Its verdicts are weak and
position-biased; the position-consistency rate is reported with every win rate.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from rlhf.config import RunConfig
from rlhf.config_loading import config_to_dict
from rlhf.data.io import atomic_write_json, atomic_write_text
from rlhf.eval.best_of_n_output import read_best_of_n_output
from rlhf.eval.diversity import diversity_report
from rlhf.eval.evaluate import sample_with_kl
from rlhf.eval.text_metrics import copying_report, length_statistics, rouge_f1
from rlhf.experiments.common import Clock, run_base, run_stages, save_figure
from rlhf.judges import JudgedItem, Verdict, judge_both_orders, make_judge, summarize_judgements
from rlhf.models.loading import base_model_path, open_backbone, sft_model_path
from rlhf.models.provision import load_tokenizer
from rlhf.models.roles import LanguageModelRole
from rlhf.run import RunDir, seed_everything
from rlhf.stats import paired_bootstrap_diff
from rlhf.tasks import held_out_prompts, task_and_stop_rule
from rlhf.tasks.tldr import tldr_post

log = logging.getLogger("rlhf")
POLICIES = ("sft", "ppo", "bon")
MIN_POSITION_CONSISTENCY = 0.5  # below this share of order-consistent verdicts the summary carries a warning


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    """Pipeline settings: `task` (tldr, `source` = the local TL;DR file, `test_fraction`, `max_query_tokens`,
    `n_eval_prompts` = held-out posts judged), `collect.labeler: judge`, `judge` (the judge and labeler), sft, reward,
    ppo, bon."""
    ppo_samples_per_post: int = 2
    """Summaries of the PPO policy per held-out post: the first is judged, all give its per-input diversity."""
    ead_vocabulary_size: int = 0
    """Vocabulary size of the expectation-adjusted distinct-n (EAD); 0 = the tokenizer's."""


# 1. pure pieces ------------------------------------------------------------------------------------------
def token_length(tokenizer, text: str) -> int:
    """Tokens of a summary as the policy's tokenizer splits it (no special tokens)."""
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def nan_to_none(value):
    """JSON has no NaN: undefined figures are written as null."""
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


def check_source(rc: RunConfig) -> Path:
    """The TL;DR file of the config, or a clear error."""
    if rc.task.name != "tldr":
        raise ValueError(f"rlhf_vs_sft: run.task.name must be tldr, got {rc.task.name!r}")
    if not rc.task.source:
        raise ValueError(
            "rlhf_vs_sft: set run.task.source to a local TL;DR JSONL file (fields id, subreddit, title, post, summary)"
        )
    path = Path(rc.task.source)
    if not path.is_file():
        raise FileNotFoundError(
            f"rlhf_vs_sft: run.task.source={rc.task.source!r} does not exist; the TL;DR posts with reference "
            "summaries (e.g. ../shared/data/tldr/test-500.jsonl) are not part of the repository"
        )
    if not 0.0 < rc.task.test_fraction < 1.0:
        raise ValueError(
            f"rlhf_vs_sft: run.task.test_fraction must hold out a share of the posts, got {rc.task.test_fraction}"
        )
    if rc.collect.labeler != "judge" and not rc.collect.comparisons_path:
        raise ValueError(
            "rlhf_vs_sft: TL;DR has no gold scorer; set run.collect.labeler=judge (or collect.comparisons_path)"
        )
    return path


# 2. the policies' summaries of the held-out posts ------------------------------------------------------------
def eval_posts(rc: RunConfig) -> tuple[list[str], list[str]]:
    """The held-out posts best-of-N was drawn for: (prompts, reference summaries)."""
    posts = held_out_prompts(rc)
    return [p.text for p in posts], [p.meta["summary"] for p in posts]


def bon_summaries(base: RunDir, prompts: list[str]) -> dict[str, dict]:
    """SFT (each post's N best-of-N candidates; the first is the judged one) and best-of-N (the chosen) from OUT/base/bon."""
    bon = read_best_of_n_output(base, prompts)
    groups = [[s.response for s in group] for group in bon.candidate_groups()]
    first = bon.first_candidates()
    return {
        "sft": {
            "texts": [s.response for s in first],
            "stops": [s.has_stop for s in first],
            "groups": groups,
            "kl": 0.0,
        },
        "bon": {
            "texts": [s.response for s in bon.chosen],
            "stops": [s.has_stop for s in bon.chosen],
            "groups": None,
            "kl": bon.kl_to_reference,
            "n": bon.n,
        },
    }


def ppo_summaries(base, rc: RunConfig, prompts: list[str], per_post: int) -> dict:
    """`per_post` fresh summaries of the PPO policy per post and their KL to the SFT policy (summed token log-ratios)."""
    seed_everything(rc.seed + 21)
    sft = open_backbone(rc, sft_model_path(base, rc))
    reference = LanguageModelRole(sft, None, rc.task.temperature)
    policy = LanguageModelRole(open_backbone(rc, str(base.root / "ppo" / "model")), None, rc.task.temperature)
    _, response_length, stop_rule = task_and_stop_rule(rc, sft.tokenizer)
    repeated = [p for p in prompts for _ in range(per_post)]
    texts, stops, _, kls, _ = sample_with_kl(
        policy, reference, repeated, response_length, stop_rule, rc.collect.batch_size
    )
    groups = [texts[i * per_post : (i + 1) * per_post] for i in range(len(prompts))]
    return {"texts": texts[::per_post], "stops": stops[::per_post], "groups": groups, "kl": sum(kls) / len(kls)}


# 3. judging against the reference summaries -------------------------------------------------------------------
def judged_policy(path: Path, judge, prompts: list[str], references: list[str], samples: dict) -> dict:
    """The judge's verdicts on (post, policy summary, reference summary) in both orders, cached in `path`."""
    if path.exists():
        return json.loads(path.read_text())
    judged = judge_both_orders(judge, list(zip(prompts, samples["texts"], references)))
    record = {
        **samples,
        "outcomes": [j.outcome_for_a for j in judged],
        "consistent": [j.consistent for j in judged],
        "orders": [list(j.orders) for j in judged],
        "verdicts": [[v.outcome for v in j.verdicts] for j in judged],
        "raw": [[v.raw[:300] for v in j.verdicts] for j in judged],
    }
    atomic_write_json(path, record)
    return record


def as_judged_items(record: dict):
    """JudgedItems back from a cached record (for `summarize_judgements`)."""
    return [
        JudgedItem(tuple(o), tuple(Verdict(v) for v in vs), outcome, consistent)
        for o, vs, outcome, consistent in zip(
            record["orders"], record["verdicts"], record["outcomes"], record["consistent"]
        )
    ]


def policy_figures(
    record: dict, prompts: list[str], references: list[str], tokenizer, rc: RunConfig, vocabulary: int
) -> dict:
    """Win rate against the reference (ties 1/2, SEM, bootstrap interval over posts), length-controlled win rate,
    position consistency, ROUGE against the reference, copying from the post, length and diversity."""
    texts = record["texts"]
    lengths = [token_length(tokenizer, t) for t in texts]
    ref_lengths = [token_length(tokenizer, r) for r in references]
    judged = summarize_judgements(
        as_judged_items(record), lengths, ref_lengths, seed=rc.seed, n_resamples=rc.eval.bootstrap_resamples
    )
    wr, lc = judged["win_rate"] or {}, judged.get("length_controlled") or {}
    limit = rc.task.response_length or 48
    groups = record["groups"] or [[t] for t in texts]
    diversity = diversity_report(groups, vocabulary)
    if record["groups"] is None:  # one summary per post: per-input diversity is undefined
        diversity = {k: (None if k.endswith("per_input") else v) for k, v in diversity.items()}
    return nan_to_none(
        {
            "win_rate": wr.get("win_rate"),
            "ci95_low": wr.get("ci95_low"),
            "ci95_high": wr.get("ci95_high"),
            "sem": wr.get("sem"),
            "n": wr.get("n", 0),
            "wins": wr.get("wins"),
            "ties": wr.get("ties"),
            "losses": wr.get("losses"),
            "length_controlled_win_rate": lc.get("lc_win_rate"),
            "length_controlled_ci95": [lc.get("ci95_low"), lc.get("ci95_high")],
            "length_slope": lc.get("length_slope"),
            "position_consistency_rate": judged["position_consistency_rate"],
            "first_position_rate": judged["first_position_rate"],
            "n_unparseable": judged["n_unparseable"],
            "kl_to_sft": record["kl"],
            "length": length_statistics([min(n, limit) for n in lengths], record["stops"], limit),
            "length_mean": sum(lengths) / len(lengths),
            "reference_length_mean": sum(ref_lengths) / len(ref_lengths),
            "rouge": rouge_f1(texts, references),
            "copying": copying_report(texts, [tldr_post(p) for p in prompts]),
            "diversity": diversity,
            "samples_per_post": len(groups[0]),
            "examples": [
                {"post": p[:400], "summary": t, "reference": r} for p, t, r in list(zip(prompts, texts, references))[:3]
            ],
        }
    )


def reference_figures(prompts: list[str], references: list[str], tokenizer, vocabulary: int) -> dict:
    """The human summaries' own length, copying and across-input diversity, for scale."""
    across = {
        k: v for k, v in diversity_report([[r] for r in references], vocabulary).items() if k.endswith("across_input")
    }
    return nan_to_none(
        {
            "length_mean": sum(token_length(tokenizer, r) for r in references) / len(references),
            "copying": copying_report(references, [tldr_post(p) for p in prompts]),
            "diversity": across,
        }
    )


def paired_differences(records: dict[str, dict], rc: RunConfig) -> dict:
    """PPO - SFT and best-of-N - SFT win-rate differences over the same posts, with a paired bootstrap interval."""
    out = {}
    for name in ("ppo", "bon"):
        pairs = [
            (a, b)
            for a, b in zip(records[name]["outcomes"], records["sft"]["outcomes"])
            if a is not None and b is not None
        ]
        if len(pairs) > 1:
            out[f"{name}_minus_sft"] = paired_bootstrap_diff(
                [a for a, _ in pairs], [b for _, b in pairs], seed=rc.seed, n_resamples=rc.eval.bootstrap_resamples
            )
    return out


# 4. the run ------------------------------------------------------------------------------------------------------
def run(cfg: Config, out: Path) -> dict:
    clock = Clock()
    out = Path(out)
    rc = cfg.run

    # 1. check the data and the settings before anything runs
    check_source(rc)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval").mkdir(exist_ok=True)

    # 2. the pipeline on the training posts: SFT, comparisons labelled by the judge, reward model, PPO, best-of-N
    base = run_base(out, rc)
    run_stages(base, rc, ("ppo", "bon"))

    # 3. the held-out posts and each policy's summaries of them
    prompts, references = eval_posts(rc)
    samples = bon_summaries(base, prompts)
    ppo_path = out / "eval" / "ppo_samples.json"
    if not ppo_path.exists():
        atomic_write_json(ppo_path, ppo_summaries(base, rc, prompts, cfg.ppo_samples_per_post))
    samples["ppo"] = json.loads(ppo_path.read_text())

    # 4. the judge compares each summary with the reference summary, in both orders
    judge = make_judge(rc.judge)
    records = {
        name: judged_policy(out / "eval" / f"{name}.json", judge, prompts, references, samples[name])
        for name in POLICIES
    }

    # 5. win rates, length control, text metrics and diversity
    tokenizer = load_tokenizer(base_model_path(rc))
    vocabulary = cfg.ead_vocabulary_size or len(tokenizer)
    policies = {
        name: policy_figures(records[name], prompts, references, tokenizer, rc, vocabulary) for name in POLICIES
    }
    policies["bon"]["n_samples"] = samples["bon"]["n"]
    warnings = []
    for name, figures in policies.items():
        log.info(
            "rlhf_vs_sft: %s win rate %s [%s, %s] (n = %s)",
            name,
            figures["win_rate"],
            figures["ci95_low"],
            figures["ci95_high"],
            figures["n"],
        )
        consistency = figures["position_consistency_rate"]
        if consistency is not None and consistency < MIN_POSITION_CONSISTENCY:
            warnings.append(
                f"{name}: the judge gave the same verdict in both orders on only {consistency:.0%} of the items, "
                "so most verdicts are ties and the win rate says little; use a stronger judge (judge.kind: llm)"
            )
            log.warning("rlhf_vs_sft: %s", warnings[-1])

    # 6. plot and summaries
    reward_info, collect_info = base.done_info("reward"), base.done_info("collect")
    summary = {
        "experiment": "rlhf_vs_sft",
        "judge": judge.name,
        "labeler": rc.collect.labeler,
        "warnings": warnings,
        "data": {
            "source": rc.task.source,
            "test_fraction": rc.task.test_fraction,
            "n_eval_posts": len(prompts),
            "max_query_tokens": rc.task.max_query_tokens or 512,
        },
        "reward_model": {k: reward_info.get(k) for k in ("heldout_accuracy", "heldout_n", "train_n", "against")},
        "comparisons": {k: collect_info.get(k) for k in ("n_train", "n_heldout", "kind", "responses_per_prompt")},
        "policies": policies,
        "reference": reference_figures(prompts, references, tokenizer, vocabulary),
        "differences": paired_differences(records, rc),
        "stage_seconds": base.read_summary().get("stage_seconds", {}),
        "config": redacted(config_to_dict(cfg)),
        **clock.figures(),
    }
    plot_win_rates(out / "rlhf_vs_sft.png", policies, judge.name)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", summary_markdown(summary))
    return summary


def redacted(config: dict) -> dict:
    """The config without the LLM judge's API key."""
    llm = config.get("run", {}).get("judge", {}).get("llm", {})
    if llm.get("api_key"):
        llm["api_key"] = "<redacted>"
    return config


def plot_win_rates(path: Path, policies: dict, judge_name: str) -> None:
    import matplotlib  # lazy: a heavy import, needed for plots only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: a heavy import, needed for plots only

    labels = {"sft": "SFT", "ppo": "PPO", "bon": f"best-of-{policies['bon'].get('n_samples', 'N')}"}
    names = [n for n in POLICIES if policies[n]["win_rate"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    x = range(len(names))
    rates = [policies[n]["win_rate"] for n in names]
    errors = [
        [r - (policies[n]["ci95_low"] or r) for n, r in zip(names, rates)],
        [(policies[n]["ci95_high"] or r) - r for n, r in zip(names, rates)],
    ]
    ax.errorbar(x, rates, yerr=errors, fmt="o", capsize=5, color="tab:blue", label="win rate (95 % bootstrap)")
    lc = [policies[n]["length_controlled_win_rate"] for n in names]
    ax.plot(
        [i + 0.12 for i in x],
        [v if v is not None else float("nan") for v in lc],
        "s",
        color="tab:orange",
        label="length-controlled",
    )
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(list(x), [labels[n] for n in names])
    ax.set_ylim(0, 1)
    ax.set_ylabel("win rate against the reference summary")
    ax.set_title(f"RLHF vs SFT on TL;DR (judge: {judge_name}; n = {policies['sft']['n']})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_markdown(s: dict) -> str:
    rm = s["reward_model"]
    lines = [
        "# RLHF vs SFT on TL;DR (Stiennon et al. 2020 fig. 1)",
        "",
        f"Judge: `{s['judge']}`, both orders per post (a disagreement is a tie); the same judge labelled the reward model's "
        f"{s['comparisons']['n_train']} training comparisons (held-out accuracy against its verdicts {_fmt(rm['heldout_accuracy'])}, "
        f"n = {rm['heldout_n']}). {s['data']['n_eval_posts']} held-out posts of `{s['data']['source']}` "
        f"(share held out by id hash {s['data']['test_fraction']:g}; queries cut to {s['data']['max_query_tokens']} tokens).",
        "",
        "| policy | win rate vs reference [95 % CI] | n | length-controlled | position consistency | length (tokens) | ROUGE-L | copying | distinct-2 across | distinct-2 per input |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    names = {"sft": "SFT", "ppo": "PPO", "bon": f"best-of-{s['policies']['bon'].get('n_samples', 'N')}"}
    for key, p in s["policies"].items():
        lines.append(
            f"| {names[key]} | {_fmt(p['win_rate'])} [{_fmt(p['ci95_low'])}, {_fmt(p['ci95_high'])}] | {p['n']} | "
            f"{_fmt(p['length_controlled_win_rate'])} | {_fmt(p['position_consistency_rate'])} | {_fmt(p['length_mean'], 1)} | "
            f"{_fmt(p['rouge']['rougeL'])} | {_fmt(p['copying']['copying'])} | {_fmt(p['diversity']['distinct_2_across_input'])} | "
            f"{_fmt(p['diversity']['distinct_2_per_input'])} |"
        )
    ref = s["reference"]
    lines.append(
        f"| reference | — | | | | {_fmt(ref['length_mean'], 1)} | 1 | {_fmt(ref['copying']['copying'])} | "
        f"{_fmt(ref['diversity']['distinct_2_across_input'])} | |"
    )
    for key, d in s["differences"].items():
        lines.append(
            f"\n{key.replace('_minus_', ' − ').upper()} win rate: {d['mean_diff']:+.3f} [{d['ci95_low']:+.3f}, {d['ci95_high']:+.3f}] (paired bootstrap over posts)."
        )
    lines += [
        "",
        "![win rates](rlhf_vs_sft.png)",
        "",
        f"Wall time {s['wall_seconds']:.0f} s, CPU time {s['cpu_seconds']:.0f} s (this invocation; a resumed run counts only what it redid).",
    ]
    return "\n".join(lines) + "\n"
