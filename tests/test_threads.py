"""The CPU thread count that follows the free cores (rlhf/models/threads.py): the arithmetic by hand and the decision
from fed /proc/stat readings."""

from __future__ import annotations

import pytest
import torch

from rlhf.models.threads import CpuThreads, others_busy_cores, read_busy_seconds, threads_for


@pytest.fixture
def kept_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_others_busy_cores_by_hand():
    # 10 s of wall time; 25 CPU-seconds busy on our CPUs, 15 of them ours: others kept 1.0 core busy
    assert others_busy_cores(25.0, 15.0, 10.0) == pytest.approx(1.0)
    # our own accounting can run ahead of /proc/stat's ticks: never below zero
    assert others_busy_cores(9.9, 10.0, 5.0) == 0.0


def test_threads_for_by_hand():
    assert threads_for(2, 0.05, 2) == 2  # quiet: both cores
    assert threads_for(2, 0.45, 2) == 2  # 2 - 0.45 + 0.5 = 2.05: a burst, not a taken core
    assert threads_for(2, 0.76, 2) == 1  # 1.74: a busy process squeezed by our two threads
    assert threads_for(2, 0.98, 2) == 1  # one core taken
    assert threads_for(2, 1.6, 2) == 1  # never below one thread
    assert threads_for(16, 3.4, 8) == 8  # at most torch's default
    assert threads_for(16, 9.6, 8) == 6  # 16 - 9.6 + 0.5 = 6.9


def test_read_busy_seconds_counts_only_our_cpus(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal: cpu0 busy 100+0+50+0+0+10 = 160 ticks, cpu1 busy 20
    stat.write_text(
        "cpu  120 0 60 900 10 0 0 0 0 0\ncpu0 100 0 50 400 5 0 10 0 0 0\ncpu1 20 0 0 500 5 0 0 0 0 0\nintr 12345\n"
    )
    monkeypatch.setattr("os.sysconf", lambda name: 100)
    assert read_busy_seconds({0}, str(stat)) == pytest.approx(1.6)
    assert read_busy_seconds({0, 1}, str(stat)) == pytest.approx(1.8)
    assert read_busy_seconds({0}, str(tmp_path / "missing")) is None


def test_tick_follows_other_processes(kept_threads):
    samples = iter(
        [
            (0.0, 100.0, 10.0),
            (2.0, 104.0, 7.0 + 5.0),  # 4 CPU-s busy in 2 s, 2 of them ours: others held 1 core
            (4.0, 104.0 + 1.95, 12.0 + 1.95),  # we alone, on one thread: others 0.0 -> back to 2
            (6.0, 105.95 + 3.9, 13.95 + 3.9),
        ]
    )
    threads = CpuThreads(period_s=0.0, cpus={0, 1}, most=2, read=lambda cpus: next(samples))
    threads.configure(0)
    assert torch.get_num_threads() == 2
    threads.tick()  # first reading: nothing to compare with
    assert torch.get_num_threads() == 2
    threads.tick()
    assert torch.get_num_threads() == 1
    threads.tick()
    assert torch.get_num_threads() == 2
    threads.tick()
    assert (torch.get_num_threads(), threads.changes) == (2, 2)
    assert threads.describe() == "2 threads for 4 s, 1 thread for 2 s"
    assert threads.describe() == ""


def test_fixed_threads_are_kept(kept_threads):
    threads = CpuThreads(period_s=0.0, cpus={0, 1}, most=2, read=lambda cpus: pytest.fail("read while fixed"))
    threads.configure(1)
    threads.tick()
    assert torch.get_num_threads() == 1
