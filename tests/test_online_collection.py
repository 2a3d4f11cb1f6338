"""Online collection (Ziegler et al. 2019 §2.3): the label schedule l(n), the retraining points, waiting for
labels, and the two label sources (the simulated gold labeler and the labeling app's database)."""

from __future__ import annotations

import threading
import time

import pytest
from label_helpers import PASSWORD

from rlhf.data.records import Comparison
from rlhf.labeling_app.auth import create_user
from rlhf.labeling_app.settings import LabelSettings
from rlhf.labeling_app.tables import Batch, Query
from rlhf.labeling_app.work import NoWork, next_assignment, submit_judgment
from rlhf.stages.online import online_label_schedule, retrain_label_counts
from rlhf.stages.online_labels import AppLabels, SimulatedLabels, wait_for_labels


def test_online_label_schedule_by_hand():
    # N0 = 100, N = 500, N_pi = 1000: l(n) = 100 + 400 (1 - (1 - n/1000)^2)
    assert online_label_schedule(0, 100, 500, 1000) == 100
    assert online_label_schedule(100, 100, 500, 1000) == 176  # 1 - 0.9^2 = 0.19; 400 * 0.19 = 76
    assert online_label_schedule(250, 100, 500, 1000) == 275  # 1 - 0.75^2 = 0.4375; 400 * 0.4375 = 175
    assert online_label_schedule(500, 100, 500, 1000) == 400  # half the episodes: 3/4 of the new labels
    assert online_label_schedule(1000, 100, 500, 1000) == 500
    assert online_label_schedule(1, 100, 500, 1000) == 101  # 400 * (1 - 0.999^2) = 0.7996 -> 100.7996, rounded up
    assert online_label_schedule(2000, 100, 500, 1000) == 500  # n past N_pi is clipped
    # N0 = 8, N = 20, N_pi = 32 (the slow test's run): 8 + 12 * (1 - 0.75^2) = 13.25 -> 14; 8 + 12 * 0.75 = 17
    assert [online_label_schedule(n, 8, 20, 32) for n in (0, 8, 16, 24)] == [8, 14, 17, 20]  # n=24: 19.25 -> 20
    with pytest.raises(ValueError, match="n_policy_episodes"):
        online_label_schedule(0, 1, 2, 0)


def test_retrain_label_counts_are_evenly_spaced_between_n0_and_n():
    assert retrain_label_counts(100, 500, 3) == [200, 300, 400]  # 100 + 400 k / 4
    assert retrain_label_counts(8, 20, 2) == [12, 16]  # 8 + 12 k / 3
    assert retrain_label_counts(10, 20, 2) == [14, 17]  # 13.33 and 16.67, rounded up
    assert retrain_label_counts(10, 20, 0) == []


def test_wait_for_labels_returns_when_enough_when_the_cord_is_pulled_or_on_timeout():
    counts = iter([3, 3, 4, 5])
    assert wait_for_labels(lambda: next(counts), 5, lambda: None, timeout=5, poll=0.001) is None
    assert wait_for_labels(lambda: 9, 5, lambda: "never asked", timeout=0, poll=0.001) is None  # enough: no waiting
    assert (
        wait_for_labels(lambda: 0, 5, lambda: "Andon cord pulled by rita: stop", timeout=5, poll=0.001)
        == "Andon cord pulled by rita: stop"
    )
    t0 = time.monotonic()
    message = wait_for_labels(lambda: 2, 5, lambda: None, timeout=0.05, poll=0.01)
    assert "timed out" in message and "2 of 5" in message and time.monotonic() - t0 < 2


def comparison(prompt: str = "p") -> Comparison:
    return Comparison(prompt=prompt, responses=["a", "b"], kind="best_of_k", best=0)


