"""Tests for rlhf.judges (verdicts, simple judges, orders, summaries): each judge, position-bias handling,
unparseable answers, the judged win rate and judge validation (synthetic, and on HH-RLHF when present)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlhf.config import JudgeConfig, LLMJudgeConfig
from rlhf.data.io import write_jsonl
from rlhf.data.records import Comparison
from rlhf.judges import Verdict, judge_both_orders, judge_pairs, make_judge, summarize_judgements, validate_judge
from rlhf.judges.llm import LLMJudge
from rlhf.judges.lm import LMPairwiseJudge
from rlhf.judges.orders import combine_orders
from rlhf.judges.simple import GoldJudge, HumanLabelJudge, LabelerJudge, RewardModelJudge
from rlhf.judges.summaries import position_statistics
from rlhf.judges.verdicts import verdict_from_scores
from rlhf.labelers.simulated import SimulatedLabeler


def count_of_letter_e(prompts: list[str], responses: list[str]) -> list[float]:
    """A toy gold scorer: the number of letter e's in the response."""
    return [float(response.count("e")) for response in responses]


class AlwaysFirstJudge:
    """Maximally position-biased: always prefers the response shown first."""

    name = "always-first"

    def compare(self, prompt: str, a: str, b: str) -> Verdict:
        return Verdict("a", "first")


class ScriptedJudge:
    """Answers from a dict keyed by (a, b) as shown; anything else is unparseable."""

    name = "scripted"

    def __init__(self, answers: dict[tuple[str, str], str]):
        self.answers = answers
        self.calls: list[tuple[str, str]] = []

    def compare(self, prompt: str, a: str, b: str) -> Verdict:
        self.calls.append((a, b))
        return Verdict(self.answers.get((a, b), "unparseable"), "")


def test_verdict_scores_and_swap() -> None:
    assert [Verdict(o).score_for_a for o in ("a", "b", "tie", "unparseable")] == [1.0, 0.0, 0.5, None]
    assert Verdict("a").swapped().outcome == "b" and Verdict("tie").swapped().outcome == "tie"
    assert Verdict("unparseable").swapped().outcome == "unparseable"
    with pytest.raises(ValueError, match="outcome"):
        Verdict("A")
    assert verdict_from_scores(2.0, 1.0).outcome == "a"
    assert verdict_from_scores(1.0, 1.0).outcome == "tie"
    assert verdict_from_scores(float("nan"), 1.0).outcome == "unparseable"


def test_gold_judge_and_labeler_judge() -> None:
    judge = GoldJudge(count_of_letter_e)
    assert judge.compare("p", "eee", "e").outcome == "a"
    assert judge.compare("p", "e", "eee").outcome == "b"
    assert judge.compare("p", "ee", "ee!").outcome == "tie"
    noiseless = LabelerJudge(SimulatedLabeler(count_of_letter_e, temperature=0.0, seed=0))
    assert noiseless.compare("p", "e", "eee").outcome == "b" and noiseless.name == "simulated"


def test_reward_model_judge_accepts_a_tensor_scorer() -> None:
    def score(prompts: list[str], responses: list[str]) -> torch.Tensor:
        return torch.tensor([float(len(response)) for response in responses])

    judge = RewardModelJudge(score)
    assert judge.compare("p", "longer one", "short").outcome == "a"
    assert judge.compare("p", "abc", "xyz").outcome == "tie"


def test_human_label_judge_from_exported_file(tmp_path) -> None:
    path = tmp_path / "export.jsonl"
    write_jsonl(
        path,
        [
            Comparison(prompt="p1", responses=["x", "y"], kind="pairwise", best=1),
            Comparison(prompt="p2", responses=["u", "v"], kind="pairwise", best=0),
            Comparison(prompt="p2", responses=["v", "u"], kind="pairwise", best=0),  # a second label, disagreeing
        ],
    )
    judge = HumanLabelJudge.from_file(path)
    assert judge.compare("p1", "x", "y").outcome == "b"
    assert judge.compare("p1", "y", "x").outcome == "a"  # the order shown does not matter
    assert judge.compare("p2", "u", "v").outcome == "tie"  # split votes
    with pytest.raises(LookupError, match="no human label"):
        judge.compare("p3", "x", "y")
    with pytest.raises(ValueError, match="pairwise"):
        HumanLabelJudge([Comparison(prompt="p", responses=["a", "b", "c"], kind="best_of_k", best=0)])


