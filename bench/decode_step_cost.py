"""Where a decoding step's time goes: one KV-cached step of the built-in model at several batch sizes, split into
what the same step costs on a model of the same architecture and depth but tiny widths (the per-step fixed cost
of launching its ~400 modules and kernels: Python, transformers' mask and cache code, torch dispatch), the time
to stream the weights once from memory at the measured copy bandwidth, and the rest (arithmetic per row).

    .venv/bin/python bench/decode_step_cost.py [--threads N] [--batches 1,8,32,128]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from rlhf.models.provision import builtin_model_dir

PROMPT_TOKENS = 40


def step_seconds(model, batch: int, repeats: int = 12) -> float:
    """Median seconds of one cached decoding step after a prompt of PROMPT_TOKENS tokens, `batch` rows."""
    ids = torch.randint(0, model.config.vocab_size, (batch, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))
    times = []
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def copy_bandwidth(megabytes: int = 512) -> float:
    """Bytes per second of reading one large float32 tensor and writing a copy (counted once: the read)."""
    x = torch.ones(megabytes * 2**20 // 4)
    y = torch.empty_like(x)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        y.copy_(x)
        times.append(time.perf_counter() - t0)
    return x.numel() * 4 / min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--batches", default="1,8,32,128")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = builtin_model_dir()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    config = model.config
    tiny_config = type(config).from_dict(
        {
            **config.to_dict(),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 32,
            "vocab_size": 512,
        }
    )
    tiny = AutoModelForCausalLM.from_config(tiny_config).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = copy_bandwidth()
    stream = weight_bytes / bandwidth
    print(
        f"threads {torch.get_num_threads()}; {config.num_hidden_layers} layers, {weight_bytes / 1e6:.0f} MB of weights "
        f"(float32); copy bandwidth {bandwidth / 1e9:.1f} GB/s: {stream * 1e3:.0f} ms to read the weights once"
    )
    print("| batch | step ms | same-depth tiny model ms (fixed cost) | weights read once ms | rest ms | ms per row |")
    print("|---|---|---|---|---|---|")
    for batch in (int(b) for b in args.batches.split(",")):
        full, fixed = step_seconds(model, batch), step_seconds(tiny, batch)
        rest = full - fixed - stream
        print(
            f"| {batch} | {full * 1e3:.0f} | {fixed * 1e3:.0f} | {stream * 1e3:.0f} | {rest * 1e3:.0f} | "
            f"{full * 1e3 / batch:.1f} |"
        )


if __name__ == "__main__":
    main()
