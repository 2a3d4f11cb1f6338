"""A test hook for fault injection, inert unless RLHF_FAULT_KILL_AT or RLHF_FAULT_TRACE is set.

Every durable write to a run directory (an atomic rename of a file, checkpoint or model folder, or an append to a
JSON Lines log) calls `fault_point` just before and just after it. The calls are counted per process:

- RLHF_FAULT_KILL_AT=N: the process sends itself SIGKILL at the N-th call (1-based), as a crash would stop it;
- RLHF_FAULT_TRACE=FILE: each call appends "N WHERE" to FILE (how many points a stage has, and where they are).

tests/test_kill_resume.py kills every stage at points chosen by seed, resumes it and compares the run directory with
an uninterrupted run's. Nothing else reads these variables.
"""

from __future__ import annotations

import os
import signal

KILL_AT = "RLHF_FAULT_KILL_AT"
TRACE = "RLHF_FAULT_TRACE"
_points_seen = 0


def fault_point(where: str) -> None:
    """Count one fault point (`where`: e.g. "before rename RUN/ppo/checkpoint.pt"); trace it and kill this process
    there when the variables above ask for it. Does nothing when neither is set."""
    kill_at, trace = os.environ.get(KILL_AT), os.environ.get(TRACE)
    if not kill_at and not trace:
        return
    global _points_seen
    _points_seen += 1
    if trace:
        with open(trace, "a") as handle:
            handle.write(f"{_points_seen} {where}\n")
    if kill_at and _points_seen == int(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)
