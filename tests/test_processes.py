"""Several processes (rlhf/processes.py): strided rows worked out by hand, and the smoke pipeline in two CPU
processes over gloo against one process: the same samples and comparisons, the same SFT, reward-model and PPO
curves within float tolerance, the same beta path, one complete run directory written once, and a PPO stage
killed in two processes resumed in one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from rlhf.processes import Processes
from rlhf.stages.rollout import BatchRows

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
STAGES = ("sft", "collect", "reward", "ppo", "bon", "eval")


def test_rows_are_strided_by_hand():
    assert Processes(rank=1, world_size=3).shard(list("abcdefgh")) == ["b", "e", "h"]
    assert Processes(rank=1, world_size=3).rows(8) == [1, 4, 7]
    assert Processes(rank=0, world_size=3).rows(2) == [0]
    assert Processes(rank=2, world_size=3).rows(2) == []  # more processes than rows: nothing to do here
    one = Processes()
    items = list("abc")
    assert one.shard(items) is items and one.rows(3) == [0, 1, 2] and one.in_order(items, 3) is items
    assert one.map_rows(lambda xs, ys: [x + y for x, y in zip(xs, ys)], ["a", "b"], ["c", "d"]) == ["ac", "bd"]
    assert one.sum(2.5) == 2.5 and one.max(1.5) == 1.5 and one.broadcast({"x": 1}) == {"x": 1}


def test_batch_rows_local_positions_and_first_epoch_minibatches_by_hand():
    # 8 rows over 2 processes: process 1 holds rows 1, 3, 5, 7 at local positions 0, 1, 2, 3
    rows = BatchRows(8, Processes(rank=1, world_size=2))
    assert rows.mine == [1, 3, 5, 7]
    assert rows.local(torch.tensor([5, 2, 3, 6])) == [2, 1]  # rows 5 and 3, in the minibatch's order
    assert rows.first_epoch_minibatches(4) == [[0, 1], [2, 3]]  # minibatch 0-3 -> rows 1, 3; 4-7 -> rows 5, 7
    # 5 rows over 2 processes, minibatches of 4: process 0 holds rows 0, 2 of the first and row 4 of the second
    assert BatchRows(5, Processes(rank=0, world_size=2)).first_epoch_minibatches(4) == [[0, 1], [2]]
    assert BatchRows(5, Processes(rank=1, world_size=2)).first_epoch_minibatches(4) == [[0, 1]]
    # one process: every row, the minibatches in order, and the statistics as they were measured
    one = BatchRows(5)
    assert one.local(torch.tensor([4, 0])) == [4, 0] and one.first_epoch_minibatches(2) == [[0, 1], [2, 3], [4]]
    stats = one.combine_stats([(1.0, {"clipfrac": 0.25, "ratio_max": 1.5}), (1.0, {"clipfrac": 0.5, "ratio_max": 1.1})])
    assert stats == {"clipfrac": [0.25, 0.5], "ratio_max": [1.5, 1.1]}


def test_uniforms_of_a_process_are_its_rows_of_one_process_draws():
    torch.manual_seed(3)
    whole = BatchRows(5).uniforms(4)
    torch.manual_seed(3)
    assert torch.equal(BatchRows(5, Processes(rank=1, world_size=2)).uniforms(4), whole[[1, 3]])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "CUDA_VISIBLE_DEVICES": ""}


def launch_two(*args: str) -> list[str]:
    """`accelerate launch` of two processes (torchrun; on the CPU over gloo)."""
    return [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--main_process_port", str(free_port()), "-m", "rlhf.cli", *args),
    ]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=ROOT, timeout=900)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
    return proc


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def one_and_two(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """The smoke pipeline in one process and in two (`rlhf run --num-processes 2`)."""
    base = tmp_path_factory.mktemp("processes")
    args = ("--config", str(SMOKE), f"model.name_or_path={tiny_model_dir}")
    run([sys.executable, "-m", "rlhf.cli", "run", "--out", str(base / "one"), *args])
    run([sys.executable, "-m", "rlhf.cli", "run", "--num-processes", "2", "--out", str(base / "two"), *args])
    return base / "one", base / "two"


@pytest.mark.slow
def test_two_processes_write_one_complete_run_directory(one_and_two):
    one, two = one_and_two
    for stage in STAGES:
        assert (two / stage / "done.json").exists(), stage
        assert not (two / stage / "checkpoint.pt").exists(), stage
    assert (two / "report.html").exists() and (two / "config.yaml").exists()
    assert "world size 2" in (two / "log.txt").read_text()
    assert not [p for p in two.rglob("*") if ".tmp" in p.name], "a temporary file was left behind"
    # written once: no row twice, the same files as one process
    for stage, key in (("sft", "step"), ("reward", "step"), ("ppo", "iteration")):
        steps = [r[key] for r in rows_of(two / stage / "metrics.jsonl")]
        assert steps == [r[key] for r in rows_of(one / stage / "metrics.jsonl")] and len(set(steps)) == len(steps)
    files = {p.relative_to(one) for p in one.rglob("*") if p.is_file() and "tb" not in p.parts}
    assert files == {p.relative_to(two) for p in two.rglob("*") if p.is_file() and "tb" not in p.parts}


@pytest.mark.slow
def test_two_processes_sample_what_one_samples(one_and_two):
    one, two = one_and_two
    for name in ("samples.jsonl", "comparisons.jsonl", "heldout.jsonl"):
        assert rows_of(one / "collect" / name) == rows_of(two / "collect" / name), name
    responses = lambda run, name: [(r["prompt"], r["response"]) for r in rows_of(run / name)]  # noqa: E731
    assert responses(one, "bon/candidates.jsonl") == responses(two, "bon/candidates.jsonl")
    assert [(r["policy"], r["response"]) for r in rows_of(one / "eval" / "samples.jsonl")] == [
        (r["policy"], r["response"]) for r in rows_of(two / "eval" / "samples.jsonl")
    ]


@pytest.mark.slow
def test_two_processes_follow_one_process_learning_curves_and_beta(one_and_two):
    one, two = one_and_two
    for stage in ("sft", "reward"):
        a, b = rows_of(one / stage / "metrics.jsonl"), rows_of(two / stage / "metrics.jsonl")
        for ra, rb in zip(a, b):
            for key in ("loss", "val_loss"):
                if key in ra:
                    assert rb[key] == pytest.approx(ra[key], rel=1e-5), (stage, ra, rb)
    a, b = rows_of(one / "ppo" / "metrics.jsonl"), rows_of(two / "ppo" / "metrics.jsonl")
    assert [r["beta"] for r in b] == pytest.approx([r["beta"] for r in a], rel=1e-6)
    for ra, rb in zip(a, b):
        assert rb["no_stop_count"] == ra["no_stop_count"] and rb["response_length"] == ra["response_length"]
        for key in ("rm_score", "score", "kl", "entropy", "value_loss", "clipfrac"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), (key, ra[key], rb[key])
        assert rb["first_minibatch_max_log_ratio"] == 0.0
    summary_one, summary_two = (json.loads((r / "summary.json").read_text()) for r in (one, two))
    assert summary_two["reward_model"] == summary_one["reward_model"]
    assert summary_two["winrates"] == summary_one["winrates"]


@pytest.mark.slow
def test_ppo_killed_in_two_processes_resumes_in_one(one_and_two, tmp_path):
    one, two = one_and_two
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("config.yaml", "summary.json", "sft", "collect", "reward"):
        subprocess.run(["cp", "-r", str(two / name), str(run_dir / name)], check=True)
    proc = subprocess.Popen(
        launch_two("ppo", str(run_dir)),
        env=env(),
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint, deadline = run_dir / "ppo" / "checkpoint.pt", time.time() + 300
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    # the launcher, torchrun and both workers (torchrun may put its workers in process groups of their own)
    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in family:
        p.kill()
    psutil.wait_procs(family, timeout=60)
    proc.wait()
    assert checkpoint.exists() and not (run_dir / "ppo" / "done.json").exists(), "PPO finished before it was killed"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["iteration"]
    resumed = run([sys.executable, "-m", "rlhf.cli", "ppo", str(run_dir)])
    assert f"resuming ppo from {checkpoint}" in resumed.stderr
    a, b = rows_of(one / "ppo" / "metrics.jsonl"), rows_of(run_dir / "ppo" / "metrics.jsonl")
    assert [r["iteration"] for r in b] == [1, 2, 3] and saved in (1, 2)
    for ra, rb in zip(a, b):
        for key in ("beta", "rm_score", "kl", "value_loss"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), (key, ra[key], rb[key])


def test_accelerate_cpu_launcher_without_mpirun_is_a_clear_error(tmp_path):
    """`accelerate launch --cpu --num_processes N` starts one process (it needs mpirun for more): rlhf says so
    instead of running one process where N were asked for."""
    environment = {**env(), "ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    cmd = [sys.executable, "-m", "rlhf.cli", "run", "--config", str(SMOKE), "--out", str(tmp_path / "run")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=environment, cwd=ROOT, timeout=300)
    assert proc.returncode == 2
    assert "accelerate launch --cpu` started one process" in proc.stderr and "--num_processes N" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_one_minibatch_per_epoch_and_early_stopping_in_two_processes_as_in_one(one_and_two, tmp_path):
    """The library's default of one minibatch per epoch reuses epoch 1's forward passes for the log-probs and
    values before any update, and ppo.stop_epochs_at_kl sums the minibatch's approx-KL over the processes: two
    processes must step as one does."""
    one, _ = one_and_two
    runs = {}
    for name in ("one", "two"):
        run_dir = tmp_path / name
        run_dir.mkdir()
        for part in ("summary.json", "sft", "collect", "reward"):
            subprocess.run(["cp", "-r", str(one / part), str(run_dir / part)], check=True)
        cfg = yaml.safe_load((one / "config.yaml").read_text())
        cfg["ppo"].update(minibatch_size=cfg["ppo"]["batch_size"], stop_epochs_at_kl=1e-12)  # any move stops
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
        run(
            launch_two("ppo", str(run_dir))
            if name == "two"
            else [sys.executable, "-m", "rlhf.cli", "ppo", str(run_dir)]
        )
        runs[name] = rows_of(run_dir / "ppo" / "metrics.jsonl")
    assert len(runs["one"]) == len(runs["two"]) == cfg["ppo"]["iterations"]
    for ra, rb in zip(runs["one"], runs["two"]):
        assert rb["epochs_run"] == ra["epochs_run"] == 1.0 and rb["first_minibatch_max_log_ratio"] == 0.0
        for key in ("rm_score", "kl", "value_loss", "approx_kl", "beta"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), (key, ra[key], rb[key])
