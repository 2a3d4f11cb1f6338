"""A standing A/B against TRL (issue 21 §2) on the built-in SmolLM2-135M-Instruct, on the CPU, each measurement in
its own process (bench/ours_side.py, bench/trl_side.py), the sides alternating (ours, TRL full, TRL LoRA, ours,
...), with each process's peak RSS (os.wait4):

- PPO: our PPO stage (the quickstart's LoRA r16 on the top 8 layers: policy, value and reward model adapters on one
  frozen model) against TRL 1.12.0's PPOTrainer (trl.experimental.ppo; the last release with one), full
  fine-tuning and LoRA; the same prompts (the sentiment task's training prompts), episodes per iteration, new
  tokens (EOS the only stop on both sides), PPO epochs and one minibatch per epoch; reward models of the same size
  (the model with a fresh scalar head). Episodes/s and seconds per iteration (generation / scoring / update).
- Reward model: our reward stage's training (`fit_reward_model`) against TRL's RewardTrainer (the newest TRL,
  1.16.0) on HH-RLHF pairs (--hh; skipped when absent), the same epochs and batch size: pairs/s.
- SFT: our SFT stage against TRL's SFTTrainer on the same demonstrations (the sentiment task's): tokens/s.
- Sampling: new tokens/s of our sampler against `model.generate` at batch 32 and 128, every row sampling every
  token, and as a share of the compute bound (2 x parameters FLOP per token at the measured torch.matmul rate).

TRL is installed with `pip install --no-deps --target` into --trl-cache/trl-VERSION (never into the venv) and put
first on sys.path in its processes. The machine's load moves the figures: compare only a run's own ratios.

    python bench/ppo_vs_trl.py --quick                  # a smoke run of every part (minutes)
    python bench/ppo_vs_trl.py [--threads 2] [--rounds 2] [--parts ppo,reward,sft,sample] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from rlhf.config_loading import load_config
from rlhf.models.loading import base_model_path
from rlhf.tasks import task_for

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
PARTS = ("ppo", "reward", "sft", "sample")
HH_FILE = Path("shared") / "data" / "hh-rlhf" / "helpful-pairs-363.jsonl"  # beside the checkout (or a worktree's)
DEFAULT_HH = next(
    (p / HH_FILE for p in (ROOT.parent, ROOT.parent.parent) if (p / HH_FILE).exists()), ROOT.parent / HH_FILE
)
WHAT = {
    "ppo": "ours: the PPO stage, LoRA r16 on the top 8 layers (policy, value, reward model: adapters on one frozen "
    "model; the frozen bottom layers run once per episode); TRL full: four models (policy, reference copy, value, "
    "reward), policy and value trained; TRL LoRA: LoRA r16 on the top 8 layers of the policy (reference = adapter "
    "off), the value model fully trained (TRL's design). Generation = sampling; scoring = reward model, reference "
    "log-probs, values, advantages; update = the PPO epochs.",
    "reward": "Bradley-Terry loss on (prompt, chosen, rejected) pairs, the model with a scalar head. ours: "
    "fit_reward_model, LoRA r16 top 8 (the frozen bottom layers run once for all epochs, counted in the time); "
    "TRL: RewardTrainer, full or LoRA r16 top 8. Time = the whole training call.",
    "sft": "next-token loss on the response tokens of (prompt, response) pairs. ours: the SFT stage's optimiser "
    "steps, LoRA r16 top 8; TRL: SFTTrainer (prompt-completion, completion-only loss), full or LoRA r16 top 8. "
    "tokens/s = prompt+response tokens of the steps after the first / their seconds.",
    "sample": "our sampler (sample_tokens, KV cache) vs model.generate (do_sample, min_new_tokens = max_new_tokens), "
    "same prompts, temperature, no top-k/top-p; compute bound = 2 x parameters FLOP per new token at the "
    "torch.matmul rate (2048^2 float32) with the same threads.",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch threads of every measurement (default 2)")
    p.add_argument("--quick", action="store_true", help="a smoke run: one round, 8 episodes of 8 tokens, small sets")
    p.add_argument("--rounds", type=int, default=2, help="rounds of ours, TRL full, TRL LoRA (default 2)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--variants", default="full,lora", help="TRL variants: full, lora or both (default)")
    p.add_argument("--episodes", type=int, default=32, help="PPO episodes per iteration (default 32)")
    p.add_argument("--new-tokens", type=int, default=24, help="PPO new tokens per episode (default 24)")
    p.add_argument("--ppo-epochs", type=int, default=4, help="PPO epochs per iteration (default 4)")
    p.add_argument("--iterations", type=int, default=3, help="PPO iterations, the first a warm-up (default 3)")
    p.add_argument("--hh", type=Path, default=DEFAULT_HH, help="HH-RLHF prompt/chosen/rejected JSONL")
    p.add_argument("--pairs", type=int, default=128, help="reward-model pairs (default 128)")
    p.add_argument("--reward-epochs", type=int, default=1)
    p.add_argument("--reward-batch", type=int, default=8, help="pairs per step (default 8)")
    p.add_argument("--demos", type=int, default=128, help="SFT demonstrations, 10%% held out by ours (default 128)")
    p.add_argument("--sft-batch", type=int, default=16)
    p.add_argument("--sample-tokens", type=int, default=64, help="new tokens per sampling call (default 64)")
    p.add_argument("--sample-batches", default="32,128")
    p.add_argument("--sample-repeats", type=int, default=3)
    p.add_argument("--trl-ppo", default="1.12.0", help="TRL release for PPO (the last with a PPO trainer)")
    p.add_argument("--trl-new", default="1.16.0", help="TRL release for SFT and the reward model")
    p.add_argument("--trl-cache", type=Path, default=Path.home() / ".cache" / "rlhf" / "bench")
    p.add_argument(
        "--trl-checkpointing",
        choices=("default", "on", "off"),
        default="default",
        help="TRL's gradient checkpointing: its default (on in its configs), on or off (as ours by default)",
    )
    p.add_argument("--out", type=Path, help="also write every figure here (JSON)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.iterations, args.episodes, args.new_tokens = 1, 2, 8, 8
        args.pairs, args.demos, args.sample_tokens, args.sample_repeats, args.sample_batches = 16, 24, 8, 1, "8,16"
    return args


def trl_folder(cache: Path, release: str) -> Path:
    """TRL `release` in its own target folder, installed there from PyPI (without dependencies) when missing."""
    folder = cache / f"trl-{release}"
    if not (folder / "trl" / "__init__.py").exists():
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(folder), f"trl=={release}"]
        print("installing:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return folder


def read_pairs(path: Path, n: int) -> list[list[str]]:
    """The first n (prompt, chosen, rejected) rows of an HH-RLHF JSONL file."""
    rows = []
    with open(path) as fh:
        for line_no, line in enumerate(fh, 1):
            if len(rows) == n:
                break
            row = json.loads(line)
            missing = {"prompt", "chosen", "rejected"} - set(row)
            if missing:
                raise SystemExit(f"{path}:{line_no}: missing field(s) {sorted(missing)}")
            rows.append([row["prompt"], row["chosen"], row["rejected"]])
    return rows


def build_spec(args: argparse.Namespace) -> dict:
    """What every measuring process reads: the model folder, threads, sizes and the shared data."""
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", [f"sft.n_demonstrations={args.demos}"])
    task = task_for(cfg)
    prompts = [p.text for p in task.load_prompts("train", n=None, seed=cfg.seed + 3)]  # the PPO stage's prompts
    demos = task.load_demonstrations("train", n=args.demos, seed=cfg.seed)
    n_val = max(1, int(len(demos) * cfg.sft.val_fraction))  # the SFT stage trains on the rest
    hh = args.hh.exists() and "reward" in args.parts
    return {
        "model_dir": base_model_path(cfg),
        "threads": args.threads,
        "trl_checkpointing": {"default": None, "on": True, "off": False}[args.trl_checkpointing],
        "temperature": cfg.task.temperature,
        "lora": {"r": cfg.model.lora_r, "alpha": cfg.model.lora_alpha, "top_layers": cfg.model.lora_top_layers},
        "prompts": prompts,
        "demos": [[d.prompt, d.response] for d in demos[n_val:]],
        "pairs": read_pairs(args.hh, args.pairs) if hh else [],
        "ppo": {
            "episodes": args.episodes,
            "new_tokens": args.new_tokens,
            "epochs": args.ppo_epochs,
            "iterations": args.iterations,
        },
        "reward": {"epochs": args.reward_epochs, "batch_size": args.reward_batch},
        "sft": {"n": args.demos, "batch_size": args.sft_batch},
        "sample": {
            "new_tokens": args.sample_tokens,
            "batches": [int(b) for b in args.sample_batches.split(",")],
            "repeats": args.sample_repeats,
        },
    }


def child_env(threads: int) -> dict:
    """The environment of the measuring processes: the thread count, this checkout importable."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]),
    }