def test_simulated_labels_answer_at_once_and_survive_a_resume(tmp_path):
    gold = lambda prompts, responses: [float(len(r)) for r in responses]  # noqa: E731 - longer is better
    path = tmp_path / "online.jsonl"
    source = SimulatedLabels([comparison()], path, "best_of_k", gold, temperature=0.0, seed=0, fresh=True)
    source.push([("q1", ["x", "xxx", "xx"]), ("q2", ["yy", "y"])], iteration=0)
    assert source.count() == source.asked() == 3
    online = source.comparisons()[1:]
    assert [c.best for c in online] == [1, 0] and online[0].meta["gold"] == [1.0, 3.0, 2.0]
    assert source.wait_for(3, lambda: None) is None
    assert "fewer than the 4 labels" in source.wait_for(4, lambda: None)
    resumed = SimulatedLabels([comparison()], path, "best_of_k", gold, 0.0, 0, fresh=False)
    assert resumed.count() == 3 and [c.prompt for c in resumed.comparisons()] == ["p", "q1", "q2"]
    assert SimulatedLabels([comparison()], path, "best_of_k", gold, 0.0, 0, fresh=True).count() == 1


def test_app_labels_push_queries_and_count_only_their_answers(tmp_path):
    url = f"sqlite:///{tmp_path / 'label.db'}"
    source = AppLabels(
        [comparison(), comparison("p2")], url, tmp_path / "run", "best_of_k", "run-online-x", timeout=5, poll=0.01
    )
    other = AppLabels([], url, tmp_path / "run", "best_of_k", "run-online-y", timeout=5, poll=0.01)  # another PPO stage
    source.push([("q1", ["a", "b", "c"]), ("q2", ["d", "e", "f"])], iteration=0)
    other.push([("q3", ["g", "h", "i"])], iteration=0)
    assert source.asked() == 4 and source.count() == 2 and other.asked() == 1
    settings = LabelSettings(gold_rate=0.0)
    with source.sessions() as db:
        assert {b.name for b in db.query(Batch)} == {"run-online-x-0000", "run-online-y-0000"}
        assert db.query(Query).filter(Query.target_labelers > 1).count() == 0  # no overlap in online batches
        user = create_user(db, "lab", PASSWORD, "labeler")

    def answer_all() -> None:
        with source.sessions() as db:
            while True:
                time.sleep(0.05)
                try:
                    assignment = next_assignment(db, user, settings)
                except NoWork:
                    return
                best_shown = assignment.order.index(2)  # the labeler always picks the third response
                submit_judgment(db, user, assignment.token, {"choice": str(best_shown)}, [], settings)

    labeler = threading.Thread(target=answer_all)
    labeler.start()
    assert source.wait_for(4, lambda: None) is None  # the two initial + two answered online
    labeler.join()
    assert source.count() == 4 and other.count() == 1
    answered = source.comparisons()
    assert sorted(c.prompt for c in answered[2:]) == ["q1", "q2"] and all(
        c.best == 2 for c in answered[2:]
    )  # any order
    assert answered[2].meta["policies"] == ["ppo-iteration-0"] * 3


class SlowLabeler:
    """A simulated labeler that takes `delay` seconds per answer, like a person would take longer."""

    def __init__(self, labeler, delay: float):
        self.labeler, self.delay, self.name = labeler, delay, labeler.name

    def label(self, prompt, responses, kind):
        time.sleep(self.delay)
        return self.labeler.label(prompt, responses, kind)


