"""The prefill's last position through the output embedding, two ways, in float32 and bfloat16: `logits_to_keep=1`
(transformers slices the hidden states to a strided [B, 1, d] view, and torch's CPU matmul, for a frozen weight
as every base model here has, then multiplies it batch by batch with the [d, V] output embedding copied per row) and `logits_to_keep=tensor([Q - 1])` (an indexed, contiguous copy; what
sampling.py passes). Prints the median milliseconds of each, their ratio and whether the logits are equal bit for
bit, for the built-in model with random prompts of Q tokens:

    .venv/bin/python bench/strided_head.py [--threads 2] [--batch 32] [--prompt-tokens 24]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM

from rlhf.models.provision import builtin_model_dir


def median_ms(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--prompt-tokens", type=int, default=24)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    B, Q = args.batch, args.prompt_tokens
    ids = torch.randint(0, 49152, (B, Q), generator=torch.Generator().manual_seed(0))
    print(f"prefill of {B} prompts x {Q} tokens, {args.threads} threads")
    print("| dtype | logits_to_keep=1 (ms) | indexed last position (ms) | ratio | same bits |")
    print("|---|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(builtin_model_dir(), dtype=dtype).requires_grad_(False)
        with torch.no_grad():
            strided = model(input_ids=ids, logits_to_keep=1).logits
            indexed = model(input_ids=ids, logits_to_keep=torch.tensor([Q - 1])).logits
            a = median_ms(lambda: model(input_ids=ids, logits_to_keep=1))
            b = median_ms(lambda: model(input_ids=ids, logits_to_keep=torch.tensor([Q - 1])))
        name = str(dtype).removeprefix("torch.")
        print(f"| {name} | {a:.0f} | {b:.0f} | x{a / b:.2f} | {torch.equal(strided, indexed)} |")


if __name__ == "__main__":
    main()
