"""The run directory: layout, config, stage markers, atomic checkpoints, metrics logs and RNG state.

RUN_DIR/config.yaml          the resolved config (written once; later stages read it)
RUN_DIR/<stage>/done.json    written last by a finished stage; a re-run skips the stage
RUN_DIR/<stage>/checkpoint.pt  latest checkpoint (atomic); a re-run resumes from it
RUN_DIR/<stage>/checkpoint.prev.pt  the one before it, kept only while a KL or entropy tripwire is on
RUN_DIR/<stage>/metrics.jsonl  one JSON object per step/iteration (also TensorBoard events in RUN_DIR/tb)

A file here that cannot be read back (a damaged checkpoint, done.json or summary.json) or written (a full disk, no
permission) raises FileFault naming it and saying how to recover (docs/faults.md).

With several processes (rlhf/processes.py) every process reads the run directory and only the main one writes it:
the writing methods here do nothing elsewhere, and a stage guards its own files with `run.writer`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.tensorboard import SummaryWriter

from rlhf.config import RunConfig
from rlhf.config_checks import ConfigError
from rlhf.config_loading import config_from_dict, config_to_dict
from rlhf.data.faults import fault_point
from rlhf.data.io import (
    FileFault,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_with,
    read_jsonl,
    write_fault,
)
from rlhf.data.records import RecordError
from rlhf.processes import Processes, current_processes

log = logging.getLogger("rlhf")


def atomic_torch_save(path: Path, obj) -> None:
    """torch.save `obj` to `path` atomically (temp file, fsync, rename); a failed write raises FileFault and leaves
    the previous file, if any, as it was."""
    atomic_write_with(path, lambda handle: torch.save(obj, handle))


def keep_copy(path: Path, copy: Path) -> None:
    """Make `copy` hold what `path` holds, atomically (a hard link where the file system has them)."""
    temp = copy.with_name(f".{copy.name}.tmp{os.getpid()}")
    temp.unlink(missing_ok=True)
    try:
        try:
            os.link(path, temp)
        except OSError:
            shutil.copyfile(path, temp)
        os.replace(temp, copy)
    except OSError as error:
        temp.unlink(missing_ok=True)
        raise write_fault(copy, error) from error


def read_json_file(path: Path, recovery: str) -> dict:
    """The JSON object in `path`; a file that is not one raises FileFault naming it, with `recovery`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FileFault(path, f"cannot read ({error})", recovery) from None
    if not isinstance(data, dict):
        raise FileFault(path, f"cannot read (expected a JSON object, got {type(data).__name__})", recovery)
    return data