@pytest.mark.slow
def test_online_ppo_pauses_for_app_labels_and_retrains_the_reward_model(tiny_model_dir, tmp_path, monkeypatch):
    """Tiny random model; the labeling app's database as label source; two simulated app users answering over
    HTTP in background threads, starting only once PPO has paused for labels (whatever the machine's load)."""
    import json
    from pathlib import Path

    from label_helpers import running_server

    from rlhf.config_loading import load_config
    from rlhf.labelers.simulated import SimulatedLabeler
    from rlhf.labeling_app.app import create_app
    from rlhf.labeling_app.db import open_database
    from rlhf.labeling_app.simulated_client import AppLabelerClient, label_through_app
    from rlhf.pipeline import run_stage, start_run
    from rlhf.run import RunDir
    from rlhf.stages import online_labels
    from rlhf.tasks import get_task

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    db_url = f"sqlite:///{tmp_path / 'label.db'}"
    run = RunDir(tmp_path / "run")
    cfg = load_config(
        Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml",
        [
            f"model.name_or_path={tiny_model_dir}",
            "sft.n_demonstrations=0",
            "collect.kind=best_of_k",
            "ppo.iterations=4",
            "online.enabled=true",
            "online.source=app",
            f"online.db={db_url}",
            "online.total_labels=20",
            "online.retrains=2",
            "online.poll_seconds=0.1",
            "online.wait_timeout_seconds=120",
        ],
    )
    start_run(run, cfg)
    for stage in ("sft", "collect", "reward"):
        run_stage(run, cfg, stage)
    n_initial = run.done_info("collect")["n_train"]
    assert n_initial == 8  # 10 prompts, 2 held out: N0 = 8, N = 20, N_pi = 4 x 8 episodes

    sessions = open_database(db_url)
    with sessions() as db:
        for name in ("sim0", "sim1"):
            create_user(db, name, PASSWORD, "labeler", simulated="sentiment T=0.5")
    gold = get_task("sentiment").gold_scorer
    metrics = run.root / "ppo" / "metrics.jsonl"
    done, paused = threading.Event(), threading.Event()
    answered: list[int] = []
    wait_for_labels = online_labels.wait_for_labels

    def wait_and_tell(count, needed, *args, **kwargs):
        if count() < needed:
            paused.set()
        return wait_for_labels(count, needed, *args, **kwargs)

    monkeypatch.setattr(online_labels, "wait_for_labels", wait_and_tell)

    def work(url: str, name: str, seed: int) -> None:
        while not paused.is_set() and not done.is_set():
            time.sleep(0.05)  # start once PPO waits for labels (before its second iteration, l(8) = 14 > 8)
        client = AppLabelerClient(url, name, PASSWORD)
        labeler = SlowLabeler(SimulatedLabeler(gold, 0.5, seed, name=name), delay=0.3)
        while not done.is_set():
            answered.append(len(label_through_app(client, labeler)))
            time.sleep(0.05)

    with running_server(create_app(LabelSettings(secret_key="k", gold_rate=0.0), sessions)) as url:
        users = [threading.Thread(target=work, args=(url, f"sim{i}", i)) for i in range(2)]
        for thread in users:
            thread.start()
        try:
            info = run_stage(run, cfg, "ppo")
        finally:
            done.set()
            for thread in users:
                thread.join(timeout=30)

    assert run.is_done("ppo") and not info.get("stopped")
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    assert [r["labels_required"] for r in rows] == [8, 14, 17, 20]  # l(n) for n = 0, 8, 16, 24 (worked out above)
    assert all(r["labels_available"] >= r["labels_required"] for r in rows)  # never went on short of l(n)
    assert rows[1]["labels_at_start"] < rows[1]["labels_required"] and rows[1]["wait_seconds"] > 0.2  # it paused
    assert [r["labels_pushed"] for r in rows] == [6, 3, 3, 0]  # asked ahead: l(8) - 8, l(16) - 14, l(24) - 17
    # the reward model was retrained when the label count first passed each of 12 and 16 (8 + 12 k / 3)
    passed = [sum(1 for point in (12, 16) if r["labels_available"] >= point) for r in rows]
    expected = [int(now > before) for before, now in zip([0] + passed, passed)]
    assert [r["rm_retrained"] for r in rows] == expected and passed[-1] == 2
    for r in rows:
        if r["rm_retrained"]:
            assert r["rm_train_n"] >= r["labels_available"]  # all comparisons so far, the 8 initial included
    assert info["online"]["retrains"] == sum(expected) and info["online"]["labels"] == 20
    assert (run.root / "ppo" / "online" / "reward.safetensors").exists()
    assert sum(answered) == 12