def run_child(cmd: list[str], work: Path, name: str, threads: int) -> dict:
    """Run one measuring process; its result JSON plus wall seconds and peak RSS (MiB, from os.wait4)."""
    result, log = work / f"{name}.json", work / f"{name}.log"
    env = child_env(threads)
    t0 = time.time()
    with open(log, "w") as fh:
        child = subprocess.Popen([*cmd, str(result)], stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0 or not result.exists():
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{name} failed (exit {child.returncode}); the end of {log}:\n{tail}")
    return {**json.loads(result.read_text()), "wall": time.time() - t0, "peak_rss_mib": usage.ru_maxrss / 1024}


def ppo_figures(r: dict) -> dict:
    """Mean seconds per iteration and per phase over the iterations after the first (a warm-up), episodes/s."""
    timed = r["iterations"][1:] or r["iterations"]
    mean = {k: statistics.mean(it[k] for it in timed) for k in ("seconds", "generation", "scoring", "update")}
    length = statistics.mean(it["response_length"] for it in timed)
    return {**mean, "episodes_per_s": r["episodes"] / mean["seconds"], "response_length": length}


def sft_figures(r: dict) -> dict:
    seconds, tokens = r["step_seconds"][1:] or r["step_seconds"], r["step_tokens"][1:] or r["step_tokens"]
    return {"tokens_per_s": sum(tokens) / sum(seconds), "steps": len(r["step_seconds"])}


def reward_figures(r: dict, n_pairs: int, epochs: int) -> dict:
    return {"pairs_per_s": n_pairs * epochs / r["train_seconds"], "steps": r["steps"]}


def measure(args: argparse.Namespace, spec_path: Path, spec: dict, work: Path) -> dict:
    """Every part's measurements, the sides alternating within each round; {part: {side: [figures per round]}}."""
    folders = {"ppo": trl_folder(args.trl_cache, args.trl_ppo)}
    if {"reward", "sft"} & set(args.parts.split(",")):
        folders["reward"] = folders["sft"] = trl_folder(args.trl_cache, args.trl_new)
    variants = args.variants.split(",")
    results: dict = {}
    py = sys.executable
    for part in args.parts.split(","):
        if part == "reward" and not spec["pairs"]:
            print(f"reward: SKIPPED, no HH-RLHF pairs at {args.hh} (--hh PATH)", flush=True)
            continue
        print(f"\n== {part}: {WHAT[part]}", flush=True)
        if part == "ppo":  # our PPO's run directory (SFT skipped, a fresh reward model), outside the measurements
            prepare = [py, str(HERE / "ours_side.py"), "ppo-run", str(spec_path), spec["ppo"]["run"]]
            done = subprocess.run(prepare, env=child_env(args.threads), cwd=ROOT, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"ours_side.py ppo-run failed:\n{done.stderr[-3000:]}")
        sides = {"ours": [py, str(HERE / "ours_side.py"), part, str(spec_path)]}
        if part != "sample":
            for v in variants:
                sides[f"TRL {v}"] = [py, str(HERE / "trl_side.py"), str(folders[part]), part, v, str(spec_path)]
        for round_no in range(args.rounds):
            for side, cmd in sides.items():
                name = f"{part}_{side.replace(' ', '_')}_{round_no}"
                r = run_child(cmd, work, name, args.threads)
                if part == "ppo":
                    fig = ppo_figures(r)
                elif part == "sft":
                    fig = sft_figures(r)
                elif part == "reward":
                    fig = reward_figures(r, len(spec["pairs"]), spec["reward"]["epochs"])
                else:
                    fig = sample_figures(r)
                fig.update(peak_rss_mib=r["peak_rss_mib"], wall=r["wall"], trl=r.get("trl_version", ""))
                fig.update({k: r[k] for k in ("trainable", "checkpointing") if k in r})
                results.setdefault(part, {}).setdefault(side, []).append(fig)
                shown = ", ".join(
                    f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fig.items() if v != ""
                )
                print(f"{part} round {round_no + 1} {side}: {shown}", flush=True)
    return results


def sample_figures(r: dict) -> dict:
    """New tokens/s per sampler and batch, and each as % of the compute bound."""
    bound = r["matmul_flops"] / (2 * r["n_params"])  # new tokens/s if every FLOP ran at the matmul rate
    fig = {"matmul_gflops": r["matmul_flops"] / 1e9, "bound_tokens_per_s": bound}
    for key, rate in r["rates"].items():
        fig[f"{key} tokens/s"] = rate
        fig[f"{key} % of bound"] = 100 * rate / bound
    return fig


def median_of(rows: list[dict], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def side_facts(row: dict) -> str:
    """[TRL release, gradient checkpointing, trained parameters] of a side's first run, what it has of them."""
    facts = [f"trl {row['trl']}"] if row.get("trl") else []
    if "checkpointing" in row:
        facts.append(f"grad. checkpointing {'on' if row['checkpointing'] else 'off'}")
    if "trainable" in row:
        facts.append(f"{row['trainable'] / 1e6:.2f}M trained")
    return f" [{', '.join(facts)}]" if facts else ""


def report(results: dict) -> list[str]:
    """Median-over-rounds tables per part, then the ratios (ours / TRL) last."""
    lines, ratios = [], []
    for part, sides in results.items():
        lines.append(f"\n{part} (median of {len(next(iter(sides.values())))} round(s)):")
        for side, rows in sides.items():
            trl = side_facts(rows[0])
            if part == "ppo":
                lines.append(
                    f"  {side:9s}{trl}: {median_of(rows, 'episodes_per_s'):.3f} episodes/s, s/iteration "
                    f"{median_of(rows, 'seconds'):.1f} = generation {median_of(rows, 'generation'):.1f} + scoring "
                    f"{median_of(rows, 'scoring'):.1f} + update {median_of(rows, 'update'):.1f} (+ rest); "
                    f"response {median_of(rows, 'response_length'):.1f} tokens; "
                    f"peak RSS {median_of(rows, 'peak_rss_mib'):.0f} MiB"
                )
            elif part in ("sft", "reward"):
                key = "tokens_per_s" if part == "sft" else "pairs_per_s"
                lines.append(
                    f"  {side:9s}{trl}: {median_of(rows, key):.2f} {key.replace('_per_s', '/s')}, "
                    f"peak RSS {median_of(rows, 'peak_rss_mib'):.0f} MiB"
                )
            else:
                for key in rows[0]:
                    if "tokens/s" in key or "%" in key or key in ("matmul_gflops", "bound_tokens_per_s"):
                        lines.append(f"  {key}: {median_of(rows, key):.4g}")
        if part == "sample":
            row = sides["ours"]
            for key in row[0]:
                if key.startswith("ours@") and key.endswith("tokens/s"):
                    gen = key.replace("ours@", "generate@")
                    ratios.append(
                        f"sampling {key.split()[0]}: ours/generate {median_of(row, key) / median_of(row, gen):.2f} x; "
                        f"ours {median_of(row, key.replace('tokens/s', '% of bound')):.1f} % of the compute bound"
                    )
            continue
        key = {"ppo": "episodes_per_s", "sft": "tokens_per_s", "reward": "pairs_per_s"}[part]
        for side in sides:
            if side != "ours":
                speed = median_of(sides["ours"], key) / median_of(sides[side], key)
                rss = median_of(sides["ours"], "peak_rss_mib") / median_of(sides[side], "peak_rss_mib")
                ratios.append(f"{part} ours/{side}: {key.replace('_per_s', '/s')} {speed:.2f} x, peak RSS {rss:.2f} x")
    return lines + ["\nratios (ours / TRL; > 1 = ours faster, or uses more memory):"] + [f"  {r}" for r in ratios]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        raise SystemExit(f"--parts: unknown {sorted(unknown)}; expected a subset of {','.join(PARTS)}")
    deps = ", ".join(f"{n} {version(n)}" for n in ("torch", "transformers", "accelerate", "datasets", "peft"))
    print(f"threads {args.threads}; {deps}; python {sys.version.split()[0]}", flush=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="ppo_vs_trl_") as tmp:
        work = Path(tmp)
        spec = build_spec(args)
        spec["ppo"]["run"] = str(work / "ours_ppo_run")  # made by ours_side.py ppo-run, copied by each measurement
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps(spec))
        print(
            f"model {spec['model_dir']}; {len(spec['prompts'])} prompts, {len(spec['demos'])} demonstrations, "
            f"{len(spec['pairs'])} pairs",
            flush=True,
        )
        results = measure(args, spec_path, spec, work)
    lines = report(results)
    print("\n".join(lines))
    print(f"\nseconds in all: {time.time() - t0:.0f}")
    if args.out:
        args.out.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1)
        )


if __name__ == "__main__":
    main()
