"""Online collection (Ziegler et al. 2019 §2.3): labels keep arriving while PPO runs. Before each PPO iteration
`OnlineCollection.before_iteration` (a) samples K fresh responses from the current policy for a few prompts and
pushes them as queries to the label source, asking just enough for the next iteration's l(n); (b) waits until the
source holds l(n) labels for this iteration; (c) when the label count has passed the next of the evenly spaced
retraining points, retrains the reward model on every label so far and swaps it into PPO (the value network
keeps training; it is not re-initialised). Labelers thus answer while PPO trains, as in the paper."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable

import torch

from rlhf.config import RunConfig
from rlhf.data.io import read_jsonl
from rlhf.data.records import Comparison
from rlhf.models.loading import open_backbone, sft_model_path
from rlhf.models.sampling import sample_texts
from rlhf.run import RunDir
from rlhf.stages.online_labels import AppLabels, SimulatedLabels
from rlhf.stages.reward import (
    fit_reward_model,
    has_tied_best,
    heldout_accuracy,
    new_reward_model,
    normalize_reward_model,
)
from rlhf.tasks import task_for

log = logging.getLogger("rlhf")


# Ziegler et al. 2019 §2.3: pause before episode n while fewer than l(n) = N0 + (N - N0)(1 - (1 - n/N_pi)^2) labels exist.
def online_label_schedule(n_episodes_done: int, n_initial: int, n_total: int, n_policy_episodes: int) -> int:
    """l(n) rounded up to whole labels (a count c satisfies c >= l(n) iff c >= ceil(l(n))); n is clipped to
    0..N_pi. The schedule front-loads labels: half of the episodes in, 3/4 of the N - N0 new labels exist."""
    if n_policy_episodes <= 0:
        raise ValueError(f"online_label_schedule: n_policy_episodes must be positive, got {n_policy_episodes}")
    fraction = min(max(n_episodes_done / n_policy_episodes, 0.0), 1.0)
    return math.ceil(round(n_initial + (n_total - n_initial) * (1.0 - (1.0 - fraction) ** 2), 9))


def retrain_label_counts(n_initial: int, n_total: int, n_retrains: int) -> list[int]:
    """Label counts at which the reward model is retrained: R evenly spaced points N0 + k (N - N0) / (R + 1),
    k = 1..R, rounded up. N itself is left out: l(n) reaches N only after the last episode, when no PPO is left."""
    return [
        math.ceil(round(n_initial + (n_total - n_initial) * k / (n_retrains + 1), 9)) for k in range(1, n_retrains + 1)
    ]


class OnlineCollection:
    """The online-collection step of the PPO stage; its state (batch prefix, retraining points passed) goes into
    PPO's checkpoint, and the latest retrained reward model into RUN_DIR/ppo/online/reward.*."""

    def __init__(
        self,
        run: RunDir,
        cfg: RunConfig,
        roles,
        response_length: int,
        stop_rule,
        prompts: list[str],
        state: dict | None,
    ):
        oc, pc, cc = cfg.online, cfg.ppo, cfg.collect
        collect_dir = run.require("collect")
        initial = read_jsonl(collect_dir / "comparisons.jsonl", Comparison)
        self.heldout = read_jsonl(collect_dir / "heldout.jsonl", Comparison)
        self.n_initial = len(initial)
        if oc.total_labels <= self.n_initial:
            raise ValueError(
                f"online.total_labels: expected more than the {self.n_initial} comparisons the reward stage "
                f"trained on (N0), got {oc.total_labels}"
            )
        self.run, self.cfg, self.roles = run, cfg, roles
        self.response_length, self.stop_rule, self.prompts = response_length, stop_rule, prompts
        self.n_policy_episodes = pc.iterations * pc.batch_size
        self.points = retrain_label_counts(self.n_initial, oc.total_labels, oc.retrains)
        self.points_passed = state["points_passed"] if state else 0
        self.retrains = state["retrains"] if state else 0
        self.prefix = state["prefix"] if state else AppLabels.new_prefix(run.root)
        self.folder = run.stage("ppo") / "online"
        if oc.source == "app":
            self.source = AppLabels(
                initial, oc.db, run.root, cc.kind, self.prefix, oc.wait_timeout_seconds, oc.poll_seconds
            )
        else:
            gold = task_for(cfg).gold_scorer
            if gold is None:
                raise ValueError(
                    f"online.source=simulated: task '{cfg.task.name}' has no gold labeler; use online.source=app"
                )
            self.source = SimulatedLabels(
                initial,
                self.folder / "comparisons.jsonl",
                cc.kind,
                gold,
                cc.labeler_temperature,
                cfg.seed + 5,
                fresh=state is None,
            )
        if self.retrains:  # resumed: PPO goes on with the latest retrained reward model
            roles.reward.load(self.folder, "reward")
        log.info(
            "online collection (%s): N0 = %d, N = %d over %d episodes; reward model retrained at %s labels",
            oc.source,
            self.n_initial,
            oc.total_labels,
            self.n_policy_episodes,
            self.points,
        )

    def state_dict(self) -> dict:
        return {"prefix": self.prefix, "points_passed": self.points_passed, "retrains": self.retrains}

    def required(self, iteration: int) -> int:
        """l(n) before iteration `iteration` (0-based), n = the episodes done by then."""
        n = min(iteration * self.cfg.ppo.batch_size, self.n_policy_episodes)
        return online_label_schedule(n, self.n_initial, self.cfg.online.total_labels, self.n_policy_episodes)

    def before_iteration(self, iteration: int, should_stop: Callable[[], str | None]) -> tuple[dict, str | None]:
        """(metrics row, None), or (row, why PPO must stop: the Andon cord or the wait's timeout)."""
        # a. ask for the next iteration's labels now, from the current policy, so labelers answer while PPO trains
        pushed = 0
        if iteration + 1 < self.cfg.ppo.iterations:
            pushed = self.push(max(0, self.required(iteration + 1) - self.source.asked()), iteration)
        # b. wait until l(n) labels exist (Ziegler §2.3), honouring the Andon cord
        needed, at_start, t0 = self.required(iteration), self.source.count(), time.monotonic()
        reason = self.source.wait_for(needed, should_stop)
        row = {
            "labels_required": needed,
            "labels_at_start": at_start,
            "labels_available": self.source.count(),
            "labels_pushed": pushed,
            "labels_asked": self.source.asked(),
            "wait_seconds": time.monotonic() - t0,
        }
        if reason is not None:
            return row, reason
        # c. retrain the reward model once the count has passed the next retraining point
        passed = sum(1 for point in self.points if row["labels_available"] >= point)
        row["rm_retrained"] = 0
        if passed > self.points_passed:
            row.update(self.retrain())
            self.points_passed = passed
        row["rm_retrains"] = self.retrains
        return row, None

    def push(self, wanted: int, iteration: int) -> int:
        """Sample K responses for `wanted` distinct prompts (at most all prompts) and push them; returns how many."""
        if wanted <= 0:
            return 0
        chosen = random.Random(self.cfg.seed * 104729 + iteration).sample(self.prompts, min(wanted, len(self.prompts)))
        K = self.cfg.collect.responses_per_prompt
        repeated = [p for p in chosen for _ in range(K)]
        texts, _, _ = sample_texts(
            self.roles.policy, repeated, self.response_length, self.stop_rule, self.cfg.ppo.batch_size
        )
        self.source.push([(p, texts[i * K : (i + 1) * K]) for i, p in enumerate(chosen)], iteration)
        return len(chosen)

    def retrain(self) -> dict:
        """A new reward model (fresh adapter and head on the SFT trunk), trained as the reward stage trains, on
        every comparison so far; it replaces the one PPO scores with and is saved to RUN_DIR/ppo/online/."""
        cfg, roles = self.cfg, self.roles
        train = self.source.comparisons()
        if cfg.reward.drop_tied_best:
            train = [c for c in train if not has_tied_best(c)]
        self.retrains += 1
        with torch.random.fork_rng():  # PPO's random stream is not disturbed by the retraining
            torch.manual_seed(cfg.seed * 7919 + self.retrains)
            if roles.reward.backbone.is_lora:
                rm = new_reward_model(roles.reward.backbone, f"reward_online{self.retrains}")
            else:
                rm = new_reward_model(open_backbone(cfg, sft_model_path(self.run, cfg)))
            steps = fit_reward_model(rm, train, cfg.reward, cfg.seed + self.retrains)
            normalize_reward_model(rm, train, cfg)
        if rm.backbone.is_lora:  # frozen from now on, like the reward model PPO started with
            rm.backbone.trainable_adapters.discard(rm.adapter)
            for p in rm.backbone.adapter_parameters(rm.adapter):
                p.requires_grad_(False)
        rm.save(self.folder, "reward")
        roles.reward = rm
        row = {"rm_retrained": 1, "rm_train_n": len(train), "rm_steps": steps}
        if self.heldout:
            row["rm_heldout_accuracy"] = heldout_accuracy(rm, self.heldout)["heldout_accuracy"]
        log.info(
            "online: reward model retrained (#%d) on %d comparisons%s",
            self.retrains,
            len(train),
            f", held-out accuracy {row['rm_heldout_accuracy']:.3f}" if self.heldout else "",
        )
        return row

    def summary(self) -> dict:
        return {
            "labels": self.source.count(),
            "n_initial": self.n_initial,
            "retrains": self.retrains,
            "retrain_points": self.points,
            "batch_prefix": self.prefix,
            "source": self.cfg.online.source,
        }
