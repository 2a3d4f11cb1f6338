"""The run directory: layout, config, stage markers, atomic checkpoints, metrics logs and RNG state.

RUN_DIR/config.yaml          the resolved config (written once; later stages read it)
RUN_DIR/<stage>/done.json    written last by a finished stage; a re-run skips the stage
RUN_DIR/<stage>/checkpoint.pt  latest checkpoint (atomic); a re-run resumes from it
RUN_DIR/<stage>/metrics.jsonl  one JSON object per step/iteration (also TensorBoard events in RUN_DIR/tb)

With several processes (rlhf/processes.py) every process reads the run directory and only the main one writes it:
the writing methods here do nothing elsewhere, and a stage guards its own files with `run.writer`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.tensorboard import SummaryWriter

from rlhf.config import RunConfig, config_from_dict, config_to_dict
from rlhf.data.faults import fault_point
from rlhf.data.io import atomic_write_bytes, atomic_write_json
from rlhf.processes import Processes, current_processes

log = logging.getLogger("rlhf")


def atomic_torch_save(path: Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        fault_point(f"before rename {path}")
        os.replace(tmp, path)
        fault_point(f"after rename {path}")
    finally:
        if tmp.exists():
            tmp.unlink()


# the temp files of atomic writes, named after the file and ending in the writer's pid: .NAME.XXXX.tmp<pid>
# (rlhf/data/io.py) and .NAME.tmp<pid> (atomic_torch_save)
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
        return config_from_dict(yaml.safe_load(path.read_text()), str(path))

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
        return json.loads((self.root / name / "done.json").read_text())

    def require(self, name: str) -> Path:
        if not self.is_done(name):
            raise FileNotFoundError(
                f"{self.root / name}: stage '{name}' has not finished; run `rlhf {name} {self.root}` first"
            )
        return self.root / name

    # checkpoints ------------------------------------------------------------------------------
    def save_checkpoint(self, name: str, state: dict) -> None:
        if not self.writer:
            return
        atomic_torch_save(self.stage(name) / "checkpoint.pt", {**state, "rng": rng_state()})

    def load_checkpoint(self, name: str) -> dict | None:
        path = self.root / name / "checkpoint.pt"
        if not path.exists():
            return None
        # on the CPU whatever device saved it: loading copies each tensor onto its parameter's (or optimiser
        # state's) device, so a checkpoint saved on a GPU resumes on the CPU and the other way round
        state = torch.load(path, map_location="cpu", weights_only=False)
        set_rng_state(state["rng"])
        log.info("resuming %s from %s", name, path)
        return state

    # summary ----------------------------------------------------------------------------------
    def update_summary(self, **sections) -> dict:
        path = self.root / "summary.json"
        summary = json.loads(path.read_text()) if path.exists() else {}
        summary.update(sections)
        if self.writer:
            atomic_write_json(path, summary)
        return summary

    def read_summary(self) -> dict:
        path = self.root / "summary.json"
        return json.loads(path.read_text()) if path.exists() else {}


def keep_logged_rows(path: Path, step_key: str, last_step: int | None) -> None:
    """A JSON Lines log of a stage that resumes: the lines up to `last_step` (by `step_key`; the checkpoint's step)
    kept and the later ones, logged by the run that was interrupted after its checkpoint, dropped; the file removed
    when the stage starts afresh (`last_step` None)."""
    if not path.exists():
        return
    if last_step is None:
        path.unlink()
        return
    lines = [line for line in path.read_text().splitlines(keepends=True) if line.strip()]
    kept = [line for line in lines if json.loads(line).get(step_key, 0) <= last_step]
    atomic_write_bytes(path, "".join(kept).encode())


class MetricsLog:
    """Appends one JSON line per step to RUN_DIR/<stage>/metrics.jsonl and mirrors scalars to TensorBoard.

    On resume, lines past the checkpoint's step are dropped so the log matches the restored state.
    """

    def __init__(self, run: RunDir, stage: str, resume_step: int | None = None, step_key: str = "step"):
        self.path = run.stage(stage) / "metrics.jsonl"
        self.step_key = step_key
        self.writer = run.writer
        if self.writer:
            keep_logged_rows(self.path, step_key, resume_step)
        self.stage = stage
        self._tb = None
        self._tb_dir = run.root / "tb" / stage

    def write(self, row: dict) -> None:
        if not self.writer:
            return
        fault_point(f"before append {self.path}")
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        fault_point(f"after append {self.path}")
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
