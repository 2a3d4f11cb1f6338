"""docs/your-own-data.md's commands run as written, in a copy of examples/your-own-data, on the tiny random model
(the one change: `rlhf run` gets `model.name_or_path=TINY`, so the run takes a minute instead of several)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "your-own-data.md"
pytestmark = pytest.mark.slow


def doc_commands() -> list[str]:
    """The `$ ` lines of the page's console blocks, in order."""
    blocks = re.findall(r"```console\n(.*?)```", DOC.read_text(), flags=re.S)
    return [line[2:] for block in blocks for line in block.splitlines() if line.startswith("$ ")]


def test_the_page_has_the_worked_example():
    commands = doc_commands()
    assert commands[0] == "cd examples/your-own-data"
    for needed in (
        "rlhf data inspect",
        "rlhf data convert",
        "rlhf run --config config.yaml",
        "rlhf export",
        "score.py",
    ):
        assert any(needed in c for c in commands), needed


def test_the_commands_run_as_written(tiny_model_dir, tmp_path):
    work = tmp_path / "examples" / "your-own-data"
    shutil.copytree(ROOT / "examples" / "your-own-data", work, ignore=shutil.ignore_patterns("runs", "exported"))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TQDM_DISABLE": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    cwd = tmp_path
    for command in doc_commands():
        if command.startswith("cd "):
            cwd = cwd / command[3:]
            continue
        if " rlhf run " in f" {command} ":
            command += f" model.name_or_path={shlex.quote(str(tiny_model_dir))}"
        command = re.sub(r"^python ", f"{shlex.quote(sys.executable)} ", command)
        proc = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"$ {command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert (work / "exported" / "tips-reward" / "README.md").exists()
    assert (work / "exported" / "tips-policy" / "adapter_config.json").exists()
