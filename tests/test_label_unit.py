"""Unit tests of the labeling app's parts: answer parsing, agreement measures, the work queue's overlap,
gold and qualification rules, exactly-once storage, push/pull, migrations and the Andon cord file."""

from __future__ import annotations

import json

import pytest
from label_helpers import PASSWORD, write_gold, write_samples
from sqlalchemy import func, inspect, select

from rlhf.data.io import read_jsonl
from rlhf.data.records import Comparison
from rlhf.labeling_app import andon, exchange, metrics
from rlhf.labeling_app.answers import AnswerError, dense_ranks, gold_correct, parse_answer
from rlhf.labeling_app.auth import authenticate, create_user, password_matches
from rlhf.labeling_app.db import make_engine, open_database
from rlhf.labeling_app.settings import LabelSettings
from rlhf.labeling_app.tables import Assignment, Judgment, Query, User
from rlhf.labeling_app.work import NoWork, next_assignment, submit_judgment


@pytest.fixture
def db(tmp_path):
    sessions = open_database(f"sqlite:///{tmp_path / 'label.db'}")
    with sessions() as session:
        yield session


def users(db, count: int, role: str = "labeler") -> list[User]:
    return [create_user(db, f"{role}{i}", PASSWORD, role) for i in range(count)]


def answer_form(assignment: Assignment, best_original: int = 0) -> dict:
    """A valid form for any comparison kind, preferring original response ``best_original``."""
    query = assignment.query
    position = assignment.order.index(best_original)
    if query.kind == "ranking":
        return {f"rank_{p}": "1" if p == position else "2" for p in range(len(assignment.order))}
    if query.kind == "likert":
        return {"overall": "6", "accuracy": "5", "coverage": "4", "coherence": "7"}
    return {"choice": str(position), "confidence": "7"}


# ---------------------------------------------------------------- answers


def test_parse_answer_maps_shown_positions_back_to_original_order():
    order = [2, 0, 1]  # position 0 shows original response 2
    assert parse_answer("best_of_k", {"choice": "0"}, order) == {"best": 2}
    assert parse_answer("pairwise", {"choice": "1", "confidence": "9"}, [1, 0]) == {"best": 0, "confidence": 9}
    # shown ranks 1, 3, 1 (ties at the top) -> original response 2 and 1 share rank 0, response 0 gets rank 1
    assert parse_answer("ranking", {"rank_0": "1", "rank_1": "3", "rank_2": "1"}, order) == {"ranks": [1, 0, 0]}
    likert = parse_answer(
        "likert", {"overall": "7", "accuracy": "1", "coverage": "4", "coherence": "2"}, [0], ["offensive"]
    )
    assert likert == {"overall": 7, "accuracy": 1, "coverage": 4, "coherence": 2, "flags": ["offensive"]}


@pytest.mark.parametrize(
    "kind, form, flags, message",
    [
        ("pairwise", {"choice": "0"}, [], "confidence: missing"),
        ("pairwise", {"choice": "0", "confidence": "10"}, [], "confidence: expected a whole number in 1..9, got 10"),
        ("best_of_k", {"choice": "4"}, [], "choice: expected a whole number in 0..3"),
        ("best_of_k", {"choice": "1 OR 1=1"}, [], "choice: expected a whole number"),
        ("ranking", {"rank_0": "2", "rank_1": "2", "rank_2": "2", "rank_3": "2"}, [], "all responses tied"),
        (
            "likert",
            {"overall": "8", "accuracy": "1", "coverage": "1", "coherence": "1"},
            [],
            "overall: expected a whole number in 1..7",
        ),
        (
            "likert",
            {"overall": "1", "accuracy": "1", "coverage": "1", "coherence": "1"},
            ["<script>"],
            "flags: unknown flag",
        ),
    ],
)
def test_parse_answer_rejects_bad_forms_with_the_field_named(kind, form, flags, message):
    order = [0, 1] if kind == "pairwise" else [0] if kind == "likert" else [0, 1, 2, 3]
    with pytest.raises(AnswerError, match=message.replace("(", r"\(")):
        parse_answer(kind, form, order, flags)


