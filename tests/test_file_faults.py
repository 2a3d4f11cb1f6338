"""File faults in a run directory (docs/faults.md): a full disk, an unwritable folder, a damaged checkpoint.pt,
done.json, summary.json or config.yaml, a comparisons file damaged after it was written, and a log line cut short
by a kill. Each gives an error naming the file and the way to recover, leaves no temp file, and loses nothing
finished."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from test_dpo import dpo_run, fixed_preference

import rlhf.run as run_module
import rlhf.stages.group_rl as group_rl
from rlhf.cli import main
from rlhf.config_checks import ConfigError
from rlhf.config_loading import load_config
from rlhf.data.io import FileFault, atomic_write_bytes, atomic_write_json
from rlhf.models.saving import write_folder
from rlhf.pipeline import run_stage
from rlhf.run import MetricsLog, RunDir, atomic_torch_save
from rlhf.stages.dpo import train_dpo

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
DPO = ("dpo.batch_size=2", "dpo.epochs=2", "dpo.checkpoint_every=1")  # 4 steps, a checkpoint after each


def snapshot(*folders: Path) -> dict[str, str]:
    """{path: sha256} of every file under `folders`: what a finished stage holds."""
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for f in folders for p in sorted(f.rglob("*")) if p.is_file()
    }


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def tiny_disk(tmp_path):
    """A 200 KiB tmpfs mounted for the test (root only, where mount is allowed)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(folder)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


# ------------------------------------------------------------------------------------------- a full disk


def test_a_full_disk_keeps_the_old_file_and_leaves_no_temp_file(tiny_disk):
    path = tiny_disk / "summary.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(FileFault) as info:
        atomic_write_bytes(path, b"x" * 300_000)
    assert str(info.value).startswith(f"{path}: cannot write (No space left on device); the file was left as it was")
    assert json.loads(path.read_text()) == {"a": 1} and not temp_files(tiny_disk)

    checkpoint = tiny_disk / "ppo" / "checkpoint.pt"
    atomic_torch_save(checkpoint, {"iteration": 1, "w": torch.ones(10)})
    with pytest.raises(FileFault, match=rf"^{checkpoint}: cannot write \(No space left on device\)"):
        atomic_torch_save(checkpoint, {"iteration": 2, "w": torch.ones(100_000)})  # torch.save says RuntimeError
    assert torch.load(checkpoint, weights_only=False)["iteration"] == 1 and not temp_files(tiny_disk)


class NoTensorBoard:
    def __init__(self, *args, **kwargs):
        pass

    def add_scalar(self, *args):
        pass

    def flush(self):
        pass


def test_a_full_disk_while_appending_to_a_log_names_the_log(tiny_disk, monkeypatch):
    monkeypatch.setattr(run_module, "SummaryWriter", NoTensorBoard)  # only the log fills the disk
    run = RunDir(tiny_disk / "run")
    metrics = MetricsLog(run, "sft")
    metrics.write({"step": 1, "loss": 1.0})
    with pytest.raises(FileFault, match=rf"^{run.root}/sft/metrics.jsonl: cannot append \(No space left on device\)"):
        for step in range(2, 10_000):
            metrics.write({"step": step, "loss": 1.0, "pad": "x" * 1000})


