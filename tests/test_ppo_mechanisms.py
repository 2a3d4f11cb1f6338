"""PPO's optional mechanisms (issue 19 §1), each with numbers worked by hand: separate or joint gradient clipping,
the value head's zero start, reward whitening, lm-human-preferences' horizon controller, learning-rate warm-up, the
split of the advantages' spread into score, KL and value parts; and a smoke run with all of them on."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from rlhf.config import PPOConfig
from rlhf.losses import gae
from rlhf.models.encoding import encode_queries
from rlhf.models.provision import load_causal_lm, load_tokenizer
from rlhf.models.roles import Backbone, Episodes, LanguageModelRole, ScalarRole
from rlhf.stages.optim import optimizer_step
from rlhf.stages.ppo import optimizers
from rlhf.stages.ppo_parts import (
    KLBudget,
    advantage_parts,
    advantage_variance_shares,
    check_inputs,
    grad_norm,
    kl_overshoot,
    zero_head,
)
from rlhf.stages.rollout import BatchRows

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def two_params_with_grads() -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    """A 'policy' parameter with gradient (3, 4) (norm 5) and a 'value' one with gradient (0, 12) (norm 12); both
    norms together: sqrt(25 + 144) = 13."""
    p, v = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    p.grad, v.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 12.0])
    return p, v


def sgd_step(p, v, max_norm: float, separate: bool) -> None:
    optimizer = torch.optim.SGD([p, v], lr=1.0)  # lr 1 from 0: the parameters become minus the clipped gradients
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    optimizer_step(None, [p, v], optimizer, scheduler, max_norm, clip_groups=[[p], [v]] if separate else None)


def test_gradient_norms_before_clipping():
    p, v = two_params_with_grads()
    assert grad_norm([p]) == pytest.approx(5.0) and grad_norm([v]) == pytest.approx(12.0)
    assert grad_norm([p, v]) == pytest.approx(13.0)
    assert grad_norm([torch.nn.Parameter(torch.ones(2))]) == 0.0  # no gradient yet (value warm-up's policy)


def test_joint_clipping_scales_both_by_one_factor():
    p, v = two_params_with_grads()
    sgd_step(p, v, max_norm=1.0, separate=False)  # factor 1/13 on both
    assert torch.allclose(-p.detach(), torch.tensor([3 / 13, 4 / 13]), atol=1e-6)
    assert torch.allclose(-v.detach(), torch.tensor([0.0, 12 / 13]), atol=1e-6)


def test_separate_clipping_scales_each_by_its_own_factor():
    p, v = two_params_with_grads()
    sgd_step(p, v, max_norm=1.0, separate=True)  # policy 1/5, value 1/12
    assert torch.allclose(-p.detach(), torch.tensor([0.6, 0.8]), atol=1e-6)
    assert torch.allclose(-v.detach(), torch.tensor([0.0, 1.0]), atol=1e-6)
    p, v = two_params_with_grads()
    sgd_step(p, v, max_norm=10.0, separate=True)  # policy under 10: untouched; value 12 -> 10
    assert torch.allclose(-p.detach(), torch.tensor([3.0, 4.0]), atol=1e-6)
    assert torch.allclose(-v.detach(), torch.tensor([0.0, 10.0]), atol=1e-5)
    p, v = two_params_with_grads()
    sgd_step(p, v, max_norm=10.0, separate=False)  # together 13 -> 10: factor 10/13 on both
    assert torch.allclose(-p.detach(), torch.tensor([30 / 13, 40 / 13]), atol=1e-5)


def test_a_zeroed_value_head_gives_zero_values_while_the_trunk_keeps_its_weights(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    bb = Backbone(load_causal_lm(str(tiny_model_dir), tok), tok, lora_r=4, lora_alpha=8, target_modules=["q_proj"])
    bb.add_adapter("value")
    torch.manual_seed(0)
    for p in bb.adapter_parameters("value"):
        p.data.normal_(0, 0.5)
    trunk = [p.detach().clone() for p in bb.adapter_parameters("value")]
    value = ScalarRole(bb, "value")
    q, qm = encode_queries(tok, ["Hello there", "A longer opening of a review"])
    ep = Episodes(q, qm, torch.tensor([[100, 200, 300], [400, 500, 7]]), torch.ones(2, 3), torch.ones(2, dtype=bool))
    with torch.no_grad():
        assert value.values(ep).abs().min() > 0  # a normal head: values away from 0
        zero_head(value.head)
        assert value.values(ep).eq(0).all()
    assert all(torch.equal(a, b) for a, b in zip(trunk, bb.adapter_parameters("value")))


def test_an_entropy_bonus_has_a_graph_and_its_step_raises_the_entropy(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    bb = Backbone(load_causal_lm(str(tiny_model_dir), tok), tok, lora_r=4, lora_alpha=8, target_modules=["q_proj"])
    bb.add_adapter("policy")
    params = bb.mark_trainable("policy")
    torch.manual_seed(0)
    for p in params:
        p.data.normal_(0, 0.5)
    policy = LanguageModelRole(bb, "policy", 0.01)  # a low temperature: an entropy well below its maximum
    q, qm = encode_queries(tok, ["Hello there", "A longer opening of a review"])
    ep = Episodes(q, qm, torch.tensor([[100, 200, 300], [400, 500, 7]]), torch.ones(2, 3), torch.ones(2, dtype=bool))
    _, statistic = policy.logprobs(ep, with_entropy=True)
    assert statistic.grad_fn is None  # the logged statistic keeps no [tokens, vocabulary] graph
    _, entropy = policy.logprobs(ep, with_entropy=True, entropy_grad=True)
    assert torch.allclose(entropy, statistic)
    bonus = -0.05 * entropy.mean()  # the policy loss's term with ppo.entropy_coef = 0.05 and no advantage
    bonus.backward()
    with torch.no_grad():
        for p in params:
            p -= 0.5 * p.grad
        assert policy.logprobs(ep, with_entropy=True)[1].mean() > entropy.mean() + 0.005  # 0.276 -> 0.290 here


def test_a_negative_entropy_coefficient_is_refused_by_name():
    with pytest.raises(ValueError, match=r"ppo.entropy_coef.*got 0.0, -0.01"):
        check_inputs(PPOConfig(entropy_coef=-0.01), SimpleNamespace(gold_scorer=None))


def test_reward_whitening_keeps_the_mean_over_real_tokens():
    # real tokens 1, 3, 5: mean 3, unbiased variance (4 + 0 + 4) / 2 = 4, std 2; (x - 3) / 2 + 3 -> 2, 3, 4
    rewards = torch.tensor([[1.0, 3.0], [5.0, 9.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    out = BatchRows(2).whiten(rewards, mask, shift_mean=False)
    assert torch.allclose(out, torch.tensor([[2.0, 3.0], [4.0, 0.0]]), atol=1e-6)
    shifted = BatchRows(2).whiten(rewards, mask)  # the advantages' whitening: mean 0
    assert torch.allclose(shifted, torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), atol=1e-6)


def fake_roles() -> SimpleNamespace:
    return SimpleNamespace(policy_params=[torch.nn.Parameter(torch.zeros(1))], value_params=[])


def test_the_horizon_controller_is_wired_from_the_config():
    # KL 9 against target 6: error (9 - 6) / 6 = 0.5, clipped to 0.2; a batch of 64 episodes
    pc = PPOConfig(init_beta=0.1, target_kl=6.0, k_beta=0.1, batch_size=64, kl_horizon=10000)
    _, _, kl_ctl = optimizers(fake_roles(), pc)
    kl_ctl.update(9.0, 64)
    assert kl_ctl.beta == pytest.approx(0.1 * (1 + 0.2 * 64 / 10000))  # 0.100128
    _, _, ziegler = optimizers(fake_roles(), PPOConfig(init_beta=0.1, target_kl=6.0, k_beta=0.1))
    ziegler.update(9.0, 64)
    assert ziegler.beta == pytest.approx(0.1 * (1 + 0.1 * 0.2))  # 0.102: K_beta, whatever the batch


def lrs_of(pc: PPOConfig, steps: int) -> list[float]:
    optimizer, scheduler, _ = optimizers(fake_roles(), pc)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_a_kl_far_above_its_target_is_reported_with_the_controllers_pace():
    pc = PPOConfig(target_kl=4.0, k_beta=0.1, batch_size=32)
    # the last two iterations' mean: (5.0 + 7.0) / 2 = 6.0 = 1.5 x 4, not above it; (5.0 + 8.0) / 2 = 6.5 is
    assert kl_overshoot([30.0, 5.0, 7.0], pc) is None
    message = kl_overshoot([1.0, 5.0, 8.0], pc)
    assert message is not None and "6.50 nats, 1.6x ppo.target_kl 4" in message and "at most 2 % an" in message
    # lm-human-preferences' horizon form: 0.2 * 32 / 10000 = 0.064 % an iteration
    assert "at most 0.064 % an" in kl_overshoot([9.0], PPOConfig(target_kl=4.0, batch_size=32, kl_horizon=10000))
    assert kl_overshoot([9.0], PPOConfig(target_kl=4.0, adaptive_kl=False)) is None  # a fixed beta has no target
    assert kl_overshoot([], pc) is None


def test_warm_up_then_linear_anneal():
    # 2 iterations x 1 epoch x (8 / 4 = 2 minibatches) = 4 updates; warm-up 2: 0, 1/2, then 1 falling to 0 at step 4
    pc = PPOConfig(iterations=2, batch_size=8, minibatch_size=4, ppo_epochs=1, learning_rate=1.0, warmup_updates=2)
    assert lrs_of(pc, 5) == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])
    pc.warmup_updates = 0  # today's schedule: 1, 3/4, 1/2, 1/4
    assert lrs_of(pc, 4) == pytest.approx([1.0, 0.75, 0.5, 0.25])


def test_advantage_parts_sum_to_the_advantages():
    torch.manual_seed(0)
    scores, kl, values = torch.randn(3), torch.randn(3, 4), torch.randn(3, 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    rewards = -0.3 * kl * mask
    rewards[torch.arange(3), torch.tensor([3, 1, 0])] += scores
    advantages, _ = gae(rewards, values, mask, 1.0, 0.95)
    parts = advantage_parts(scores, kl * mask, values, mask, 0.3, 1.0, 0.95)
    assert torch.allclose(sum(parts), advantages, atol=1e-5)


def test_variance_shares_by_hand():
    # gamma = lam = 1, two rows of two real tokens. Scores (1, -1): score part [[1, 1], [-1, -1]], variance 1.
    # beta 1, KL [[1, 0], [0, 0]]: KL part [[-1, 0], [0, 0]], mean -1/4, variance (9/16 + 3/16) / 4 = 3/16.
    # values [[2, 0], [0, 0]]: value part -V_t (the differences telescope) = [[-2, 0], [0, 0]], variance 3/4.
    # Sum 31/16: shares 16/31, 3/31, 12/31.
    scores, mask = torch.tensor([1.0, -1.0]), torch.ones(2, 2)
    kl, values = torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    shares = advantage_variance_shares(scores, kl, values, mask, 1.0, 1.0, 1.0)
    assert shares == pytest.approx({"adv_share_score": 16 / 31, "adv_share_kl": 3 / 31, "adv_share_value": 12 / 31})
    only_score = advantage_variance_shares(scores, torch.zeros(2, 2), torch.zeros(2, 2), mask, 1.0, 1.0, 1.0)
    assert only_score == {"adv_share_score": 1.0, "adv_share_kl": 0.0, "adv_share_value": 0.0}
    flat = advantage_variance_shares(torch.zeros(2), torch.zeros(2, 2), torch.zeros(2, 2), mask, 1.0, 1.0, 1.0)
    assert all(math.isnan(s) for s in flat.values())


@pytest.mark.slow
def test_smoke_run_with_every_mechanism_on(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    overrides = [
        "ppo.separate_clipping=true",
        "ppo.value_init=zero",
        "ppo.whiten_rewards=true",
        "ppo.kl_horizon=100",
        "ppo.warmup_updates=4",
        "ppo.minibatch_size=8",  # = batch_size: one minibatch per epoch
        "ppo.stop_epochs_at_kl=1e-12",  # any move at all stops the epochs
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    args = ["run", "--config", str(SMOKE), "--out", str(out), f"model.name_or_path={tiny_model_dir}", *overrides]
    proc = subprocess.run([sys.executable, "-m", "rlhf.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-5000:]
    rows = [json.loads(line) for line in (out / "ppo" / "metrics.jsonl").read_text().splitlines()]
    keys = ["policy_grad_norm", "value_grad_norm", "approx_kl_epoch_1", "approx_kl_epoch_2"]
    keys += ["adv_share_score", "adv_share_kl", "adv_share_value"]
    for row in rows:
        assert all(math.isfinite(row[k]) for k in keys), {k: row.get(k) for k in keys}
        assert row["adv_share_score"] + row["adv_share_kl"] + row["adv_share_value"] == pytest.approx(1.0)
    assert rows[0]["adv_share_value"] == 0.0  # the zeroed head: every value of the first batch is 0
    assert rows[0]["approx_kl_epoch_1"] == 0.0  # one minibatch: epoch 1's only forward precedes any step
    assert rows[0]["lr"] == pytest.approx(0.5e-4)  # 2 of 4 warm-up steps taken: half of the learning rate 1e-4
    # early stopping, 3 iterations x 2 epochs = 6 steps: iteration 1's first step has learning rate 0, so epoch 2
    # still sees approx-KL 0 and steps; from then on epoch 2 sees the move and stops, the schedule advancing anyway
    assert [row["epochs_run"] for row in rows] == [2.0, 1.0, 1.0]
    assert [row["lr"] for row in rows] == pytest.approx([0.5e-4, 1e-4, 0.0])
    assert all(row["approx_kl_epoch_2"] > 1e-12 for row in rows[1:]) and rows[0]["approx_kl_epoch_2"] == 0.0
    # horizon 100, batch 8: beta moves by at most 0.2 * 8 / 100 = 1.6 % an iteration
    assert abs(rows[1]["beta"] / rows[0]["beta"] - 1) <= 0.016 + 1e-9


def test_a_kl_budget_restores_the_last_policy_whose_batch_stayed_within_it():
    weights = {"w": torch.tensor([0.0])}
    budget = KLBudget(4.0, lambda: {"w": weights["w"].clone()}, weights.update)
    assert budget.within(1, 0.0)
    weights["w"] += 1  # iteration 1's update
    assert budget.within(2, 3.9)
    weights["w"] += 1  # iteration 2's update: the policy that samples iteration 3 has w = 2
    assert not budget.within(3, 4.1)
    info = budget.restore(3, 4.1)
    assert weights["w"].item() == 1.0  # back to the policy that sampled iteration 2, before its update
    assert info == {
        "stopped_at_iteration": 3,
        "batch_kl": 4.1,
        "kl_budget": 4.0,
        "kept_iteration": 2,
        "kept_batch_kl": 3.9,
    }


def test_a_kl_budget_of_zero_is_off_and_copies_nothing():
    copies = []
    budget = KLBudget(0.0, lambda: copies.append(1) or {}, lambda s: None)
    assert budget.within(1, 0.0) and budget.within(2, 1e6)
    assert copies == [] and budget.kept is None


def test_a_negative_kl_budget_is_refused_by_name():
    with pytest.raises(ValueError, match="ppo.kl_budget"):
        check_inputs(PPOConfig(kl_budget=-1.0), SimpleNamespace(gold_scorer=None))


@pytest.mark.slow
def test_a_run_past_its_kl_budget_ends_with_the_policy_that_sampled_the_last_batch_within_it(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    # iteration 1's batch is sampled by the SFT policy (KL 0); at learning rate 1e-2 iteration 2's is far past 1e-3
    overrides = ["ppo.kl_budget=1e-3", "ppo.learning_rate=1e-2", "bon.n=1", "policy.methods=[ppo]"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    args = ["run", "--config", str(SMOKE), "--out", str(out), f"model.name_or_path={tiny_model_dir}", *overrides]
    proc = subprocess.run([sys.executable, "-m", "rlhf.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-5000:]
    stop = json.loads((out / "ppo" / "done.json").read_text())["kl_budget_stop"]
    assert stop["stopped_at_iteration"] == 2 and stop["kept_iteration"] == 1, stop
    assert stop["batch_kl"] > 1e-3 and stop["kept_batch_kl"] == 0.0
    rows = [json.loads(line) for line in (out / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [1]  # iteration 2 stopped before its update and its row
    adapter = load_file(out / "ppo" / "model" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(torch.count_nonzero(v) == 0 for v in lora_b)  # the SFT policy: every B still 0
    assert json.loads((out / "summary.json").read_text())["policies"]["ppo"]["kl_to_reference"] == pytest.approx(
        0, abs=1e-6
    )