def test_combine_orders() -> None:
    # both orders prefer response a (in the second, a is shown as "b")
    assert combine_orders(Verdict("a"), Verdict("b")) == (1.0, True)
    # position bias: "a" both times -> a disagreement -> tie
    assert combine_orders(Verdict("a"), Verdict("a")) == (0.5, False)
    assert combine_orders(Verdict("tie"), Verdict("tie")) == (0.5, True)
    assert combine_orders(Verdict("unparseable"), Verdict("b")) == (None, None)


def test_both_orders_turn_position_bias_into_ties_and_report_it() -> None:
    items = [("p", f"a{i}", f"b{i}") for i in range(5)]
    judged = judge_pairs(AlwaysFirstJudge(), items, position="both")
    assert all(item.orders == ("ab", "ba") and item.outcome_for_a == 0.5 for item in judged)
    stats = position_statistics(judged)
    assert stats["position_consistency_rate"] == 0.0 and stats["n_both_orders"] == 5
    assert stats["first_position_rate"] == 1.0 and stats["n_decisive_verdicts"] == 10
    summary = summarize_judgements(judged, n_resamples=200)
    assert summary["win_rate"]["win_rate"] == 0.5 and summary["win_rate"]["ties"] == 5


def test_both_orders_ask_each_item_as_shown_then_swapped() -> None:
    judge = ScriptedJudge({("a1", "b1"): "a", ("b1", "a1"): "b", ("a2", "b2"): "tie"})
    judged = judge_both_orders(judge, [("p", "a1", "b1"), ("p", "a2", "b2")])
    assert judge.calls == [("a1", "b1"), ("b1", "a1"), ("a2", "b2"), ("b2", "a2")]
    assert [item.outcome_for_a for item in judged] == [1.0, None]  # ("b2", "a2") is unparseable
    assert judge_pairs(ScriptedJudge(judge.answers), [("p", "a1", "b1"), ("p", "a2", "b2")], position="both") == judged


def test_make_judge_builds_the_configured_judge() -> None:
    config = JudgeConfig(kind="lm", lm_model="some/model", lm_margin=0.5, lm_batch_size=4, lm_order_rule="logodds")
    lm = make_judge(config)
    assert isinstance(lm, LMPairwiseJudge)
    assert (lm.model_path, lm.margin, lm.batch_size, lm.order_rule) == ("some/model", 0.5, 4, "logodds")
    assert make_judge(JudgeConfig(kind="lm")).model_path is None  # the built-in model, loaded on first use
    llm = make_judge(JudgeConfig(kind="llm", llm=LLMJudgeConfig(base_url="http://127.0.0.1:9/v1", model="judge-model")))
    assert isinstance(llm, LLMJudge) and llm.name == "llm:judge-model"
    with pytest.raises(ValueError, match="judge.kind: expected lm or llm"):
        make_judge(JudgeConfig(kind="oracle"))


def test_random_order_is_seeded_and_recorded() -> None:
    items = [("p", f"a{i}", f"b{i}") for i in range(40)]
    judged = judge_pairs(AlwaysFirstJudge(), items, position="random", seed=3)
    assert judged == judge_pairs(AlwaysFirstJudge(), items, position="random", seed=3)
    orders = [item.orders for item in judged]
    assert set(orders) == {("ab",), ("ba",)}
    # the always-first judge makes a win exactly when a was shown first
    assert [item.outcome_for_a for item in judged] == [1.0 if order == ("ab",) else 0.0 for order in orders]
    assert position_statistics(judged)["position_consistency_rate"] is None
    with pytest.raises(ValueError, match="position"):
        judge_pairs(AlwaysFirstJudge(), items, position="first")


def test_unparseable_verdicts_are_counted_and_left_out_not_guessed() -> None:
    # item 1: consistent win for a; item 2: consistent loss; item 3: unparseable in the second order
    judge = ScriptedJudge(
        {("a1", "b1"): "a", ("b1", "a1"): "b", ("a2", "b2"): "b", ("b2", "a2"): "a", ("a3", "b3"): "a"}
    )
    judged = judge_pairs(judge, [("p", "a1", "b1"), ("p", "a2", "b2"), ("p", "a3", "b3")], position="both")
    assert [item.outcome_for_a for item in judged] == [1.0, 0.0, None]
    summary = summarize_judgements(judged, length_a=[3, 4, 5], length_b=[1, 2, 3], n_resamples=200)
    assert summary["n_items"] == 3 and summary["n_unparseable"] == 1
    assert summary["unparseable_rate"] == pytest.approx(1 / 3)
    assert summary["win_rate"]["n"] == 2 and summary["win_rate"]["win_rate"] == 0.5
    assert summary["position_consistency_rate"] == 1.0 and summary["n_both_orders"] == 2
    assert summary["length_controlled"]["n"] == 2
    all_bad = summarize_judgements(judge_pairs(judge, [("p", "x", "y")]), n_resamples=100)
    assert all_bad["win_rate"] is None and all_bad["unparseable_rate"] == 1.0