def test_dense_ranks_and_gold_grading():
    assert dense_ranks([3, 1, 1, 2]) == [2, 0, 0, 1]
    assert gold_correct("best_of_k", {"best": 2}, {"best": 2}) and not gold_correct(
        "pairwise", {"best": 0}, {"best": 1}
    )
    assert gold_correct("ranking", {"ranks": [1, 0, 2]}, {"ranks": [1, 0, 0]})  # its top pick is a gold top pick
    assert not gold_correct("ranking", {"ranks": [0, 0, 1]}, {"ranks": [1, 0, 2]})  # ties a worse response at the top


# ---------------------------------------------------------------- metrics (worked by hand)


def test_pairwise_agreement_counts_and_pooled_rate():
    assert metrics.pairwise_agreement_counts([0, 0, 1]) == (1, 3)  # pairs (0,0) agree; (0,1), (0,1) do not
    assert metrics.pairwise_agreement_counts(["a", "a", "a", "a", "a"]) == (10, 10)
    assert metrics.agreement_rate([(1, 3), (1, 1)]) == pytest.approx(0.5)  # 2 of 4 pairs
    assert metrics.agreement_rate([]) is None


def test_bootstrap_interval_brackets_the_rate_and_collapses_when_all_items_agree():
    assert metrics.bootstrap_interval([(1, 1)] * 20) == (1.0, 1.0)
    items = [(1, 1)] * 30 + [(0, 1)] * 10  # rate 0.75
    low, high = metrics.bootstrap_interval(items, resamples=2000, seed=1)
    assert low < 0.75 < high and 0.55 < low and high < 0.9


def test_krippendorff_alpha_nominal_and_ordinal():
    # two raters who agree on every item: alpha = 1
    assert metrics.krippendorff_alpha([[0, 1, 0, 1], [0, 1, 0, 1]], "nominal") == pytest.approx(1.0)
    # by hand (nominal, 2 raters, 4 items): pairs values 0,0 | 1,1 | 0,1 | 1,0 -> coincidences o00=2, o11=2,
    # o01=o10=2, n=8, n0=n1=4: D_o = 4/8, D_e = 2*4*4/(8*7) = 32/56, alpha = 1 - 0.5/(32/56) = 0.125
    assert metrics.krippendorff_alpha([[0, 1, 0, 1], [0, 1, 1, 0]], "nominal") == pytest.approx(0.125)
    near = metrics.krippendorff_alpha([[1, 4, 7, 2], [2, 4, 6, 2]], "ordinal")
    assert 0.8 < near < 1.0  # off by one step on ordinal data still agrees strongly
    assert metrics.krippendorff_alpha([[3, 3], [3, 3]], "ordinal") is None  # no variation: undefined


def test_cohen_kappa_by_hand():
    # p_o = 3/4; p_e = (2/4 * 1/4) + (2/4 * 3/4) = 1/2; kappa = (0.75 - 0.5) / 0.5 = 0.5
    assert metrics.cohen_kappa(["a", "a", "b", "b"], ["a", "b", "b", "b"]) == pytest.approx(0.5)
    assert metrics.cohen_kappa([], []) is None


def test_throughput_and_median():
    assert metrics.throughput_per_hour(10, 1800) == pytest.approx(20.0)
    assert metrics.throughput_per_hour(1, 0) is None
    assert metrics.median_seconds([3.0, 1.0, 10.0]) == 3.0


# ---------------------------------------------------------------- accounts and schema


