"""Where online PPO gets its labels (Ziegler §2.3). Two sources with one interface:

- `push(items)`: new comparison queries, each (prompt, K responses) from the current policy;
- `asked()`, `count()`: queries asked so far and labels answered so far, both counting the N0 comparisons
  the reward stage trained on;
- `wait_for(n, should_stop)`: block until `count() >= n` (returns None), or return why it gave up;
- `comparisons()`: every labelled comparison so far, the N0 first, for retraining the reward model.

`AppLabels` pushes queries into the labeling app's database with the code of `rlhf label push` and reads the
answers as `rlhf label pull` exports them. `SimulatedLabels` answers at once with the task's gold labeler."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from pathlib import Path

from rlhf.data.io import read_jsonl, write_jsonl
from rlhf.data.records import Comparison, Sample
from rlhf.labelers.base import label_many
from rlhf.labelers.simulated import SimulatedLabeler
from rlhf.labeling_app.db import open_database
from rlhf.labeling_app.exchange import (
    answered_comparisons,
    batch_names_starting_with,
    count_answers,
    count_queries,
    push_sample_records,
)

log = logging.getLogger("rlhf")
Items = list[tuple[str, list[str]]]


def wait_for_labels(
    count: Callable[[], int],
    needed: int,
    should_stop: Callable[[], str | None],
    timeout: float,
    poll: float,
    what: str = "",
) -> str | None:
    """Poll `count()` until it reaches `needed` (None), `should_stop()` gives a reason (that reason), or `timeout`
    seconds pass (a message saying so). Logs one line when it starts waiting and one every minute."""
    have = count()
    if have >= needed:
        return None
    log.warning(
        "PPO paused%s: %d of %d labels exist (Ziegler §2.3 schedule); waiting up to %.0f s for labelers",
        what,
        have,
        needed,
        timeout,
    )
    start = last_log = time.monotonic()
    while True:
        reason = should_stop()
        if reason is not None:
            return reason
        if time.monotonic() - start >= timeout:
            return f"timed out after {timeout:.0f} s waiting for labels: {have} of {needed} exist{what}"
        time.sleep(poll)
        have = count()
        if have >= needed:
            log.info("labels: %d of %d exist after %.1f s; PPO continues", have, needed, time.monotonic() - start)
            return None
        if time.monotonic() - last_log >= 60:
            log.info("still waiting for labels: %d of %d", have, needed)
            last_log = time.monotonic()


class SimulatedLabels:
    """The task's gold labeler (Bradley-Terry / Plackett-Luce noise of temperature T) answering every query at
    once. Its answers are kept in `path` (JSONL), so a resumed PPO stage sees them again."""

    def __init__(
        self, initial: list[Comparison], path: Path, kind: str, gold_scorer, temperature: float, seed: int, fresh: bool
    ):
        self.initial, self.path, self.kind = initial, Path(path), kind
        self.labeler = SimulatedLabeler(gold_scorer, temperature, seed, name="simulated-online")
        if fresh:
            self.path.unlink(missing_ok=True)
        self.answered = read_jsonl(self.path, Comparison) if self.path.exists() else []

    def push(self, items: Items, iteration: int) -> None:
        new = label_many(self.labeler, items, self.kind)
        new = [
            Comparison(**{**c.to_dict(), "meta": {**c.meta, "gold": c.meta["gold_scores"], "iteration": iteration}})
            for c in new
        ]
        self.answered += new
        write_jsonl(self.path, self.answered)

    def asked(self) -> int:
        return len(self.initial) + len(self.answered)

    def count(self) -> int:
        return len(self.initial) + len(self.answered)

    def wait_for(self, needed: int, should_stop: Callable[[], str | None]) -> str | None:
        # every query is answered when pushed: there is nothing to wait for
        if self.count() >= needed:
            return None
        return f"the simulated labeler has answered all {self.count()} queries, fewer than the {needed} labels needed"

    def comparisons(self) -> list[Comparison]:
        return self.initial + self.answered


class AppLabels:
    """The labeling app's database: each push is one batch named PREFIX-iteration, registered to the run (so its
    Andon cord shows on /runs); answers are counted and read from those batches only. Gold and qualification
    queries never count."""

    def __init__(
        self, initial: list[Comparison], db_url: str, run_dir: Path, kind: str, prefix: str, timeout: float, poll: float
    ):
        self.initial, self.run_dir, self.kind, self.prefix = initial, Path(run_dir), kind, prefix
        self.sessions = open_database(db_url or None)
        self.timeout, self.poll = timeout, poll

    @staticmethod
    def new_prefix(run_dir: Path) -> str:
        """A batch-name prefix unique to one PPO stage (a resumed stage keeps its own through the checkpoint)."""
        return f"{Path(run_dir).resolve().name}-online-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S%f}"

    def push(self, items: Items, iteration: int) -> None:
        samples = [
            Sample(prompt=p, response=r, policy=f"ppo-iteration-{iteration}")
            for p, responses in items
            for r in responses
        ]
        with self.sessions() as db:
            push_sample_records(
                db,
                samples,
                self.run_dir,
                self.kind,
                f"{self.prefix}-{iteration:04d}",
                overlap_share=0.0,
                where=f"PPO iteration {iteration} samples",
            )

    def asked(self) -> int:
        with self.sessions() as db:
            return len(self.initial) + count_queries(db, self.prefix + "-")

    def count(self) -> int:
        with self.sessions() as db:
            return len(self.initial) + count_answers(db, self.prefix + "-")

    def wait_for(self, needed: int, should_stop: Callable[[], str | None]) -> str | None:
        return wait_for_labels(self.count, needed, should_stop, self.timeout, self.poll, f" (batches {self.prefix}-*)")

    def comparisons(self) -> list[Comparison]:
        with self.sessions() as db:
            return self.initial + answered_comparisons(db, batch_names_starting_with(db, self.prefix + "-"))