def test_a_full_disk_at_a_dpo_checkpoint_stops_the_stage_and_it_resumes_when_there_is_room(
    tiny_model_dir, tmp_path, monkeypatch
):
    run, cfg = dpo_run(tmp_path / "run", tiny_model_dir, fixed_preference(4), [], *DPO)
    finished = snapshot(run.root / "sft", run.root / "collect")
    save, calls = run_module.torch.save, []

    def full_at_the_second(obj, handle):
        calls.append(1)
        if len(calls) == 2:
            handle.write(b"half a checkpoint")  # then the disk is full
            enospc()
        save(obj, handle)

    monkeypatch.setattr(run_module.torch, "save", full_at_the_second)
    with pytest.raises(FileFault) as info:
        train_dpo(run, cfg)
    path = run.root / "dpo" / "checkpoint.pt"
    assert str(info.value) == (
        f"{path}: cannot write (No space left on device); the file was left as it was; free space or fix the "
        "permissions and run again"
    )
    assert torch.load(path, weights_only=False)["step"] == 1  # the last checkpoint is whole
    assert not temp_files(run.root) and not run.is_done("dpo")
    assert snapshot(run.root / "sft", run.root / "collect") == finished

    monkeypatch.setattr(run_module.torch, "save", save)  # room again: the stage resumes from step 1
    assert train_dpo(run, cfg)["steps"] == 4
    rows = [json.loads(line) for line in (run.root / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert snapshot(run.root / "sft", run.root / "collect") == finished


def test_a_full_disk_while_saving_a_model_folder_keeps_the_old_folder(tmp_path):
    folder = tmp_path / "ppo" / "model"
    write_folder(folder, lambda tmp: (tmp / "adapter_model.safetensors").write_bytes(b"old"))

    def full_disk_half_way(tmp: Path) -> None:
        (tmp / "adapter_config.json").write_text("{}")
        enospc()

    with pytest.raises(FileFault, match=rf"^{folder}: cannot write \(No space left on device\)"):
        write_folder(folder, full_disk_half_way)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["model"]  # no model.tmp left
    assert (folder / "adapter_model.safetensors").read_bytes() == b"old"


# ------------------------------------------------------------------------------------------- no write permission


def test_an_unwritable_stage_folder_names_the_file(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    run.mark_done("sft", {"trained": False})
    folder = run.root / "sft"
    if os.geteuid() == 0:  # root writes through a 0555 folder: make the write itself fail as it would for a user

        def denied(*args, **kwargs):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

        monkeypatch.setattr(tempfile, "mkstemp", denied)
    else:
        folder.chmod(0o555)
    try:
        with pytest.raises(FileFault, match=rf"^{folder}/checkpoint.pt: cannot write \(Permission denied\)"):
            run.save_checkpoint("sft", {"step": 1})
        with pytest.raises(FileFault, match=rf"^{folder}/done.json: cannot write \(Permission denied\)"):
            run.mark_done("sft", {"trained": True})
    finally:
        folder.chmod(0o755)
    assert run.done_info("sft")["trained"] is False and sorted(p.name for p in folder.iterdir()) == ["done.json"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0555 folder; the test above fakes EACCES instead")
def test_a_0555_run_directory_fails_through_the_cli(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    run.save_config(load_config(SMOKE))
    run.root.chmod(0o555)
    try:
        assert main(["sft", str(run.root)]) == 2
    finally:
        run.root.chmod(0o755)
    err = capsys.readouterr().err
    assert "rlhf: error:" in err and "Permission denied" in err and "Traceback" not in err


def test_a_log_that_cannot_be_appended_to_names_the_log(tmp_path):
    run = RunDir(tmp_path / "run")
    metrics = MetricsLog(run, "sft")
    metrics.path.mkdir()  # a folder where the log should be: opening it to append fails
    with pytest.raises(
        FileFault, match=rf"^{metrics.path}: cannot append \(Is a directory\); .* resumes from its last"
    ):
        metrics.write({"step": 1})


# ------------------------------------------------------------------------------------------- damaged files


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not a checkpoint"])
def test_a_damaged_checkpoint_names_itself_and_deleting_it_restarts_the_stage(
    damage, tiny_model_dir, tmp_path, capsys, monkeypatch
):
    run, cfg = dpo_run(tmp_path / "run", tiny_model_dir, fixed_preference(4), [], *DPO)
    path = run.root / "dpo" / "checkpoint.pt"
    run.save_checkpoint("dpo", {"step": 1, "trainable": {}})
    if damage == "garbage":
        path.write_bytes(b"\x00\x01 not a zip file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        torch.save([1, 2, 3], path)
    finished = snapshot(run.root / "sft", run.root / "collect")
    with pytest.raises(FileFault) as info:
        train_dpo(run, cfg)
    message = str(info.value)
    assert message.startswith(f"{path}: cannot read checkpoint (")
    assert message.endswith("); delete it to restart the stage from scratch")

    monkeypatch.setattr(logging.getLogger("rlhf"), "handlers", [])  # none left on an earlier test's stderr
    assert main(["dpo", str(run.root)]) == 2  # the CLI: the same message, no traceback
    err = capsys.readouterr().err
    assert f"rlhf: error: {path}: cannot read checkpoint" in err and "Traceback" not in err

    path.unlink()  # as the message says
    assert train_dpo(run, cfg)["steps"] == 4 and run.is_done("dpo")
    assert snapshot(run.root / "sft", run.root / "collect") == finished


def test_a_damaged_done_json_says_to_run_the_stage_again(tiny_model_dir, tmp_path, capsys):
    run, cfg = dpo_run(tmp_path / "run", tiny_model_dir, fixed_preference(4), [], *DPO)
    done = run.root / "sft" / "done.json"
    done.write_text('{"trained": fal')  # cut short
    recovery = f"delete it to run stage 'sft' again (`rlhf sft {run.root}`), which rewrites its outputs"
    with pytest.raises(FileFault) as info:
        run.done_info("sft")
    assert str(info.value).startswith(f"{done}: cannot read (") and str(info.value).endswith(recovery)
    with pytest.raises(FileFault, match="done.json: cannot read"):  # a later stage reads it too
        train_dpo(run, cfg)
    assert not (run.root / "dpo" / "checkpoint.pt").exists()

    assert main(["sft", str(run.root)]) == 2
    assert f"rlhf: error: {done}: cannot read" in capsys.readouterr().err
    done.write_text("[1, 2]")  # JSON, but not the object a stage writes
    with pytest.raises(FileFault, match=r"expected a JSON object, got list"):
        run.done_info("sft")
    done.unlink()  # as the message says: the stage runs again
    assert run_stage(run, cfg, "sft")["trained"] and run.done_info("sft")["trained"]


def test_a_damaged_summary_or_config_names_itself(tmp_path):
    run = RunDir(tmp_path / "run")
    run.save_config(load_config(SMOKE))
    (run.root / "summary.json").write_text("{")
    with pytest.raises(FileFault, match=rf"summary.json: cannot read .*`rlhf eval {run.root} --force`"):
        run.update_summary(x=1)
    assert (run.root / "summary.json").read_text() == "{"
    (run.root / "config.yaml").write_text("seed: [1\n")
    with pytest.raises(ConfigError, match=rf"^{run.root}/config.yaml: not valid YAML"):
        run.load_config()


def test_comparisons_damaged_after_collect_name_the_line_and_the_stage_that_writes_them(tiny_model_dir, tmp_path):
    run, cfg = dpo_run(tmp_path / "run", tiny_model_dir, fixed_preference(4), [], *DPO)
    path = run.root / "collect" / "comparisons.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) - 20])  # the last line cut short
    with pytest.raises(FileFault) as info:
        train_dpo(run, cfg)
    assert str(info.value).startswith(f"{path}:4: cannot read (invalid JSON")
    assert f"run `rlhf collect {run.root} --force` to write it again" in str(info.value)
    assert not (run.root / "dpo" / "checkpoint.pt").exists() and not run.is_done("dpo")


# ------------------------------------------------------------------------------------------- a kill mid-append


def test_a_log_line_cut_short_by_a_kill_is_dropped_on_resume_and_one_before_it_is_an_error(tmp_path):
    run = RunDir(tmp_path / "run")
    metrics = MetricsLog(run, "sft")
    for step in (1, 2, 3):
        metrics.write({"step": step, "loss": 0.5})
    with open(metrics.path, "a") as handle:
        handle.write('{"step": 4, "lo')  # killed mid-append
    MetricsLog(run, "sft", resume_step=2)  # resumed from the checkpoint of step 2
    assert [json.loads(line)["step"] for line in metrics.path.read_text().splitlines()] == [1, 2]

    metrics.path.write_text('{"step": 1}\n{"step": 2\n{"step": 3}\n')
    with pytest.raises(FileFault, match=rf"^{metrics.path}:2: cannot read"):
        MetricsLog(run, "sft", resume_step=3)


def test_grpo_resumes_over_samples_and_metrics_lines_cut_short(tiny_model_dir, tmp_path, monkeypatch):
    cfg = load_config(
        SMOKE,
        [
            f"model.name_or_path={tiny_model_dir}",
            "model.threads=1",
            "task.stop_strings=[e]",
            "collect.n_prompts=6",
            "grpo.iterations=3",
            "grpo.prompts_per_batch=2",
            "grpo.samples_per_prompt=2",
            "grpo.minibatch_size=4",
        ],
    )
    run = RunDir(tmp_path / "run")
    run.save_config(cfg)
    for stage in ("sft", "collect", "reward"):
        run_stage(run, cfg, stage)
    finished = snapshot(*(run.root / s for s in ("sft", "collect", "reward")))

    score, calls = group_rl.score, []

    def killed_in_iteration_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            for name in ("samples.jsonl", "metrics.jsonl"):  # the kill came mid-append
                with open(run.root / "grpo" / name, "a") as handle:
                    handle.write('{"iteration": 3, "prom')
            raise KeyboardInterrupt
        return score(*args, **kwargs)

    monkeypatch.setattr(group_rl, "score", killed_in_iteration_3)
    with pytest.raises(KeyboardInterrupt):
        group_rl.train_grpo(run, cfg)
    monkeypatch.setattr(group_rl, "score", score)
    group_rl.train_grpo(run, cfg)  # resumes from the checkpoint of iteration 2
    for name in ("samples.jsonl", "metrics.jsonl"):
        rows = [json.loads(line) for line in (run.root / "grpo" / name).read_text().splitlines()]
        assert sorted({r["iteration"] for r in rows}) == [1, 2, 3], name
        assert [r["iteration"] for r in rows] == sorted(r["iteration"] for r in rows), name  # no repeats
    assert snapshot(*(run.root / s for s in ("sft", "collect", "reward"))) == finished