def test_passwords_are_hashed_with_argon2_and_checked(db):
    user = create_user(db, "ann", PASSWORD, "labeler")
    assert user.password_hash.startswith("$argon2") and PASSWORD not in user.password_hash
    assert authenticate(db, "ann", PASSWORD).id == user.id
    assert authenticate(db, "ann", "wrong password") is None and authenticate(db, "nobody", PASSWORD) is None
    assert not password_matches("not a hash", PASSWORD)
    with pytest.raises(ValueError, match="already exists"):
        create_user(db, "ann", PASSWORD, "labeler")
    with pytest.raises(ValueError, match="at least 8"):
        create_user(db, "bob", "short", "labeler")
    with pytest.raises(ValueError, match="role must be one of"):
        create_user(db, "bob", PASSWORD, "superuser")


def test_migrations_create_the_schema_with_wal_and_can_rerun(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    open_database(url)
    open_database(url)  # already at head: a no-op
    engine = make_engine(url)
    tables = set(inspect(engine).get_table_names())
    assert {
        "users",
        "batches",
        "instructions",
        "queries",
        "assignments",
        "judgments",
        "runs",
        "andon_pulls",
        "alembic_version",
    } <= tables
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


# ---------------------------------------------------------------- the work queue


def test_overlap_queries_reach_exactly_the_configured_distinct_labelers(db, tmp_path):
    write_samples(tmp_path / "run", prompts=20, per_prompt=4)
    batch = exchange.push_samples(db, tmp_path / "run", "best_of_k", overlap_share=0.1, overlap_labelers=5)
    targets = sorted(db.scalars(select(Query.target_labelers).where(Query.batch_id == batch.id)))
    assert targets == [1] * 18 + [5] * 2
    settings = LabelSettings(gold_rate=0.0)
    team = users(db, 7)
    for _round in range(10):
        for user in team:
            try:
                assignment = next_assignment(db, user, settings)
            except NoWork:
                continue
            judgment, stored = submit_judgment(db, user, assignment.token, answer_form(assignment), [], settings)
            assert stored
    per_query = dict(
        db.execute(
            select(Judgment.query_id, func.count(func.distinct(Judgment.user_id))).group_by(Judgment.query_id)
        ).all()
    )
    for query in db.scalars(select(Query)):
        assert per_query[query.id] == query.target_labelers  # every query done, overlap ones by 5 distinct labelers
    assert db.scalar(select(func.count(Judgment.id))) == 18 + 2 * 5


def test_a_reload_shows_the_same_assignment_and_a_double_submit_stores_once(db, tmp_path):
    write_samples(tmp_path / "run", prompts=2, per_prompt=2)
    exchange.push_samples(db, tmp_path / "run", "pairwise", overlap_share=0.0)
    (user,) = users(db, 1)
    settings = LabelSettings(gold_rate=0.0)
    first = next_assignment(db, user, settings)
    assert next_assignment(db, user, settings).id == first.id  # stale page / reload
    assert sorted(first.order) == [0, 1]
    judgment, stored = submit_judgment(db, user, first.token, answer_form(first, 1), [], settings)
    again, stored_again = submit_judgment(db, user, first.token, answer_form(first, 0), [], settings)
    assert stored and not stored_again and again.id == judgment.id and again.answer == {"best": 1, "confidence": 7}
    assert db.scalar(select(func.count(Judgment.id))) == 1
    (other,) = users(db, 1, "researcher")
    with pytest.raises(LookupError):  # another user's token is not theirs to answer
        submit_judgment(db, other, first.token, answer_form(first), [], settings)


def test_order_is_randomised_per_assignment_and_stored(db, tmp_path):
    write_samples(tmp_path / "run", prompts=30, per_prompt=4)
    exchange.push_samples(db, tmp_path / "run", "ranking", overlap_share=0.0)
    (user,) = users(db, 1)
    orders = set()
    for _ in range(30):
        assignment = next_assignment(db, user, LabelSettings(gold_rate=0.0))
        orders.add(tuple(assignment.order))
        submit_judgment(db, user, assignment.token, answer_form(assignment, 3), [], LabelSettings())
    assert len(orders) > 5
    ranks = [j.answer["ranks"] for j in db.scalars(select(Judgment))]
    assert all(r == [1, 1, 1, 0] for r in ranks)  # stored in the original order whatever was shown


def test_failed_qualification_blocks_and_passed_qualification_opens_work(db, tmp_path):
    exchange.push_gold(db, write_gold(tmp_path / "qual.jsonl", 4), "qual", qualification=True)
    write_samples(tmp_path / "run", prompts=3, per_prompt=4)
    exchange.push_samples(db, tmp_path / "run", "best_of_k", overlap_share=0.0)
    good, bad = users(db, 2)
    settings = LabelSettings(gold_rate=0.0, qualification_threshold=0.75)
    for user, right in ((good, True), (bad, False)):
        for _ in range(4):
            assignment = next_assignment(db, user, settings)
            assert assignment.query.batch.is_qualification
            responses = assignment.query.responses
            best = next(i for i, r in enumerate(responses) if ("GOOD" in r["text"]) == right)
            submit_judgment(db, user, assignment.token, answer_form(assignment, best), [], settings)
    assert not next_assignment(db, good, settings).query.batch.is_qualification
    with pytest.raises(NoWork) as blocked:
        next_assignment(db, bad, settings)
    assert blocked.value.status == "failed_qualification" and bad.qualification == "failed"


def test_gold_accuracy_under_threshold_pauses_the_labeler(db, tmp_path):
    exchange.push_gold(db, write_gold(tmp_path / "gold.jsonl", 10), "gold")
    write_samples(tmp_path / "run", prompts=10, per_prompt=4)
    exchange.push_samples(db, tmp_path / "run", "best_of_k", overlap_share=0.0)
    (user,) = users(db, 1)
    settings = LabelSettings(gold_rate=1.0, gold_min_answers=3, gold_threshold=0.7)
    for _ in range(3):  # always wrong on gold
        assignment = next_assignment(db, user, settings)
        assert assignment.query.is_gold
        wrong = next(i for i, r in enumerate(assignment.query.responses) if "GOOD" not in r["text"])
        submit_judgment(db, user, assignment.token, answer_form(assignment, wrong), [], settings)
    with pytest.raises(NoWork) as paused:
        next_assignment(db, user, settings)
    assert paused.value.status == "paused" and "gold accuracy 0%" in paused.value.detail


def test_researchers_answer_overlap_queries_without_taking_labeler_slots(db, tmp_path):
    write_samples(tmp_path / "run", prompts=10, per_prompt=2)
    exchange.push_samples(db, tmp_path / "run", "pairwise", overlap_share=0.2, overlap_labelers=2)
    (researcher,) = users(db, 1, "researcher")
    seen = []
    while True:
        try:
            assignment = next_assignment(db, researcher, LabelSettings())
        except NoWork:
            break
        assert assignment.slot is None and assignment.query.target_labelers == 2
        seen.append(assignment.query_id)
        submit_judgment(db, researcher, assignment.token, answer_form(assignment), [], LabelSettings())
    assert len(seen) == 2


# ---------------------------------------------------------------- push, pull, andon


def test_push_rejects_wrong_group_sizes_and_missing_samples(db, tmp_path):
    write_samples(tmp_path / "run", prompts=2, per_prompt=3)
    with pytest.raises(ValueError, match="pairwise query needs 2..2 responses per prompt, got 3"):
        exchange.push_samples(db, tmp_path / "run", "pairwise")
    with pytest.raises(FileNotFoundError, match="no samples"):
        exchange.push_samples(db, tmp_path / "nothing", "pairwise")


def test_pull_writes_comparisons_the_reward_stage_reads_and_summarize_rows(db, tmp_path):
    from rlhf.data.importers import import_summarize_from_feedback

    write_samples(tmp_path / "run", prompts=3, per_prompt=2)
    exchange.push_samples(db, tmp_path / "run", "pairwise", overlap_share=0.0)
    write_samples(tmp_path / "run5", prompts=2, per_prompt=5)
    exchange.push_samples(db, tmp_path / "run5", "ranking", overlap_share=0.0)
    (user,) = users(db, 1)
    settings = LabelSettings(gold_rate=0.0)
    for _ in range(5):
        assignment = next_assignment(db, user, settings)
        submit_judgment(db, user, assignment.token, {**answer_form(assignment, 1), "note": "fine"}, [], settings)
    counts = exchange.pull_answers(db, tmp_path / "out")
    assert counts == {"comparisons": 5, "likert": 0, "summarize_from_feedback": 3}
    comparisons = read_jsonl(tmp_path / "out" / "comparisons.jsonl", Comparison)
    ranking = [c for c in comparisons if c.kind == "ranking"]
    assert len(ranking) == 2 and all(c.ranks == [1, 0, 1, 1, 1] for c in ranking)  # one record per ranking, not C(K,2)
    pairwise = [c for c in comparisons if c.kind == "pairwise"]
    assert all(c.best == 1 and c.confidence == 7 and c.labeler == "labeler0" for c in pairwise)
    first = next(c for c in pairwise if c.prompt == "prompt 0")
    assert first.responses == ["response 0.0", "response 0.1"] and first.meta["note"] == "fine"
    imported = import_summarize_from_feedback(tmp_path / "out" / "summarize_from_feedback.jsonl")
    assert [c.best for c in imported] == [1, 1, 1] and imported[0].confidence == 7
    rows = [json.loads(line) for line in (tmp_path / "out" / "summarize_from_feedback.jsonl").read_text().splitlines()]
    assert rows[0]["summaries"][0]["policy"] == "ppo-secret-policy"


def test_counts_of_a_batch_prefix_leave_out_gold_and_other_batches(db, tmp_path):
    write_samples(tmp_path / "run", prompts=3, per_prompt=4)
    exchange.push_samples(db, tmp_path / "run", "best_of_k", name="run_a-0000", overlap_share=0.0)
    exchange.push_samples(db, tmp_path / "run", "best_of_k", name="run_a-0001", overlap_share=0.0)
    exchange.push_samples(db, tmp_path / "run", "best_of_k", name="runXa-0000", overlap_share=0.0)  # `_` is no wildcard
    exchange.push_gold(db, write_gold(tmp_path / "gold.jsonl", 2), "run_a-gold")  # gold queries never count
    assert sorted(exchange.batch_names_starting_with(db, "run_a-")) == ["run_a-0000", "run_a-0001", "run_a-gold"]
    assert exchange.batch_names_starting_with(db, "run%") == []
    assert exchange.count_queries(db, "run_a-") == 6 and exchange.count_queries(db, "runXa-") == 3
    assert exchange.count_answers(db, "run_a-") == 0
    (user,) = users(db, 1)
    settings = LabelSettings(gold_rate=1.0)  # gold first while any is left
    for _ in range(11):  # the two gold queries first, then the nine regular ones
        assignment = next_assignment(db, user, settings)
        submit_judgment(db, user, assignment.token, answer_form(assignment), [], settings)
    with pytest.raises(NoWork):
        next_assignment(db, user, settings)
    assert db.scalar(select(func.count(Judgment.id))) == 11
    assert exchange.count_answers(db, "run_a-") == 6 and exchange.count_answers(db, "runXa-") == 3
    assert exchange.count_answers(db, "run_a-0001") == 3


def test_andon_pull_writes_the_stop_file_ppo_reads_and_release_removes_it(db, tmp_path):
    from rlhf.config import PPOConfig
    from rlhf.stages.ppo import andon_cord_pulled

    run = andon.register_run(db, tmp_path / "run")
    (user,) = users(db, 1)
    (researcher,) = users(db, 1, "researcher")
    assert andon_cord_pulled(PPOConfig(), tmp_path / "run") is None
    with pytest.raises(ValueError, match="reason is empty"):
        andon.pull_cord(db, run, user, "  ")
    andon.pull_cord(db, run, user, "responses are all the same word")
    assert (
        andon_cord_pulled(PPOConfig(), str(tmp_path / "run"))
        == "Andon cord pulled by labeler0: responses are all the same word"
    )
    assert [p.pulled_by.name for p in andon.open_pulls(db)] == ["labeler0"]
    andon.release_cord(db, run, researcher)
    assert andon_cord_pulled(PPOConfig(), tmp_path / "run") is None and andon.open_pulls(db) == []


# ---------------------------------------------------------------- dashboard


def test_dashboard_numbers_on_a_small_hand_worked_example(db, tmp_path):
    """2 overlap queries (best-of-4) answered by labelers a, b, c and researcher r, plus one gold answer by a.
    Query 1: a=0, b=0, c=1, r=0. Query 2: a=2, b=3, c=2, r=2 (original indices).
    labeler-labeler pairs: q1 (a,b) agree, (a,c), (b,c) not -> 1/3; q2 (a,c) agree -> 1/3: rate 2/6.
    labeler-researcher pairs: q1 a,b agree with r, c not; q2 a,c agree, b not: rate 4/6.
    a agrees with the other labelers in 2 of 4 pairs (q1 b yes, c no; q2 b no, c yes) and with r in 2 of 2."""
    from rlhf.labeling_app.dashboard import dashboard_stats

    write_samples(tmp_path / "run", prompts=2, per_prompt=4)
    exchange.push_samples(db, tmp_path / "run", "best_of_k", overlap_share=1.0, overlap_labelers=3)
    exchange.push_gold(db, write_gold(tmp_path / "gold.jsonl", 1), "gold")
    a, b, c = (create_user(db, name, PASSWORD, "labeler") for name in "abc")
    r = create_user(db, "r", PASSWORD, "researcher")
    picks = {"a": [0, 2], "b": [0, 3], "c": [1, 2], "r": [0, 2]}
    settings = LabelSettings(gold_rate=0.0)
    for user in (a, b, c, r):
        for _ in range(2):
            assignment = next_assignment(db, user, settings)
            number = int(assignment.query.prompt.split()[-1])
            submit_judgment(db, user, assignment.token, answer_form(assignment, picks[user.name][number]), [], settings)
    gold_assignment = next_assignment(db, a, LabelSettings(gold_rate=1.0))
    right = next(i for i, x in enumerate(gold_assignment.query.responses) if "GOOD" in x["text"])
    submit_judgment(db, a, gold_assignment.token, answer_form(gold_assignment, right), [], settings)

    stats = dashboard_stats(db)
    assert stats["judgments"] == 9
    assert stats["agreement"]["labeler_labeler"]["rate"] == pytest.approx(2 / 6)
    assert stats["agreement"]["labeler_labeler"]["pairs"] == 6
    assert stats["agreement"]["labeler_researcher"]["rate"] == pytest.approx(4 / 6)
    assert stats["agreement"]["researcher_researcher"]["rate"] is None
    low, high = stats["agreement"]["labeler_researcher"]["interval95"]
    assert low <= 4 / 6 <= high
    row = {u["name"]: u for u in stats["labelers"]}
    assert row["a"]["agreement_with_labelers"] == pytest.approx(0.5) and row["a"]["agreement_with_researchers"] == 1.0
    assert row["a"]["gold_accuracy"] == 1.0 and row["a"]["gold_answered"] == 1 and row["b"]["gold_accuracy"] is None
    assert row["a"]["judgments"] == 3 and row["a"]["median_seconds"] >= 0
    # kappa over the 6 (labeler, researcher) label pairs: labeler [0,0,1,2,3,2] vs researcher [0,0,0,2,2,2]
    from sklearn.metrics import cohen_kappa_score

    expected_kappa = cohen_kappa_score(["0", "0", "1", "2", "3", "2"], ["0", "0", "0", "2", "2", "2"])
    assert stats["cohen_kappa_labeler_researcher"] == pytest.approx(expected_kappa)
    assert stats["krippendorff_alpha"]["best_of_k:choice"]["level"] == "nominal"
    assert stats["krippendorff_alpha"]["best_of_k:choice"]["queries"] == 2


def test_an_abandoned_overlap_slot_is_reclaimed_and_its_late_submit_refused(db, tmp_path):
    import datetime as dt

    write_samples(tmp_path / "run", prompts=1, per_prompt=2)
    exchange.push_samples(db, tmp_path / "run", "pairwise", overlap_share=0.0)
    gone, other = users(db, 2)
    settings = LabelSettings(gold_rate=0.0, assignment_timeout_minutes=30)
    abandoned = next_assignment(db, gone, settings)
    with pytest.raises(NoWork):  # the only slot is taken and not yet stale
        next_assignment(db, other, settings)
    abandoned.created_at = abandoned.created_at - dt.timedelta(minutes=31)
    db.commit()
    taken = next_assignment(db, other, settings)
    assert taken.query_id == abandoned.query_id and taken.slot == 0
    with pytest.raises(LookupError, match="expired"):
        submit_judgment(db, gone, abandoned.token, {"choice": "0", "confidence": "5"}, [], settings)
    submit_judgment(db, other, taken.token, {"choice": "1", "confidence": "5"}, [], settings)
    assert db.scalar(select(func.count(Judgment.id))) == 1


def test_each_judgment_records_the_instructions_version_its_page_showed(db, tmp_path):
    from rlhf.labeling_app.tables import Instructions

    write_samples(tmp_path / "run", prompts=2, per_prompt=2)
    batch = exchange.push_samples(db, tmp_path / "run", "pairwise", overlap_share=0.0, instructions="v1 text")
    (user,) = users(db, 1)
    settings = LabelSettings(gold_rate=0.0)
    shown_v1 = next_assignment(db, user, settings)
    db.add(Instructions(batch_id=batch.id, version=2, text="v2 text"))
    db.commit()
    first, _ = submit_judgment(
        db, user, shown_v1.token, {**answer_form(shown_v1), "instructions_version": "1"}, [], settings
    )
    shown_v2 = next_assignment(db, user, settings)
    second, _ = submit_judgment(
        db, user, shown_v2.token, {**answer_form(shown_v2), "instructions_version": "99"}, [], settings
    )
    assert (
        first.instructions_version == 1 and second.instructions_version == 2
    )  # unknown versions fall back to the latest


def test_label_command_line_adds_users_pushes_gold_and_pulls(tmp_path, monkeypatch, capsys):
    from rlhf.cli import main

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("LABEL_PW", PASSWORD)
    assert main(["label", "add-user", "ann", "--role", "labeler", "--password-env", "LABEL_PW", "--db", url]) == 0
    assert main(["label", "add-user", "ann", "--role", "labeler", "--password-env", "LABEL_PW", "--db", url]) == 2
    assert "already exists" in capsys.readouterr().err
    write_samples(tmp_path / "run", prompts=4, per_prompt=4)
    assert main(["label", "push", str(tmp_path / "run"), "--kind", "ranking", "--name", "r1", "--db", url]) == 0
    assert "pushed batch 'r1': 4 ranking queries" in capsys.readouterr().out
    assert (
        main(["label", "gold", str(write_gold(tmp_path / "g.jsonl", 3)), "--name", "q", "--qualification", "--db", url])
        == 0
    )
    assert "qualification batch 'q': 3 queries" in capsys.readouterr().out
    assert main(["label", "push", str(tmp_path / "none"), "--kind", "pairwise", "--db", url]) == 2
    assert main(["label", "pull", str(tmp_path / "out"), "--db", url]) == 0
    assert '"comparisons": 0' in capsys.readouterr().out and (tmp_path / "out" / "comparisons.jsonl").exists()