def read_jsonl_log(path: Path) -> list[dict]:
    """The rows of a log a stage appends to (metrics.jsonl, samples.jsonl). A last line cut short (the process was
    killed while appending it) is dropped with a warning; a bad line before the last raises FileFault."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):
                log.warning("%s:%d: dropped a line cut short (%s)", path, number, error.msg)
                continue
            raise FileFault(
                f"{path}:{number}",
                f"cannot read ({error.msg})",
                "delete the line (or the file, to lose the stage's log) and run the stage again",
            ) from None
    return rows


def append_jsonl(path: Path, rows: list[dict]) -> None:
    """Append rows to a stage's log, one JSON object a line; a failed write raises FileFault naming the file (a line
    cut short by it is dropped when the stage resumes)."""
    fault_point(f"before append {path}")
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(row) + "\n" for row in rows))
    except OSError as error:
        raise FileFault(
            path,
            f"cannot append ({error.strerror or error})",
            "free space or fix the permissions and run the stage again: it resumes from its last checkpoint",
        ) from error
    fault_point(f"after append {path}")


def trim_jsonl_log(path: Path, step_key: str, last_step: int | None) -> None:
    """Make a stage's appended log match its restored checkpoint: keep the rows with `step_key` <= `last_step`
    (none for a fresh start, last_step None), a last line cut short dropped."""
    if not path.exists():
        return
    if last_step is None:
        path.unlink()
        return
    kept = [r for r in read_jsonl_log(path) if r.get(step_key, 0) <= last_step]
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in kept).encode())


# the temp files of atomic writes, named after the file and ending in the writer's pid: .NAME.XXXX.tmp<pid>
# (rlhf/data/io.py's atomic writes, atomic_torch_save included) and .NAME.tmp<pid> (keep_copy)
TEMP_FILE = re.compile(r"^\..+\.tmp(\d+)$")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_stray_temp_files(folder: Path, recursive: bool = False) -> list[Path]:
    """Delete the temp files in `folder` (and its subfolders when `recursive`) that atomic writes of processes no
    longer alive left behind (a process killed between writing a temp file and renaming it into place); returns
    them."""
    removed = []
    for path in sorted(Path(folder).rglob(".*.tmp*") if recursive else Path(folder).glob(".*.tmp*")):
        match = TEMP_FILE.match(path.name)
        if match and path.is_file() and not process_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class RunDir:
    """One run's folder. Stages read their inputs from it and write their outputs into it."""

    def __init__(self, root: str | Path, processes: Processes | None = None):
        self.root = Path(root)
        self.processes = processes or current_processes()

    @property
    def writer(self) -> bool:
        """Whether this process writes the run directory (the main process only)."""
        return self.processes.is_main

    # config -----------------------------------------------------------------------------------
    def save_config(self, cfg: RunConfig) -> None:
        if not self.writer:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
        atomic_write_bytes(self.root / "config.yaml", text.encode())

    def load_config(self) -> RunConfig:
        path = self.root / "config.yaml"
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: no config in this run directory; start it with `rlhf run --config ... --out {self.root}`"
            )
        try:
            data = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise ConfigError(
                f"{path}: not valid YAML ({error}); restore the run's config or start a new run"
            ) from None
        return config_from_dict(data, str(path))

    # stages -----------------------------------------------------------------------------------
    def stage(self, name: str) -> Path:
        path = self.root / name
        if self.writer:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def is_done(self, name: str) -> bool:
        return (self.root / name / "done.json").exists()

    def mark_done(self, name: str, info: dict) -> None:
        if not self.writer:
            return
        atomic_write_json(self.stage(name) / "done.json", {"finished_at": time.time(), **info})

    def done_info(self, name: str) -> dict:
        """What stage `name` recorded when it finished; a damaged done.json raises FileFault."""
        recovery = f"delete it to run stage '{name}' again (`rlhf {name} {self.root}`), which rewrites its outputs"
        return read_json_file(self.root / name / "done.json", recovery)

    def read_records(self, stage: str, name: str, record_type: type) -> list:
        """The records of RUN_DIR/<stage>/<name>, a file `stage` writes whole (atomically): a bad line in it means it
        was damaged afterwards, and raises FileFault naming the line and how to write the file again."""
        try:
            return read_jsonl(self.root / stage / name, record_type)
        except RecordError as error:
            raise FileFault(
                error.where or self.root / stage / name,
                f"cannot read ({error.detail})",
                f"stage '{stage}' wrote it whole, so it was damaged since: run `rlhf {stage} {self.root} --force` to "
                "write it again (then the stages after it, with --force)",
            ) from None

    def require(self, name: str) -> Path:
        if not self.is_done(name):
            raise FileNotFoundError(
                f"{self.root / name}: stage '{name}' has not finished; run `rlhf {name} {self.root}` first"
            )
        return self.root / name

    # checkpoints ------------------------------------------------------------------------------
    def save_checkpoint(self, name: str, state: dict, keep_previous: bool = False) -> None:
        """Write RUN_DIR/<name>/checkpoint.pt atomically (with the RNG state); with `keep_previous` the checkpoint it
        replaces stays as checkpoint.prev.pt, for a tripwire to roll back to."""
        if not self.writer:
            return
        path = self.stage(name) / "checkpoint.pt"
        if keep_previous and path.exists():
            keep_copy(path, path.with_name("checkpoint.prev.pt"))
        atomic_torch_save(path, {**state, "rng": rng_state()})

    def remove_checkpoints(self, name: str) -> None:
        """Remove the stage's checkpoint and the previous one (the stage has finished)."""
        if self.writer:
            for file in ("checkpoint.pt", "checkpoint.prev.pt"):
                (self.root / name / file).unlink(missing_ok=True)

    def load_checkpoint(self, name: str) -> dict | None:
        path = self.root / name / "checkpoint.pt"
        if not path.exists():
            return None
        # on the CPU whatever device saved it: loading copies each tensor onto its parameter's (or optimiser
        # state's) device, so a checkpoint saved on a GPU resumes on the CPU and the other way round
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            if not isinstance(state, dict) or "rng" not in state:
                raise ValueError(f"expected a checkpoint dict with an 'rng' entry, got {type(state).__name__}")
            set_rng_state(state["rng"])
        except Exception as error:  # torch.load raises many kinds: RuntimeError, UnpicklingError, EOFError, ...
            raise FileFault(
                path,
                f"cannot read checkpoint ({type(error).__name__}: {error})",
                "delete it to restart the stage from scratch",
            ) from error
        log.info("resuming %s from %s", name, path)
        return state

    # summary ----------------------------------------------------------------------------------
    def update_summary(self, **sections) -> dict:
        summary = self.read_summary()
        summary.update(sections)
        if self.writer:
            atomic_write_json(self.root / "summary.json", summary)
        return summary

    def read_summary(self) -> dict:
        path = self.root / "summary.json"
        recovery = f"delete it and run `rlhf eval {self.root} --force` to write it again (stage times are lost)"
        return read_json_file(path, recovery) if path.exists() else {}


class MetricsLog:
    """Appends one JSON line per step to RUN_DIR/<stage>/metrics.jsonl and mirrors scalars to TensorBoard.

    On resume, lines past the checkpoint's step are dropped so the log matches the restored state.
    """

    def __init__(self, run: RunDir, stage: str, resume_step: int | None = None, step_key: str = "step"):
        self.path = run.stage(stage) / "metrics.jsonl"
        self.step_key = step_key
        self.writer = run.writer
        if self.writer:
            trim_jsonl_log(self.path, step_key, resume_step)
        self.stage = stage
        self._tb = None
        self._tb_dir = run.root / "tb" / stage

    def write(self, row: dict) -> None:
        if not self.writer:
            return
        append_jsonl(self.path, [row])
        try:
            if self._tb is None:
                self._tb = SummaryWriter(str(self._tb_dir))
            step = int(row.get(self.step_key, 0))
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != self.step_key:
                    self._tb.add_scalar(f"{self.stage}/{key}", value, step)
            self._tb.flush()
        except ImportError:  # tensorboard is optional at run time
            pass

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def setup_logging(run: RunDir | None = None, level: int = logging.INFO) -> None:
    """Log lines to stderr and to RUN_DIR/log.txt; with several processes the others log warnings only, to stderr."""
    root = logging.getLogger("rlhf")
    if not current_processes().is_main:
        root.setLevel(max(level, logging.WARNING))
        run = None
    else:
        root.setLevel(level)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in root.handlers):
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        root.addHandler(h)
    if run is not None:
        run.root.mkdir(parents=True, exist_ok=True)
        target = str((run.root / "log.txt").resolve())
        if not any(isinstance(h, logging.FileHandler) and h.baseFilename == target for h in root.handlers):
            fh = logging.FileHandler(target)
            fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            root.addHandler(fh)
