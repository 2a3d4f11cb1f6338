"""The GPU check (issue 17): on one CUDA GPU in bfloat16, with nothing downloaded,
(a) the smoke pipeline (configs/smoke.yaml with the tiny random model) finishes with finite figures;
(b) SFT and reward-model training tokens/s and model FLOPs utilisation (6 x parameters x tokens / time / the GPU's
    peak) on randomly initialised SmolLM2-135M- and SmolLM2-1.7B-shaped models with LoRA as configured by default;
(c) sampling new tokens/s at batch 64: the project's sampler against `model.generate` (same model, prompts, number
    of new tokens and temperature; no top-k/top-p);
(d) PPO episodes/s, 32 episodes of 64 tokens (rollout, score, advantages, update) on the 135M shape with a random
    reward model.
Prints one `name: value unit` line per figure and per part's seconds, then `gpu_check: PASS` or
`gpu_check: FAIL (reasons)`; exits 0 on PASS. --cpu runs every part on the tiny model on the CPU (what
tests/test_gpu_check.py runs, so that this script cannot rot); --quick takes fewer steps.

    bash bench/gpu_check.sh [--quick]               # on the GPU machine: installs the package and .whl/, runs this
    python bench/gpu_check.py --cpu [--quick]       # with the package importable
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch
from gpu_check_models import peak_bf16_flops, random_backbone, random_causal_lm, texts_of_length, tokenizer_folder

from rlhf.config import ModelConfig, PPOConfig, TaskConfig
from rlhf.config_loading import load_config
from rlhf.data.records import Comparison
from rlhf.models.encoding import encode_queries, tokenize_prompt_response
from rlhf.models.provision import load_tokenizer
from rlhf.models.roles import LanguageModelRole, ScalarRole, encode_for_scoring
from rlhf.models.sampling import StopRule, sample_episodes
from rlhf.pipeline import run_pipeline
from rlhf.run import RunDir, setup_logging
from rlhf.stages.optim import optimizer_step, trainable_parameters
from rlhf.stages.ppo import compute_advantages, optimizers, update
from rlhf.stages.reward import comparison_loss
from rlhf.stages.rollout import prompt_batch, rollout, score
from rlhf.stages.sft import response_nll
from rlhf.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TEMPERATURE = TaskConfig().temperature


@dataclasses.dataclass
class Check:
    """What every part reads (device, dtype, tokenizer, sizes) and what it writes (failures)."""

    device: str
    dtype_name: str
    quick: bool
    tokenizer: object
    work: Path
    peak_flops: float | None
    deadline: float
    failures: list[str] = dataclasses.field(default_factory=list)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name]

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def shapes(self) -> list[str]:
        return ["135m", "1.7b"] if self.cuda else ["tiny"]

    @property
    def steps(self) -> tuple[int, int]:
        """(warm-up steps, timed steps) of each training measurement."""
        if self.cuda:
            return (1, 3) if self.quick else (3, 10)
        return (1, 1) if self.quick else (1, 2)

    def figure(self, name: str, value: float, unit: str) -> None:
        """Print one figure; a figure that is not finite and positive is a failure."""
        print(f"{name}: {value:.4g} {unit}", flush=True)
        if not (math.isfinite(value) and value > 0):
            self.failures.append(f"{name} = {value}")


def synchronize(check: Check) -> None:
    if check.cuda:
        torch.cuda.synchronize()


def seconds_per_call(check: Check, fn: Callable[[], object], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    synchronize(check)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(check)
    return (time.perf_counter() - t0) / repeats


def placement_overrides(check: Check) -> list[str]:
    """model.device and model.dtype overrides, when this tree's config has those fields (the GPU support)."""
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    if {"device", "dtype"} <= names:
        return [f"model.device={check.device}", f"model.dtype={check.dtype_name}"]
    if check.cuda:
        check.failures.append("ModelConfig has no device/dtype fields: this tree has no GPU support")
    else:
        print("note: ModelConfig has no device/dtype fields; the smoke pipeline runs in its default dtype")
    return []


