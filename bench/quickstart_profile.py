"""Where the quickstart's time goes: seconds per stage and per kind of step, from a sampling profile.

    python bench/quickstart_profile.py --out /tmp/profile [--config configs/quickstart.yaml] [--rate 20]
        [--hog] [section.field=value ...]

Runs `rlhf run` under py-spy (pinned, installed once into ~/.cache/rlhf/bench/py-spy-VERSION from PyPI), which
reads the process's Python stack `--rate` times a second without changing what it runs. Each sample is put in
the stage whose function is on its stack and in the innermost kind of step below (sampling, scoring, gold, forward,
backward, optimizer, ...); "other" is the rest of the stage (tokenising, writing, Python between the steps). The
table gives seconds as samples / rate, next to each stage's own time from summary.json. `--hog` runs a
single-threaded torch matmul loop beside the run (the issue's "one other CPU-bound process").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY_SPY = "0.4.1"
# the stage each function's frames belong to (rlhf/pipeline.py's STAGE_FUNCTIONS)
STAGE_FRAMES = {
    "train_sft": "sft",
    "collect": "collect",
    "train_reward": "reward",
    "train_ppo": "ppo",
    "train_rloo": "rloo",
    "train_grpo": "grpo",
    "train_dpo": "dpo",
    "run_bon": "bon",
    "evaluate": "eval",
}
# (kind, function name, a part of its file's path): the innermost match on a sample's stack names its kind
KIND_FRAMES = [
    ("load models", "from_pretrained", "transformers/"),
    ("load models", "open_backbone", "rlhf/models/loading.py"),
    ("sampling", "sample_tokens", "rlhf/models/sampling.py"),
    ("gold (LM judge)", "__call__", "rlhf/tasks/sentiment_lm_gold.py"),
    ("reward/value scores", "raw_scores", "rlhf/models/roles.py"),
    ("frozen bottom layers", "frozen_prefix", "rlhf/models/roles.py"),
    ("log-probs", "logprobs", "rlhf/models/roles.py"),
    ("backward", "backward", "torch/_tensor.py"),
    ("backward", "backward", "torch/autograd/__init__.py"),
    ("optimizer", "step", "torch/optim/"),
    ("checkpoint/save", "save", "torch/serialization.py"),
    ("checkpoint/save", "save_file", "safetensors/"),
]
# a model's forward pass outside every kind above (SFT's and the PPO update's forward, the RM's top layers)
FORWARD = ("forward", "forward", "transformers/models/")
KINDS = list(dict.fromkeys(k for k, _, _ in KIND_FRAMES)) + ["forward", "other"]
HOG = "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True:\n    a = (a @ a).tanh()\n"


def py_spy() -> Path:
    target = Path.home() / ".cache" / "rlhf" / "bench" / f"py-spy-{PY_SPY}"
    exe = target / "bin" / "py-spy"
    if not exe.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(target), f"py-spy=={PY_SPY}"], check=True
        )
    return exe


def parse_frame(frame: str) -> tuple[str, str]:
    """(function, file) of one frame of py-spy's raw format, `function (file:line)`."""
    name, _, where = frame.partition(" (")
    return name.strip(), where.rsplit(":", 1)[0]


def classify(stack: str) -> tuple[str | None, str]:
    """(stage or None, kind) of one collapsed stack, outermost frame first."""
    stage, kind, forward = None, "other", False
    for frame in stack.split(";"):
        name, file = parse_frame(frame)
        if stage is None and name in STAGE_FRAMES and "rlhf/" in file:
            stage = STAGE_FRAMES[name]
        if stage is not None:
            for k, fn, part in KIND_FRAMES:
                if name == fn and part in file:
                    kind = k
            forward = forward or (name == FORWARD[1] and FORWARD[2] in file)
    return stage, "forward" if kind == "other" and forward else kind


def tally(raw: str) -> Counter:
    """Samples per (stage, kind) from py-spy's raw output (one `stack count` per line)."""
    counts: Counter = Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        stage, kind = classify(stack)
        if stage is not None:
            counts[stage, kind] += int(n)
    return counts


def table(counts: Counter, rate: float, stage_seconds: dict[str, float]) -> str:
    stages = [s for s in STAGE_FRAMES.values() if any(st == s for st, _ in counts)]
    kinds = [k for k in KINDS if any(kk == k for _, kk in counts)]
    lines = ["| stage | summary.json s | profiled s | " + " | ".join(kinds) + " |"]
    lines.append("|---" * (3 + len(kinds)) + "|")
    for s in stages:
        total = sum(n for (st, _), n in counts.items() if st == s) / rate
        cells = [f"{counts[s, k] / rate:.0f}" for k in kinds]
        lines.append(f"| {s} | {stage_seconds.get(s, float('nan')):.0f} | {total:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="a new folder: the run goes to OUT/run, the profile to OUT/")
    ap.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    ap.add_argument("--rate", type=int, default=20, help="samples per second")
    ap.add_argument("--hog", action="store_true", help="run a single-threaded matmul loop beside the run")
    ap.add_argument("--table-only", action="store_true", help="only tabulate OUT's profile.txt of an earlier run")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    out = Path(args.out)
    raw = out / "profile.txt"
    if not args.table_only:
        profile(out, raw, args)
    summary = json.loads((out / "run" / "summary.json").read_text())
    counts = tally(raw.read_text())
    text = table(counts, args.rate, summary.get("stage_seconds", {}))
    text += f"\n\nwall_seconds_total {summary.get('wall_seconds_total', float('nan')):.0f}"
    text += f" ({'beside a single-threaded matmul loop' if args.hog else 'alone'}); {sum(counts.values())} samples"
    (out / "table.md").write_text(text + "\n")
    print(text)


def profile(out: Path, raw: Path, args: argparse.Namespace) -> None:
    """`rlhf run` of args.config into OUT/run under py-spy, writing `raw` (beside a matmul loop with --hog)."""
    out.mkdir(parents=True, exist_ok=False)
    command = [str(py_spy()), "record", "--format", "raw", "--rate", str(args.rate), "--output", str(raw)]
    command += ["--", sys.executable, "-m", "rlhf.cli", "run", "--config", args.config, "--out", str(out / "run")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    hog = subprocess.Popen([sys.executable, "-c", HOG]) if args.hog else None
    try:
        subprocess.run(command + args.overrides, check=True, env=env, cwd=ROOT)
    finally:
        if hog is not None:
            hog.kill()


if __name__ == "__main__":
    main()
