"""What keeping the frozen bottom layers' output saves DPO: on a finished run's SFT model and comparisons, the first
`--batches` batches of the DPO stage's first epoch, each pass timed over all layers and with `PairPrefixes` (the
first pass keeps the bottom layers' output, later passes read it): the reference's no-grad pass, the policy's, and
a training pass (forward and backward of the policy adapter). Prints seconds, the ratios, and whether the log-probs
read from kept outputs equal the full passes' bit for bit.

    .venv/bin/python bench/dpo_passes.py RUN [--batches 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import rlhf.stages.dpo as dpo
from rlhf.config_loading import load_config
from rlhf.data.records import Comparison
from rlhf.models.loading import sft_model_path
from rlhf.run import RunDir
from rlhf.stages.optim import trainable_parameters


def seconds(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a run directory with sft and collect finished")
    p.add_argument("--batches", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    run = RunDir(args.run)
    cfg = load_config(args.run / "config.yaml", [])
    pairs, _ = dpo.preference_pairs(run.read_records("collect", "comparisons.jsonl", Comparison))
    first = dpo.epoch_batches(len(pairs), cfg.dpo.batch_size, cfg.seed, 0)[: args.batches]
    pairs = [pairs[j] for idx in first for j in idx]  # those batches' pairs, batch by batch
    size = cfg.dpo.batch_size
    batches = [list(range(i, min(i + size, len(pairs)))) for i in range(0, len(pairs), size)]
    policy, reference = dpo.dpo_roles(cfg, sft_model_path(run, cfg))
    params = trainable_parameters(policy.backbone, policy.adapter)
    kept = dpo.PairPrefixes(policy.backbone, pairs)

    def train_pass(prefixes) -> None:
        for idx in batches:
            chosen, rejected = dpo.pair_logprobs(
                policy, [pairs[j] for j in idx], prefixes=prefixes and prefixes.of(idx)
            )
            (chosen.sum() - rejected.sum()).backward()
        for q in params:
            q.grad = None

    rows = []
    t_full, full = seconds(lambda: dpo.batched_pair_logprobs(reference, pairs, batches))
    t_keep, keeping = seconds(lambda: dpo.batched_pair_logprobs(reference, pairs, batches, kept))
    t_read, read = seconds(lambda: dpo.batched_pair_logprobs(reference, pairs, batches, kept))
    same = all(torch.equal(a, b) for a, b in zip(full + full, keeping + read))
    rows += [("reference, all layers", t_full), ("reference, keeping", t_keep), ("reference, reading", t_read)]
    t_pfull, pfull = seconds(lambda: dpo.batched_pair_logprobs(policy, pairs, batches))
    t_pread, pread = seconds(lambda: dpo.batched_pair_logprobs(policy, pairs, batches, kept))
    same = same and all(torch.equal(a, b) for a, b in zip(pfull, pread))
    rows += [("policy, all layers", t_pfull), ("policy, reading", t_pread)]
    rows += [("training pass, all layers", seconds(lambda: train_pass(None))[0])]
    rows += [("training pass, reading", seconds(lambda: train_pass(kept))[0])]
    print(f"{len(pairs)} pairs in {len(batches)} batches, {args.threads} threads, {kept.bytes / 2**20:.0f} MiB kept")
    for name, s in rows:
        print(f"{name:28s} {s:7.1f} s")
    print(
        f"ratios (all layers / reading): reference {t_full / t_read:.2f}, policy {t_pfull / t_pread:.2f}, "
        f"training {rows[-2][1] / rows[-1][1]:.2f}; keeping costs {t_keep / t_full:.2f} x the full pass"
    )
    print(f"log-probs read from kept outputs equal the full passes' bit for bit: {same}")


if __name__ == "__main__":
    main()
