"""torch's thread count and OpenMP wait policy, quiet and beside one CPU-bound process, on the built-in model:
seconds of one forward and backward pass (16 × 96 tokens) and of one cached decoding run (32 rows, 24 steps after
40 prompt tokens), each setting in its own process, in turn.

    .venv/bin/python bench/threads_under_load.py            # the table (about 12 minutes on 2 cores)
    .venv/bin/python bench/threads_under_load.py --probe N  # one process: threads N (0 = follow the free cores)

The CPU-bound process is a single-threaded torch loop of 512 × 512 matmuls. Settings: 1 and 2 threads, 2 threads
with OMP_WAIT_POLICY=PASSIVE or GOMP_SPINCOUNT=1000 (libgomp, torch's OpenMP on Linux), and `model.threads: 0`
(rlhf/models/threads.py: the count follows the free cores).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch

from rlhf.models.provision import builtin_model_dir, load_causal_lm, load_tokenizer
from rlhf.models.threads import CPU_THREADS

HOG = "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True:\n    a = (a @ a).tanh()\n"
SETTINGS = [
    ("1 thread", 1, {}),
    ("2 threads", 2, {}),
    ("2 threads, OMP_WAIT_POLICY=PASSIVE", 2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    ("2 threads, GOMP_SPINCOUNT=1000", 2, {"GOMP_SPINCOUNT": "1000"}),
    ("model.threads 0 (follow the free cores)", 0, {}),
]


def probe(threads: int) -> None:
    """Print `forward+backward SECONDS decode SECONDS threads-at-the-end N` for one setting."""
    folder = str(builtin_model_dir())
    model = load_causal_lm(folder, load_tokenizer(folder))
    CPU_THREADS.configure(threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 1000, (16, 96), generator=g)
    prompt = torch.randint(0, 1000, (32, 40), generator=g)

    def forward_backward():
        for p in model.parameters():
            p.requires_grad_(True)
        model(x, labels=x).loss.backward()

    @torch.no_grad()
    def decode():
        out = model(prompt, use_cache=True)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(24):
            out = model(token, past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)

    figures = []
    for fn, repeats in ((forward_backward, 2), (decode, 3)):
        fn()  # warm-up, and a first reading of the free cores
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        figures.append((time.perf_counter() - t0) / repeats)
    print(f"forward+backward {figures[0]:.2f} decode {figures[1]:.2f} threads-at-the-end {torch.get_num_threads()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--probe", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe is not None:
        return probe(args.probe)
    print("| machine | setting | forward+backward s | decoding s | threads at the end |")
    print("|---|---|---|---|---|")
    for load in ("quiet", "beside one CPU-bound process"):
        hog = subprocess.Popen([sys.executable, "-c", HOG]) if load != "quiet" else None
        try:
            for name, threads, env in SETTINGS:
                out = subprocess.run(
                    [sys.executable, __file__, "--probe", str(threads)],
                    env={**os.environ, **env},
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.split()
                print(f"| {load} | {name} | {out[1]} | {out[3]} | {out[5]} |", flush=True)
        finally:
            if hog is not None:
                hog.kill()


if __name__ == "__main__":
    main()