def finite_figures(value, path: str = "") -> list[str]:
    """The paths of the numbers in a summary that are not finite, except in a group whose count (`n` or `*_n`) is
    0, where NaN means "no data" (held-out accuracy on no held-out pairs)."""
    if isinstance(value, dict):
        if any((k == "n" or k.endswith("_n")) and v == 0 for k, v in value.items()):
            return []
        return [p for k, v in value.items() for p in finite_figures(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in finite_figures(v, f"{path}[{i}]")]
    if isinstance(value, float) and not math.isfinite(value):
        return [path]
    return []


def smoke_pipeline(check: Check) -> None:
    """(a) `rlhf run --config configs/smoke.yaml` with the tiny random model, on the check's device and dtype."""
    model_dir = check.work / "tiny-model"
    random_causal_lm("tiny", check.tokenizer, "cpu", torch.float32).save_pretrained(model_dir)
    check.tokenizer.save_pretrained(model_dir)
    overrides = [f"model.name_or_path={model_dir}", *placement_overrides(check)]
    cfg = load_config(ROOT / "configs" / "smoke.yaml", overrides)
    run = RunDir(check.work / "smoke-run")
    setup_logging(run, logging.INFO)
    if check.cuda:
        torch.cuda.reset_peak_memory_stats()
    summary = run_pipeline(run, cfg)
    summary_file = run.root / "summary.json"
    problems = [f"not finite: {p}" for p in finite_figures(summary)]
    if summary.get("stopped") or not summary_file.exists() or "winrates" not in summary:
        problems.append("no complete summary.json")
    if check.cuda and torch.cuda.max_memory_allocated() == 0:
        problems.append("nothing was allocated on the GPU")
    print(f"smoke_pipeline: {'FAIL' if problems else 'PASS'} ({summary_file})", flush=True)
    if check.cuda:
        check.figure("smoke_pipeline_gpu_memory_peak", torch.cuda.max_memory_allocated() / 2**20, "MiB")
    check.failures += [f"smoke pipeline: {p}" for p in problems]


def training_figures(check: Check, name: str, n_tokens: int, seconds: float, n_params: int) -> None:
    """tokens/s, model FLOPs utilisation (6 x parameters x tokens / time / peak) and peak memory of a training step."""
    check.figure(f"{name}_tokens_per_s", n_tokens / seconds, "tokens/s")
    if check.peak_flops:
        check.figure(f"{name}_mfu", 100 * 6 * n_params * n_tokens / seconds / check.peak_flops, "%")
    if check.cuda:
        check.figure(f"{name}_gpu_memory_peak", torch.cuda.max_memory_allocated() / 2**30, "GiB")


def batch_shape(check: Check) -> tuple[int, int]:
    """(rows, tokens per row) of a training batch."""
    return (16, 512) if check.cuda else (4, 48)


def time_training(check: Check, name: str, loss_of_step, params, optimizer, scheduler, n_tokens: int, n_params: int):
    """Time optimiser steps on `loss_of_step()` and print the training figures; a non-finite loss fails the check."""
    losses = []

    def step() -> None:
        loss = loss_of_step()
        optimizer_step(loss, params, optimizer, scheduler)
        losses.append(loss.detach())

    if check.cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = seconds_per_call(check, step, *check.steps)
    training_figures(check, name, n_tokens, seconds, n_params)
    if not all(math.isfinite(x.item()) for x in losses):
        check.failures.append(f"{name}: loss not finite")


def sft_speed(check: Check, shape: str) -> None:
    """(b) SFT steps: `response_nll` on a LoRA adapter, then `optimizer_step`, on a fixed batch."""
    tok = check.tokenizer
    backbone, n_params = random_backbone(shape, tok, check.device, check.dtype)
    backbone.add_adapter("sft")
    params = trainable_parameters(backbone, "sft")
    optimizer = torch.optim.AdamW(params, lr=1e-4, eps=1e-5, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    rows, length = batch_shape(check)
    prompts = texts_of_length(tok, rows, length // 2, seed=1)
    responses = texts_of_length(tok, rows, length // 2 - 1, seed=2)
    n_tokens = sum(len(q) + len(a) for q, a in tokenize_prompt_response(tok, prompts, responses, append_eos=True))
    sft_loss = lambda: response_nll(backbone, "sft", prompts, responses)  # noqa: E731
    time_training(check, f"sft_{shape}", sft_loss, params, optimizer, scheduler, n_tokens, n_params)


def reward_speed(check: Check, shape: str) -> None:
    """(b) reward-model steps: pairwise `comparison_loss` on a LoRA adapter and a scalar head, then `optimizer_step`."""
    tok = check.tokenizer
    backbone, n_params = random_backbone(shape, tok, check.device, check.dtype)
    backbone.add_adapter("reward")
    rm = ScalarRole(backbone, "reward")
    params = trainable_parameters(backbone, "reward") + list(rm.head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4, eps=1e-5, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    rows, length = batch_shape(check)
    n_pairs = rows // 2  # two sequences per comparison: as many tokens per step as an SFT batch
    prompts = texts_of_length(tok, n_pairs, length // 2, seed=1)
    chosen, rejected = (texts_of_length(tok, n_pairs, length // 2 - 1, seed=s) for s in (2, 3))
    pairs = zip(prompts, chosen, rejected)
    batch = [Comparison(prompt=p, responses=[a, b], kind="pairwise", best=0) for p, a, b in pairs]
    flat = encode_for_scoring(rm, [p for p in prompts for _ in (0, 1)], [r for c in batch for r in c.responses])
    encoded = [flat[2 * i : 2 * i + 2] for i in range(n_pairs)]
    n_tokens = sum(len(s.ids) for s in flat)
    reward_loss = lambda: comparison_loss(rm, batch, encoded)  # noqa: E731
    time_training(check, f"reward_{shape}", reward_loss, params, optimizer, scheduler, n_tokens, n_params)


def sampling_speed(check: Check, shape: str) -> None:
    """(c) new tokens/s at batch 64: `sample_episodes` against `model.generate`, every row sampling all new tokens."""
    tok = check.tokenizer
    backbone, _ = random_backbone(shape, tok, check.device, check.dtype)
    policy = LanguageModelRole(backbone, None, TEMPERATURE)
    stop_rule = StopRule(tok)
    stop_rule.is_eos[:] = False  # no row stops early: the same work as generate with min_new_tokens
    batch, new_tokens = 64, ((64 if check.quick else 128) if check.cuda else 16)
    prompts = texts_of_length(tok, batch, 32, seed=4)
    query_ids, query_mask = encode_queries(tok, prompts)
    lm = backbone.causal_lm()
    device = next(lm.parameters()).device

    def project(n: int) -> None:
        episodes, _ = sample_episodes(policy, prompts, n, stop_rule)
        assert episodes.response_ids.shape == (batch, n), episodes.response_ids.shape

    @torch.no_grad()
    def generate(n: int) -> None:
        out = lm.generate(
            input_ids=query_ids.to(device),
            attention_mask=query_mask.to(device),
            do_sample=True,
            temperature=TEMPERATURE,
            top_k=0,
            top_p=1.0,
            max_new_tokens=n,
            min_new_tokens=n,
            pad_token_id=tok.pad_token_id,
        )
        assert out.shape == (batch, query_ids.shape[1] + n), out.shape

    rates = {}
    for name, fn in (("project", project), ("generate", generate)):
        fn(4)  # warm-up
        rates[name] = batch * new_tokens / seconds_per_call(check, lambda: fn(new_tokens), 0, 1)
        check.figure(f"sampling_{shape}_{name}_new_tokens_per_s", rates[name], "tokens/s")
    check.figure(f"sampling_{shape}_project_vs_generate", rates["project"] / rates["generate"], "x")


def ppo_speed(check: Check, shape: str) -> None:
    """(d) PPO iterations of 32 episodes of 64 tokens (8 of 16 on the CPU): `rollout`, `score`,
    `compute_advantages`, `update`, with the policy, reward and value as LoRA adapters on one random model (as
    PPORoles builds them) and PPO's defaults otherwise."""
    tok = check.tokenizer
    backbone, _ = random_backbone(shape, tok, check.device, check.dtype)
    for adapter in ("reward", "policy", "value"):
        backbone.add_adapter(adapter)
    reward, value = ScalarRole(backbone, "reward"), ScalarRole(backbone, "value")
    roles = SimpleNamespace(
        policy=LanguageModelRole(backbone, "policy", TEMPERATURE),
        reference=LanguageModelRole(backbone, None, TEMPERATURE),
        reward=reward,
        value=value,
        policy_params=trainable_parameters(backbone, "policy"),
        value_params=trainable_parameters(backbone, "value") + list(value.head.parameters()),
    )
    warmup, repeats = ((1, 1) if check.quick else (1, 3)) if check.cuda else (0, 1)
    n_episodes, response_length = (32, 64) if check.cuda else (8, 16)
    pc = PPOConfig(iterations=warmup + repeats, batch_size=n_episodes)
    optimizer, scheduler, kl_ctl = optimizers(roles, pc)
    prompts = [p.text for p in get_task("sentiment").load_prompts("train", n=None, seed=0)]
    stop_rule = StopRule(tok)
    iteration = iter(range(warmup + repeats))
    losses = []

    def ppo_iteration() -> None:
        batch_prompts = prompt_batch(prompts, next(iteration), n_episodes, 0)
        batch = rollout(roles.policy, roles.reference, reward, batch_prompts, response_length, stop_rule)
        scores = score(batch, reward, None, pc.missing_stop_penalty)
        adv = compute_advantages(roles, batch.episodes, scores.penalised, kl_ctl.beta, pc)
        losses.extend(update(roles, batch.episodes, adv, optimizer, scheduler, pc, [], True)["policy_loss"])

    seconds = seconds_per_call(check, ppo_iteration, warmup, repeats)
    check.figure(f"ppo_{shape}_episodes_per_s", n_episodes / seconds, "episodes/s")
    if not all(math.isfinite(x) for x in losses):
        check.failures.append(f"ppo_{shape}: policy loss not finite")


def run_part(check: Check, name: str, fn: Callable, *args) -> None:
    """Run one part, timed; an exception or the time budget running out is a failure, and the next part runs."""
    if time.time() > check.deadline:
        check.failures.append(f"{name}: skipped, over the time budget")
        print(f"{name}: skipped (over the time budget)", flush=True)
        return
    t0 = time.time()
    try:
        fn(check, *args)
    except Exception as error:  # report it and go on with the other parts
        traceback.print_exc()
        check.failures.append(f"{name}: {type(error).__name__}: {str(error).strip().splitlines()[0][:200]}")
    finally:
        gc.collect()
        if check.cuda:
            torch.cuda.empty_cache()
        print(f"seconds_{name}: {time.time() - t0:.1f} s", flush=True)


PARTS = ("smoke", "sft", "reward", "sampling", "ppo")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="tiny model only, on the CPU")
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    parser.add_argument("--device", default="cuda", help="the CUDA device in GPU mode (default cuda)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default bfloat16 on the GPU, float32 on the CPU")
    parser.add_argument("--tokenizer", default="auto", help="auto (default), builtin, offline, or a folder")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds after which remaining parts are skipped")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.time()
    device = "cpu" if args.cpu else args.device
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: SKIP (no CUDA GPU: torch.cuda.is_available() is False; `--cpu` runs the CPU check)")
        return 0
    dtype_name = args.dtype or ("float32" if args.cpu else "bfloat16")
    peak, peak_row = (None, "none on the CPU") if args.cpu else peak_bf16_flops(torch.cuda.get_device_name(device))
    name = "cpu" if args.cpu else torch.cuda.get_device_name(device)
    print(f"device: {name}; dtype: {dtype_name}; peak: {peak_row}")
    print(f"torch {torch.__version__}; python {sys.version.split()[0]}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        folder, origin = tokenizer_folder(args.tokenizer, Path(work) / "tokenizer")
        print(f"tokenizer: {origin}", flush=True)
        tokenizer = load_tokenizer(str(folder))
        check = Check(device, dtype_name, args.quick, tokenizer, Path(work), peak, start + args.budget)
        parts = args.parts.split(",")
        if "smoke" in parts:
            run_part(check, "smoke_pipeline", smoke_pipeline)
        for part, fn in (("sft", sft_speed), ("reward", reward_speed), ("sampling", sampling_speed)):
            if part in parts:
                for shape in check.shapes:
                    run_part(check, f"{part}_{shape}", fn, shape)
        if "ppo" in parts:
            run_part(check, f"ppo_{check.shapes[0]}", ppo_speed, check.shapes[0])
    print(f"seconds_total: {time.time() - start:.1f} s")
    print("gpu_check: " + (f"FAIL ({'; '.join(check.failures)})" if check.failures else "PASS"), flush=True)
    return 1 if check.failures else 0


if __name__ == "__main__":
    sys.exit(main())
