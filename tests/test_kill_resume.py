"""Fault injection (issue 20 §2): every stage and every experiment is killed with SIGKILL at points chosen by seed,
resumed, and its run directory compared with an uninterrupted run's.

The kill points are the process's durable writes (rlhf/data/faults.py: just before and just after each atomic
rename and each append to a JSON Lines log). An uninterrupted reference run, stage by stage on a tiny random model,
traces every point; for each stage the test picks points by seed (one in each of RLHF_KILL_POINTS equal parts of
the stage's points, default 2; RLHF_KILL_POINTS=all takes every point; RLHF_KILL_SEED, default 0), copies the
reference run directory as it was before the stage, runs the stage with RLHF_FAULT_KILL_AT set, sees it die by
SIGKILL having passed the reference's points, runs it again (the resume) and compares every file with the
reference's after the stage. Each experiment is killed at RLHF_KILL_POINTS_EXPERIMENT points (default 1) of its
own, outside its base run.

Files are compared byte for byte (model weights, samples, comparisons, metrics logs, plots; a leftover checkpoint
or temp file is a difference), the run directory's path written as RUN, except what holds wall-clock time:
- `tb/` (TensorBoard event files: their names and records carry wall times) and `log.txt` (time-stamped lines; a
  resumed run adds its own), wherever they are;
- in JSON files the values of WALL_CLOCK_KEYS and of keys ending in _seconds (done.json's finished_at, the
  experiments' wall_seconds, cpu_seconds, <method>_seconds, frontier's method_runs[].seconds); summary.json's
  stage_seconds and wall_seconds_total altogether: a stage killed after its done.json and before run_stage added
  its time to the summary is skipped by the resume, so its time is missing from stage_seconds;
- the time figures in an experiment's summary.md and the table of stage times in report.html.

Commands run in forks of one process that imported rlhf once (ZYGOTE below): each is a new process, killed or not,
without the ~8 s import of a fresh interpreter. Forks share the parent's string-hash seed, so
test_pipeline_run_killed_and_resumed runs `python -m rlhf.cli run` in fresh interpreters (each with its own seed).
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_rlhf_vs_sft import write_tldr_rows
from test_rm_scaling import write_hh_file

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
pytestmark = pytest.mark.slow

STAGES = ("sft", "collect", "reward", "ppo", "rloo", "grpo", "dpo", "bon", "eval")
EXPERIMENTS = ("frontier", "queries_needed", "overoptimization", "rouge_proxy", "rm_scaling", "rlhf_vs_sft")
WALL_CLOCK_KEYS = ("finished_at", "wall_seconds", "cpu_seconds", "seconds")
STAGE_TIMES = ("stage_seconds", "wall_seconds_total")  # summary.json's, left out altogether
WALL_CLOCK_KEY_SUFFIX = "_seconds"  # measured.json's ppo_seconds etc., and the experiments' copies of them
NOT_COMPARED = ("tb", "log.txt")  # folder and file names, wherever they are
ENV = {"HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
COMMAND_TIMEOUT = 600

# A process that imports the CLI once and runs each command it reads (one JSON line: argv, env, log file) in a
# fork of itself, answering with the fork's exit code (negative: the signal that ended it). It runs no torch code
# itself, so its forks start clean.
ZYGOTE = r"""
import json, os, sys, traceback
import rlhf.cli
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.environ.update(job["env"])
        fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        code = 1
        try:
            code = rlhf.cli.main(job["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Commands:
    """Runs `rlhf ARGS` in forks of the zygote; `kill_at` sets RLHF_FAULT_KILL_AT, `trace` RLHF_FAULT_TRACE."""

    def __init__(self):
        env = {**os.environ, **ENV}
        env.pop("RLHF_FAULT_KILL_AT", None)
        env.pop("RLHF_FAULT_TRACE", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def __call__(self, *argv: str, log: Path, kill_at: int | None = None, trace: Path | None = None) -> int:
        env = {}
        if kill_at is not None:
            env["RLHF_FAULT_KILL_AT"] = str(kill_at)
        if trace is not None:
            env["RLHF_FAULT_TRACE"] = str(trace)
        self.proc.stdin.write(json.dumps({"argv": list(argv), "env": env, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], COMMAND_TIMEOUT)
        if not ready:
            self.close()
            raise AssertionError(f"rlhf {' '.join(argv)}: no answer in {COMMAND_TIMEOUT} s")
        line = self.proc.stdout.readline()
        assert line, f"the zygote process died (exit {self.proc.poll()})"
        return json.loads(line)["returncode"]

    def ok(self, *argv: str, log: Path, trace: Path | None = None) -> None:
        code = self(*argv, log=log, trace=trace)
        assert code == 0, f"rlhf {' '.join(argv)} exited {code}\n{tail(log)}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


@pytest.fixture(scope="module")
def commands():
    c = Commands()
    yield c
    c.close()


# ---------------------------------------------------------------- kill points


def trace_points(path: Path, root: Path) -> list[str]:
    """The fault points a traced run went through, in order (`where` of each, the run directory `root` as RUN)."""
    if not path.exists():
        return []
    return [line.split(" ", 1)[1].replace(str(root), "RUN") for line in path.read_text().splitlines()]


def kill_points_per_stage() -> int | None:
    """RLHF_KILL_POINTS: points per stage (default 2), or None for "all"."""
    value = os.environ.get("RLHF_KILL_POINTS", "2")
    return None if value == "all" else int(value)


def choose_points(candidates: list[int], name: str, k: int | None = None) -> list[int]:
    """Points to kill at: with k, one drawn (by RLHF_KILL_SEED and `name`) from each of k equal consecutive parts of
    `candidates`, so that early and late points are both tried; every candidate for k None."""
    k = kill_points_per_stage() if k is None else k
    if k is None or k >= len(candidates):
        return list(candidates)
    rng = random.Random(f"{os.environ.get('RLHF_KILL_SEED', '0')}-{name}")
    bounds = [round(i * len(candidates) / k) for i in range(k + 1)]
    return [candidates[rng.randrange(bounds[i], bounds[i + 1])] for i in range(k)]


# ---------------------------------------------------------------- comparing run directories


def without_wall_clock(obj):
    """A JSON value with the values of wall-clock keys replaced by None (their presence is still compared) and
    STAGE_TIMES left out."""
    if isinstance(obj, dict):
        return {
            k: None if k in WALL_CLOCK_KEYS or k.endswith(WALL_CLOCK_KEY_SUFFIX) else without_wall_clock(v)
            for k, v in obj.items()
            if k not in STAGE_TIMES
        }
    if isinstance(obj, list):
        return [without_wall_clock(v) for v in obj]
    return obj


def comparable(path: Path, root: Path) -> bytes | object:
    """What is compared of a file: its bytes, or for JSON and summary.md the content without wall-clock figures;
    the run directory's path `root` (in a sub-run's note of the run it came from) as RUN."""
    data = path.read_bytes().replace(str(root).encode(), b"RUN")
    if path.suffix == ".json":
        return without_wall_clock(json.loads(data))
    if path.name == "summary.md":
        return re.sub(rb"[0-9.]+ ?(s|seconds|min)\b", b"<time>", data)
    if path.name == "report.html":  # its table of stage times
        return re.sub(rb"<h2>Time per stage</h2>.*?<h2>", b"<h2>", data, flags=re.S)
    return data


def listing(root: Path) -> dict[str, Path]:
    """Every file and symlink under `root` by relative path, without NOT_COMPARED."""
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in NOT_COMPARED]
        for name in files + [d for d in dirs if (Path(folder) / d).is_symlink()]:
            if name not in NOT_COMPARED:
                found[str(Path(folder, name).relative_to(root))] = Path(folder) / name
    return found


def differences(expected: Path, got: Path) -> list[str]:
    """How the run directory `got` differs from `expected`: missing and extra files, and files that differ."""
    a, b = listing(expected), listing(got)
    diffs = [f"missing {p}" for p in sorted(set(a) - set(b))] + [f"extra {p}" for p in sorted(set(b) - set(a))]
    for rel in sorted(set(a) & set(b)):
        pa, pb = a[rel], b[rel]
        if pa.is_symlink() or pb.is_symlink():
            if not (pa.is_symlink() and pb.is_symlink() and os.readlink(pa) == os.readlink(pb)):
                diffs.append(f"symlink {rel}")
        elif comparable(pa, expected) != comparable(pb, got):
            diffs.append(f"differs {rel}" + hint(pa, pb, expected, got))
    return diffs


def json_differences(a, b, where: str = "") -> list[str]:
    """The key paths at which two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in json_differences(a.get(k), b.get(k), f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in json_differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [where or "."]


def hint(a: Path, b: Path, root_a: Path, root_b: Path) -> str:
    """Where two files differ: for JSON the key paths, for JSON Lines the line counts (duplicated or changed)."""
    if a.suffix == ".json":
        return f" at {json_differences(comparable(a, root_a), comparable(b, root_b))[:8]}"
    if a.suffix == ".jsonl":
        return f" ({len(a.read_bytes().splitlines())} lines expected, {len(b.read_bytes().splitlines())} found)"
    return ""


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


# ---------------------------------------------------------------- the stages


def stage_overrides(model_dir: Path) -> list[str]:
    """The smoke config with every stage small but past its first checkpoint, checkpoints every step or every
    other one (so a resume also starts from a checkpoint older than the last logged step), and every method."""
    return [
        f"model.name_or_path={model_dir}",
        "policy.methods=[ppo,rloo,grpo,dpo]",
        "sft.epochs=2",
        "reward.epochs=2",
        "reward.checkpoint_every=2",
        "reward.probe_head_first=true",
        "ppo.checkpoint_every=2",
        "rloo.iterations=3",
        "rloo.prompts_per_batch=2",
        "rloo.samples_per_prompt=2",
        "rloo.minibatch_size=4",
        "rloo.checkpoint_every=2",
        "grpo.iterations=3",
        "grpo.prompts_per_batch=2",
        "grpo.samples_per_prompt=2",
        "grpo.minibatch_size=2",
        "grpo.epochs=2",
        "dpo.batch_size=4",
        "dpo.checkpoint_every=1",
    ]


@pytest.fixture(scope="module")
def reference(commands, tiny_model_dir, tmp_path_factory) -> dict:
    """An uninterrupted run, stage by stage: the run directory before each stage and after it, and each stage's
    traced fault points."""
    work = tmp_path_factory.mktemp("reference")
    run = work / "run"
    commands.ok(
        "init", "--config", str(SMOKE), "--out", str(run), *stage_overrides(tiny_model_dir), log=work / "init.log"
    )
    before, after, points = {}, {}, {}
    for stage in STAGES:
        before[stage] = copy_run(run, work / f"before-{stage}")
        trace = work / f"{stage}.trace"
        commands.ok(stage, str(run), log=work / f"{stage}.log", trace=trace)
        points[stage] = trace_points(trace, run)
        after[stage] = copy_run(run, work / f"after-{stage}")
    return {"before": before, "after": after, "points": points}


def kill_and_resume(commands, argv: list[str], run: Path, kill_at: int, expected_points: list[str], logs: Path):
    """Run `argv` killed at point `kill_at`, check that it died there by SIGKILL having passed the reference's
    points, then run it again; returns the resumed run's exit code and the killed run's log."""
    trace, log = logs / f"killed-{kill_at}.trace", logs / f"killed-{kill_at}.log"
    code = commands(*argv, log=log, kill_at=kill_at, trace=trace)
    assert code == -signal.SIGKILL, f"kill at {kill_at}: exited {code}, not by SIGKILL\n{tail(log)}"
    assert trace_points(trace, run) == expected_points[:kill_at], (
        f"kill at {kill_at}: another path than the reference's"
    )
    resumed_log = logs / f"resumed-{kill_at}.log"
    code = commands(*argv, log=resumed_log)
    assert code == 0, (
        f"resume after a kill at {kill_at} ({expected_points[kill_at - 1]}) exited {code}\n{tail(resumed_log)}"
    )


@pytest.mark.parametrize("stage", STAGES)
def test_stage_killed_anywhere_resumes_to_the_uninterrupted_result(stage, commands, reference, tmp_path):
    points = reference["points"][stage]
    assert len(points) >= 4, f"{stage}: only {len(points)} fault points traced"
    failures = []
    for kill_at in choose_points(list(range(1, len(points) + 1)), stage):
        run = copy_run(reference["before"][stage], tmp_path / f"run-{kill_at}")
        logs = tmp_path / f"logs-{kill_at}"
        logs.mkdir()
        kill_and_resume(commands, [stage, str(run)], run, kill_at, points, logs)
        diffs = differences(reference["after"][stage], run)
        if diffs:
            failures.append(f"killed at {kill_at} ({points[kill_at - 1]}): {diffs}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    "where",
    [
        "before rename RUN/sft/checkpoint.pt",  # a whole checkpoint written to its temp file, not renamed
        "before rename RUN/summary.json",  # the summary's temp file, after done.json
        "after rename RUN/sft/done.json",  # finished, the checkpoint not yet removed
    ],
)
def test_sft_killed_at_named_points(where, commands, reference, tmp_path):
    """The points where a killed run left files behind before the fixes: a temp file it never renamed, and the
    checkpoint of a stage that had finished."""
    points = reference["points"]["sft"]
    kill_at = points.index(where) + 1
    run = copy_run(reference["before"]["sft"], tmp_path / "run")
    kill_and_resume(commands, ["sft", str(run)], run, kill_at, points, tmp_path)
    assert differences(reference["after"]["sft"], run) == []


# ---------------------------------------------------------------- the experiments


def smoke_run(model_dir: Path, **sections) -> dict:
    """The smoke config as a dict, on the tiny model, with `sections` updated."""
    run = yaml.safe_load(SMOKE.read_text())
    run["model"]["name_or_path"] = str(model_dir)
    for name, fields in sections.items():
        run.setdefault(name, {}).update(fields)
    return run


def tldr_task(source: Path) -> dict:
    return {"name": "tldr", "source": str(source), "test_fraction": 0.4, "max_query_tokens": 96, "response_length": 8}


def experiment_config(name: str, model_dir: Path, data: Path) -> dict:
    """A minuscule config of experiment `name` (as the experiments' own end-to-end tests use), with PPO past its
    first checkpoint so that a sub-run's PPO resumes from one."""
    ppo = {"iterations": 2, "batch_size": 4, "minibatch_size": 4, "ppo_epochs": 1, "checkpoint_every": 1}
    group = {"iterations": 2, "prompts_per_batch": 2, "samples_per_prompt": 2, "minibatch_size": 4}
    sentiment = smoke_run(
        model_dir, task={"gold": "vader"}, sft={"n_demonstrations": 0}, ppo=ppo, rloo=group, grpo=group
    )
    pools = {"pool_prompts": 3, "pool_samples_per_prompt": 4, "bon_n": [1, 2, 4], "measure_samples_per_prompt": 2}
    judge = {"kind": "lm", "lm_model": str(model_dir), "lm_batch_size": 4}
    tldr = write_tldr_rows(data / "tldr.jsonl", 24)
    if name == "frontier":
        return {"run": {**sentiment, "dpo": {"batch_size": 4}}, **pools, "ppo_betas": [0.1]}
    if name == "overoptimization":
        return {"run": sentiment, **pools, "ppo_betas": [0.1]}
    if name == "queries_needed":
        return {"run": sentiment, "n_queries": [2, 4], "eval_prompts": 4}
    if name == "rouge_proxy":
        run = smoke_run(model_dir, sft={"n_demonstrations": 8}, judge=judge)
        run["task"] = tldr_task(tldr)
        return {"run": run, "pool_posts": 3, "pool_samples_per_post": 4, "bon_n": [1, 2, 4]}
    if name == "rlhf_vs_sft":
        collect = {"n_prompts": 6, "responses_per_prompt": 2, "kind": "pairwise", "labeler": "judge"}
        run = smoke_run(model_dir, sft={"n_demonstrations": 8}, collect=collect, judge=judge, ppo=ppo)
        run["task"] = {**tldr_task(tldr), "n_eval_prompts": 3}
        return {"run": run, "ppo_samples_per_post": 2}
    assert name == "rm_scaling"
    run = smoke_run(model_dir, model={"lora_top_layers": 1}, task={"response_length": 6})
    hh = data / "hh.jsonl.gz"
    write_hh_file(hh, 40)  # human comparisons only: the tiny model's texts tie under VADER
    return {
        "run": run,
        "sizes": [4, 8],
        "seeds": 2,
        "max_tokens": 24,
        "human_path": str(hh),
        "human_heldout": 16,
        "simulated": False,
        "bootstrap_resamples": 200,
    }


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_killed_and_resumed(name, commands, tiny_model_dir, tmp_path):
    """Each experiment killed at a point of its own (not of its base run, which the stage tests cover), chosen by
    seed, and run again: its output folder equals an uninterrupted run's."""
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(experiment_config(name, tiny_model_dir, tmp_path)))
    reference, trace = tmp_path / "reference", tmp_path / "reference.trace"
    commands.ok(
        "experiment", name, "--config", str(config), "--out", str(reference), log=tmp_path / "ref.log", trace=trace
    )
    points = trace_points(trace, reference)
    own = [i + 1 for i, where in enumerate(points) if not where.split(" ", 2)[-1].startswith("RUN/base/")]
    failures = []
    for kill_at in choose_points(own, name, k=int(os.environ.get("RLHF_KILL_POINTS_EXPERIMENT", "1"))):
        out = tmp_path / f"out-{kill_at}"
        logs = tmp_path / f"logs-{kill_at}"
        logs.mkdir()
        argv = ["experiment", name, "--config", str(config), "--out", str(out)]
        kill_and_resume(commands, argv, out, kill_at, points, logs)
        diffs = differences(reference, out)
        if diffs:
            failures.append(f"killed at {kill_at} ({points[kill_at - 1]}): {diffs}")
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- the whole pipeline, fresh interpreters


def rlhf_process(*args: str, kill_at: int | None = None, trace: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **ENV}
    env.pop("RLHF_FAULT_KILL_AT", None)
    env.pop("RLHF_FAULT_TRACE", None)
    if kill_at is not None:
        env["RLHF_FAULT_KILL_AT"] = str(kill_at)
    if trace is not None:
        env["RLHF_FAULT_TRACE"] = str(trace)
    return subprocess.run([sys.executable, "-m", "rlhf.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)


def test_pipeline_run_killed_and_resumed(tiny_model_dir, tmp_path):
    """`rlhf run` in a fresh interpreter, killed at a point of PPO, and `rlhf run` again: the run directory, the
    report included, equals an uninterrupted `rlhf run`'s."""
    argv = ["run", "--config", str(SMOKE), "--out"]
    overrides = [f"model.name_or_path={tiny_model_dir}", "ppo.checkpoint_every=2"]
    trace = tmp_path / "reference.trace"
    reference = tmp_path / "reference" / "run"  # the same folder name as the killed run's: the report shows it
    done = rlhf_process(*argv, str(reference), *overrides, trace=trace)
    assert done.returncode == 0, done.stderr[-4000:]
    points = trace_points(trace, reference)
    in_ppo = [i + 1 for i, where in enumerate(points) if where.startswith(("before", "after")) and "/ppo/" in where]
    (kill_at,) = choose_points(in_ppo, "pipeline", k=1)
    run = tmp_path / "killed" / "run"
    killed = rlhf_process(*argv, str(run), *overrides, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    resumed = rlhf_process(*argv, str(run), *overrides)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert differences(reference, run) == [], f"killed at {kill_at} ({points[kill_at - 1]})"
