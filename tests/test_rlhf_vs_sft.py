"""Experiment 5 (RLHF vs SFT on TL;DR): the zero-shot pairwise judge's verdicts, the judge-backed labeler, the split of
a TL;DR file by id, and (slow) the experiment end to end on a tiny random model with TL;DR rows written here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from rlhf.judges import JudgeLabeler, judge_both_orders, judge_pairs
from rlhf.judges.labeler import copeland_scores
from rlhf.judges.lm import LMPairwiseJudge, judge_input, outcome_from_both_logodds, post_of, verdict_from_logprobs
from rlhf.labelers.base import Labeler
from rlhf.tasks.tldr import in_split, load_tldr_prompts, stable_unit_hash

ROOT = Path(__file__).resolve().parents[1]


class FixedLogprobJudge(LMPairwiseJudge):
    """The LM judge with log P(A), log P(B) looked up per (a, b) as shown instead of read from a model."""

    def __init__(self, table: dict[tuple[str, str], tuple[float, float]], margin: float = 0.0, order_rule: str = "tie"):
        super().__init__(margin=margin, name="fixed", order_rule=order_rule)
        self.table = table

    def answer_logprobs(self, items):
        return [self.table[(a, b)] for _prompt, a, b in items]


def test_verdict_from_logprobs_hand_worked():
    assert verdict_from_logprobs(-0.5, -1.2).outcome == "a"  # difference +0.7
    assert verdict_from_logprobs(-2.0, -0.1).outcome == "b"  # difference -1.9
    assert verdict_from_logprobs(-1.0, -1.0).outcome == "tie"
    assert verdict_from_logprobs(-0.9, -1.2, margin=0.5).outcome == "tie"  # |0.3| <= 0.5
    assert verdict_from_logprobs(-0.4, -1.2, margin=0.5).outcome == "a"  # 0.8 > 0.5
    assert verdict_from_logprobs(math.nan, -1.0).outcome == "unparseable"
    assert verdict_from_logprobs(-math.inf, -1.0).outcome == "unparseable"


def test_both_orders_consistent_win_and_position_bias_tie():
    table = {
        # x vs y: A wins shown first (-0.5 > -1.2), and shown second (y, x): log P(B) -0.4 > log P(A) -0.9: x again
        ("x", "y"): (-0.5, -1.2),
        ("y", "x"): (-0.9, -0.4),
        # u vs v: the judge says "A" in both orders (position bias): a disagreement about the response, so a tie
        ("u", "v"): (-0.3, -1.5),
        ("v", "u"): (-0.2, -1.9),
        # v vs w: w preferred in both orders
        ("v", "w"): (-2.0, -0.1),
        ("w", "v"): (-0.1, -2.0),
    }
    judged = judge_both_orders(FixedLogprobJudge(table), [("p", "x", "y"), ("p", "u", "v"), ("p", "v", "w")])
    assert [j.outcome_for_a for j in judged] == [1.0, 0.5, 0.0]
    assert [j.consistent for j in judged] == [True, False, True]
    assert [[v.outcome for v in j.verdicts] for j in judged] == [["a", "b"], ["a", "a"], ["b", "a"]]


def test_logodds_rule_cancels_a_constant_position_bias():
    # u first: d = -0.3 - (-1.5) = 1.2; v first: d = -0.2 - (-1.9) = 1.7; 1.2 - 1.7 = -0.5 < 0: v preferred
    assert outcome_from_both_logodds((-0.3, -1.5), (-0.2, -1.9)) == 0.0
    # x first: d = 0.7; y first: d = -0.5; 0.7 - (-0.5) = 1.2 > 0: x preferred; with margin 0.7 (2 x 0.7 = 1.4): a tie
    assert outcome_from_both_logodds((-0.5, -1.2), (-0.9, -0.4)) == 1.0
    assert outcome_from_both_logodds((-0.5, -1.2), (-0.9, -0.4), margin=0.7) == 0.5
    assert outcome_from_both_logodds((math.nan, -1.0), (-1.0, -1.0)) is None
    table = {("u", "v"): (-0.3, -1.5), ("v", "u"): (-0.2, -1.9)}
    judged = judge_both_orders(FixedLogprobJudge(table, order_rule="logodds"), [("p", "u", "v")])
    assert judged[0].outcome_for_a == 0.0 and judged[0].consistent is False  # the verdicts still disagree ("a", "a")
    # judge_pairs in both orders goes through the same batched rule
    assert judge_pairs(FixedLogprobJudge(table, order_rule="logodds"), [("p", "u", "v")], position="both") == judged


def test_copeland_scores_hand_worked():
    # 0 beats 1, 0 and 2 tie, 2 beats 1: 0 -> 1 + 0.5, 1 -> 0 + 0, 2 -> 0.5 + 1
    assert copeland_scores(3, {(0, 1): 1.0, (0, 2): 0.5, (1, 2): 0.0}) == [1.5, 0.0, 1.5]
    assert copeland_scores(2, {}) == [0.5, 0.5]  # an unparseable pair gives each one half


def test_judge_labeler_reads_comparisons_from_the_judge():
    table = {
        ("x", "y"): (-0.5, -1.2),
        ("y", "x"): (-0.9, -0.4),
        ("u", "v"): (-0.3, -1.5),
        ("v", "u"): (-0.2, -1.9),
        ("x", "u"): (-0.1, -3.0),
        ("u", "x"): (-3.0, -0.1),
        ("y", "u"): (-0.1, -3.0),
        ("u", "y"): (-3.0, -0.1),
    }
    labeler = JudgeLabeler(FixedLogprobJudge(table), seed=0)
    assert isinstance(labeler, Labeler)
    c = labeler.label("p", ["y", "x"], "pairwise")
    assert c.best == 1 and c.confidence is None and c.meta["gold"] == [0.0, 1.0]
    tie = labeler.label("p", ["u", "v"], "pairwise")
    assert tie.confidence == 5 and tie.meta["gold"] == [0.5, 0.5]
    ranking = labeler.label("p", ["x", "y", "u"], "ranking")  # x > y, both > u
    assert ranking.ranks == [0, 1, 2] and ranking.meta["gold"] == [2.0, 1.0, 0.0]


def test_judge_input_and_post():
    query = "SUBREDDIT: r/a\nTITLE: t\nPOST: p\nTL;DR:"
    assert post_of(query) == "SUBREDDIT: r/a\nTITLE: t\nPOST: p"
    text = judge_input(query, " first ", "second")
    assert (
        "Summary A: first\n\nSummary B: second" in text
        and text.endswith("The better summary is")
        and "TL;DR:" not in text
    )


def test_stable_split_by_id():
    ids = [f"post-{i}" for i in range(200)]
    test = [i for i in ids if in_split(i, "test", 0.25)]
    train = [i for i in ids if in_split(i, "train", 0.25)]
    assert sorted(test + train) == sorted(ids) and not set(test) & set(train)
    assert 30 <= len(test) <= 70  # about a quarter
    assert all(in_split(i, "test", 0.0) and in_split(i, "train", 0.0) for i in ids[:5])
    with pytest.raises(ValueError, match="test_fraction"):
        in_split("x", "test", 1.0)


def test_stable_unit_hash_known_value():
    # sha256(b"abc") = ba7816bf8f01cfea..., so the first 8 bytes are 0xba7816bf8f01cfea
    assert stable_unit_hash("abc") == 0xBA7816BF8F01CFEA / 2**64


def write_tldr_rows(path: Path, n: int) -> Path:
    rows = [
        {
            "id": f"post-{i}",
            "subreddit": "relationships",
            "title": f"My friend and I argued about plan {i}",
            "post": f"We planned a trip number {i} for months.\nThen my friend cancelled the day before and would not say why. "
            "I feel hurt and do not know whether to bring it up.",
            "summary": f"friend cancelled trip {i} last minute, should I bring it up?",
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_tldr_loader_splits_a_file_by_id(tmp_path):
    source = write_tldr_rows(tmp_path / "tldr.jsonl", 20)
    test = {p.id for p in load_tldr_prompts("test", source=str(source), test_fraction=0.4)}
    train = {p.id for p in load_tldr_prompts("train", source=str(source), test_fraction=0.4)}
    assert test == {f"post-{i}" for i in range(20) if stable_unit_hash(f"post-{i}") < 0.4} and not test & train
    assert len(test | train) == 20


@pytest.mark.slow
def test_rlhf_vs_sft_experiment_end_to_end(tiny_model_dir, tmp_path):
    import os
    import subprocess
    import sys

    source = write_tldr_rows(tmp_path / "tldr.jsonl", 24)
    n_test = sum(stable_unit_hash(f"post-{i}") < 0.4 for i in range(24))
    assert n_test >= 3
    run = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    run["model"]["name_or_path"] = str(tiny_model_dir)
    run["task"] = {
        "name": "tldr",
        "source": str(source),
        "test_fraction": 0.4,
        "max_query_tokens": 96,
        "response_length": 8,
        "n_eval_prompts": 3,
    }
    run["sft"].update(n_demonstrations=8)
    run["collect"].update(n_prompts=6, responses_per_prompt=2, kind="pairwise", labeler="judge")
    run["judge"] = {"kind": "lm", "lm_model": str(tiny_model_dir), "lm_batch_size": 4}
    run["ppo"].update(iterations=1, batch_size=4, minibatch_size=4, ppo_epochs=1)
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump({"run": run, "ppo_samples_per_post": 2}))
    out = tmp_path / "exp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    command = [
        sys.executable,
        "-m",
        "rlhf.cli",
        "experiment",
        "rlhf_vs_sft",
        "--config",
        str(config),
        "--out",
        str(out),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-5000:]
    s = json.loads((out / "summary.json").read_text())
    assert set(s["policies"]) == {"sft", "ppo", "bon"}
    for p in s["policies"].values():
        assert p["n"] == 3 and 0.0 <= p["win_rate"] <= 1.0 and p["ci95_low"] <= p["win_rate"] <= p["ci95_high"]
        assert {
            "length_controlled_win_rate",
            "length_mean",
            "copying",
            "rouge",
            "diversity",
            "position_consistency_rate",
        } <= set(p)
        assert 0.0 <= p["position_consistency_rate"] <= 1.0 and "rougeL" in p["rouge"] and "copying" in p["copying"]
        assert "distinct_2_across_input" in p["diversity"] and "ead_2_across_input" in p["diversity"]
    assert s["policies"]["ppo"]["diversity"]["distinct_1_per_input"] is not None
    for name, p in s["policies"].items():  # a judge that flips with the order is flagged in the summary
        assert any(w.startswith(f"{name}:") for w in s["warnings"]) == (p["position_consistency_rate"] < 0.5)
    assert s["policies"]["bon"]["diversity"]["distinct_1_per_input"] is None and s["policies"]["bon"]["n_samples"] == 2
    assert s["comparisons"]["kind"] == "pairwise" and s["labeler"] == "judge" and s["judge"] == "lm_judge"
    assert s["data"]["n_eval_posts"] == 3 and s["wall_seconds"] > 0
    comparisons = [
        json.loads(line) for line in (out / "base" / "collect" / "comparisons.jsonl").read_text().splitlines()
    ]
    assert comparisons and all(c["meta"]["judge"] == "lm_judge" and len(c["meta"]["gold"]) == 2 for c in comparisons)
    eval_ids = {p.id for p in load_tldr_prompts("test", source=str(source), test_fraction=0.4)}
    train_posts = {c["prompt"] for c in comparisons}
    assert not any(
        f"plan {i.split('-')[1]}\n" in p for p in train_posts for i in eval_ids
    )  # comparisons only on training posts
    assert (out / "rlhf_vs_sft.png").stat().st_size > 1000 and "rlhf_vs_sft.png" in (out / "summary.md").read_text()
    again = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)  # a re-run reuses everything
    assert again.returncode == 0 and "already done" in again.stderr
    assert (
        json.loads((out / "summary.json").read_text())["policies"]["ppo"]["win_rate"]
        == s["policies"]["ppo"]["win_rate"]
    )