def _length_judge() -> RewardModelJudge:
    return RewardModelJudge(lambda prompts, responses: [float(len(r)) for r in responses], name="length")


def test_validate_judge_on_synthetic_comparisons() -> None:
    comparisons = [
        Comparison(prompt="p1", responses=["long answer here", "short"], kind="pairwise", best=0),
        Comparison(prompt="p2", responses=["tiny", "much longer answer"], kind="pairwise", best=1),
        Comparison(prompt="p3", responses=["aaaa bbbb cccc", "x"], kind="pairwise", best=0),
        Comparison(prompt="p4", responses=["yy", "a longer rejected one"], kind="pairwise", best=0),
    ]
    result = validate_judge(_length_judge(), comparisons, n_resamples=200)
    # the length judge agrees with the human on p1-p3 (chosen is longer) and not on p4: 3/4
    assert result["human_agreement"]["win_rate"] == pytest.approx(0.75)
    assert result["prefers_longer_rate"] == 1.0 and result["n_decisive_unequal_length"] == 4
    assert result["human_prefers_longer_rate"] == pytest.approx(0.75)
    assert result["position_consistency_rate"] == 1.0  # a score-based judge has no position bias
    # a judge that prefers the shorter response
    shorter = RewardModelJudge(lambda prompts, responses: [-float(len(r)) for r in responses])
    assert validate_judge(shorter, comparisons, n_resamples=200)["prefers_longer_rate"] == 0.0


def test_validate_judge_on_hh_rlhf_human_comparisons(shared_data) -> None:
    from rlhf.data.importers import import_hh_rlhf

    comparisons = import_hh_rlhf(shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz")[:600]
    result = validate_judge(_length_judge(), comparisons, position="random", seed=0, n_resamples=200)
    chosen_lengths = np.array([len(c.responses[c.best]) for c in comparisons])
    rejected_lengths = np.array([len(c.responses[1 - c.best]) for c in comparisons])
    # worked out independently: the length judge agrees when the chosen response is longer, ties when equal
    expected = (np.sum(chosen_lengths > rejected_lengths) + 0.5 * np.sum(chosen_lengths == rejected_lengths)) / 600
    assert result["n_items"] == 600 and result["n_unparseable"] == 0
    assert result["human_agreement"]["win_rate"] == pytest.approx(expected)
    assert result["prefers_longer_rate"] == 1.0
    assert result["human_prefers_longer_rate"] == pytest.approx(
        np.mean(
            chosen_lengths[chosen_lengths != rejected_lengths] > rejected_lengths[chosen_lengths != rejected_lengths]
        )
    )
    low, high = result["human_agreement"]["ci95_low"], result["human_agreement"]["ci95_high"]
    assert low < expected < high and high - low < 0.15


def test_reward_model_judge_wraps_a_scalar_role(tiny_model_dir) -> None:
    from rlhf.models.provision import load_causal_lm, load_tokenizer
    from rlhf.models.roles import Backbone, ScalarRole

    tokenizer = load_tokenizer(str(tiny_model_dir))
    torch.manual_seed(0)
    role = ScalarRole(Backbone(load_causal_lm(str(tiny_model_dir), tokenizer), tokenizer), None)
    responses = [" a happy ending", " a sad and slow middle part", " nothing at all"]
    scores = role.score(["The film had"] * 3, responses).tolist()
    judge = RewardModelJudge(role.score)
    for i in range(3):
        for j in range(3):
            if i != j:
                expected = "a" if scores[i] > scores[j] else "b" if scores[i] < scores[j] else "tie"
                assert judge.compare("The film had", responses[i], responses[j]).outcome == expected
    assert len(set(scores)) == 3  # the random head gives distinct scores, so the check above is not all ties
