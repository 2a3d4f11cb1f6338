"""How many CPU threads torch's kernels use. With `model.threads: 0` (the default) the count follows the cores
that other processes leave free, re-read every 2 s at the start of a model's forward pass.

Why: torch's OpenMP threads meet at a barrier after every kernel. On a 2-core machine beside one busy process, two
threads make each kernel wait for the thread the scheduler parked: a forward and backward pass took 1.2x and a
decoding step 2x as long as on one thread; quiet, two threads are 1.5-1.8x faster than one (docs/benchmarks.md,
"Threads under load"). The price: a parallel reduction (a sum, the attention of a decoding step) adds in another
order on another thread count, so figures then move with the machine's load by rounding (a gold score in the 7th
digit, now and then a sampled token). `model.threads: N` fixes the count, and with it every figure, bit for bit."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger("rlhf")

# Fields of a `cpuN` line of /proc/stat, after the name: user nice system idle iowait irq softirq steal ...
IDLE_FIELDS = (3, 4)


def others_busy_cores(busy_all_s: float, busy_ours_s: float, wall_s: float) -> float:
    """Cores kept busy by other processes over a window: all CPU-seconds spent on our CPUs minus our own, per
    second of wall time."""
    return max(0.0, busy_all_s - busy_ours_s) / wall_s


def threads_for(cores: int, others_busy: float, most: int) -> int:
    """The thread count for the cores others leave free, a core counting as taken when others keep it busy more
    than half the time (a process that would keep a core busy gets only ~2/3 of one beside our threads on a full
    machine: 0.76 measured on 2 cores), at least 1, at most `most`."""
    return max(1, min(most, int(cores - others_busy + 0.5)))


def read_busy_seconds(cpus: set[int], stat_path: str = "/proc/stat") -> float | None:
    """CPU-seconds spent not idle on `cpus` since boot, or None where /proc/stat is not there (not Linux)."""
    try:
        lines = Path(stat_path).read_text().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            numbers = [int(v) for v in values[:8]]
            ticks += sum(numbers) - sum(numbers[i] for i in IDLE_FIELDS)
    return ticks / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def read_sample(cpus: set[int]) -> tuple[float, float, float] | None:
    """(wall clock, CPU-seconds busy on `cpus`, our CPU-seconds), or None where /proc/stat cannot be read."""
    busy_all = read_busy_seconds(cpus)
    return None if busy_all is None else (time.monotonic(), busy_all, own_cpu_seconds())


@dataclass
class CpuThreads:
    """torch's intra-op thread count: `fixed` threads when > 0, else following the free cores, checked at most
    every `period_s` seconds by `tick()` (called before each forward pass of every model we load on the CPU)."""

    fixed: int = 0
    period_s: float = 2.0
    cpus: set[int] = field(default_factory=lambda: set(getattr(os, "sched_getaffinity", lambda _: ())(0)))
    most: int = field(default_factory=torch.get_num_threads)
    read: Callable[[set[int]], tuple[float, float, float] | None] = read_sample
    last: tuple[float, float, float] | None = None
    changes: int = 0
    seconds_at: dict[int, float] = field(default_factory=dict)
    """Wall seconds between readings, by the thread count they ran on (since the last `describe`)."""

    def configure(self, fixed: int) -> None:
        self.fixed = fixed
        torch.set_num_threads(fixed if fixed > 0 else self.most)
        self.last = None

    def tick(self) -> None:
        if self.fixed > 0 or not self.cpus:
            return
        if self.last is not None and time.monotonic() - self.last[0] < self.period_s:
            return
        sample = self.read(self.cpus)
        if sample is None:
            self.cpus = set()  # no /proc/stat: keep torch's default
            return
        if self.last is not None:
            wall, all_s, ours_s = (b - a for a, b in zip(self.last, sample))
            n = torch.get_num_threads()
            self.seconds_at[n] = self.seconds_at.get(n, 0.0) + wall
            others = others_busy_cores(all_s, ours_s, wall)
            want = threads_for(len(self.cpus), others, self.most)
            if want != torch.get_num_threads():
                log.debug(
                    "cpu threads %d -> %d (others busy %.2f of %d cores)",
                    torch.get_num_threads(),
                    want,
                    others,
                    len(self.cpus),
                )
                torch.set_num_threads(want)
                self.changes += 1
        self.last = sample

    def describe(self) -> str:
        """`N threads for S s, ...` since the last call, or '' with a fixed count or no readings; starts anew."""
        spent, self.seconds_at = self.seconds_at, {}
        return ", ".join(f"{n} thread{'s' * (n > 1)} for {s:.0f} s" for n, s in sorted(spent.items(), reverse=True))


CPU_THREADS = CpuThreads()


def follow_free_cores(model: torch.nn.Module) -> None:
    """Re-read the free cores before each forward pass of `model` (a hook on its input embeddings, which every
    forward pass calls, also under peft's wrappers)."""
    model.get_input_embeddings().register_forward_pre_hook(lambda module, args: CPU_THREADS.tick())
